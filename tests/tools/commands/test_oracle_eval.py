"""`gazeloop oracle eval`: oracles measured against labelled sessions; the maths by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gazeloop.tools.cli import main
from gazeloop.tools.runtime.oracle_eval import (
    LabelResult,
    line_errors,
    point_distance_px,
    summarise,
)
from tests.paths import ROOT

SIZE = np.array([2000.0, 1000.0])


def run_json(capsys, *args: str) -> dict:
    rc = main(["oracle", "eval", *args, "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(captured.out)


def test_point_distance_is_in_pixels():
    assert point_distance_px((0.5, 0.5), (1030.0, 540.0), SIZE) == pytest.approx(50.0)


def test_line_errors_are_measured_on_the_glass_not_in_normalised_units():
    # From the top centre straight down: a truth 300 px to the side is 300 px off the line.
    perp, ang = line_errors((0.5, 0.0), (0.0, 1.0), (1300.0, 400.0), SIZE)
    assert perp == pytest.approx(300.0) and ang == pytest.approx(math.degrees(math.atan2(3, 4)))
    # Diagonal in normalised units (1, 1)/√2 is (2000, 1000) on a 2:1 screen; a truth on
    # that pixel diagonal lies on the line.
    perp, ang = line_errors((0.0, 0.0), (2**-0.5, 2**-0.5), (1000.0, 500.0), SIZE)
    assert perp == pytest.approx(0.0, abs=1e-9) and ang == pytest.approx(0.0, abs=1e-6)
    # Behind the origin: on the line's extension, but pointing the other way.
    perp, ang = line_errors((0.5, 0.5), (1.0, 0.0), (500.0, 500.0), SIZE)
    assert perp == pytest.approx(0.0, abs=1e-9) and ang == pytest.approx(180.0)


def test_summary_medians_skip_labels_without_the_number():
    rs = [
        LabelResult("a", 0, (0, 0), True, kind="point", distance_px=10.0, latency_ms=5.0),
        LabelResult("b", 0, (0, 0), True, kind="point", distance_px=30.0, latency_ms=7.0),
        LabelResult("c", 1, (0, 0), False, why_not="burst", latency_ms=9.0),
        LabelResult("d", 1, (0, 0), False, why_not="far", fixation_px=1333.0),
        LabelResult("e", 2, (0, 0), True, kind="point", distance_px=0.0, fixation_px=60.0),
        LabelResult("f", 2, (0, 0), True, kind="point", distance_px=0.0, fixation_px=80.0),
    ]
    s = summarise(rs, {"settling": 4})
    assert (s["labels"], s["returned"], s["returned_share"]) == (6, 4, 0.667)
    assert s["median_distance_px"] == 5.0 and s["median_latency_ms"] == 7.0
    assert s["why_not"] == {"burst": 1, "far": 1} and s["median_angle_deg"] is None
    assert s["median_fixation_px"] == 70.0  # the refused far click's 1333 px vouched for nothing
    assert s["not_scored"] == {"settling": 4}  # beside the numbers, in none of them


def test_targets_on_grid9_are_every_frame_at_distance_zero(shared, capsys, tmp_path):
    png = tmp_path / "targets.png"
    out = run_json(
        capsys, str(shared / "data/sessions/grid9"), "--oracle", "targets", "--plot", str(png)
    )
    assert out["oracle"] == "targets" and "by construction" in out["oracle_note"]
    s = out["summary"]
    assert (s["labels"], s["returned"], s["median_distance_px"]) == (9, 9, 0.0)
    assert all(r["kind"] == "point" and r["latency_ms"] >= 0 for r in out["labels"])
    assert all(r["point_px"] == r["truth_px"] for r in out["labels"])  # what --plot joins
    # grid9's records carry no target field: one id per distinct target, as clicks number them.
    assert {r["target"] for r in out["labels"]} == set(range(9))
    assert s["not_scored"] == {}  # grid9 marks no frame settling
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (572, 1210)


def test_moondream_runs_through_the_double_and_says_so(shared, capsys):
    out = run_json(capsys, str(shared / "data/sessions/grid9"), "--oracle", "moondream")
    assert (
        out["oracle_note"].startswith("API-shaped double") and "not Moondream" in out["oracle_note"]
    )
    assert "camera assumed" in out["oracle_note"]  # grid9 has no manifest
    s = out["summary"]
    assert s["labels"] == 9 and s["returned"] == 9
    # The double's forced point is to the image's right: lines, whose numbers are reported.
    assert all(r["kind"] == "line" for r in out["labels"])
    assert 0 <= s["median_angle_deg"] <= 180 and s["median_perpendicular_px"] > 0
    assert {r["target"] for r in out["labels"]} == set(range(9))  # 9 labels, 9 targets
    # The line as --plot draws it (origin px, unit direction on the glass) is the line
    # the distance was measured from.
    for r in out["labels"]:
        ox, oy, ux, uy = r["line_px"]
        assert math.hypot(ux, uy) == pytest.approx(1.0, abs=1e-3)
        tx, ty = r["truth_px"]
        perp = abs(ux * (ty - oy) - uy * (tx - ox))
        assert perp == pytest.approx(r["perpendicular_px"], abs=2.0)


@pytest.mark.slow
def test_settling_frames_are_not_scored_and_are_counted(shared, capsys, tmp_path):
    """The importer marks the first frames after each change of target settling: the eyes
    are still on their way, so the target is not the truth there."""
    from gazeloop.tools.runtime.importers import import_corners4

    folder = tmp_path / "c4"
    import_corners4(shared / "data/video-corners4", folder)
    records = {
        p.with_suffix(".jpg").name: json.loads(p.read_text()) for p in folder.glob("img_*.json")
    }
    settled = {name for name, r in records.items() if not r["settling"]}
    assert (len(records), len(settled)) == (74, 46)
    out = run_json(capsys, str(folder), "--oracle", "moondream")
    s = out["summary"]
    assert (s["labels"], s["returned"], s["not_scored"]) == (46, 46, {"settling": 28})
    assert {r["item"] for r in out["labels"]} == settled
    # Each label names the study's own target (the csv's idx, 0-3), never null.
    assert all(r["target"] == records[r["item"]]["target"] for r in out["labels"])
    assert {r["target"] for r in out["labels"]} == {0, 1, 2, 3}
    # Every frame settling: nothing to score, said, rather than medians of nothing.
    for p in folder.glob("img_*.json"):
        p.write_text(json.dumps(json.loads(p.read_text()) | {"settling": True}))
    assert main(["oracle", "eval", str(folder), "--oracle", "moondream", "--json"]) == 2
    err = capsys.readouterr().err
    assert "every frame is marked settling" in err and err.count("\n") == 1


def test_unpinned_warns_only_when_the_real_model_would_load(shared, capsys, monkeypatch, tmp_path):
    grid9 = [str(shared / "data/sessions/grid9"), "--oracle", "moondream", "--moondream-unpinned"]
    # The double runs no remote code: a pin flag without --weights was taken without a word.
    assert main(["oracle", "eval", *grid9, "--json"]) == 2
    err = capsys.readouterr().err
    assert "UNPINNED" not in err and "they go with --weights" in err
    assert main(["oracle", "eval", *grid9, "--weights", "--code-commit", "0" * 40]) == 2
    assert "give one of them" in capsys.readouterr().err  # the pin had won without a word
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["oracle", "eval", *grid9, "--weights"]) == 2  # offline: no weights to load
    err = capsys.readouterr().err
    assert err.startswith("WARNING: Moondream remote code UNPINNED: unreviewed code will run\n")


def test_the_readme_names_every_field_of_the_output(shared, capsys):
    out = run_json(capsys, str(shared / "data/sessions/grid9"), "--oracle", "targets")
    text = (ROOT / "README.md").read_text()
    section = text[text.index("`gazeloop oracle eval` runs one oracle") :].split("\n### ")[0]
    fields = [*out, *out["summary"], *out["labels"][0]]
    assert not [f for f in fields if f"`{f}`" not in section]
    for said in ("0-180", "0 points at the truth", "`settling`", "the double's canned answers"):
        assert said in section


def test_real_moondream_offline_is_one_clear_error(shared, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [str(shared / "data/sessions/grid9"), "--oracle", "moondream", "--weights"]
    assert main(["oracle", "eval", *args, "--code-commit", "0" * 40]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gazeloop oracle:") and "Traceback" not in err
    assert "pip install" in err or "huggingface-cli download" in err


def test_the_offline_advice_keeps_one_command_per_line(shared, capsys, monkeypatch):
    """The advice was joined into one line: two download commands run together, and the
    comment after the first swallowed the rest (so neither could be copied)."""
    import gazeloop.oracle.moondream as md

    def offline(cfg):
        raise md.OracleError(md.missing_weights_message(cfg, FileNotFoundError("no snapshot")))

    monkeypatch.setattr(md, "load_moondream", offline)
    args = [str(shared / "data/sessions/grid9"), "--oracle", "moondream", "--weights"]
    assert main(["oracle", "eval", *args, "--code-commit", "0" * 40]) == 2
    lines = capsys.readouterr().err.splitlines()
    downloads = [x.strip() for x in lines if "huggingface-cli download" in x]
    assert len(downloads) == 2 and all(d.startswith("huggingface-cli download") for d in downloads)
    assert not any("local_files_only" in x for x in lines)  # no flag of ours sets it


def test_bad_flags_are_one_line_errors(shared, capsys):
    grid9 = str(shared / "data/sessions/grid9")
    assert main(["oracle", "eval", grid9, "--oracle", "targets", "--weights"]) == 2
    assert "for --oracle moondream" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["oracle", "eval", grid9, "--oracle", "moondream", "--code-commit", "abc"])
    assert "not a 40-hex commit hash: 'abc'" in capsys.readouterr().err
    # The real model without a pin: refused before it loads, and said how to give one.
    assert main(["oracle", "eval", grid9, "--oracle", "moondream", "--weights"]) == 2
    assert "give --code-commit SHA" in capsys.readouterr().err
    assert main(["oracle", "eval", grid9, "--oracle", "targets", "--plot", "labels.txt"]) == 2
    assert "--plot labels.txt: name a .png, .svg or .pdf file" in capsys.readouterr().err


def test_one_target_without_a_screen_is_refused_not_guessed(shared, capsys, tmp_path):
    """One still of grid9, no session.json: "equal margins" made a 3351x42 screen."""
    one = tmp_path / "one"
    one.mkdir()
    for ext in ("jpg", "json"):
        (one / f"img_1766068439840.{ext}").symlink_to(
            shared / f"data/sessions/grid9/img_1766068439840.{ext}"
        )
    assert main(["oracle", "eval", str(one), "--oracle", "targets", "--json"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"gazeloop oracle: {one}: the screen size is unknown (no session.json) and one "
        "target cannot tell it: give --screen-px W H"
    )


@pytest.mark.slow
def test_clicks_on_grid9_keep_most_clicks_and_refuse_doubles(shared, capsys):
    grid9 = str(shared / "data/sessions/grid9")
    out = run_json(capsys, grid9, "--oracle", "clicks", "--mirrored", "--clicks-per-target", "4")
    s = out["summary"]
    assert "No person clicked" in out["oracle_note"]
    assert s["labels"] >= 36  # 9 targets x 4 looks, plus the second presses of doubles
    assert 0.4 < s["returned_share"] < 0.95
    assert set(s["why_not"]) <= {"burst", "saccade", "far", "no_fixation", "no_samples"}
    assert s["why_not"].get("burst", 0) % 2 == 0  # both presses of a double click
    assert s["median_distance_px"] == 0.0 and s["median_latency_ms"] >= 400  # burst window
    assert 0 < s["median_fixation_px"] < 200  # the leave-one-target-out error, roughly


def _linked(shared, out, n: int, corrupt: bool = False):
    """The first `n` stills of evit p1_s02 linked into `out` (the first one replaced by
    bytes that are no JPEG when `corrupt`)."""
    src = shared / "data/evit/p1_s02"
    out.mkdir()
    (out / "session.json").symlink_to(src / "session.json")
    for i, jpg in enumerate(sorted(src.glob("*.jpg"))[:n]):
        (out / jpg.with_suffix(".json").name).symlink_to(jpg.with_suffix(".json"))
        if corrupt and i == 0:
            (out / jpg.name).write_bytes(b"not a jpeg")
        else:
            (out / jpg.name).symlink_to(jpg)
    return out


def test_a_picture_that_does_not_decode_is_a_frame_not_labelled_said(shared, capsys, tmp_path):
    folder = _linked(shared, tmp_path / "s", 5, corrupt=True)
    out = run_json(capsys, str(folder), "--oracle", "targets")
    assert out["summary"]["labels"] == 5 and out["summary"]["returned"] == 4
    (bad,) = [x for x in out["labels"] if not x["returned"]]
    assert bad["why_not"].startswith(f"error: {bad['item']}: cannot decode image")


def test_clicks_on_too_few_targets_are_one_line(shared, capsys, tmp_path):
    folder = _linked(shared, tmp_path / "s", 3)
    rc = main(["oracle", "eval", str(folder), "--oracle", "clicks", "--json"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "3 usable targets" in err and "needs at least 4" in err and err.count("\n") == 1, err
