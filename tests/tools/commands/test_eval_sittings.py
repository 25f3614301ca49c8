"""Across sittings on real data: `eval --save-profile` / `eval --profile` (a profile applied
unchanged), `eval-sittings` over a folder (within, across, per person, cached features) and
the head-shift check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gazeloop.fastpath.pipeline import FastPathConfig
from tests.cli import cli

SITTINGS = ("p1_s08", "p1_s09", "p2_s04")


@pytest.fixture(scope="module")
def folder(shared, gaze_onnx, face_task, tmp_path_factory) -> Path:
    """Three evit sittings (two of p1 in a row, one of p2), linked, never copied."""
    out = tmp_path_factory.mktemp("sittings") / "evit3"
    out.mkdir()
    for name in SITTINGS:
        (out / name).symlink_to(shared / "data" / "evit" / name)
    return out


@pytest.fixture(scope="module")
def sittings_run(folder) -> tuple[dict, str]:
    rc, out, err = cli("eval-sittings", folder, "--json", "--jobs", "2", "--landmarks", "onnx")
    assert rc == 0, err
    return json.loads(out), err


@pytest.mark.slow
def test_sittings_report(sittings_run):
    rep, err = sittings_run
    assert rep["within"]["n"] == 3
    assert [s["sitting"] for s in rep["sittings"]] == list(SITTINGS)
    # what it ran with, resolved: the flag and the defaults it left
    fast = rep["settings"]["fastpath"]
    assert fast["landmarks"] == "onnx" and fast["mirror_average"] is True
    assert fast["crop_scale"] == FastPathConfig().crop_scale
    assert all(s["user_named"] for s in rep["sittings"])
    assert all(s["targets"] >= 14 and s["frames_used"] == s["targets"] for s in rep["sittings"])
    assert rep["frames_used"] == sum(s["frames_used"] for s in rep["sittings"])
    # one pair: p1_s08 → p1_s09 (p2_s04 is another person)
    assert rep["across"]["n"] == 1
    (pair,) = rep["pairs"]
    assert (pair["from"], pair["to"], pair["user"]) == ("p1_s08", "p1_s09", "p1")
    assert set(rep["per_user"]) == {"p1", "p2"}
    assert rep["per_user"]["p2"]["across"]["n"] == 0
    assert "ridge:gaze" in pair["by_candidate"] and pair["chosen"] in pair["by_candidate"]
    for s in rep["sittings"]:
        assert 0 < s["mean_px"] < s["baseline_mean_px"] / 2
    assert 0 < pair["mean_px"] < 400
    # all earlier sittings pooled: with one earlier sitting that is the previous sitting's
    # own profile (its targets, its candidates), so the same figure
    assert pair["pooled"]["sittings"] == 1 and pair["pooled"]["chosen"] == pair["chosen"]
    assert pair["pooled"]["mean_px"] == pytest.approx(pair["mean_px"], abs=0.01)
    assert rep["across_pooled"]["n"] == 1 and rep["per_user"]["p2"]["across_pooled"]["n"] == 0
    # progress goes to stderr, one line per sitting
    assert sum(line.startswith("[") for line in err.splitlines()) == 3


@pytest.mark.slow
def test_a_saved_profile_applied_to_the_next_sitting_is_the_pair_figure(
    folder, sittings_run, tmp_path
):
    rep, _ = sittings_run
    prof = tmp_path / "p1_s08.json"
    rc, out, err = cli("eval", folder / "p1_s08", "--save-profile", prof, "--json")
    assert rc == 0, err
    fitted = json.loads(out)
    saved = json.loads(prof.read_text())
    assert saved["fit"]["selection"]["chosen"] == fitted["selection"]["chosen"]
    assert saved["features"] == fitted["features"]
    rc, out, err = cli("eval", folder / "p1_s09", "--profile", prof, "--json")
    assert rc == 0, err
    applied = json.loads(out)
    assert applied["profile"] == str(prof) and applied["selection"] is None
    assert applied["targets"] == rep["sittings"][1]["targets"]
    assert applied["mean_px"] == pytest.approx(rep["pairs"][0]["mean_px"], abs=0.01)


@pytest.mark.slow
def test_a_profile_of_two_sittings_pools_them_and_refits_from_both(folder, tmp_path):
    """`profile fit S1 S2`: one profile from both sittings (a screen point left out of both
    at once, head-pose features competing), saved with both folders; a new model refits it
    from the frames of both."""
    from gazeloop.calibration.profile import Profile
    from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
    from gazeloop.tools.runtime.refit import refit_profile

    a, b, out = folder / "p1_s08", folder / "p1_s09", tmp_path / "pooled.json"
    rc, stdout, err = cli("profile", "fit", a, b, "--out", out)
    assert rc == 0, err
    prof = Profile.load(out)
    assert prof.calibration_sessions == [str(a.resolve()), str(b.resolve())]
    assert prof.calibration_session == str(b.resolve())
    n = sum(len(list(p.glob("*.jpg"))) for p in (a, b))
    assert prof.fit.targets == 16 and n - 2 <= prof.fit.frames <= n
    assert "ridge:gaze+head" in prof.fit.selection["candidates"]
    assert "2 sittings pooled" in stdout
    single = FastPath(FastPathConfig(mirror_average=False))
    try:
        again = refit_profile(prof, single.cfg, None)
    finally:
        single.close()
    assert again.calibration_sessions == prof.calibration_sessions
    assert again.features == prof.features and again.fit.frames == prof.fit.frames
    assert again.gaze_read != prof.gaze_read and again.mapping != prof.mapping


@pytest.mark.slow
def test_sittings_on_two_screens_are_not_pooled(folder, tmp_path):
    rc, _, err = cli(
        "profile", "fit", folder / "p1_s08", folder / "p2_s04", "--out", tmp_path / "x"
    )
    assert rc != 0 and len(err.strip().splitlines()) == 1, err
    assert "p2_s04" in err and "1470x920" in err and "one screen" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_profile_and_fixed_mapping_do_not_mix(folder, tmp_path):
    rc, _, err = cli(
        "eval", folder / "p1_s08", "--profile", tmp_path / "x.json", "--mapping", "ridge"
    )
    assert rc != 0 and "--profile" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_rerun_reads_cached_features_and_gives_the_same_numbers(folder, sittings_run):
    rep, _ = sittings_run
    cache = Path(os.environ["GAZELOOP_CACHE"]) / "features"
    assert len(list(cache.glob("*.json"))) >= len(SITTINGS)
    # In this process this time, not in two workers: the same report, to the last digit.
    rc, out, err = cli("eval-sittings", folder, "--json", "--jobs", "1")
    assert rc == 0, err
    assert json.loads(out) == rep


@pytest.mark.slow
def test_history_calibrates_each_later_sitting_with_the_earlier_ones(folder, sittings_run):
    """`--history`: each sitting with earlier ones of the person on that screen calibrated
    as `gazeloop calibrate` does then (alone or pooled, each point left out of every
    sitting); the rest of the report is the same to the last digit."""
    rep, _ = sittings_run
    assert "within_with_history" not in rep  # only when asked: it costs a minute on evit
    rc, out, err = cli("eval-sittings", folder, "--json", "--jobs", "1", "--history")
    assert rc == 0, err
    hist = json.loads(out)
    per_user = {u: dict(s) for u, s in hist["per_user"].items()}
    assert all(s.pop("within_with_history")["n"] >= 0 for s in per_user.values())
    assert {k: v for k, v in hist.items() if k in rep} | {"per_user": per_user} == rep
    (row,) = hist["with_history"]  # p1_s09 after p1_s08; p2_s04 has no earlier sitting
    assert (row["sitting"], row["user"], row["earlier"]) == ("p1_s09", "p1", 1)
    assert row["points"] == rep["sittings"][1]["targets"] and 0 <= row["pooled_points"] <= 16
    w = hist["within_with_history"]
    assert w["n"] == 1 and w["mean_px"] == row["mean_px"]
    assert w["alone"]["mean_px"] == rep["sittings"][1]["mean_px"]
    assert 0 < row["mean_px"] < rep["sittings"][1]["baseline_mean_px"] / 2
    assert hist["per_user"]["p2"]["within_with_history"]["n"] == 0
    assert "calibrating 1 sittings with the earlier ones" in err


def _first_stills(shared, out: Path, name: str, n: int) -> None:
    """A sitting of evit `name`'s first `n` stills (and its manifest), linked."""
    src = shared / "data" / "evit" / name
    (out / name).mkdir(parents=True)
    (out / name / "session.json").symlink_to(src / "session.json")
    for jpg in sorted(src.glob("*.jpg"))[:n]:
        for f in (jpg, jpg.with_suffix(".json")):
            (out / name / f.name).symlink_to(f)


@pytest.mark.slow
def test_a_sitting_too_small_to_evaluate_is_left_out_and_said(shared, tmp_path):
    """One sitting of a folder that cannot be evaluated (3 usable targets: none to leave
    out) or calibrated with its history (4: one left out, a fold then fits on 2) is said in
    the report and on stderr, and the others are still evaluated: held-out folders have
    such sittings, and one must not cost the whole report. On worker processes too."""
    out = tmp_path / "three"
    _first_stills(shared, out, "p1_s08", 3)
    (out / "p1_s09").symlink_to(shared / "data" / "evit" / "p1_s09")
    _first_stills(shared, out, "p1_s10", 4)
    rc, stdout, err = cli("eval-sittings", out, "--json", "--history", "--jobs", "2")
    assert rc == 0, err
    assert "Traceback" not in err
    rep = json.loads(stdout)
    assert [s["sitting"] for s in rep["sittings"]] == ["p1_s09", "p1_s10"]
    (pair,) = rep["pairs"]
    assert (pair["from"], pair["to"]) == ("p1_s09", "p1_s10")
    why = {s["sitting"]: s["reason"] for s in rep["skipped"]}
    assert why["p1_s08"].startswith("not evaluated: ") and "3 usable targets" in why["p1_s08"]
    assert why["p1_s10"].startswith("not calibrated with its history: ")
    assert rep["within_with_history"]["n"] == 0
    assert f"p1_s08: {why['p1_s08']}" in err and f"p1_s10: {why['p1_s10']}" in err


@pytest.mark.slow
def test_a_folder_with_no_sitting_to_evaluate_is_one_line(shared, tmp_path):
    out = tmp_path / "one"
    _first_stills(shared, out, "p1_s08", 3)
    rc, stdout, err = cli("eval-sittings", out, "--json")
    assert rc == 2 and stdout == "" and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if not x.startswith("[")]
    assert "no sitting could be evaluated" in line and "3 usable targets" in line, err


@pytest.mark.slow
def test_head_shift_geometric_follows_depth_moves_and_ridge_does_not(folder, tmp_path):
    png = tmp_path / "shift.png"
    rc, out, err = cli("head-shift", folder / "p1_s08", "--json", "--plot", png)
    assert rc == 0, err
    import matplotlib.image

    assert f"wrote {png}" in err and matplotlib.image.imread(png).shape[:2] == (484, 1496)
    rep = json.loads(out)
    assert set(rep["moves"]) == {"right", "down", "closer", "farther"}
    assert rep["settings"]["fastpath"]["crop_scale"] == FastPathConfig().crop_scale
    for mv in ("closer", "farther"):
        per = rep["moves"][mv]["by_candidate"]
        geo, ridge = per["geometric:geometric"], per["ridge:gaze"]
        assert geo["miss_fraction"] < ridge["miss_fraction"]
        assert ridge["followed"] < 0.35  # a ridge on angles cannot know the head moved
    assert rep["moves"]["closer"]["by_candidate"]["geometric:geometric"]["miss_fraction"] < 1 / 3


def test_choice_by_history_uses_only_earlier_pairs():
    from gazeloop.tools.commands.eval_sittings import choose_by_history, summarise

    pairs = [
        {"user": "a", "chosen": "x", "mean_px": 100.0, "by_candidate": {"x": 100.0, "y": 50.0}},
        # y did better before, so y is used here whatever this pair's own numbers say
        {"user": "a", "chosen": "x", "mean_px": 90.0, "by_candidate": {"x": 90.0, "y": 200.0}},
        # now x averages 95 and y 125: x
        {"user": "a", "chosen": "y", "mean_px": 10.0, "by_candidate": {"x": 70.0, "y": 10.0}},
        # another person starts without history: the within-sitting choice
        {"user": "b", "chosen": "y", "mean_px": 30.0, "by_candidate": {"x": 40.0, "y": 30.0}},
    ]
    got = choose_by_history(pairs)
    assert [(g["chosen"], g["mean_px"]) for g in got] == [
        ("x", 100.0),
        ("y", 200.0),
        ("x", 70.0),
        ("y", 30.0),
    ]
    within = [{"user": u, "mean_px": 1.0, "frames_used": 16, "targets": 16} for u in "ab"]
    rep = summarise("f", within, pairs)
    assert rep["across_by_history"]["n"] == 4
    assert rep["across_by_history"]["median_px"] == 85.0
    assert rep["per_user"]["b"]["across_by_history"]["median_px"] == 30.0


def test_head_shift_refuses_a_picture_it_cannot_write_before_any_work(tmp_path):
    rc, out, err = cli("head-shift", tmp_path / "none", "--plot", tmp_path / "shift.txt")
    assert rc == 2 and out == "" and "name a .png, .svg or .pdf file" in err


def test_head_shift_picture_of_a_canned_report(tmp_path):
    """The picture needs only the report: every move a panel, every candidate an arrow."""
    from gazeloop.tools.runtime.head_shift_plot import plot_head_shift

    def stats(px):
        return {"expected_px": [1.0, 0.0], "predicted_px": px}

    moves = {
        mv: {
            "frames": 9,
            "expected_px": [30.0, 0.0],
            "by_candidate": {
                "geometric:geometric": stats([28.0, 2.0]),
                "ridge:gaze": stats([0, 0]),
            },
        }
        for mv in ("right", "down", "closer")
    }
    report = {
        "session": "s", "targets": 9, "frames": 9, "chosen": "geometric:geometric", "moves": moves,
        "screen_mm": [300.0, 190.0],
    }  # fmt: skip
    plot_head_shift(report, tmp_path / "p.png")
    import matplotlib.image

    img = matplotlib.image.imread(tmp_path / "p.png")
    assert img.shape[:2] == (484, 3 * 374)


@pytest.mark.slow
def test_head_shift_on_three_targets_is_refused_as_eval_refuses_it(shared, tmp_path):
    """It reported a "chosen" mapping fitted on 3 points (6 features for one of them)."""
    _first_stills(shared, tmp_path, "p1_s08", 3)
    rc, out, err = cli("head-shift", tmp_path / "p1_s08", "--json")
    assert rc == 2 and out == "" and "Traceback" not in err
    assert "3 usable targets" in err and "needs at least 4" in err


@pytest.mark.slow
def test_the_text_report_of_one_sitting_has_no_python_none(shared, tmp_path):
    """One sitting has no pair: the text said "median None px" (the JSON keeps null)."""
    (tmp_path / "p1_s08").symlink_to(shared / "data" / "evit" / "p1_s08")
    rc, out, err = cli("eval-sittings", tmp_path)
    assert rc == 0, err
    assert (
        "None" not in out
        and "across sittings (profile from the previous sitting): median - (none)" in out
    )


def test_a_folder_that_makes_no_pair_says_why():
    """Sittings whose session.json names no user (`record` without --user, an import) are
    each a person of their own: the report said "0 consecutive pairs" and "- (none)"."""
    from gazeloop.tools.commands.eval_sittings import _no_pairs_why

    def rep(named, pairs=0):
        rows = [{"sitting": f"s{i}", "user_named": n} for i, n in enumerate(named)]
        return {"sittings": rows, "across": {"n": pairs}}

    assert _no_pairs_why(rep([False, True, False])) == [
        "  no pairs: 2 of 3 sittings name no user in their session.json (each is then a "
        "person of its own); a pair is one person's sittings on one screen"
    ]
    assert _no_pairs_why(rep([True, True])) == [
        "  no pairs: no person has two sittings on one screen"
    ]
    assert _no_pairs_why(rep([False, False], pairs=1)) == _no_pairs_why(rep([False])) == []
