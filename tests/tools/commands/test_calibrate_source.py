"""`gazeloop calibrate` shows its grid to a camera: a recording as --source without
--headless is refused before anything opens. Its frames never saw the grid's dots, yet they
were labelled with them and a profile could be saved from them."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("source", ["data/video-corners4/calibrate.mp4", "data/sessions/grid9"])
def test_calibrate_refuses_a_recording_without_headless(
    shared, tmp_path, monkeypatch, capsys, source
):
    from gazeloop.tools.cli import main
    from gazeloop.tools.commands import calibrate

    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    grids = []
    # As on a desk with a display: the grid, were it reached, is stood in for.
    monkeypatch.setattr(calibrate, "require_display", lambda *a: None)
    monkeypatch.setattr(calibrate, "_run_window", lambda *a: grids.append(a))
    out, prof = tmp_path / "session", tmp_path / "profile.json"
    argv = ["calibrate", "--source", shared / source, "--out", out, "--profile", prof]
    assert main([str(a) for a in argv]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"gazeloop calibrate: --source {shared / source}: ")
    assert "camera index" in line and "--headless" in line
    assert grids == []
    assert not out.exists() and not prof.exists() and not (tmp_path / "home").exists()


def test_calibrate_still_takes_a_camera_index(tmp_path, monkeypatch):
    from gazeloop.tools.cli import main
    from gazeloop.tools.commands import calibrate
    from tests.fake_camera import FakeCamera

    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    FakeCamera({"width": 640, "height": 480, "fps": 30.0}).install(monkeypatch)

    class NoModels:  # the grid never runs: no networks to load
        def __init__(self, cfg):
            pass

        def close(self):
            pass

    seen = []
    monkeypatch.setattr(calibrate, "require_display", lambda *a: None)
    monkeypatch.setattr(calibrate, "FastPath", NoModels)
    monkeypatch.setattr(calibrate, "_run_window", lambda args, ls, *a: seen.append(ls.kind))
    assert main(["calibrate", "--source", "1"]) == 1  # the stand-in grid: "cancelled"
    assert seen == ["camera"]
