"""`gazeloop bench loop`: the drift loop on real sessions through the real fast path, with a
simulated oracle (said so in the output). No timing is asserted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gazeloop.calibration.drift.loop import LoopConfig
from gazeloop.tools.cli import main
from gazeloop.tools.runtime.run_config import RunConfig

FIELDS = {
    "error_before_px",
    "error_drifted_px",
    "error_after_px",
    "labels_to_recover",
    "outlier_rate",
    "noise_px",
}


def run_json(capsys, *args) -> dict:
    rc = main(["bench", "loop", *map(str, args), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(captured.out)


@pytest.fixture(scope="module")
def corners4(shared, tmp_path_factory) -> Path:
    from gazeloop.tools.runtime.importers import import_corners4

    out = tmp_path_factory.mktemp("bench-loop") / "corners4"
    import_corners4(shared / "data/video-corners4", out)
    return out


def copy_pairs(src: Path, dst: Path, stems: list[str]) -> Path:
    dst.mkdir(parents=True)
    shutil.copy2(src / "session.json", dst / "session.json")
    for stem in stems:
        for suffix in (".jpg", ".json"):
            shutil.copy2(src / f"{stem}{suffix}", dst / f"{stem}{suffix}")
    return dst


def records(folder: Path) -> list[tuple[str, dict]]:
    return [(p.stem, json.loads(p.read_text())) for p in sorted(folder.glob("img_*.json"))]


@pytest.mark.slow
def test_grid9_leave_one_target_out_step_and_ramp(shared, tmp_path, capsys):
    grid9 = shared / "data/sessions/grid9"
    png = tmp_path / "loop.png"
    out = run_json(
        capsys, "--session", str(grid9), "--mirrored", "--seeds", "4", "--plot", str(png)
    )
    assert out["oracle"].startswith("simulated")
    assert set(out) >= FIELDS and FIELDS - {"outlier_rate", "noise_px"} <= set(out["ramp"])
    assert out["mode"] == "injected-drift" and out["frames"] == 9 and out["targets"] == 9
    assert out["noise_px"] == 100.0 and out["outlier_rate"] == 0.0 and out["seeds"] == 4
    assert out["screen_px"] == [1712, 1036] and "no session.json" in out["screen_basis"]
    # The same frames `gazeloop eval grid9 --mirrored` measures (docs/baselines/grid9*.json).
    assert 50 < out["error_before_px"] < 110
    assert out["error_drifted_px"] > out["error_before_px"] + 50  # 150 px, partly sideways
    for r in (out, out["ramp"]):
        assert r["error_after_px"] < 0.7 * r["error_drifted_px"]  # the loop undid most of it
        assert r["error_after_px"] < 1.25 * out["error_before_px"]
        assert r["worst_after_over_drifted"] < 1.0
    assert out["step"]["kind"] == "step" and out["ramp"]["drift"]["kind"] == "ramp"
    # The step is reported next to the bound: the same streams, told the onset.
    ref = out["known_onset_reference"]
    assert ref["estimator"].startswith("known-onset") and "known_onset_reference" not in out["ramp"]
    assert 0 <= ref["recovered_runs"] <= 4 and 0 <= out["share_in_band_after_15_labels"] <= 1
    drifted = out["error_drifted_px"] / out["error_before_px"]
    assert 0.5 < out["error_after_15_labels_over_before"] < 0.8 * drifted  # mostly undone
    assert 0.5 < ref["error_after_15_labels_over_before"] < 1.6
    # With nothing injected every move of the offset is a false one.
    quiet = out["no_drift"]
    assert (quiet["streams"], quiet["labels_per_stream"]) == (4, 100)
    assert 0 <= quiet["false_change_share"] <= 1
    assert 0 < quiet["rms_offset_px"] <= quiet["max_offset_px"] < 400
    # The error after each label, what --plot draws: 60 labels, the band around the median,
    # the uncorrected error at the onset and the reported end at the last label.
    for r in (out, out["ramp"]):
        c = r["error_by_label_px"]
        assert len(c["median"]) == len(c["p10"]) == len(c["p90"]) == 60
        assert all(lo <= m <= hi for lo, m, hi in zip(c["p10"], c["median"], c["p90"], strict=True))
        assert c["median"][-1] == r["error_after_px"]
        assert c["uncorrected"][0] == r["error_before_px"]
        assert c["uncorrected"][-1] == r["error_drifted_px"]
    ramp = out["ramp"]["error_by_label_px"]["uncorrected"]
    assert ramp[10] < ramp[20] < ramp[29] == ramp[-1]  # a ramp grows, then holds
    c = out["error_by_label_px"]["median"]
    assert c[0] == pytest.approx(out["error_before_px"], rel=0.2)  # before the drift
    assert c[10] == pytest.approx(out["error_drifted_px"], rel=0.2)  # the step's first label
    assert len(ref["error_by_label_px"]["median"]) == 60
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (462, 1210)


@pytest.mark.slow
def test_corners4_split_calibration_with_outliers(corners4, capsys):
    out = run_json(
        capsys,
        "--session",
        str(corners4),
        "--calibration",
        "split",
        "--seeds",
        "3",
        "--outlier-rate",
        "0.3",
        "--noise-px",
        "80",
    )
    assert out["frames"] == 74 and out["targets"] == 4 and out["screen_px"] == [2560, 1440]
    assert out["outlier_rate"] == 0.3 and out["noise_px"] == 80.0
    assert "first half" in out["calibration"]
    # Settled frames split per target: the loop runs on the later half only.
    assert out["loop_frames"] < out["frames_used"] <= 74 - 4 * 7
    assert out["error_before_px"] < 120  # calibrated on the same targets, 2560 px screen
    assert out["error_drifted_px"] > out["error_before_px"] + 80
    # With 30 % junk labels the loop never ends worse than doing nothing.
    assert out["worst_after_over_drifted"] < 1.0
    assert out["error_after_px"] < out["error_drifted_px"]


@pytest.mark.slow
def test_calibrate_on_another_session(corners4, tmp_path, capsys):
    # One person, one sitting: the two "sessions" are the earlier and later halves of each
    # target's settled frames of the same recording, so the drift between them is small and
    # real, not a change of sitting.
    first, second, settling = [], [], []
    by_target: dict[int, list[str]] = {}
    for stem, rec in records(corners4):
        if rec["settling"]:
            settling.append(stem)
        else:
            by_target.setdefault(rec["target"], []).append(stem)
    for stems in by_target.values():
        first += stems[: len(stems) // 2]
        second += stems[len(stems) // 2 :]
    earlier = copy_pairs(corners4, tmp_path / "earlier", first + settling)
    later = copy_pairs(corners4, tmp_path / "later", second)
    out = run_json(
        capsys,
        "--session",
        str(later),
        "--calibrate-on",
        str(earlier),
        "--label-targets",
        "0,3",
        "--seeds",
        "3",
    )
    assert out["mode"] == "calibrate-on-other" and out["oracle"].startswith("simulated")
    assert out["calibrated_on"] == str(earlier) and out["session"] == str(later)
    assert out["label_targets"] == [0, 3] and out["eval_targets"] == [1, 2]
    # The later halves of targets 1 and 2, less any frame the fast path cannot use (a blink).
    later_frames = sum(len(s) - len(s) // 2 for t, s in by_target.items() if t in (1, 2))
    assert later_frames - 2 <= out["eval_frames"] <= later_frames
    assert set(out) >= FIELDS and "step" not in out
    # Measured on targets the loop never got a label for; the loop must not ruin them.
    assert 0 < out["error_drifted_px"] < 400
    assert out["error_after_px"] < out["error_drifted_px"] + 60


def test_false_change_stats_count_streams_that_ever_move_over_100_px():
    import numpy as np

    from gazeloop.tools.runtime.bench_loop import false_change_stats, offset_lengths_px

    lengths = offset_lengths_px(np.array([[0.0, 0.0], [0.03, 0.04], [0.0, 0.1]]), (1000, 1000))
    np.testing.assert_allclose(lengths, [0.0, 50.0, 100.0])
    quiet = [np.array([0.0, 50.0, 100.0]), np.array([0.0, 101.0, 0.0]), np.zeros(3)]
    s = false_change_stats(quiet)
    assert s["false_change_share"] == 0.333  # 100 px is not over 100 px; 101 is
    assert s["max_offset_px"] == 101.0 and s["streams"] == 3 and s["labels_per_stream"] == 3
    assert s["rms_offset_px"] == round(float(np.sqrt((50**2 + 100**2 + 101**2) / 9)), 1)


def test_missing_folder_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["bench", "loop", "--session", str(missing), "--json"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such folder" in err
    assert main(["bench", "loop", "--session", str(tmp_path), "--calibrate-on", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


@pytest.mark.slow
def test_too_few_targets_is_a_clear_error(corners4, tmp_path, capsys):
    two = [s for s, r in records(corners4) if r["target"] in (0, 1)]
    folder = copy_pairs(corners4, tmp_path / "two-targets", two)
    assert main(["bench", "loop", "--session", str(folder), "--json", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "2 usable targets" in err and "at least 4" in err


def test_bad_options_are_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # refused at the flag, by argparse
        main(["bench", "loop", "--session", str(tmp_path), "--outlier-rate", "1.5"])
    assert e.value.code == 2
    assert "--outlier-rate: must be a fraction from 0 to 1, got '1.5'" in capsys.readouterr().err
    rc = main(["bench", "loop", "--session", str(tmp_path), "--label-targets", "a,b"])
    assert rc == 2 and "not integers" in capsys.readouterr().err
    rc = main(["bench", "loop", "--session", str(tmp_path / "x"), "--plot", str(tmp_path / "p")])
    assert rc == 2 and "name a .png" in capsys.readouterr().err  # before any work
    argv = ["bench", "loop", "--session", str(tmp_path), "--calibrate-on", str(tmp_path)]
    rc = main([*argv, "--plot", str(tmp_path / "p.png")])
    assert rc == 2 and "not --calibrate-on" in capsys.readouterr().err


@pytest.mark.slow
def test_corners4_with_replayed_clicks(corners4, capsys):
    out = run_json(
        capsys,
        "--session",
        str(corners4),
        "--oracle",
        "clicks",
        "--seeds",
        "2",
        "--labels",
        "30",
    )
    assert out["oracle"].startswith("click replay")
    assert out["noise_px"] is None and out["outlier_rate"] is None  # no simulated oracle
    c = out["clicks"]
    # The step's streams: 2 seeds x 30 accepted clicks, and the refused ones.
    assert c["verdicts"]["ok"] == 2 * 30 and out["ramp"]["clicks"]["verdicts"]["ok"] == 60
    assert c["clicks"] == sum(c["verdicts"].values()) and 0.5 < c["accepted_share"] < 0.95
    assert c["verdicts"].get("burst", 0) > 0  # double clicks are refused
    assert out["error_after_px"] < out["error_drifted_px"]
    assert out["no_drift"]["streams"] == 2 and out["no_drift"]["rms_offset_px"] < 100


def test_gap_summary_counts_only_pairs_with_a_gap():
    from gazeloop.tools.runtime.bench_loop import gap_summary

    rows = [
        {"error_before_px": 100.0, "error_drifted_px": 200.0, "error_after_px": 150.0},  # 0.5
        {"error_before_px": 100.0, "error_drifted_px": 140.0, "error_after_px": 100.0},  # 1.0
        {"error_before_px": 100.0, "error_drifted_px": 105.0, "error_after_px": 112.0},  # no gap
    ]
    s = gap_summary(rows)
    assert (s["pairs"], s["pairs_with_gap"]) == (3, 2)
    assert s["gap_closed_median"] == 0.75 and s["gap_closed_min"] == 0.5
    assert s["worst_after_over_drifted"] == round(112 / 105, 3) and s["pairs_over_5pct_worse"] == 1
    # The pair over 5 % worse has no gap: among the gap pairs none is, the worst 150/200.
    assert s["gap_pairs_over_5pct_worse"] == 0
    assert s["gap_pairs_worst_after_over_drifted"] == 0.75
    assert "told_offset_pairs_over_5pct_worse" not in s  # rows without the yardsticks
    # Told offsets 0.95x, 1.07x, 1.0x drifted.
    for r, told in zip(rows, (190.0, 150.0, 105.0), strict=True):
        r["error_told_offset_px"], r["error_best_offset_px"] = told, 100.0
    assert gap_summary(rows)["told_offset_pairs_over_5pct_worse"] == 1


def test_offset_yardsticks_told_is_the_labels_mean_best_is_hindsight_on_the_held_frames():
    from gazeloop.tools.runtime.bench_loop import geometric_median, offset_yardsticks

    screen = (1000, 500)
    truth = np.full((6, 2), 0.5)
    # Residuals (truth - pred) in px: labelled frames +100 px in x; held frames +50 px in x,
    # except one far outlier that the least-mean-distance offset ignores.
    resid_px = np.array([[100, 0], [100, 0], [50, 0], [50, 0], [50, 0], [50, 400]], float)
    pred = truth - resid_px / np.asarray(screen)
    labelled = np.array([True, True, False, False, False, False])
    y = offset_yardsticks(pred, truth, labelled, ~labelled, screen)
    assert y["error_told_offset_px"] == pytest.approx((3 * 50 + np.hypot(50, 400)) / 4, abs=0.1)
    assert y["error_best_offset_px"] == pytest.approx(400 / 4, abs=0.1)
    # The geometric median sits on the majority of equal points, not at the mean.
    assert np.allclose(geometric_median(resid_px[2:]), [50, 0], atol=1e-3)


@pytest.mark.slow
def test_real_clicks_across_two_evit_sittings(shared, tmp_path, capsys):
    # Read in place: the folder only links to the two sittings, and to three stills of an
    # earlier one, too few to evaluate: it is left out and said, the others still run.
    for name in ("p1_s02", "p1_s03"):
        (tmp_path / name).symlink_to(shared / "data/evit" / name)
    small = tmp_path / "p1_s01"
    small.mkdir()
    (small / "session.json").symlink_to(shared / "data/evit/p1_s01/session.json")
    for jpg in sorted((shared / "data/evit/p1_s01").glob("*.jpg"))[:3]:
        for f in (jpg, jpg.with_suffix(".json")):
            (small / f.name).symlink_to(f)
    # A stray folder that is no session was the end of the run (a SessionError traceback);
    # a hidden one is not a sitting at all.
    (tmp_path / "notes").mkdir()
    (tmp_path / ".cache").mkdir()
    out = run_json(capsys, "--sittings", str(tmp_path), "--oracle", "clicks")
    assert out["mode"] == "sittings" and out["oracle"].startswith("real clicks")
    (pair,) = out["pairs"]
    assert (pair["calibrated_on"], pair["session"]) == ("p1_s02", "p1_s03")
    stray, skipped = out["skipped"]
    assert stray["sitting"] == "notes" and stray["reason"].startswith("not read: ")
    assert skipped["sitting"] == "p1_s01" and "3 usable targets" in skipped["reason"]
    # Half of the 16 targets feed the loop, one click each; a still whose face the fast path
    # cannot use (a blink) feeds nothing.
    assert 6 <= pair["labels_fed"] <= 8
    # The earlier sitting's profile is worse than this sitting's own (59 -> 92 px); the
    # clicks on half the targets bring the other half back part of the way, or past it (the
    # own error is leave-one-target-out, the loop's offset comes from this sitting's clicks),
    # and never make it worse.
    assert pair["error_before_px"] + 15 < pair["error_drifted_px"]
    assert pair["error_after_px"] < pair["error_drifted_px"] - 2
    s = out["summary"]
    assert s["pairs_with_gap"] == 1 and 0.1 < s["gap_closed_median"] < 1.5
    assert s["pairs_over_5pct_worse"] == 0
    # No constant offset beats the one found in hindsight on the measured targets.
    assert pair["error_best_offset_px"] <= min(pair["error_after_px"], pair["error_told_offset_px"])


def test_default_labelled_targets_are_a_checkerboard_of_the_grid():
    from gazeloop.tools.runtime.bench_loop import checkerboard

    # A row-major 4x4 grid (evit's layout): every other id would be columns 1 and 3.
    xs, ys = np.meshgrid([50.0, 521, 991, 1462], [50.0, 340, 630, 895])
    truth = np.repeat(np.column_stack([xs.ravel(), ys.ravel()]), 2, axis=0)
    groups = np.repeat(np.arange(16), 2)
    white = checkerboard(truth, groups)
    assert white == [0, 2, 5, 7, 8, 10, 13, 15]
    held = [g for g in range(16) if g not in white]
    # Both halves have the grid's centre as their centroid: a scale error is not an offset.
    centre = truth[::2].mean(0)
    for half in (white, held):
        assert np.allclose(truth[::2][half].mean(0), centre)
    # Corners: two opposite corners labelled; two targets on a diagonal: every other id.
    corners = np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9]])
    assert checkerboard(corners, np.arange(4)) == [0, 3]
    assert checkerboard(corners[[0, 3]], np.array([4, 9])) == [4]


def _targets_mean(report: dict, targets: list[int]) -> float:
    rows = [t for t in report["per_target"] if t["target"] in targets]
    return sum(t["mean_px"] * t["frames"] for t in rows) / sum(t["frames"] for t in rows)


@pytest.mark.slow
def test_calibrate_on_is_the_products_own_calibration(shared, tmp_path, capsys):
    """The loop is judged on the calibration a user has, not a stand-in: before it runs, the
    errors are `gazeloop eval` (nested selection) and `gazeloop eval --profile` with the
    profile `gazeloop profile fit` saves, on the same targets."""
    prev, nxt = shared / "data/evit/p1_s00", shared / "data/evit/p1_s01"
    out = run_json(capsys, "--session", str(nxt), "--calibrate-on", str(prev), "--seeds", "2")
    prof = tmp_path / "p1_s00.json"
    assert main(["profile", "fit", str(prev), "--out", str(prof)]) == 0
    capsys.readouterr()

    def evaluated(*args: str) -> dict:
        assert main(["eval", str(nxt), *args, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    held = out["eval_targets"]
    own, drifted = evaluated(), evaluated("--profile", str(prof))
    assert out["calibration"].startswith(json.loads(prof.read_text())["fit"]["chosen"]["label"])
    assert out["error_before_px"] == pytest.approx(_targets_mean(own, held), abs=0.1)
    assert out["error_drifted_px"] == pytest.approx(_targets_mean(drifted, held), abs=0.1)


def test_session_or_sittings_is_required(capsys):
    assert main(["bench", "loop", "--json"]) == 2
    assert "--session or --sittings" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("oracle", ["simulated", "clicks"])
def test_streams_on_two_processes_give_the_same_numbers_as_on_one(oracle):
    """The label streams are seeded one by one, so splitting them over processes must not
    change a single number (the benchmark's medians are taken over hundreds of them)."""
    from gazeloop.calibration.drift.simulation import DriftSchedule, synthetic_session
    from gazeloop.tools.runtime.bench_loop import (
        LoopBenchOptions,
        drift_summary,
        no_drift_summary,
    )

    screen = (1728, 1080)
    pred, truth, groups = synthetic_session(screen, grid=(3, 3), frames_per_target=20, seed=3)
    step = DriftSchedule(kind="step", px=150, at_label=10)
    out = []
    for jobs in (1, 2):
        opts = LoopBenchOptions(seeds=5, labels=40, oracle=oracle, jobs=jobs)
        out.append(
            (
                drift_summary(pred, truth, screen, step, opts, groups),
                no_drift_summary(pred, truth, screen, opts, groups),
            )
        )
    assert out[0] == out[1]
    assert out[0][0]["known_onset_reference"]["recovered_runs"] >= 1


def test_a_pooled_start_pools_every_earlier_sitting_of_the_person_on_that_screen():
    from gazeloop.tools.runtime.bench_loop import earlier_same, sitting_pairs

    # p1 on two screens, interleaved: the second screen's run is broken by the first's.
    big, small = (1512, 982), (1280, 800)
    names = ["p1_s00", "p1_s01", "p1_s02", "p1_s03", "p1_s04", "p2_s00"]
    screens = [big, small, big, small, big, big]
    keys = {Path(n): (n[:2], s) for n, s in zip(names, screens, strict=True)}
    assert sitting_pairs(keys) == []  # no two consecutive folders share a screen
    assert earlier_same(keys, Path("p1_s04")) == [Path("p1_s00"), Path("p1_s02"), Path("p1_s04")]
    assert earlier_same(keys, Path("p1_s03")) == [Path("p1_s01"), Path("p1_s03")]
    assert earlier_same(keys, Path("p2_s00")) == [Path("p2_s00")]  # another person


@pytest.mark.slow
def test_a_pooled_start_is_the_profile_of_the_earlier_sittings_pooled(shared, tmp_path, capsys):
    """The pooled start is what `gazeloop profile fit S1 S2` saves (and `gazeloop run`
    starts a new sitting with): its error before the loop is `gazeloop eval --profile` of
    that profile on the same targets; with one earlier sitting it is that sitting's own."""
    from gazeloop.tools.runtime.bench_loop import checkerboard

    names = ("p1_s00", "p1_s01", "p1_s02")
    for name in names:
        (tmp_path / "evit" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "evit" / name).symlink_to(shared / "data/evit" / name)
    out = run_json(
        capsys, "--sittings", str(tmp_path / "evit"), "--oracle", "clicks", "--start", "pooled"
    )
    first, second = out["pairs"]
    assert (first["sittings_pooled"], second["sittings_pooled"]) == (1, 2)
    prev = run_json(capsys, "--sittings", str(tmp_path / "evit"), "--oracle", "clicks")
    assert first == prev["pairs"][0] | {"sittings_pooled": 1}
    prof = tmp_path / "pooled.json"
    folders = [str(shared / "data/evit" / n) for n in names[:2]]
    assert main(["profile", "fit", *folders, "--out", str(prof)]) == 0
    capsys.readouterr()
    assert main(["eval", str(shared / "data/evit/p1_s02"), "--profile", str(prof), "--json"]) == 0
    pooled = json.loads(capsys.readouterr().out)
    rows = pooled["per_target"]
    white = checkerboard(
        np.array([t["label_px"] for t in rows]), np.array([t["target"] for t in rows])
    )
    held = [t["target"] for t in rows if t["target"] not in white]
    assert second["error_drifted_px"] == pytest.approx(_targets_mean(pooled, held), abs=0.1)


@pytest.mark.slow
def test_the_configs_loop_section_is_the_loop_that_runs(shared, tmp_path, capsys):
    """`--config`'s loop section reaches the simulated loop: an offset bounded at a
    hundredth of the screen cannot follow a 150 px step, and the same streams without it
    recover."""
    grid9 = str(shared / "data/sessions/grid9")
    cfg = tmp_path / "bounded.json"
    cfg.write_text(json.dumps({"loop": {"max_total": 0.01}}))
    args = ("--session", grid9, "--mirrored", "--seeds", "4")
    free = run_json(capsys, *args)
    bounded = run_json(capsys, *args, "--config", str(cfg))
    assert free["labels_to_recover"] is not None
    assert bounded["labels_to_recover"] is None
    assert bounded["error_after_px"] > free["error_after_px"] + 40
    # Each report says what it ran with: the config's setting over the defaults.
    assert bounded["settings"]["loop"]["max_total"] == 0.01
    assert free["settings"]["loop"]["max_total"] == LoopConfig().max_total
    # ...and given back as a config, they are the same settings
    again = RunConfig.from_doc(bounded["settings"], "the report's settings")
    assert again.model_dump(mode="json") == bounded["settings"]


def test_a_session_without_a_manifest_is_on_the_equal_margins_screen(shared, tmp_path, capsys):
    """grid9 has no session.json. Calibrated on it and run on a copy of it, `--calibrate-on`
    judged the sitting's own leave-one-target-out unclamped and the profile clamped to the
    targets' bounding box, origin at the screen's corner (1666 x 1002), which the right and
    bottom targets lie beyond: two screens in one comparison (83.7 px against 42.9). Now
    both are on the screen `bench loop --session` and `oracle eval` take, equal margins
    around the targets, chosen before the fit: the same numbers as that screen given."""
    grid9 = shared / "data/sessions/grid9"
    copy = tmp_path / "grid9-again"
    shutil.copytree(grid9, copy)
    out = run_json(capsys, "--session", copy, "--calibrate-on", grid9, "--seeds", "2")
    assert out["screen_px"] == [1712, 1036]
    assert out["screen_basis"] == "targets with equal margins (no session.json)"
    given = run_json(
        capsys,
        "--session",
        copy,
        "--calibrate-on",
        grid9,
        "--seeds",
        "2",
        "--screen-px",
        1712,
        1036,
    )
    errors = ("error_before_px", "error_drifted_px", "error_after_px")
    assert [out[k] for k in errors] == [given[k] for k in errors]
    assert (out["n_labels"], out["seeds"]) == (60, 2)
    # The recorded stills as clicks: one stream, no stream length or seeds beside it.
    clicks = run_json(capsys, "--session", copy, "--calibrate-on", grid9, "--oracle", "clicks")
    assert clicks["labels_fed"] > 0 and (clicks["n_labels"], clicks["seeds"]) == (None, None)
