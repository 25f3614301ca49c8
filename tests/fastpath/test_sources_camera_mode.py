"""The mode a camera is asked for and the one its driver grants: requested through
cv2.VideoCapture.set, read back with get, said at INFO and warned about once when short.
A fake cv2.VideoCapture stands in for the camera (none in CI)."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from gazeloop.fastpath import sources
from gazeloop.fastpath.sources import CameraMode, CameraSource

PROPS = {"width": cv2.CAP_PROP_FRAME_WIDTH, "height": cv2.CAP_PROP_FRAME_HEIGHT}
PROPS["fps"] = cv2.CAP_PROP_FPS


class GrantingCapture:
    """cv2.VideoCapture-shaped: records set() calls, reports `grant` through get(), gives
    `frames` blank frames, then delivers nothing (unplugged)."""

    def __init__(self, grant: dict[str, float], frames: int | None = None) -> None:
        self.grant = {PROPS[k]: v for k, v in grant.items()}
        self.frames, self.grabbed, self.sets = frames, 0, []

    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return True

    def set(self, prop: int, value: float) -> bool:
        self.sets.append((prop, value))
        return True

    def get(self, prop: int) -> float:
        return self.grant.get(prop, 0.0)  # 0: what cv2 answers for a property it cannot read

    def grab(self) -> bool:
        if self.frames is not None and self.grabbed >= self.frames:
            return False
        self.grabbed += 1
        return True

    def retrieve(self):
        return True, np.zeros((48, 64, 3), np.uint8)

    def read(self):
        return self.retrieve() if self.grab() else (False, None)

    def release(self) -> None:
        pass


def use_capture(monkeypatch: pytest.MonkeyPatch, cap: GrantingCapture) -> list[int]:
    """cv2.VideoCapture(index), as sources calls it, answered by `cap`; → the indices."""
    opened: list[int] = []

    class Cv2:
        def __getattr__(self, name):
            return getattr(cv2, name)

        def VideoCapture(self, index):  # noqa: N802 - cv2's name
            opened.append(index)
            return cap

    monkeypatch.setattr(sources, "cv2", Cv2())
    return opened


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_the_requested_mode_reaches_the_driver_and_the_granted_one_is_said(
    monkeypatch, caplog
) -> None:
    cap = GrantingCapture({"width": 640, "height": 480, "fps": 30})
    assert use_capture(monkeypatch, cap) == []
    caplog.set_level(logging.INFO, logger="gazeloop.fastpath.sources")
    cam = CameraSource(2, width=1280, height=720, fps=60)
    cam.close()
    assert cap.sets == [(PROPS["width"], 1280), (PROPS["height"], 720), (PROPS["fps"], 60)]
    assert cam.granted == CameraMode(640, 480, 30.0)
    assert cam.mode_text() == "640x480 at 30 fps, asked 1280x720 at 60 fps"
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "camera 2: 640x480 at 30 fps, asked 1280x720 at 60 fps" in infos
    (warning,) = warnings_of(caplog)
    assert "30 fps instead of 60" in warning and "640x480 instead of 1280x720" in warning


def test_a_short_mode_is_warned_about_once_across_reopens(caplog) -> None:
    caps = [GrantingCapture({"fps": 30}, frames=2) for _ in range(3)]
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
    use_capture(monkeypatch, GrantingCapture(grant))
    cam = CameraSource(0, fps=60)
    cam.close()
    assert cam.mode_text() == said
    assert warnings_of(caplog) == []


def test_nothing_is_requested_when_nothing_is_asked(monkeypatch) -> None:
    cap = GrantingCapture({"width": 1920, "height": 1080, "fps": 30})
    use_capture(monkeypatch, cap)
    cam = CameraSource(0)
    cam.close()
    assert cap.sets == []
    assert cam.mode_text() == "1920x1080 at 30 fps"
