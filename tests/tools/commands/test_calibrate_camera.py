"""`gazeloop calibrate` on a camera asks it for --camera-fps (default 60) and
--camera-size; a replayed recording refuses them. cv2.VideoCapture is a fake, and the
window's grid is stood in for (no camera or display in CI)."""

from __future__ import annotations

from tests.fake_camera import FPS, FakeCamera, H, W


def test_calibrate_asks_the_camera_for_its_mode(tmp_path, monkeypatch, capsys):
    from gazeloop.tools.cli import main
    from gazeloop.tools.commands import calibrate

    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    cam = FakeCamera({"width": 640, "height": 480, "fps": 30.0})
    cam.install(monkeypatch)
    seen = []

    class NoModels:  # the grid never runs: no networks to load
        def __init__(self, cfg):
            pass

        def close(self):
            pass

    monkeypatch.setattr(calibrate, "require_display", lambda *a: None)
    monkeypatch.setattr(calibrate, "FastPath", NoModels)
    monkeypatch.setattr(calibrate, "_run_window", lambda args, ls, *a: seen.append(ls.describe()))
    assert main(["calibrate", "--camera-size", "1280", "720"]) == 1  # the grid: "cancelled"
    assert cam.sets == [(W, 1280), (H, 720), (FPS, 60.0)]
    said = "camera 0 (640x480 at 30 fps, asked 1280x720 at 60 fps)"
    assert seen == [said]
    assert said in capsys.readouterr().err


def test_calibrate_headless_refuses_camera_flags(shared, tmp_path, monkeypatch, capsys):
    from gazeloop.tools.cli import main

    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    rec = str(shared / "data/video-corners4")
    argv = ["calibrate", "--headless", "--source", rec, "--camera-size", "640", "480"]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("gazeloop calibrate: --camera-size: only for a camera index")
