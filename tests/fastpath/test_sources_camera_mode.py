"""The mode a camera is asked for and the one its driver grants: requested through
cv2.VideoCapture.set, read back with get, said at INFO and warned about once when short.
A fake cv2.VideoCapture stands in for the camera (none in CI)."""

from __future__ import annotations

import logging

import cv2
import pytest

from gazeloop.fastpath.sources import CameraMode, CameraSource
from tests.fake_camera import PROPS, FakeCamera


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_the_requested_mode_reaches_the_driver_and_the_granted_one_is_said(
    monkeypatch, caplog
) -> None:
    cap = FakeCamera({"width": 640, "height": 480, "fps": 30})
    cap.install(monkeypatch)
    caplog.set_level(logging.INFO, logger="gazeloop.fastpath.sources")
    cam = CameraSource(2, width=1280, height=720, fps=60)
    cam.close()
    assert cap.indices == [2]
    assert cap.sets == [(PROPS["width"], 1280), (PROPS["height"], 720), (PROPS["fps"], 60)]
    assert cam.granted == CameraMode(640, 480, 30.0)
    assert cam.mode_text() == "640x480 at 30 fps, asked 1280x720 at 60 fps"
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "camera 2: 640x480 at 30 fps, asked 1280x720 at 60 fps" in infos
    (warning,) = warnings_of(caplog)
    assert "30 fps instead of 60" in warning and "640x480 instead of 1280x720" in warning


def test_a_short_mode_is_warned_about_once_across_reopens(caplog) -> None:
    caps = [FakeCamera({"fps": 30}, frames=2) for _ in range(3)]
    opener = iter(caps).__next__
    with CameraSource(0, fps=60, open_capture=opener, retries=2, backoff_s=0.001) as cam:
        frames = list(cam)
    assert frames and cam.frames_captured == 6  # each capture's 2: both reopens worked
    assert cam.error is not None  # then the captures ran out
    assert len([w for w in warnings_of(caplog) if "driver granted" in w]) == 1


@pytest.mark.parametrize(
    ("grant", "said"),
    [
        ({"width": 640, "height": 480, "fps": 59.94}, "640x480 at 59.94 fps, asked 60 fps"),
        ({}, "size unknown at unknown fps, asked 60 fps"),  # a backend that reports nothing
    ],
)
def test_no_warning_for_a_granted_or_unreported_mode(monkeypatch, caplog, grant, said) -> None:
    FakeCamera(grant).install(monkeypatch)
    cam = CameraSource(0, fps=60)
    cam.close()
    assert cam.mode_text() == said
    assert warnings_of(caplog) == []


def test_nothing_is_requested_when_nothing_is_asked(monkeypatch) -> None:
    cap = FakeCamera({"width": 1920, "height": 1080, "fps": 30})
    cap.install(monkeypatch)
    cam = CameraSource(0)
    cam.close()
    assert cap.sets == []
    assert cam.mode_text() == "1920x1080 at 30 fps"


MJPG = (cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))


@pytest.mark.parametrize(
    ("backend", "asked", "sets"),
    [
        # Linux: the format first, so the mode is looked up among MJPG's (YUYV has no 60).
        ("V4L2", {"fps": 60}, [MJPG, (PROPS["fps"], 60)]),
        (
            "V4L2",
            {"width": 1280, "height": 720},
            [MJPG, (PROPS["width"], 1280), (PROPS["height"], 720)],
        ),
        ("V4L2", {}, []),  # --camera-fps driver and no size: the driver's own format too
        ("AVFOUNDATION", {"fps": 60}, [(PROPS["fps"], 60)]),  # macOS picks its own format
    ],
)
def test_a_v4l2_camera_is_asked_for_mjpg_before_its_mode(monkeypatch, backend, asked, sets):
    cap = FakeCamera({"fps": 30}, backend=backend)
    cap.install(monkeypatch)
    CameraSource(0, **asked).close()
    assert cap.sets == sets
