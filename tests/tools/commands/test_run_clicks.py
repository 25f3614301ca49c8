"""`gazeloop run --oracle clicks|auto`: which runs get a click labeller."""

from __future__ import annotations

import argparse

import pytest

from gazeloop.tools.cli import main
from gazeloop.tools.commands.run import _resolve_oracle
from gazeloop.tools.runtime.labelled import open_labelled


def test_auto_is_no_oracle_for_a_recording_and_explicit_choices_stand(shared):
    ls = open_labelled(str(shared / "data/video-corners4/calibrate.mp4"))
    try:
        for given, resolved in (("auto", "none"), ("clicks", "clicks"), ("none", "none")):
            args = argparse.Namespace(oracle=given, move_cursor=False, headless=True)
            _resolve_oracle(args, ls)
            assert (args.oracle, args.oracle_auto) == (resolved, given == "auto")
    finally:
        ls.close()


def test_clicks_never_label_a_pointer_that_follows_the_gaze(capsys):
    """With --move-cursor the pointer sits on the tracker's estimate: a click there was
    taken as a label of that estimate (the loop saw no drift, the trainer its own answers)."""
    from types import SimpleNamespace

    from gazeloop.fastpath.sources import CameraSource
    from gazeloop.tools.errors import UserError

    camera = SimpleNamespace(source=CameraSource.__new__(CameraSource))  # none is opened
    for move, resolved in ((False, "clicks"), (True, "none")):
        args = argparse.Namespace(oracle="auto", move_cursor=move, headless=False)
        _resolve_oracle(args, camera)
        assert args.oracle == resolved
    assert "no click labels: --move-cursor puts the pointer" in capsys.readouterr().out
    args = argparse.Namespace(oracle="clicks", move_cursor=True, headless=False)
    with pytest.raises(UserError, match="--oracle clicks with --move-cursor"):
        _resolve_oracle(args, camera)


def test_clicks_without_a_profile_is_a_clear_error(shared, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    video = shared / "data/video-corners4/calibrate.mp4"
    rc = main(["run", "--source", str(video), "--headless", "--frames", "3", "--oracle", "clicks"])
    err = capsys.readouterr().err
    assert rc == 2 and "calibrate first" in err and "Traceback" not in err


def test_moondream_without_a_pin_is_refused_before_any_model_loads(
    shared, capsys, tmp_path, monkeypatch
):
    """`run --oracle moondream` could never start: no reviewed commit is recorded and `run`
    had no way to give one. Its pin flags are `oracle eval`'s, checked before the models."""
    video = str(shared / "data/video-corners4/calibrate.mp4")
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    base = ["run", "--source", video, "--headless", "--frames", "3"]
    assert main([*base, "--oracle", "moondream"]) == 2
    err = capsys.readouterr().err
    assert "no reviewed commit" in err and "--code-commit SHA" in err
    assert "--moondream-unpinned" in err and err.count("\n") == 1
    assert main([*base, "--oracle", "targets", "--code-commit", "a" * 40]) == 2
    assert "are for --oracle moondream" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main([*base, "--oracle", "moondream", "--code-commit", "xyz"])
    assert "not a 40-hex commit hash: 'xyz'" in capsys.readouterr().err


def test_moondream_pin_flags_make_its_config():
    from gazeloop.tools.commands._args import moondream_config

    def cfg(commit=None, unpinned=False, weights=True):
        ns = argparse.Namespace(code_commit=commit, moondream_unpinned=unpinned)
        return moondream_config(ns, loads_weights=weights)

    pinned = cfg("b" * 40)
    assert (pinned.code_commit, pinned.allow_unpinned) == ("b" * 40, False)
    loose = cfg(unpinned=True)
    assert (loose.code_commit, loose.allow_unpinned) == (None, True)
    assert cfg(weights=False).code_commit is None  # the double runs no remote code


def test_screenshot_flags_are_checked_before_the_run(shared, capsys, tmp_path, monkeypatch):
    """--screenshot was written with an unchecked cv2.imwrite at the end: a picture with no
    window, or a name cv2 cannot encode, was silently lost after the whole run."""
    from gazeloop.tools.commands.run import _check_screenshot
    from gazeloop.tools.errors import UserError

    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    video = str(shared / "data/video-corners4/calibrate.mp4")
    base = ["run", "--source", video, "--frames", "3", "--oracle", "none"]
    assert main([*base, "--headless", "--screenshot", str(tmp_path / "s.png")]) == 2
    assert "--headless has no window" in capsys.readouterr().err

    def check(path):
        _check_screenshot(argparse.Namespace(headless=False, screenshot=path))

    check(tmp_path / "s.png")
    with pytest.raises(UserError, match="name a .png or .jpg file"):
        check(tmp_path / "s.txt")
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(OSError, match="taken.png: exists and is a folder"):
        check(tmp_path / "taken.png")
