"""Importing the 4-corner study recording (../shared/data/video-corners4) into a session:
labels, timestamps, settling flags and manifest on the real files; refusals and errors on
doctored copies in tmp_path."""

from __future__ import annotations

import csv
import json
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from gazeloop.calibration.store.session import SessionManifest, read_session
from gazeloop.tools.runtime.importers import (
    DEFAULT_SETTLE_FRAMES,
    FALLBACK_BASE_MS,
    CameraIntrinsics,
    SessionImportError,
    import_corners4,
    mp4_creation_ms,
    parse_intrinsics,
    parse_stats,
    read_calibration_csv,
)
from tests.paths import SHARED

SRC = SHARED / "data" / "video-corners4"

needs_src = pytest.mark.skipif(
    not (SRC / "calibrate.mp4").is_file(),
    reason=f"shared recording not found at {SRC} (see ../shared/README.md)",
)

PX_PER_MM = (2560 / 597, 1440 / 336)
# Targets of the study in mm (README) and the frames each has in Calibration.csv.
TARGETS_MM = {0: (59.0, 33.0), 1: (537.0, 33.0), 2: (59.0, 302.0), 3: (537.0, 302.0)}
FRAMES_PER_TARGET = {0: 17, 1: 19, 2: 19, 3: 19}
FIRST_FRAME = {0: 0, 1: 17, 2: 36, 3: 55}


def records(folder: Path) -> list[dict]:
    """The JSON records in frame order."""
    out = [json.loads(p.read_text()) for p in sorted(folder.glob("img_*.json"))]
    return sorted(out, key=lambda r: r["frame_index"])


def csv_rows() -> list[dict[str, str]]:
    with (SRC / "Calibration.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def doctored_copy(dst: Path, edit: Callable[[list[list[str]]], list[list[str]]] | None) -> Path:
    """The recording copied to `dst` with its csv rows (header first) passed through `edit`."""
    dst.mkdir(parents=True)
    for name in ("calibrate.mp4", "stats.txt", "camera_intrinsics.txt"):
        shutil.copyfile(SRC / name, dst / name)
    with (SRC / "Calibration.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    if edit is not None:
        rows = edit(rows)
    with (dst / "Calibration.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return dst


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    if not (SRC / "calibrate.mp4").is_file():
        pytest.skip(f"shared recording not found at {SRC} (see ../shared/README.md)")
    out = tmp_path_factory.mktemp("corners4") / "session"
    report = import_corners4(SRC, out)
    return out, report


# --- the real import -------------------------------------------------------------------


@pytest.mark.slow
@needs_src
def test_one_record_per_frame_and_four_targets(imported):
    out, report = imported
    recs = records(out)
    assert len(recs) == report.n_records == 74
    assert len(list(out.glob("img_*.jpg"))) == 74
    assert [r["frame_index"] for r in recs] == list(range(74))
    assert report.frames_per_target == FRAMES_PER_TARGET
    assert {r["target"] for r in recs} == {0, 1, 2, 3}
    assert "set_x" in report.columns and report.columns.count("WTransG") == 16


@pytest.mark.slow
@needs_src
def test_labels_are_the_mm_targets_in_screen_pixels(imported):
    out, report = imported
    expected = {t: (x * PX_PER_MM[0], y * PX_PER_MM[1]) for t, (x, y) in TARGETS_MM.items()}
    assert report.targets_px.keys() == expected.keys()
    for t, xy in expected.items():
        assert report.targets_px[t] == pytest.approx(xy)
    assert report.targets_px[1] == pytest.approx((2302.7136, 141.4286), abs=1e-3)
    rows = csv_rows()
    for rec, row in zip(records(out), rows, strict=True):
        # Frame i carries row i: target number and mm straight from the csv.
        assert rec["target"] == int(float(row["idx"]))
        assert rec["target_mm"] == [float(row["set_x"]), float(row["set_y"])]
        assert rec["screen_x"] == pytest.approx(float(row["set_x"]) * PX_PER_MM[0])
        assert rec["screen_y"] == pytest.approx(float(row["set_y"]) * PX_PER_MM[1])
        assert rec["csv_row"]["gaze_x"] == float(row["gaze_x"])  # the study's output, raw


@pytest.mark.slow
@needs_src
def test_timestamps_are_the_csv_wall_clock_in_ms(imported):
    out, report = imported
    recs = records(out)
    rows = csv_rows()
    stamps = [r["timestamp"] for r in recs]
    assert stamps == [round(float(r["Timestamp"]) * 1000) for r in rows]
    assert stamps[0] == report.t_first_ms == 1708071395772  # 2024-02-16 08:16 UTC
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))
    assert report.timestamps_from == "csv Timestamp"
    # The video's own clock (20 fps stamp) is kept beside it.
    assert [r["media_time_ms"] for r in recs[:3]] == pytest.approx([0.0, 50.0, 100.0])


@pytest.mark.slow
@needs_src
def test_settling_flags_the_first_frames_after_each_target_change(imported):
    out, report = imported
    recs = records(out)
    assert report.settle_frames == DEFAULT_SETTLE_FRAMES == 7
    flagged = {r["frame_index"] for r in recs if r["settling"]}
    expected = {FIRST_FRAME[t] + k for t in FIRST_FRAME for k in range(7)}
    assert flagged == expected
    assert report.n_settling == len(flagged) == 28
    assert all(isinstance(r["settling"], bool) for r in recs)


@pytest.mark.slow
@needs_src
def test_manifest_is_valid_and_read_session_reads_the_folder(imported):
    out, report = imported
    manifest = SessionManifest.model_validate_json((out / "session.json").read_bytes())
    assert manifest == report.manifest
    assert manifest.screen_px == (2560, 1440)
    assert manifest.screen_mm == (597.0, 336.0)
    assert manifest.mirrored is False
    assert manifest.camera_mm is None
    assert "camera_mm=None" in manifest.notes
    # The intrinsics check: K's principal point does not belong to 1280x720.
    assert "NOT usable for 1280x720" in manifest.notes and "1920x1080" in manifest.notes
    session = read_session(out)
    assert len(session) == 74 and session.rejected == []
    assert session.screen_px == (2560, 1440) and session.mirrored is False
    first = session.items[0]
    assert first.record.model_extra["target"] == 0
    image = cv2.imread(str(first.image))
    assert image.shape == (720, 1280, 3)


@pytest.mark.slow
@needs_src
def test_images_are_the_video_frames_in_order(imported):
    out, _ = imported
    cap = cv2.VideoCapture(str(SRC / "calibrate.mp4"))
    frames = []
    for _ in range(3):
        ok, f = cap.read()
        assert ok
        frames.append(f.astype(np.float32))
    cap.release()
    paths = sorted(out.glob("img_*.jpg"))[:3]
    for i, path in enumerate(paths):
        image = cv2.imread(str(path)).astype(np.float32)
        assert np.mean(np.abs(image - frames[i])) < 2.0  # JPEG q95 of the same frame


# --- refusals and errors ---------------------------------------------------------------


@needs_src
def test_refuses_a_non_empty_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SessionImportError, match="not empty; use --overwrite to replace"):
        import_corners4(SRC, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.slow
@needs_src
def test_overwrite_replaces_session_files_only(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("img_1.jpg", "img_1.json", "session.json"):
        (out / name).write_text("stale")
    (out / "keep.txt").write_text("mine")
    report = import_corners4(SRC, out, overwrite=True, settle_frames=3)
    assert not (out / "img_1.json").exists() and not (out / "img_1.jpg").exists()
    assert (out / "keep.txt").read_text() == "mine"
    assert len(read_session(out)) == 74
    assert report.n_settling == 4 * 3
    assert sum(r["settling"] for r in records(out)) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left behind


@pytest.mark.slow
@needs_src
def test_an_overwrite_that_fails_part_way_keeps_the_old_session(tmp_path, monkeypatch):
    import gazeloop.tools.runtime.importers as importers

    out = tmp_path / "out"
    import_corners4(SRC, out, settle_frames=3)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = importers.write_record, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 40:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(importers, "write_record", failing)
    with pytest.raises(OSError, match="No space"):
        import_corners4(SRC, out, overwrite=True, settle_frames=5)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@needs_src
@pytest.mark.parametrize(
    ("edit", "n_rows"),
    [
        (lambda rows: rows[:-1], 73),  # one row lost
        (lambda rows: [*rows, rows[-1]], 75),  # one row duplicated
    ],
)
def test_row_count_must_match_the_frame_count(tmp_path, edit, n_rows):
    src = doctored_copy(tmp_path / "src", edit)
    out = tmp_path / "out"
    with pytest.raises(SessionImportError) as e:
        import_corners4(src, out)
    assert f"{n_rows} data rows" in str(e.value) and "74 frames" in str(e.value)
    assert not out.exists() or not any(out.iterdir())


@needs_src
@pytest.mark.parametrize("missing", ["calibrate.mp4", "Calibration.csv", "stats.txt"])
def test_missing_input_names_the_file(tmp_path, missing):
    src = doctored_copy(tmp_path / "src", None)
    (src / missing).unlink()
    with pytest.raises(SessionImportError, match=missing.replace(".", r"\.")):
        import_corners4(src, tmp_path / "out")


@needs_src
def test_missing_column_lists_the_header(tmp_path):
    def rename(rows):
        rows[0] = ["target_x" if c == "set_x" else c for c in rows[0]]
        return rows

    src = doctored_copy(tmp_path / "src", rename)
    with pytest.raises(SessionImportError, match=r"missing column.*set_x.*'Timestamp'"):
        import_corners4(src, tmp_path / "out")


@pytest.mark.slow
@needs_src
def test_without_a_wall_clock_time_is_base_plus_media_time(tmp_path):
    def drop_timestamp(rows):
        i = rows[0].index("Timestamp")
        return [r[:i] + r[i + 1 :] for r in rows]

    src = doctored_copy(tmp_path / "src", drop_timestamp)
    report = import_corners4(src, tmp_path / "out")
    recs = records(tmp_path / "out")
    # OpenCV's muxer wrote creation time 0, so the fixed base is used.
    assert [r["timestamp"] for r in recs[:3]] == [FALLBACK_BASE_MS + d for d in (0, 50, 100)]
    assert report.timestamps_from.startswith(f"base {FALLBACK_BASE_MS}")
    assert "no usable csv clock: no Timestamp on every row" in report.timestamps_from


@pytest.mark.slow
@needs_src
def test_a_clock_that_goes_back_says_where(tmp_path):
    def swap(rows):
        i = rows[0].index("Timestamp")
        rows[5][i], rows[6][i] = rows[6][i], rows[5][i]
        return rows

    report = import_corners4(doctored_copy(tmp_path / "src", swap), tmp_path / "out")
    assert "no usable csv clock: line 7: Timestamp does not increase" in report.timestamps_from


@needs_src
def test_settling_every_frame_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SessionImportError, match=r"would mark every frame settling.*smaller"):
        import_corners4(SRC, out, settle_frames=1_000_000)
    assert not out.exists()


@needs_src
def test_a_bad_row_names_its_file(tmp_path):
    src = doctored_copy(tmp_path / "src", lambda rows: [*rows[:10], rows[10][:3], *rows[11:]])
    with pytest.raises(SessionImportError) as e:
        import_corners4(src, tmp_path / "out")
    assert str(src / "Calibration.csv") in str(e.value) and "line 11" in str(e.value)


@needs_src
def test_a_screen_beyond_any_screen_is_refused_before_anything_is_written(tmp_path):
    """It was a pydantic traceback from the manifest, after 148 records were written."""
    src = doctored_copy(tmp_path / "src", None)
    stats = (src / "stats.txt").read_text()
    (src / "stats.txt").write_text(re.sub(r"Width: \d+px", "Width: 99999999999999999999px", stats))
    out = tmp_path / "out"
    with pytest.raises(SessionImportError, match="beyond any screen") as e:
        import_corners4(src, out)
    assert "\n" not in str(e.value) and not out.exists()


@needs_src
def test_a_csv_that_is_not_utf8_is_one_line(tmp_path):
    src = doctored_copy(tmp_path / "src", None)
    (src / "Calibration.csv").write_bytes(b"\xe9" + (SRC / "Calibration.csv").read_bytes())
    with pytest.raises(SessionImportError, match="not UTF-8 text") as e:
        import_corners4(src, tmp_path / "out")
    assert str(src / "Calibration.csv") in str(e.value)


# --- helpers ---------------------------------------------------------------------------


@needs_src
def test_parse_stats_on_the_shared_file():
    stats = parse_stats(SRC / "stats.txt")
    assert stats["screen_px"] == (2560, 1440)
    assert stats["screen_mm"] == (597.0, 336.0)
    assert stats["webcam_px"] == (1280, 720)
    assert set(stats["matrices"]) == {"STransG1", "STransG2", "STransG3", "STransG4", "STransG"}
    np.testing.assert_allclose(stats["matrices"]["STransG"][:3, 3], [-56.473, 136.788, -579.617])


def test_parse_stats_errors(tmp_path):
    p = tmp_path / "stats.txt"
    p.write_text("Screen Information: \nWidth: 1920px\nHeight: 1080px\n")
    with pytest.raises(SessionImportError, match="mm missing"):
        parse_stats(p)
    p.write_text("Webcam Information: \nWidth: 1280px\nHeight: 720px\n")
    with pytest.raises(SessionImportError, match="Screen Information"):
        parse_stats(p)
    with pytest.raises(SessionImportError, match="not found"):
        parse_stats(tmp_path / "nope.txt")
    screen = "Screen Information: \nWidth: 2560px, 597mm\nHeight: 1440px, 336mm\n"
    p.write_text("STransG\n[[1 0 0 0]\n [0 1 0]\n [0 0 1 0]\n [0 0 0 1]]\n" + screen)
    with pytest.raises(SessionImportError, match=r"stats.txt: matrix STransG has rows of 3 and 4"):
        parse_stats(p)


@needs_src
def test_parse_intrinsics_and_the_principal_point_check():
    intr = parse_intrinsics(SRC / "camera_intrinsics.txt")
    assert intr.focal == pytest.approx((1335.148396, 1333.195175))
    assert intr.principal_point == pytest.approx((1070.916963, 488.351090))
    assert intr.dist_coeffs.shape == (5,)
    assert intr.rvecs.shape == intr.tvecs.shape == (40, 3)
    # cx is 431 px right of the centre of 1280x720: not that resolution's calibration.
    assert not intr.fits((1280, 720))
    assert intr.principal_offset((1280, 720))[0] == pytest.approx((1070.916963 - 640) / 640)
    assert intr.likely_size() == (1920, 1080)
    scaled = intr.scaled((1920, 1080), (1280, 720))
    assert scaled.principal_point == pytest.approx((1070.916963 * 2 / 3, 488.35109 * 2 / 3))
    assert scaled.fits((1280, 720))


def test_intrinsics_of_a_centred_camera_fit(tmp_path):
    p = tmp_path / "k.txt"
    p.write_text("camera_matrix:\n900 0 645\n0 900 355\n0 0 1\ndist_coeffs:\n0 0 0 0 0\n")
    intr = parse_intrinsics(p)
    assert isinstance(intr, CameraIntrinsics)
    assert intr.fits((1280, 720)) and intr.likely_size() == (1280, 720)
    assert intr.rvecs.shape == (0, 3)
    p.write_text("camera_matrix:\n900 0 645\n0 900 355\n")
    with pytest.raises(SessionImportError, match="3x3|dist_coeffs"):
        parse_intrinsics(p)


def test_read_calibration_csv_finds_columns_by_name(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(" Set_Y ,idx,extra,set_x\n33,0,a,59\n\n302.0,2,b,537\n")
    header, rows = read_calibration_csv(p)
    assert header == [" Set_Y ", "idx", "extra", "set_x"]
    assert [(r.target, r.set_mm, r.unix_s) for r in rows] == [
        (0, (59, 33), None),
        (2, (537, 302), None),
    ]
    assert rows[1].values["extra"] == "b" and rows[1].line == 4
    p.write_text("idx,set_x,set_y\n0.5,1,2\n")
    with pytest.raises(SessionImportError, match="line 2.*whole number"):
        read_calibration_csv(p)


def _mp4(creation_mp4_s: int) -> bytes:
    mvhd_payload = struct.pack(">B3xII", 0, creation_mp4_s, creation_mp4_s) + bytes(88)
    mvhd = struct.pack(">I4s", 8 + len(mvhd_payload), b"mvhd") + mvhd_payload
    moov = struct.pack(">I4s", 8 + len(mvhd), b"moov") + mvhd
    ftyp = struct.pack(">I4s4sI", 16, b"ftyp", b"isom", 0)
    return ftyp + moov


def test_mp4_creation_time(tmp_path):
    p = tmp_path / "v.mp4"
    p.write_bytes(_mp4(2_082_844_800 + 1_700_000_000))  # 1904 epoch -> unix 1.7e9 s
    assert mp4_creation_ms(p) == 1_700_000_000_000
    p.write_bytes(_mp4(0))
    assert mp4_creation_ms(p) is None


@needs_src
def test_shared_video_has_no_creation_time():
    assert mp4_creation_ms(SRC / "calibrate.mp4") is None
