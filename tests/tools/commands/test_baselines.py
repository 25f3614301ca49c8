"""The README's non-timing numbers come from docs/baselines/*.json (issue 11, item 6).

Fast: the README's table between the markers is what `gazeloop baseline readme` renders from
the committed files, and every file parses, names its command and says how many frames and
targets stand behind it. Slow: every baseline is recomputed through its own command and
compared within the tolerances its file states (the drift-loop ones take minutes)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from gazeloop.tools.cli import main
from gazeloop.tools.runtime import baselines as bl
from tests.paths import ROOT

README = ROOT / "README.md"
NAMES = [b.name for b in bl.REGISTRY]


def test_the_readme_table_is_rendered_from_the_files():
    have = bl.readme_section(README.read_text())
    want = bl.expected_section(ROOT)
    assert have == want, "README's measured table is stale: run `gazeloop baseline readme`"


def test_readme_check_says_current_and_rewrites_nothing():
    before = README.read_bytes()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["baseline", "readme", "--check"])
    assert rc == 0, out.getvalue()
    assert "current" in out.getvalue()
    assert README.read_bytes() == before


def test_every_file_is_a_registered_baseline():
    files = {p.stem for p in (ROOT / bl.FOLDER).glob("*.json")}
    assert files == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_baseline_file_names_its_command_frames_and_targets(name):
    b = bl.BY_NAME[name]
    doc = json.loads(bl.file_for(b, ROOT).read_text())
    assert doc["name"] == name and doc["says"].strip()
    assert doc["commands"] == list(b.commands)
    assert all(c.split()[0] in ("gazeloop", "python") for c in doc["commands"])
    assert doc["kind"] in bl.KINDS
    out = doc["output"]
    assert isinstance(doc["frames"], int) and doc["frames"] > 0
    assert isinstance(doc["targets"], int) and doc["targets"] > 0
    assert doc["frames"] == b.frames(out) and doc["targets"] == b.targets(out)
    assert str(doc["frames"]) in doc["behind"] or "no recorded frames" in doc["behind"]
    assert str(doc["targets"]) in doc["behind"]
    # The numbers are the output's, with the registry's tolerances.
    assert bl.registry_mismatch(b, doc) == []
    for key, n in doc["numbers"].items():
        assert n["value"] == bl.get(out, key), key
        assert n["what"].strip() and set(n["tolerance"]) <= {"rel", "abs"}
    made = doc["made"]
    assert made["date"] and made["machine"] and made["versions"]["python"]
    # A number that is not a plain measurement says what it is in its README row.
    if doc["kind"] != "measured":
        assert all(doc["kind"] in row.what for row in b.rows), b.rows


@pytest.mark.parametrize(
    ("old", "new", "tolerance", "ok"),
    [
        (100.0, 102.9, {"rel": 0.03}, True),
        (100.0, 103.1, {"rel": 0.03}, False),
        (100.0, 96.9, {"rel": 0.03}, False),
        (17.0, 18.0, {"abs": 1}, True),
        (17.0, 18.5, {"abs": 1}, False),
        (2.0, 2.9, {"rel": 0.03, "abs": 1}, True),  # the larger of the two
        (9, 9, {"abs": 0}, True),
        (9, 8, {"abs": 0}, False),
        (24.5, None, {"abs": 3}, False),  # stopped recovering
        (None, None, {"abs": 3}, True),
    ],
)
def test_tolerances(old, new, tolerance, ok):
    assert bl.within(old, new, tolerance) is ok


def test_compare_reports_moved_and_missing_numbers():
    doc = {
        "numbers": {
            "a.b": {"value": 10.0, "tolerance": {"rel": 0.1}},
            "c.0": {"value": 5, "tolerance": {"abs": 0}},
            "gone": {"value": 1.0, "tolerance": {"abs": 1}},
        }
    }
    rows = bl.compare(doc, {"a": {"b": 10.5}, "c": [6]})
    assert [(r.key, r.ok) for r in rows] == [("a.b", True), ("c.0", False), ("gone", False)]
    assert "MOVED" in rows[1].line() and "missing" in rows[2].line()


def test_recorded_commands_run_as_children_of_this_interpreter(tmp_path):
    import sys

    argv = bl.argv_of("gazeloop eval $TMP/c4 --json", tmp_path)
    assert argv == [sys.executable, "-m", "gazeloop", "eval", f"{tmp_path}/c4", "--json"]
    argv = bl.argv_of("python -m x ../shared/data", tmp_path, shared=tmp_path / "s")
    assert argv == [sys.executable, "-m", "x", f"{tmp_path}/s/data"]
    with pytest.raises(bl.BaselineError, match="starts with"):
        bl.argv_of("make demo", tmp_path)


def _fake() -> bl.Baseline:
    code = "import json, os; print(json.dumps({'x': float(os.environ['X']), 'n': 3, 't': 2}))"
    return bl.Baseline(
        name="fake",
        commands=(f'python -c "{code}"',),
        says="a number a child process prints",
        kind="simulated",
        numbers=(bl.Number("x", "the number", rel=0.1), bl.Number("n", "frames")),
        frames=lambda o: o["n"],
        targets=lambda o: o["t"],
        behind=lambda o: f"{o['n']} frames, {o['t']} targets",
        rows=(bl.Row("a *simulated* number", lambda o: f"{o['x']:.1f}"),),
        timeout_s=60,
    )


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


def test_update_check_and_readme_end_to_end(tmp_path, monkeypatch):
    fake = _fake()
    monkeypatch.setattr(bl, "REGISTRY", (fake,))
    monkeypatch.setattr(bl, "BY_NAME", {fake.name: fake})
    root = ["--root", str(tmp_path)]
    monkeypatch.setenv("X", "1.0")
    assert _run(["baseline", "update", *root])[0] == 0
    doc = json.loads((tmp_path / bl.FOLDER / "fake.json").read_text())
    assert doc["numbers"]["x"] == {"value": 1.0, "tolerance": {"rel": 0.1}, "what": "the number"}
    assert doc["frames"] == 3 and doc["targets"] == 2 and doc["output"]["x"] == 1.0
    assert _run(["baseline", "check", "fake", *root])[0] == 0
    monkeypatch.setenv("X", "1.05")  # within 10 %
    assert _run(["baseline", "check", *root])[0] == 0
    monkeypatch.setenv("X", "1.2")  # beyond
    rc, text = _run(["baseline", "check", *root])
    assert rc == 1 and "MOVED" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{bl.BEGIN}\nstale row\n{bl.END}\n\nafter\n")
    assert _run(["baseline", "readme", "--check", *root])[0] == 1
    assert _run(["baseline", "readme", *root])[0] == 0
    text = readme.read_text()
    assert "| a *simulated* number | 1.0 | 3 frames, 2 targets |" in text
    assert text.endswith(f"{bl.END}\n\nafter\n") and "stale row" not in text
    assert _run(["baseline", "readme", "--check", *root])[0] == 0
    assert _run(["baseline", "check", "nope", *root])[0] == 2  # a user error, one line


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda d: [1, 2], "a JSON list, not an object"),
        (lambda d: {k: v for k, v in d.items() if k != "numbers"}, "no 'numbers' dict"),
        (lambda d: {**d, "numbers": {"x": {"value": 1.0}}}, "number 'x' has no value and"),
    ],
)
def test_a_tampered_file_is_one_line_naming_it(tmp_path, monkeypatch, capsys, edit, says):
    """They were tracebacks (AttributeError, KeyError) with exit 1, the code of a moved number."""
    fake = _fake()
    monkeypatch.setattr(bl, "REGISTRY", (fake,))
    monkeypatch.setattr(bl, "BY_NAME", {fake.name: fake})
    monkeypatch.setenv("X", "1.0")
    root = ["--root", str(tmp_path)]
    assert _run(["baseline", "update", *root])[0] == 0
    path = tmp_path / bl.FOLDER / "fake.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    (tmp_path / "README.md").write_text(f"{bl.BEGIN}\n{bl.END}\n")
    for argv in (["check", "fake"], ["readme", "--check"]):
        assert _run(["baseline", *argv, *root])[0] == 2
        err = capsys.readouterr().err
        assert f"{path}: not a baseline file ({says}" in err and err.count("\n") == 1, err


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_recomputed_within_tolerance(name, shared, gaze_onnx):
    """The command run again gives the file's numbers within the file's tolerances."""
    b = bl.BY_NAME[name]
    doc = bl.load(b, ROOT)
    out, _ = bl.run(b, ROOT)
    rows = bl.compare(doc, out)
    moved = [r.line() for r in rows if not r.ok]
    assert not moved, f"{name} moved (`gazeloop baseline check {name}`):\n" + "\n".join(moved)
