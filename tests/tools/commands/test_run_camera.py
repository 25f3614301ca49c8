"""`gazeloop run` on a camera: the mode it asks for (--camera-fps, default 60, and
--camera-size), the mode the driver granted said at the start, and a camera lost mid-run
ending the run as a failure. cv2.VideoCapture is a fake (no camera in CI)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gazeloop.fastpath import sources

W, H, FPS = cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FPS
HEADLESS = ["run", "--headless", "--oracle", "none", "--no-watch-models"]


class FakeCamera:
    """What cv2.VideoCapture(index) opens, as sources calls it: every set() is recorded,
    get() reports the granted mode, `frames` blank frames are delivered (None: without
    end), then the camera is unplugged and every later open fails."""

    def __init__(self, grant=(640, 480, 30.0), frames: int | None = None) -> None:
        self.grant = dict(zip((W, H, FPS), grant, strict=True))
        self.frames, self.grabbed, self.opens, self.sets = frames, 0, 0, []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        camera = self

        class Cv2:
            def __getattr__(self, name):
                return getattr(cv2, name)

            def VideoCapture(self, index):  # noqa: N802 - cv2's name
                camera.opens += 1
                return camera

        monkeypatch.setattr(sources, "cv2", Cv2())

    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return self.opens == 1  # unplugged: a reopen finds nothing

    def set(self, prop, value) -> bool:
        self.sets.append((prop, value))
        return True

    def get(self, prop) -> float:
        return self.grant[prop]

    def grab(self) -> bool:
        if self.frames is not None and self.grabbed >= self.frames:
            return False
        self.grabbed += 1
        return True

    def retrieve(self):
        return True, np.zeros((480, 640, 3), np.uint8)

    def read(self):
        return self.retrieve() if self.grab() else (False, None)

    def release(self) -> None:
        pass


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_run_asks_for_60_fps_and_says_the_mode_granted(shared, home, monkeypatch, capsys, caplog):
    """The camera was opened at the driver's default (often 30 fps): 60 Hz was out of reach
    from `gazeloop run` whatever the camera could do."""
    from gazeloop.tools.cli import main

    cam = FakeCamera(grant=(640, 480, 30.0))
    cam.install(monkeypatch)
    rc = main([*HEADLESS, "--source", "0", "--frames", "2"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert cam.sets == [(FPS, 60.0)]  # no size asked: the driver's stays
    assert out[0] == "camera 0 (640x480 at 30 fps, asked 60 fps)"
    short = [r.getMessage() for r in caplog.records if "driver granted" in r.getMessage()]
    assert len(short) == 1 and "30 fps instead of 60" in short[0]


def test_run_passes_camera_fps_and_size_to_the_driver(shared, home, monkeypatch, capsys):
    from gazeloop.tools.cli import main

    cam = FakeCamera(grant=(1280, 720, 30.0))
    cam.install(monkeypatch)
    argv = ["--source", "0", "--frames", "2", "--camera-fps", "30", "--camera-size", "1280", "720"]
    assert main([*HEADLESS, *argv]) == 0
    assert cam.sets == [(W, 1280), (H, 720), (FPS, 30.0)]
    assert "camera 0 (1280x720 at 30 fps, asked 1280x720 at 30 fps)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--camera-fps", "30"], "--camera-fps"),
        (["--camera-size", "640", "480"], "--camera-size"),
        (["--camera-fps", "30", "--camera-size", "640", "480"], "--camera-fps and --camera-size"),
    ],
)
def test_camera_flags_with_a_video_are_refused_in_one_line(shared, home, capsys, flags, named):
    from gazeloop.tools.cli import main

    video = str(shared / "data/video-corners4/calibrate.mp4")
    assert main([*HEADLESS, "--source", video, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gazeloop run: {named}: only for a camera index")


def test_camera_fps_must_be_a_positive_number(capsys):
    from gazeloop.tools.cli import main

    with pytest.raises(SystemExit) as e:
        main([*HEADLESS, "--camera-fps", "0"])
    assert e.value.code == 2
    assert "--camera-fps: must be a positive number" in capsys.readouterr().err


def test_a_run_that_loses_its_camera_exits_1_and_says_why(shared, home, monkeypatch, capsys):
    """A camera unplugged mid-run ended the run with exit 0, as if it had been stopped."""
    from gazeloop.tools.cli import main

    class QuickCamera(sources.CameraSource):  # reopen back-off: no real waiting in a test
        def __init__(self, *a, **kw):
            super().__init__(*a, **{**kw, "backoff_s": 0.001})

    monkeypatch.setattr(sources, "CameraSource", QuickCamera)
    cam = FakeCamera(frames=5)
    cam.install(monkeypatch)
    rc = main([*HEADLESS, "--source", "0"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1
    assert cam.opens == 4  # the first open, then 3 reopen attempts
    assert any(line.startswith("gazeloop run: ") and " frames" in line for line in out)
    assert out[-1] == (
        "gazeloop run: failed: camera 0 stopped delivering frames; gave up after 3 reopen attempts"
    )
