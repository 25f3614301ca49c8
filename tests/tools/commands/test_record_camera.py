"""`gazeloop record` from a camera: --camera-fps (default 60) and --camera-size reach the
driver, and the session says the mode it was recorded at; with another source the flags
are refused. cv2.VideoCapture is a fake (no camera in CI)."""

from __future__ import annotations

import json

from tests.fake_camera import FPS, FakeCamera, H, W


def test_record_asks_the_camera_for_its_mode(tmp_path, monkeypatch, capsys):
    from gazeloop.tools.cli import main

    cam = FakeCamera({"width": 320, "height": 240, "fps": 60.0})
    cam.install(monkeypatch)
    out = tmp_path / "rec"
    argv = ["record", str(out), "--source", "0", "--camera-size", "320", "240", "--frames", "2"]
    assert main([*argv, "--point", "5", "5", "--screen-px", "100", "100"]) == 0
    assert cam.sets == [(W, 320), (H, 240), (FPS, 60.0)]
    said = "camera 0 (320x240 at 60 fps, asked 320x240 at 60 fps)"
    assert said in capsys.readouterr().out
    assert said in json.loads((out / "session.json").read_text())["source"]


def test_record_refuses_camera_flags_for_a_video(shared, tmp_path, capsys):
    from gazeloop.tools.cli import main

    video = str(shared / "data/video-corners4/calibrate.mp4")
    argv = ["record", str(tmp_path / "rec"), "--source", video, "--camera-fps", "30"]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("gazeloop record: --camera-fps: only for a camera index")
    assert not (tmp_path / "rec").exists()


def test_a_recording_that_loses_its_camera_keeps_its_frames_and_exits_1(
    tmp_path, monkeypatch, capsys
):
    """It exited 0, as if the recording had ended as asked."""
    from gazeloop.fastpath import sources
    from gazeloop.tools.cli import main

    class QuickCamera(sources.CameraSource):  # reopen back-off: no real waiting in a test
        def __init__(self, *a, **kw):
            super().__init__(*a, **{**kw, "backoff_s": 0.001})

    monkeypatch.setattr(sources, "CameraSource", QuickCamera)
    FakeCamera(frames=3).install(monkeypatch)
    out = tmp_path / "rec"
    argv = ["record", str(out), "--source", "0", "--point", "5", "5", "--screen-px", "100", "100"]
    assert main(argv) == 1
    said = capsys.readouterr().out.splitlines()
    assert said[-1].startswith("gazeloop record: failed: camera 0 stopped delivering frames")
    assert said[-1].endswith("the frames before it are kept")
    from gazeloop.calibration.store.session import read_session

    session = read_session(out)  # whole, readable, and saying why it ended
    assert len(session.items) >= 1 and "stopped delivering frames" in session.manifest.notes
