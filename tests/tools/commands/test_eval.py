"""`gazeloop eval` end to end on the real sessions in ../shared: the 9-point grid (no
manifest), the imported 4-corner video (manifest, settling frames, precision, degrees), a
copy of the grid with broken files added, and the errors a user can make.

Each session goes through the fast path once per set of flags (module-scoped fixtures)."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from gazeloop.calibration.store.session import read_session
from gazeloop.tools.cli import main
from gazeloop.tools.commands._args import screen_for
from tests.cli import cli, eval_json

REPORT_KEYS = {
    "gaze_model",
    "in_sample",
    "extrapolated",
    "mirrored",
    "mirrored_basis",
    "session",
    "mapping",
    "features",
    "screen_px",
    "frames",
    "frames_used",
    "targets",
    "mean_px",
    "median_px",
    "mean_pct_diag",
    "diag_basis",
    "baseline_mean_px",
    "mean_deg",
    "per_target",
    "rejected",
    "precision",
    "selection",
    "profile",
    "clamped",
}
TARGET_KEYS = {"target", "label_px", "frames", "mean_px", "pred_px"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def seed_labels(folder: Path) -> dict[str, tuple[float, float]]:
    """Image name → label, read straight from the seed JSON files."""
    out = {}
    for p in folder.glob("img_*.json"):
        d = json.loads(p.read_text())
        out[p.with_suffix(".jpg").name] = (d["screen_x"], d["screen_y"])
    return out


def hand_baseline(labels: list[tuple[float, float]]) -> float:
    """Constant predictor by hand: each target predicted by the mean of the others."""
    pts = np.array(labels)
    others = (pts.sum(axis=0) - pts) / (len(pts) - 1)
    return float(np.linalg.norm(others - pts, axis=1).mean())


@pytest.fixture(scope="module")
def grid9(shared, gaze_onnx, face_task) -> Path:
    return shared / "data" / "sessions" / "grid9"


@pytest.fixture(scope="module")
def plots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("plots")


@pytest.fixture(scope="module")
def plain(grid9, plots) -> dict:
    return eval_json(grid9, "--plot", plots / "targets.png")


@pytest.fixture(scope="module")
def with_screen(grid9, plots) -> dict:
    return eval_json(grid9, "--screen-px", 1920, 1080, "--plot", plots / "screen.png")


@pytest.fixture(scope="module")
def mirrored_text(grid9) -> str:
    rc, out, err = cli("eval", grid9, "--mirrored")
    assert rc == 0, err
    return out


# --- the 9-point grid ----------------------------------------------------------------------


def test_grid9_report_keys_and_counts(plain, grid9, gaze_onnx):
    assert set(plain) == REPORT_KEYS
    assert plain["session"] == str(grid9)
    # no --mapping: the candidates compete (issue 12); the report names the one chosen on
    # all targets, its features, and which candidate won each outer fold
    sel = plain["selection"]
    assert plain["mapping"] == sel["chosen"].split(":")[0]
    assert plain["features"][:2] == ["gaze_yaw", "gaze_pitch"]
    assert {"ridge:gaze", "ridge:gaze_ray", "geometric:geometric"} <= set(sel["candidates"])
    # told the ray-frame pose, the network's angles are the ray-frame ones: fitted once
    assert sel["dropped"]["ridge:gaze_ray"] == "the same columns as ridge:gaze"
    assert not any("head" in c for c in sel["candidates"])  # one sitting: no head-pose terms
    assert sum(sel["picked_per_fold"].values()) == 9
    assert all(not c.endswith(":other") for c in sel["candidates"])  # r = +0.99 decided
    assert plain["frames"] == plain["frames_used"] == 9
    assert plain["targets"] == 9
    assert plain["rejected"] == []
    assert plain["precision"] is None
    # no manifest and no --screen-px: the targets' bounding box is the basis, no degrees
    assert plain["diag_basis"] == "targets"
    assert plain["screen_px"] is None
    assert plain["mean_deg"] is None
    # The network behind the numbers: the stock model, built into the test's model cache.
    gm = plain["gaze_model"]
    assert gm["file"] == str(gaze_onnx) and gm["read"] == "ray:mirror_average"
    assert gm["sha256"] == hashlib.sha256(gaze_onnx.read_bytes()).hexdigest()


@pytest.mark.slow
def test_precision_of_stills_is_said_not_measured(grid9):
    """One still per target has no spread to measure: it printed nan and 0.00 px, and a lag
    of 0 frames between stills seconds apart."""
    p = eval_json(grid9, "--precision")["precision"]
    assert p == {"not_measured": "precision needs several frames per target; these are 9 "
                 "stills, one per target"}  # fmt: skip


def test_grid9_per_target(plain, grid9):
    labels = seed_labels(grid9)
    per = plain["per_target"]
    assert len(per) == 9
    assert sorted(t["target"] for t in per) == list(range(9))
    assert {tuple(t["label_px"]) for t in per} == set(labels.values())
    for t in per:
        assert set(t) == TARGET_KEYS
        assert t["frames"] == 1
        err = np.hypot(t["pred_px"][0] - t["label_px"][0], t["pred_px"][1] - t["label_px"][1])
        assert t["mean_px"] == pytest.approx(err, abs=0.02)  # one frame: mean = its error
    errs = [t["mean_px"] for t in per]
    assert plain["mean_px"] == pytest.approx(np.mean(errs), abs=0.02)
    assert plain["median_px"] == pytest.approx(np.median(errs), abs=0.02)


def test_grid9_accuracy_meets_the_done_criterion(plain, grid9):
    # No flags, default `onnx` landmarks: each still's landmarks detected afresh (and refined
    # over 7 crops) and the selfie view detected from the frames (issue 12, causes 2 and 4)
    # give 83 px (docs/baselines/grid9.json); without fresh landmarks 102 px, read as not
    # mirrored 144 px; 92 px keeps both causes pinned.
    assert plain["mean_px"] <= 92
    assert plain["median_px"] <= 92
    # next to the constant predictor on this grid
    assert plain["baseline_mean_px"] == pytest.approx(813, abs=5)
    assert plain["baseline_mean_px"] == pytest.approx(
        hand_baseline(list(seed_labels(grid9).values())), abs=0.01
    )
    assert plain["mean_px"] < plain["baseline_mean_px"] / 4
    # % of the targets' bounding box diagonal (about 1665 x 1002 px)
    pts = np.array(list(seed_labels(grid9).values()))
    w, h = np.ceil(pts.max(axis=0) - pts.min(axis=0))
    assert plain["mean_pct_diag"] == pytest.approx(
        100 * plain["mean_px"] / np.hypot(w, h), abs=1e-3
    )


@pytest.mark.slow
def test_grid9_mirrored_text_report(mirrored_text, plain):
    text = mirrored_text
    m = re.search(
        r"mean ([\d.]+) px\s+median ([\d.]+) px\s+([\d.]+)% of the targets diagonal", text
    )
    assert m, text
    mean, median = float(m.group(1)), float(m.group(2))
    assert mean <= 150 and median <= 150
    # grid9 has no manifest: without the flag the frames tell that they are selfie views
    # (issue 12, cause 4), so the flag changes nothing but the reason given.
    assert mean == pytest.approx(plain["mean_px"], abs=0.1)
    assert plain["mirrored"] is True and plain["mirrored_basis"].startswith("not stated; detected")
    assert "frames mirrored: stated" in text
    base = re.search(r"constant predictor: ([\d.]+) px", text)
    assert base and float(base.group(1)) == pytest.approx(813, abs=5)
    assert "9 targets, 9 of 9 frames used" in text
    assert len(re.findall(r"^\s+target\s+\d+ at \(", text, re.M)) == 9
    assert "rejected" not in text and "°" not in text


@pytest.mark.slow
def test_grid9_with_screen_size(with_screen, plain):
    r = with_screen
    assert set(r) == REPORT_KEYS
    assert r["diag_basis"] == "screen"
    assert r["screen_px"] == [1920, 1080]
    assert r["mean_deg"] is None  # no mm, no distance
    assert r["targets"] == 9 and r["frames_used"] == 9
    assert r["mean_px"] <= 150
    assert r["mean_pct_diag"] == pytest.approx(100 * r["mean_px"] / np.hypot(1920, 1080), abs=1e-3)
    # the % is of a larger diagonal than the targets' box
    assert r["mean_pct_diag"] < plain["mean_pct_diag"] * r["mean_px"] / plain["mean_px"]
    # the constant predictor does not depend on the units
    assert r["baseline_mean_px"] == pytest.approx(plain["baseline_mean_px"], abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["targets.png", "screen.png"])
def test_plot_is_a_png_of_the_report(plain, with_screen, plots, name):
    path = plots / name
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 10_000 < len(data) < 3_000_000
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None
    h, w = img.shape[:2]
    assert 600 <= w <= 2000 and 400 <= h <= 2000
    ink = (img.min(axis=2) < 200).mean()  # share of non-white pixels
    assert 0.005 < ink < 0.5
    colourful = (img.max(axis=2).astype(int) - img.min(axis=2) > 60).mean()
    assert colourful > 0.0005  # the coloured prediction dots and arrows are there


# --- the imported 4-corner video -----------------------------------------------------------


@pytest.fixture(scope="module")
def corners4(shared, gaze_onnx, face_task, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corners4") / "session"
    rc, stdout, err = cli("import", "corners4", shared / "data" / "video-corners4", out)
    assert rc == 0, err
    assert "wrote 74 frames" in stdout
    return out


@pytest.fixture(scope="module")
def corners4_report(corners4) -> dict:
    report = corners4.parent / "report"
    return eval_json(corners4, "--precision", "--distance-mm", 600, "--report", report)


@pytest.mark.slow
def test_corners4_html_report_has_the_numbers_tables_and_plot(corners4_report, corners4):
    folder = corners4.parent / "report"
    page = (folder / "report.html").read_text()
    r = corners4_report
    assert f"{r['mean_px']:.1f} / {r['median_px']:.1f} px" in page
    assert f"{r['baseline_mean_px']:.1f} px" in page
    assert page.count("<tr>") >= 6 + 1 + 4 + 1 + 2  # summary, per-target head + 4, precision
    assert "RMS-S2S px" in page and f"{r['precision']['raw']['mean']['rms_s2s']['px']:.2f}" in page
    assert 'src="eval.png"' in page
    assert (folder / "eval.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((folder / "report.json").read_text())["mean_px"] == r["mean_px"]
    # The settings the report was made with, beside it (`--config` reads them back).
    made_with = json.loads((folder / "config.json").read_text())
    assert made_with["fastpath"]["landmarks"] == "onnx" and "loop" in made_with
    assert "settling" in page  # the left-out frames are listed with why


@pytest.mark.slow
def test_corners4_end_to_end(corners4_report, corners4):
    r = corners4_report
    assert set(r) == REPORT_KEYS
    assert r["targets"] == 4 and len(r["per_target"]) == 4
    assert r["screen_px"] == [2560, 1440] and r["diag_basis"] == "screen"  # from session.json
    assert r["frames"] == 74
    assert r["frames"] == r["frames_used"] + len(r["rejected"])
    assert sum(t["frames"] for t in r["per_target"]) == r["frames_used"]
    assert all(t["frames"] >= 5 for t in r["per_target"])
    # 4 corners: each predicted by the mean of the other three, 2/3 of the diagonal away
    assert r["baseline_mean_px"] == pytest.approx(
        hand_baseline([tuple(t["label_px"]) for t in r["per_target"]]), abs=0.01
    )
    assert r["mean_px"] < r["baseline_mean_px"] / 3
    assert r["mean_pct_diag"] == pytest.approx(100 * r["mean_px"] / np.hypot(2560, 1440), abs=1e-3)


@pytest.mark.slow
def test_corners4_settling_frames_are_rejected(corners4_report, corners4):
    settling = set()
    for p in corners4.glob("img_*.json"):
        if json.loads(p.read_text()).get("settling"):
            settling.add(p.with_suffix(".jpg").name)
    assert len(settling) == 28
    rejected = {f["file"]: f["why"] for f in corners4_report["rejected"]}
    assert len(rejected) == len(corners4_report["rejected"])  # each file once
    assert settling <= set(rejected)  # every settling frame is out of the evaluation
    marked = {f for f, why in rejected.items() if "settling" in why}
    assert marked <= settling  # and no settled frame is called settling
    assert len(marked) >= 24  # a blink may take precedence over settling
    assert all(why for why in rejected.values())


@pytest.mark.slow
def test_corners4_fixed_geometric_is_the_selections_geometric(corners4_report, corners4):
    """`--mapping geometric` left the mapping at its laptop prior on this 597 mm monitor and
    judged outliers on eye position: 92.6 px on 40 frames where the selection, choosing the
    geometric mapping in every fold, gave 75.3 on 44. Each held-out corner is extrapolation,
    and the report says how many targets are."""
    fixed = eval_json(corners4, "--mapping", "geometric", "--distance-mm", 600)
    assert corners4_report["selection"]["chosen"].startswith("geometric")
    assert fixed["frames_used"] == corners4_report["frames_used"]
    assert fixed["mean_px"] == pytest.approx(corners4_report["mean_px"], abs=0.5)
    assert fixed["extrapolated"] == corners4_report["extrapolated"] == 4


@pytest.mark.slow
def test_corners4_degrees(corners4_report):
    r = corners4_report
    assert r["mean_deg"] is not None
    # 597 mm over 2560 px at 600 mm: about 44.9 px per degree
    px_per_deg = 600 * np.tan(np.radians(1)) * 2560 / 597
    assert r["mean_deg"] == pytest.approx(r["mean_px"] / px_per_deg, rel=0.03)


@pytest.mark.slow
def test_corners4_precision_raw_and_filtered(corners4_report):
    p = corners4_report["precision"]
    assert p is not None
    assert {"px", "mm", "deg"} <= set(p["units"])
    for kind in ("raw", "filtered"):
        mean = p[kind]["mean"]
        assert mean["n_targets"] == 4
        for measure in ("rms_s2s", "std"):
            px = mean[measure]["px"]
            assert np.isfinite(px) and 0 < px < 200
        assert set(p[kind]["per_target"]) == {"0", "1", "2", "3"}
    raw, filt = p["raw"]["mean"], p["filtered"]["mean"]
    assert filt["rms_s2s"]["px"] < raw["rms_s2s"]["px"]  # the filter smooths
    assert filt["std"]["px"] <= raw["std"]["px"] * 1.05
    # px → mm → deg are consistent: 597 mm / 2560 px
    assert raw["rms_s2s"]["mm"] == pytest.approx(raw["rms_s2s"]["px"] * 597 / 2560, rel=0.01)
    # every settled frame with a gaze counts (the cursor shows outliers too): per target,
    # the frames of that target that are neither settling nor rejected by the fast path
    settled = {}
    for f in corners4_report["per_target"]:
        settled[str(f["target"])] = f["frames"]
    shown = {t: v["n"] for t, v in p["raw"]["per_target"].items()}
    assert all(shown[t] >= settled[t] for t in shown) and sum(shown.values()) >= 44
    # the precision spec with the default filter
    assert filt["rms_s2s"]["px"] <= 10.0


@pytest.mark.slow
def test_corners4_filter_lag_at_each_change_of_target(corners4_report):
    lag = corners4_report["precision"]["lag"]
    # 4 targets shown one after the other: 3 changes, each a jump of most of the screen
    assert [(x["from"], x["to"]) for x in lag["per_switch"]] == [(0, 1), (1, 2), (2, 3)]
    s = lag["summary"]
    assert (s["switches"], s["measured"], s["not_reached"]) == (3, 3, 0)
    for x in lag["per_switch"]:
        assert x["jump"] > 1000 and x["jump"] > 20 * x["noise"]
        assert x["lag_ms"] == pytest.approx(x["lag_frames"] * lag["frame_period_ms"], rel=0.02)
    # a causal smoothing filter is never ahead of its input; the issue asks for <= 1 frame
    assert 0 <= s["median_frames"] <= s["max_frames"] <= 1.0


# --- broken files --------------------------------------------------------------------------


def _write_record(folder: Path, stem: str, **fields) -> Path:
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(fields))
    return path


@pytest.fixture(scope="module")
def broken(grid9, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """grid9 copied, plus one broken file of each kind. → (folder, broken file → keyword
    its rejection must contain)."""
    folder = tmp_path_factory.mktemp("broken") / "session"
    shutil.copytree(grid9, folder)
    for p in folder.iterdir():
        p.chmod(0o644)
    stems = sorted(p.stem for p in folder.glob("img_*.json"))
    first, last = int(stems[0][4:]), int(stems[-1][4:])
    jpg = (grid9 / f"{stems[0]}.jpg").read_bytes()
    bad: dict[str, str] = {}

    # a malformed JSON (cut short) beside a good image
    (folder / f"img_{last + 1000}.json").write_text(f'{{"timestamp": {last + 1000}, "screen_x": 5')
    (folder / f"img_{last + 1000}.jpg").write_bytes(jpg)
    bad[f"img_{last + 1000}.json"] = "malformed"
    # a JSON without its JPEG
    _write_record(folder, f"img_{last + 2000}", timestamp=last + 2000, screen_x=10, screen_y=10)
    bad[f"img_{last + 2000}.json"] = "no image"
    # a JPEG without its JSON
    (folder / f"img_{last + 3000}.jpg").write_bytes(jpg)
    bad[f"img_{last + 3000}.jpg"] = "no record"
    # a negative label
    _write_record(folder, f"img_{last + 4000}", timestamp=last + 4000, screen_x=-4, screen_y=5)
    (folder / f"img_{last + 4000}.jpg").write_bytes(jpg)
    bad[f"img_{last + 4000}.json"] = "negative"
    # a copied record under a new name: its timestamp is the first frame's
    shutil.copy(folder / f"{stems[0]}.json", folder / f"img_{last + 5000}.json")
    (folder / f"img_{last + 5000}.jpg").write_bytes(jpg)
    bad[f"img_{last + 5000}.json"] = "duplicate timestamp"
    # a truncated JPEG among the real frames, with a label of its own (a 10th target)
    _write_record(folder, f"img_{first + 1}", timestamp=first + 1, screen_x=960, screen_y=540)
    (folder / f"img_{first + 1}.jpg").write_bytes(jpg[: len(jpg) // 2])
    bad[f"img_{first + 1}.jpg"] = "truncated"
    return folder, bad


@pytest.fixture(scope="module")
def broken_report(broken) -> dict:
    folder, _ = broken
    return eval_json(folder)


@pytest.mark.slow
def test_broken_files_are_rejected_with_reasons(broken, broken_report):
    _, bad = broken
    rejected = {f["file"]: f["why"] for f in broken_report["rejected"]}
    assert set(rejected) == set(bad)
    for name, keyword in bad.items():
        assert keyword in rejected[name], (name, rejected[name])
    assert broken_report["frames"] == broken_report["frames_used"] + len(rejected)


@pytest.mark.slow
def test_broken_files_do_not_change_the_result(broken_report, plain):
    """The rest of the session is evaluated exactly as the clean grid."""
    r = broken_report
    assert r["targets"] == 9 and r["frames_used"] == 9
    assert r["mean_px"] == pytest.approx(plain["mean_px"], abs=0.01)
    assert r["baseline_mean_px"] == pytest.approx(plain["baseline_mean_px"], abs=0.01)
    for a, b in zip(r["per_target"], plain["per_target"], strict=True):
        assert a["label_px"] == b["label_px"]
        assert a["mean_px"] == pytest.approx(b["mean_px"], abs=0.01)


# --- user errors ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_targets(grid9, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("three") / "session"
    folder.mkdir()
    for p in sorted(grid9.glob("img_*.json"))[:3]:
        shutil.copy(p, folder / p.name)
        shutil.copy(p.with_suffix(".jpg"), folder / p.with_suffix(".jpg").name)
    return folder


def _one_line_error(capsys) -> str:
    cap = capsys.readouterr()
    assert cap.out == ""
    assert "Traceback" not in cap.err
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1, cap.err
    assert lines[0].startswith("gazeloop eval: ")
    return lines[0]


def test_too_few_targets(three_targets, capsys):
    assert main(["eval", str(three_targets), "--json"]) == 2
    msg = _one_line_error(capsys)
    assert "3 usable targets" in msg and "needs at least 4" in msg
    # a mapping that needs more says so
    assert main(["eval", str(three_targets), "--mapping", "rbf"]) == 2
    assert "needs at least 5" in _one_line_error(capsys)


def test_unknown_feature(three_targets, capsys):
    assert main(["eval", str(three_targets), "--features", "gaze_yaw,no_such_feature"]) == 2
    msg = _one_line_error(capsys)
    assert "'no_such_feature' is not produced" in msg and "available:" in msg


def test_nonexistent_session(tmp_path, capsys):
    missing = tmp_path / "no-such-session"
    assert main(["eval", str(missing), "--json"]) == 2
    msg = _one_line_error(capsys)
    assert "does not exist" in msg and str(missing) in msg


def test_folder_without_pairs(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("nothing here")
    assert main(["eval", str(tmp_path)]) == 2
    assert "no usable" in _one_line_error(capsys)


# --- which screen -------------------------------------------------------------------------


def _screen(folder: Path, screen_px=None, screen_mm=None, distance_mm=None):
    args = argparse.Namespace(screen_px=screen_px, screen_mm=screen_mm, distance_mm=distance_mm)
    session = read_session(folder, screen_px=tuple(screen_px) if screen_px else None)
    return screen_for(args, session)


@pytest.mark.slow
def test_screen_comes_from_the_manifest_first(corners4, caplog):
    """read_session keeps the manifest's screen when --screen-px disagrees (and says so); the
    evaluation must use that same screen, or % and degrees mix two screens."""
    s = _screen(corners4, distance_mm=600)
    assert s.px == (2560, 1440) and s.mm == (597, 336) and s.viewing_distance_mm == 600
    with caplog.at_level("WARNING"):
        s = _screen(corners4, screen_px=[1920, 1080])
    assert "using the manifest" in caplog.text
    assert s.px == (2560, 1440) and s.mm == (597, 336)


def test_screen_from_flags_without_a_manifest(grid9):
    assert _screen(grid9) is None
    assert _screen(grid9, screen_mm=[344, 194]) is None  # mm alone is no screen
    s = _screen(grid9, screen_px=[1920, 1080], screen_mm=[344, 194], distance_mm=550)
    assert s.px == (1920, 1080) and s.mm == (344, 194) and s.viewing_distance_mm == 550
    assert s.error_deg(100) == pytest.approx(np.degrees(np.arctan(100 * 344 / 1920 / 550)), 0.01)


@pytest.mark.slow
def test_a_profile_reads_unstated_frames_as_its_own_were(grid9, tmp_path):
    """Three stills of grid9's middle column, the column's x made exact, no manifest: the
    targets cannot tell which way the frames face. A profile fitted on grid9 stated as
    selfie views reads them as selfie views too; read the other way, its mapping sends the
    gaze to the wrong side."""
    prof = tmp_path / "grid9.json"
    rc, _, err = cli("eval", grid9, "--mirrored", "--save-profile", prof, "--json")
    # Without a screen a profile has no units: said before anything runs, nothing written.
    assert rc == 2 and "the screen size is unknown" in err and not prof.exists(), err
    save = ["--save-profile", prof, "--screen-px", 1920, 1080, "--json"]
    rc, out, err = cli("eval", grid9, "--mirrored", *save)
    assert rc == 0, err
    # Absolute: a refit for a new model reads it from wherever `run` runs.
    assert json.loads(prof.read_text())["calibration_session"] == str(grid9.resolve())
    assert json.loads(prof.read_text())["fit"]["chosen"]["mirrored"] is True
    col = tmp_path / "column"
    col.mkdir()
    for stem in ("img_1766068439840", "img_1766068442984", "img_1766068446352"):
        shutil.copy2(grid9 / f"{stem}.jpg", col / f"{stem}.jpg")
        label = json.loads((grid9 / f"{stem}.json").read_text())
        label["screen_x"] = 870.0
        (col / f"{stem}.json").write_text(json.dumps(label))
    # On its own calibration frames a profile's error is in-sample, and every output says so.
    own = eval_json(grid9, "--profile", prof)
    assert own["in_sample"] is True and own["mean_px"] < 0.8 * json.loads(out)["mean_px"]
    rc, text, _ = cli("eval", grid9, "--profile", prof)
    assert rc == 0 and "fitted on (in-sample: not the error a new point" in text
    assert "in-sample" not in cli("eval", grid9, "--mirrored")[1]
    assert "--precision" in cli("eval", grid9, "--profile", prof, "--precision")[2]
    unstated = eval_json(col, "--profile", prof)
    # Copies of three of its frames are in-sample too (read as a fair test by the path);
    # frames taken at other times are not.
    assert unstated["mirrored"] is True and unstated["in_sample"] is True
    for f in sorted(col.iterdir()):
        f.rename(f.with_name(f.name.replace("img_17660", "img_17661")))
    assert eval_json(col, "--profile", prof)["in_sample"] is False
    for f in sorted(col.iterdir()):
        f.rename(f.with_name(f.name.replace("img_17661", "img_17660")))
    assert unstated["mirrored_basis"] == "not stated; read as the profile's frames were"
    wrong = eval_json(col, "--profile", prof, "--no-mirrored")
    assert wrong["mirrored"] is False
    assert unstated["mean_px"] < 0.5 * wrong["mean_px"]
    # The profile's own screen is no news; another size is allowed and said.
    px = json.loads(prof.read_text())["screen"]["px"]
    rc, _, err = cli("eval", col, "--profile", prof, "--screen-px", *px, "--json")
    assert rc == 0 and "note:" not in err, err
    rc, out, err = cli("eval", col, "--profile", prof, "--screen-px", 1280, 720, "--json")
    assert rc == 0 and json.loads(out)["screen_px"] == [1280, 720]
    assert f"fitted on a {px[0]}x{px[1]} screen and this session is 1280x720" in err
    # Without a session.json the profile's screen is taken, and targets beyond it say that
    # was another screen (clamped at its edge, a wider session read 644 px with no word).
    rc, _, err = cli("eval", col, "--profile", prof, "--json")
    assert rc == 0 and "note:" not in err, err
    for path in col.glob("*.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "screen_x": px[0] + 500}))
    rc, _, err = cli("eval", col, "--profile", prof, "--json")
    assert rc == 0 and f"beyond the profile's {px[0]}x{px[1]} screen" in err, err
    # One target: "the constant baseline needs at least 2 targets, got 1", naming nothing.
    for f in sorted(col.glob("img_176606844*")):
        f.unlink()
    rc, _, err = cli("eval", col, "--profile", prof)
    assert rc == 2 and err.strip().splitlines()[-1] == (
        f"gazeloop eval: {col}: 1 target with usable frames; a profile is scored against "
        "the constant predictor (the mean of the other targets), which needs 2"
    )


def test_the_lag_is_measured_on_the_frames_the_mapping_can_read():
    """A settling frame without the eyes' position cannot be mapped by the geometric
    mapping: it is left out of the lag's stream, and the other frames keep the feature."""
    from types import SimpleNamespace

    from gazeloop.fastpath.collect import Collected
    from gazeloop.tools.commands.eval_ import lag_stream

    def row(name, t, settling, eye):
        d = {"gaze_yaw": 0.1} | ({"eye_x_mm": 1.0} if eye else {})
        s = SimpleNamespace(feature_dict=lambda d=d: d)
        return SimpleNamespace(
            name=name, t_ns=t, label_px=(0.0, 0.0), target=0, sample=s, settling=settling
        )

    col = Collected(
        session=None,
        samples=[row("a", 1, True, False), row("b", 2, True, True), row("c", 3, False, True)],
    )
    s = lag_stream(col, ["gaze_yaw", "eye_x_mm"])
    assert s.names.tolist() == ["b", "c"] and s.matrix(["eye_x_mm"]).ravel().tolist() == [1, 1]
    assert lag_stream(col, ["gaze_yaw"]).names.tolist() == ["a", "b", "c"]


def test_millimetres_without_pixels_are_said_not_dropped(grid9, capsys):
    """grid9 has no session.json: --screen-mm and --distance-mm gave no degrees and no word."""
    rc, out, err = cli("eval", grid9, "--screen-mm", 344, 194, "--distance-mm", 550, "--json")
    assert rc == 0 and json.loads(out)["mean_deg"] is None
    assert "--screen-mm and --distance-mm need the screen's size in pixels" in err
    assert "need the screen's size" not in cli("eval", grid9, "--json")[2]
    # Pixels without millimetres: a distance still gives no degrees, and says so.
    rc, out, err = cli("eval", grid9, "--screen-px", 1920, 1080, "--distance-mm", 600, "--json")
    assert rc == 0 and json.loads(out)["mean_deg"] is None
    assert "--distance-mm needs the screen's size in millimetres" in err
