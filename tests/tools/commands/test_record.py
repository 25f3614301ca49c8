"""`gazeloop record`: sessions written from real sources and read back by the readers the
rest of gazeloop uses (calibration.store.session.read_session, fastpath.sources.SessionSource)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gazeloop.calibration.store.session import load_image, read_session
from gazeloop.fastpath.sources import SessionSource
from gazeloop.tools.runtime.labelled import open_labelled
from gazeloop.tools.runtime.recording import RateGate
from tests.cli import cli

MS = 1_000_000


@pytest.mark.slow
def test_round_trip_from_the_4_corner_video(shared, tmp_path):
    video = shared / "data/video-corners4/calibrate.mp4"
    out = tmp_path / "rec"
    rc, stdout, err = cli("record", out, "--source", video, "--fps", 5)
    assert rc == 0, err
    assert "labels: the recorded targets" in stdout

    s = read_session(out)
    assert not s.rejected
    m = s.manifest
    assert m.screen_px == (2560, 1440) and m.screen_mm == (597.0, 336.0)
    assert m.mirrored is False and "calibrate.mp4" in m.source
    # 74 frames over ~7.6 s of the study's own clock (~10 Hz), kept at 5 fps.
    t = np.array([it.t_ms for it in s.items])
    gaps = np.diff(t)
    span_ms = 7554  # first to last row of Calibration.csv's clock
    assert t[-1] - t[0] == pytest.approx(span_ms, abs=210)
    assert len(s) == pytest.approx(span_ms / 200, abs=2)
    assert gaps.min() >= 150  # never closer than 3/4 of the 200 ms period
    assert np.median(gaps) == pytest.approx(200, abs=15)
    assert f"{len(s)} frames" in m.notes

    # Labels are the recording's targets, with its settling marks; the pictures are the
    # video's frames (re-encoded as JPEG once).
    with open_labelled(shared / "data/video-corners4") as ref:
        by_t = {it.t_ms: it for it in ref.session.items}
        assert set(t) <= set(by_t)  # same times: a session keeps its recorded clock
        for it in s.items:
            src = by_t[it.t_ms]
            assert it.label_px == src.label_px
            extra = it.record.model_extra
            assert extra["settling"] == src.record.model_extra["settling"]
            assert extra["label_source"] == "targets" and extra["target"] in (0, 1, 2, 3)
        a, b = load_image(s.items[10].image), load_image(by_t[s.items[10].t_ms].image)
        assert a.shape == (720, 1280, 3)
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 3

    # The frame source reads it back: frames in time order, labelled, un-mirrored.
    with SessionSource(out) as src:
        frames = list(src)
    assert len(frames) == len(s)
    assert [f.t_ns for f in frames] == [it.t_ms * MS for it in s.items]
    assert all(f.label_px == it.label_px for f, it in zip(frames, s.items, strict=True))


@pytest.mark.slow
def test_frame_and_time_limits(shared, tmp_path):
    video = shared / "data/video-corners4/calibrate.mp4"
    rc, stdout, err = cli("record", tmp_path / "a", "--source", video, "--frames", 10)
    assert rc == 0, err
    assert len(read_session(tmp_path / "a")) == 10 and "--frames 10 reached" in stdout
    # --seconds counts the source's own time: 2 s of a ~10 Hz recording is ~20 frames.
    rc, stdout, err = cli("record", tmp_path / "b", "--source", video, "--seconds", 2)
    assert rc == 0, err
    s = read_session(tmp_path / "b")
    assert s.items[-1].t_ms - s.items[0].t_ms < 2000
    assert 17 <= len(s) <= 22


@pytest.mark.slow
def test_a_session_without_manifest_needs_the_screen_and_keeps_its_labels(shared, tmp_path):
    grid9 = shared / "data/sessions/grid9"
    rc, _, err = cli("record", tmp_path / "x", "--source", grid9)
    assert rc == 2 and "--screen-px" in err and not (tmp_path / "x").exists()
    # Not saying whether its frames are selfie views: copied as they were and marked
    # un-mirrored, grid9 then read at 107 px against 79.
    rc, _, err = cli("record", tmp_path / "y", "--source", grid9, "--screen-px", 1920, 1080)
    assert rc == 2 and "--mirrored" in err and "--no-mirrored" in err, err
    assert not (tmp_path / "y").exists()
    rc, _, err = cli(
        "record", tmp_path / "g", "--source", grid9, "--screen-px", 1920, 1080, "--mirrored"
    )
    assert rc == 0, err
    s, ref = read_session(tmp_path / "g"), read_session(grid9)
    assert [it.t_ms for it in s.items] == [it.t_ms for it in ref.items]
    assert [it.label_px for it in s.items] == [it.label_px for it in ref.items]
    # grid9 is stored mirrored; the recording stores un-mirrored frames and says so.
    assert s.manifest.mirrored is False
    a, b = load_image(s.items[0].image), load_image(ref.items[0].image)
    assert np.abs(a.astype(int) - b[:, ::-1].astype(int)).mean() < 3


def test_sources_without_targets_need_a_label(shared, tmp_path):
    img = shared / "data/video-corners4/no_face.jpg"
    rc, _, err = cli("record", tmp_path / "a", "--source", img, "--screen-px", 640, 480)
    assert rc == 2 and "no_face.jpg" in err and "--point" in err
    rc, _, err = cli(
        "record", tmp_path / "b", "--source", img, "--screen-px", 640, 480, "--point", 900, 10
    )
    assert rc == 2 and "off the 640x480 screen" in err
    rc, _, err = cli(
        "record", tmp_path / "c", "--source", img, "--screen-px", 640, 480, "--point", 320, 240
    )
    assert rc == 0, err
    (item,) = read_session(tmp_path / "c").items
    assert item.label_px == (320.0, 240.0)
    assert json.loads(item.json.read_text())["label_source"] == "point"


def test_the_pointer_labels_pixels_of_this_screen_never_the_recordings(shared, tmp_path):
    """corners4 was recorded on 2560x1440; a pointer label is a pixel of the screen the
    pointer is on, so its size must be given (the recording's was written, with 1280x720
    pointer pixels). Refused before any desktop is needed."""
    src = shared / "data/video-corners4"
    rc, _, err = cli("record", tmp_path / "a", "--source", src, "--label", "cursor")
    assert rc == 2 and "--label cursor: give --screen-px W H" in err and "2560x1440" in err
    assert not (tmp_path / "a").exists()


def test_no_camera_is_a_message_naming_it(tmp_path):
    rc, _, err = cli("record", tmp_path / "a", "--source", "97", "--point", 1, 1)
    assert rc == 2 and "camera 97" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()


def test_bad_limits_are_rejected(tmp_path):
    for flag, value in (("--fps", 0), ("--seconds", -1), ("--frames", 0)):
        rc, _, err = cli("record", tmp_path / "a", "--source", "97", flag, value)
        assert rc == 2 and flag in err


def test_positions_that_are_not_finite_are_refused_at_the_flag(tmp_path):
    # `--camera-mm nan 0` was written into session.json as [null, 0], which nothing could
    # read back.
    for flag in ("--camera-mm", "--point"):
        rc, _, err = cli("record", tmp_path / "a", "--source", "97", flag, "nan", 0)
        assert rc == 2 and flag in err and "finite" in err, err
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_a_screen_other_than_the_targets_own_is_refused_and_a_point_label_takes_it(
    shared, tmp_path
):
    video = shared / "data/video-corners4/calibrate.mp4"
    args = ("--source", video, "--screen-px", 1920, 1080, "--frames", 2)
    rc, _, err = cli("record", tmp_path / "a", *args)
    assert rc == 2 and "--screen-px 1920x1080" in err and "2560x1440" in err, err
    rc, _, err = cli("record", tmp_path / "b", *args, "--point", 100, 100)
    assert rc == 0, err
    m = read_session(tmp_path / "b").manifest
    assert m.screen_px == (1920, 1080)
    # The recording's millimetres are of its 2560x1440 screen, not of this one.
    assert m.screen_mm is None and m.camera_mm is None
    rc, _, err = cli("record", tmp_path / "c", "--source", video, "--frames", 2)
    assert rc == 0, err
    assert read_session(tmp_path / "c").manifest.screen_mm == (597.0, 336.0)  # its own screen


def test_rate_gate_keeps_the_target_rate_through_jitter_and_gaps():
    gate = RateGate(15.0)  # 66.7 ms
    # A 30 fps camera with up to 2 ms of jitter: every other frame.
    rng = np.random.default_rng(0)
    t = (np.arange(300) * 33.333 + rng.uniform(-2, 2, 300)) * MS
    kept = [int(x) for x in t if gate.keep(int(x))]
    assert len(kept) == 150
    # After a one-second hole, the rate restarts from the next frame instead of catching up.
    gate2 = RateGate(10.0)
    times = [0, 100, 200, 1200, 1250, 1300, 1400]
    assert [x for x in times if gate2.keep(x * MS)] == [0, 100, 200, 1200, 1300, 1400]
    assert RateGate(None).keep(5)


def test_a_killed_recording_ends_as_an_interrupted_one(shared, tmp_path, monkeypatch):
    """SIGTERM killed `record` outright: a picture without its label, hidden temporary files,
    and a manifest that never said it was cut short. Here the process sends it to itself at
    the third frame, through the real signal handler."""
    import os
    import signal

    from gazeloop.tools.commands import record

    point = record._at_point

    def killed_at_third(args, screen_px):
        described, label = point(args, screen_px)
        seen = []

        def labelled(frame):
            seen.append(frame)
            if len(seen) == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return label(frame)

        return described, labelled

    monkeypatch.setattr(record, "_at_point", killed_at_third)
    out = tmp_path / "rec"
    video = shared / "data/video-corners4/calibrate.mp4"
    rc, said, err = cli(
        "record", out, "--source", video, "--point", 10, 10, "--screen-px", 640, 480
    )
    assert rc == 0, err
    assert "interrupted" in said
    s = read_session(out, check_images=True)
    assert 1 <= len(s) <= 3 and "interrupted" in s.manifest.notes
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # no temporary left
