"""The session format: reading grid9 as recorded, rejecting each kind of bad pair with its
reason, and writing records/manifests atomically."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from gazeloop.calibration.store.session import (
    MANIFEST_NAME,
    Inference,
    SeedRecord,
    SessionError,
    SessionManifest,
    load_image,
    read_session,
)
from gazeloop.calibration.store.writer import write_manifest, write_record
from tests.paths import SHARED

GRID9 = SHARED / "data" / "sessions" / "grid9"

needs_grid9 = pytest.mark.skipif(
    not GRID9.is_dir(), reason=f"shared data not found at {GRID9} (see DESIGN.md)"
)

# The 9 timestamps in grid9, in order (from the file names).
GRID9_T = [
    1766068421832,
    1766068428071,
    1766068433975,
    1766068437076,
    1766068439840,
    1766068442984,
    1766068446352,
    1766068448724,
    1766068452322,
]
T0, T1, T2 = GRID9_T[:3]


def copy_pairs(dst: Path, stamps: list[int]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for t in stamps:
        for ext in (".jpg", ".json"):
            shutil.copyfile(GRID9 / f"img_{t}{ext}", dst / f"img_{t}{ext}")
    return dst


def edit_json(path: Path, **changes: object) -> None:
    body = json.loads(path.read_text())
    body.update(changes)
    path.write_text(json.dumps(body))


# --- grid9 as recorded ---------------------------------------------------------------------


@needs_grid9
def test_grid9_reads_all_nine_pairs_in_time_order() -> None:
    s = read_session(GRID9)
    assert [it.t_ms for it in s.items] == GRID9_T
    assert s.rejected == []
    assert s.manifest is None
    assert s.screen_px is None
    assert s.mirrored is False  # no manifest, nothing stated: the default
    first = s.items[0]
    assert first.image.name == "img_1766068421832.jpg"
    assert first.record.timestamp == first.t_ms
    assert first.label_px == pytest.approx((1675.2773, 20.574219))
    # The earlier tracker's output is parsed (not ground truth, but kept typed).
    assert isinstance(first.record.inference, Inference)
    assert first.record.inference.gaze is not None
    assert first.record.inference.gaze.yaw == pytest.approx(-3.362135)
    assert first.record.moondream_result is None
    # README: the targets span about 1690x1000 px.
    xs = [it.label_px[0] for it in s.items]
    ys = [it.label_px[1] for it in s.items]
    assert max(xs) == pytest.approx(1688.4141)
    assert min(xs) == pytest.approx(23.019531)
    assert max(ys) == pytest.approx(1018.78906)


@needs_grid9
def test_grid9_mirrored_is_whatever_the_caller_states() -> None:
    assert read_session(GRID9, mirrored=True).mirrored is True
    assert read_session(GRID9, mirrored=False).mirrored is False


@needs_grid9
def test_grid9_images_all_decode_at_1920x1080() -> None:
    s = read_session(GRID9, check_images=True)
    assert len(s) == 9 and s.rejected == []
    assert load_image(s.items[0].image).shape == (1080, 1920, 3)


@needs_grid9
def test_grid9_labels_fit_a_stated_1920x1080_screen() -> None:
    assert len(read_session(GRID9, screen_px=(1920, 1080))) == 9
    # A smaller stated screen puts the right column (x ~ 1660-1690) outside it.
    s = read_session(GRID9, screen_px=(1600, 1080))
    assert len(s) == 6
    assert {r.file for r in s.rejected} == {
        "img_1766068421832.json",
        "img_1766068428071.json",
        "img_1766068452322.json",
    }
    assert all("outside the screen 1600x1080" in r.why for r in s.rejected)


# --- bad pairs -----------------------------------------------------------------------------


def _malformed(d: Path) -> None:
    (d / f"img_{T1}.json").write_text('{"timestamp": 1766068428071, "screen_x": ')


def _not_an_object(d: Path) -> None:
    (d / f"img_{T1}.json").write_text("[1, 2, 3]")


def _missing_label(d: Path) -> None:
    body = json.loads((d / f"img_{T1}.json").read_text())
    del body["screen_y"]
    (d / f"img_{T1}.json").write_text(json.dumps(body))


def _nan_label(d: Path) -> None:
    (d / f"img_{T1}.json").write_text(
        '{"timestamp": 1766068428071, "screen_x": NaN, "screen_y": 3}'
    )


def _missing_jpeg(d: Path) -> None:
    (d / f"img_{T1}.jpg").unlink()


def _orphan_jpeg(d: Path) -> None:
    (d / f"img_{T1}.json").unlink()


def _negative_label(d: Path) -> None:
    edit_json(d / f"img_{T1}.json", screen_x=-3.5)


CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # case: (break the T1 pair, rejected file, substring of the reason)
    "malformed json": (_malformed, f"img_{T1}.json", "malformed record"),
    "json not an object": (_not_an_object, f"img_{T1}.json", "malformed record"),
    "missing label": (_missing_label, f"img_{T1}.json", "screen_y: Field required"),
    "nan label": (_nan_label, f"img_{T1}.json", "screen_x"),
    "missing jpeg": (_missing_jpeg, f"img_{T1}.json", f"no image img_{T1}.jpg"),
    "orphan jpeg": (_orphan_jpeg, f"img_{T1}.jpg", f"no record img_{T1}.json"),
    "negative label": (_negative_label, f"img_{T1}.json", "negative label (-3.5,"),
}


@needs_grid9
@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_pair_is_rejected_with_its_reason_and_the_rest_is_read(
    case: str, tmp_path: Path
) -> None:
    breaker, file, reason = CASES[case]
    d = copy_pairs(tmp_path / "s", [T0, T1, T2])
    breaker(d)
    s = read_session(d)
    assert [it.t_ms for it in s.items] == [T0, T2]
    assert len(s.rejected) == 1, s.rejected
    assert s.rejected[0].file == file
    assert reason in s.rejected[0].why


@needs_grid9
def test_bad_pairs_together_each_listed_once(tmp_path: Path) -> None:
    d = copy_pairs(tmp_path / "s", GRID9_T[:6])
    (d / f"img_{GRID9_T[0]}.json").write_text("{")
    (d / f"img_{GRID9_T[1]}.jpg").unlink()
    (d / f"img_{GRID9_T[2]}.json").unlink()
    edit_json(d / f"img_{GRID9_T[3]}.json", screen_y=-1)
    (d / "notes.txt").write_text("ignored: not a session file")
    (d / ".img_1.json.abc.tmp").write_text("ignored: an interrupted write")
    s = read_session(d)
    assert [it.t_ms for it in s.items] == GRID9_T[4:6]
    assert sorted(r.file for r in s.rejected) == sorted(
        [
            f"img_{GRID9_T[0]}.json",
            f"img_{GRID9_T[1]}.json",
            f"img_{GRID9_T[2]}.jpg",
            f"img_{GRID9_T[3]}.json",
        ]
    )


@needs_grid9
def test_names_that_are_not_img_unix_ms_are_rejected(tmp_path: Path) -> None:
    d = copy_pairs(tmp_path / "s", [T0, T1])
    for ext in (".jpg", ".json"):
        (d / f"img_{T1}{ext}").rename(d / f"img_{T1}b{ext}")
    shutil.copyfile(d / f"img_{T0}.jpg", d / "snapshot.JPG")
    s = read_session(d)
    assert [it.t_ms for it in s.items] == [T0]
    assert sorted((r.file, r.why) for r in s.rejected) == [
        (f"img_{T1}b.jpg", "name is not img_<unix-ms> with digits"),
        (f"img_{T1}b.json", "name is not img_<unix-ms> with digits"),
        ("snapshot.JPG", "name is not img_<unix-ms> with digits"),
    ]


@needs_grid9
def test_duplicate_timestamp_keeps_the_original(tmp_path: Path) -> None:
    # A copied record under a later name still says T0 inside: the original wins even
    # though the copy's name is what the listing would see first if it sorted lower.
    d = copy_pairs(tmp_path / "s", [T0, T2])
    for ext in (".jpg", ".json"):
        shutil.copyfile(d / f"img_{T0}{ext}", d / f"img_{T0 - 5}{ext}")
    s = read_session(d)
    assert [it.t_ms for it in s.items] == [T0, T2]
    assert [(r.file, r.why) for r in s.rejected] == [
        (f"img_{T0 - 5}.json", f"duplicate timestamp {T0} (kept img_{T0}.json)")
    ]


@needs_grid9
def test_duplicate_name_time_keeps_the_canonical_name(tmp_path: Path) -> None:
    # Leading zeros give two names for one millisecond.
    d = copy_pairs(tmp_path / "s", [T0, T1])
    for ext in (".jpg", ".json"):
        shutil.copyfile(d / f"img_{T1}{ext}", d / f"img_0{T1}{ext}")
    s = read_session(d)
    assert [it.t_ms for it in s.items] == [T0, T1]
    assert s.items[1].json.name == f"img_{T1}.json"
    assert [(r.file, r.why) for r in s.rejected] == [
        (f"img_0{T1}.json", f"duplicate timestamp {T1} (kept img_{T1}.json)")
    ]


@needs_grid9
def test_name_is_the_identity_when_json_timestamp_disagrees(tmp_path: Path) -> None:
    d = copy_pairs(tmp_path / "s", [T0, T1])
    edit_json(d / f"img_{T1}.json", timestamp=T1 + 40)
    s = read_session(d)
    assert s.rejected == []
    assert [it.t_ms for it in s.items] == [T0, T1]
    assert s.items[1].record.timestamp == T1 + 40


@needs_grid9
def test_label_outside_a_stated_screen(tmp_path: Path) -> None:
    d = copy_pairs(tmp_path / "s", [T0, T1, T2])
    edit_json(d / f"img_{T2}.json", screen_x=1920.5)  # half a pixel right of the edge
    edit_json(d / f"img_{T1}.json", screen_x=1920.0)  # on the edge: still on the screen
    s = read_session(d, screen_px=(1920, 1080))
    assert [it.t_ms for it in s.items] == [T0, T1]
    assert [r.file for r in s.rejected] == [f"img_{T2}.json"]
    assert "outside the screen 1920x1080" in s.rejected[0].why
    # Without a screen size only negative labels can be judged.
    assert len(read_session(d)) == 3


@needs_grid9
def test_truncated_jpeg_found_only_when_checking_images(tmp_path: Path) -> None:
    d = copy_pairs(tmp_path / "s", [T0, T1, T2])
    jpg = d / f"img_{T1}.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    assert len(read_session(d)) == 3  # lazy by default: the frame source finds it
    s = read_session(d, check_images=True)
    assert [it.t_ms for it in s.items] == [T0, T2]
    assert [r.file for r in s.rejected] == [f"img_{T1}.jpg"]
    assert "truncated JPEG" in s.rejected[0].why


@needs_grid9
def test_jpeg_cut_just_before_its_end_marker_is_truncated(tmp_path: Path) -> None:
    src = GRID9 / f"img_{T0}.jpg"
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(src.read_bytes()[:-2])
    with pytest.raises(ValueError, match="truncated JPEG"):
        load_image(cut)


# --- whole-folder errors -------------------------------------------------------------------


def test_missing_folder_is_a_session_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SessionError, match="does not exist") as e:
        read_session(missing)
    assert str(missing) in str(e.value)


def test_empty_folder_is_a_session_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SessionError, match="no usable") as e:
        read_session(tmp_path)
    assert str(tmp_path) in str(e.value)
    assert e.value.rejected == []


@needs_grid9
def test_folder_with_only_bad_pairs_says_why(tmp_path: Path) -> None:
    d = copy_pairs(tmp_path / "s", [T0])
    (d / f"img_{T0}.json").write_text("not json")
    with pytest.raises(SessionError, match="1 file\\(s\\) rejected") as e:
        read_session(d)
    assert [r.file for r in e.value.rejected] == [f"img_{T0}.json"]


# --- manifest ------------------------------------------------------------------------------


@needs_grid9
def test_manifest_round_trip_and_it_wins_over_arguments(tmp_path: Path) -> None:
    d = copy_pairs(tmp_path / "s", [T0, T1])
    m = SessionManifest(
        screen_px=(1920, 1080),
        screen_mm=(344.0, 194.0),
        camera_mm=(172.0, -8.0),
        mirrored=True,
        user="u1",
        device="mbp14",
        notes="grid9 copy",
        source="test",
    )
    path = write_manifest(d, m)
    assert path == d / MANIFEST_NAME
    s = read_session(d, screen_px=(800, 600), mirrored=False)
    assert s.manifest == m
    assert s.mirrored is True
    assert s.screen_px == (1920, 1080)
    assert len(s) == 2  # judged against 1920x1080, not the stated 800x600


def test_manifest_rejects_unknown_fields_and_versions() -> None:
    with pytest.raises(ValidationError, match="mirror"):
        SessionManifest.model_validate({"screen_px": [10, 10], "mirror": True})
    with pytest.raises(ValidationError, match="unsupported session manifest version 2"):
        SessionManifest.model_validate({"version": 2, "screen_px": [10, 10]})
    with pytest.raises(ValidationError, match="screen_px must be positive"):
        SessionManifest.model_validate({"screen_px": [0, 10]})


@needs_grid9
def test_bad_manifest_stops_the_read(tmp_path: Path) -> None:
    d = copy_pairs(tmp_path / "s", [T0])
    (d / MANIFEST_NAME).write_text('{"screen_px": [1920, 1080], "mirror": true}')
    with pytest.raises(SessionError, match="bad session manifest") as e:
        read_session(d)
    assert MANIFEST_NAME in str(e.value)
    # One line naming the field (it was pydantic's multi-line dump with a URL).
    assert "\n" not in str(e.value) and "mirror: not a known field" in str(e.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "Invalid JSON"),
        ("[1, 2, 3]", "Input should be an object"),
        ('{"screen_px": "1512x945"}', "screen_px"),
        ('{"screen_px": [-1512, 945]}', "screen_px must be positive"),
        # A traceback from the screen geometry in eval, a [null, null] in a recording of it.
        ('{"screen_px": [1512, 945], "camera_mm": [NaN, Infinity]}', "camera_mm must be finite"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_what_is_wrong(tmp_path: Path, text, says) -> None:
    d = tmp_path / "s"
    d.mkdir()
    (d / MANIFEST_NAME).write_text(text)
    with pytest.raises(SessionError) as e:
        read_session(d)
    msg = str(e.value)
    assert "\n" not in msg and says in msg and str(d / MANIFEST_NAME) in msg, msg


# --- records -------------------------------------------------------------------------------


def test_seed_record_keeps_unknown_fields_and_odd_blocks() -> None:
    r = SeedRecord.model_validate(
        {
            "timestamp": 5,
            "screen_x": 1.5,
            "screen_y": 2,
            "inference": {"Gaze": {"yaw": "n/a"}},  # does not fit the typed shape
            "moondream_result": [1, 2],
            "target_id": 7,
        }
    )
    assert r.label_px == (1.5, 2.0)
    assert r.inference == {"Gaze": {"yaw": "n/a"}}
    assert r.moondream_result == [1, 2]
    assert r.model_dump()["target_id"] == 7


def test_write_record_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # Smooth content so JPEG error stays small and the comparison means something.
    image = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (9, 9), 3)
    extra = {"inference": {"Gaze": {"yaw": -3.0, "pitch": 1.0}}, "target_id": 4}
    item = write_record(tmp_path, 1700000000123, image, (10.5, 20.25), extra)
    assert item.image.name == "img_1700000000123.jpg"
    body = json.loads(item.json.read_text())
    assert body == {
        "timestamp": 1700000000123,
        "screen_x": 10.5,
        "screen_y": 20.25,
        "inference": {"Gaze": {"yaw": -3.0, "pitch": 1.0}},
        "target_id": 4,
    }
    s = read_session(tmp_path, check_images=True)
    assert [it.t_ms for it in s.items] == [1700000000123]
    back = load_image(s.items[0].image)
    assert back.shape == image.shape
    assert float(np.abs(back.astype(int) - image.astype(int)).mean()) < 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "img_1700000000123.jpg",
        "img_1700000000123.json",
    ]


@pytest.mark.parametrize("during", ["image", "record"])
def test_ctrl_c_while_a_pair_is_written_comes_after_the_pair(tmp_path, monkeypatch, during):
    """`record` stopped with Ctrl-C left half pairs (2 times in 4): an interrupt after the
    record's rename, in its folder's fsync, ran the clean-up that removed its picture."""
    import signal

    from gazeloop.calibration.store import atomic

    real_fsync_dir, calls = atomic.fsync_dir, []

    def interrupted_fsync(folder):  # the image's, the record's
        calls.append(folder)
        if {"image": 1, "record": 2}[during] == len(calls):
            os.kill(os.getpid(), signal.SIGINT)
        real_fsync_dir(folder)

    monkeypatch.setattr(atomic, "fsync_dir", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        write_record(tmp_path, 1700000000123, np.zeros((8, 8, 3), np.uint8), (1.0, 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "img_1700000000123.jpg",
        "img_1700000000123.json",
    ]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_session_writer_counts_the_pair_a_ctrl_c_waited_for(tmp_path, monkeypatch):
    """The held Ctrl-C was raised inside write_record: the pair was on disk and not counted,
    so an interrupted calibration's notes said "0 captured frames" and its clean-up took
    the manifest of a folder with frames in it."""
    import signal

    from gazeloop.calibration.store import atomic
    from gazeloop.calibration.store.session import SessionManifest
    from gazeloop.calibration.store.writer import SessionWriter

    writer = SessionWriter(tmp_path / "s", SessionManifest(screen_px=(640, 480)))
    real_fsync_dir = atomic.fsync_dir

    def interrupted_fsync(folder):
        os.kill(os.getpid(), signal.SIGINT)
        real_fsync_dir(folder)

    monkeypatch.setattr(atomic, "fsync_dir", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        writer.write(1700000000123, np.zeros((8, 8, 3), np.uint8), (1.0, 2.0))
    assert writer.written == 1 and writer.last_ms == 1700000000123
    assert not writer.discard_if_empty() and (tmp_path / "s" / "session.json").is_file()


@pytest.mark.parametrize("xy", [(-1.0, 2.0), (math.nan, 2.0), (1.0, math.inf)])
def test_write_record_refuses_bad_labels(tmp_path: Path, xy: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="screen label"):
        write_record(tmp_path, 1, np.zeros((4, 4, 3), np.uint8), xy)
    assert list(tmp_path.iterdir()) == []


def test_write_record_refuses_extra_that_overrides_the_label(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="screen_x"):
        write_record(tmp_path, 1, np.zeros((4, 4, 3), np.uint8), (1, 1), {"screen_x": 9})


def test_failed_write_leaves_the_old_record_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = np.full((8, 8, 3), 100, np.uint8)
    item = write_record(tmp_path, 42, image, (1.0, 2.0))
    old_json = item.json.read_bytes()
    old_jpg = item.image.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk unplugged")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk unplugged"):
        write_record(tmp_path, 42, np.full((8, 8, 3), 200, np.uint8), (3.0, 4.0))
    monkeypatch.undo()
    assert item.json.read_bytes() == old_json
    assert item.image.read_bytes() == old_jpg
    # No temp file is left behind either.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img_42.jpg", "img_42.json"]
    assert read_session(tmp_path).items[0].label_px == (1.0, 2.0)


def test_failed_manifest_write_leaves_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_manifest(tmp_path, SessionManifest(screen_px=(1920, 1080)))
    before = (tmp_path / MANIFEST_NAME).read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError("fsync failed")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="fsync failed"):
        write_manifest(tmp_path, SessionManifest(screen_px=(800, 600), mirrored=True))
    monkeypatch.undo()
    assert (tmp_path / MANIFEST_NAME).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]


@needs_grid9
def test_many_rejected_files_are_summed_up_after_the_first_few(tmp_path, caplog) -> None:
    """A session whose JSON files were lost warned once per picture on every read."""
    d = copy_pairs(tmp_path / "s", GRID9_T[:9])
    for j in sorted(d.glob("*.json"))[1:]:
        j.unlink()  # 8 pictures without their label, one pair left
    with caplog.at_level(logging.INFO, logger="gazeloop.calibration.store.session"):
        s = read_session(d)
    assert len(s) == 1 and len(s.rejected) == 8
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 4 and warned[-1].endswith("5 more files rejected (-v lists each)")
    assert sum("rejected img_" in r.getMessage() for r in caplog.records) == 8  # all, at -v
