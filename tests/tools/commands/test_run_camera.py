"""`gazeloop run` on a camera: the mode it asks for (--camera-fps, default 60, and
--camera-size), the mode the driver granted said at the start, and a camera lost mid-run
ending the run as a failure. cv2.VideoCapture is a fake (no camera in CI)."""

from __future__ import annotations

import pytest

from gazeloop.fastpath import sources
from tests.fake_camera import FPS, FakeCamera, H, W

HEADLESS = ["run", "--headless", "--oracle", "none", "--no-watch-models"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_run_asks_for_60_fps_and_says_the_mode_granted(shared, home, monkeypatch, capsys, caplog):
    """The camera was opened at the driver's default (often 30 fps): 60 Hz was out of reach
    from `gazeloop run` whatever the camera could do."""
    from gazeloop.tools.cli import main

    cam = FakeCamera({"width": 640, "height": 480, "fps": 30.0})
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

    cam = FakeCamera({"width": 1280, "height": 720, "fps": 30.0})
    cam.install(monkeypatch)
    argv = ["--source", "0", "--frames", "2", "--camera-fps", "30", "--camera-size", "1280", "720"]
    assert main([*HEADLESS, *argv]) == 0
    assert cam.sets == [(W, 1280), (H, 720), (FPS, 30.0)]
    assert "camera 0 (1280x720 at 30 fps, asked 1280x720 at 30 fps)" in capsys.readouterr().out


def test_camera_fps_driver_asks_for_no_rate(shared, home, monkeypatch, capsys):
    """A rate asked for is held; `driver` leaves the camera its own, which in a dim room may
    slow down to expose longer."""
    from gazeloop.tools.cli import main

    cam = FakeCamera({"width": 640, "height": 480, "fps": 30.0})
    cam.install(monkeypatch)
    assert main([*HEADLESS, "--source", "0", "--frames", "2", "--camera-fps", "driver"]) == 0
    assert cam.sets == []
    assert capsys.readouterr().out.splitlines()[0] == "camera 0 (640x480 at 30 fps)"


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
