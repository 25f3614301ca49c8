"""`gazeloop run --oracle clicks|auto`: which runs get a click labeller."""

from __future__ import annotations

import argparse

from gazeloop.tools.cli import main
from gazeloop.tools.commands.run import _resolve_oracle
from gazeloop.tools.runtime.labelled import open_labelled


def test_auto_is_no_oracle_for_a_recording_and_explicit_choices_stand(shared):
    ls = open_labelled(str(shared / "data/video-corners4/calibrate.mp4"))
    try:
        for given, resolved in (("auto", "none"), ("clicks", "clicks"), ("none", "none")):
            args = argparse.Namespace(oracle=given)
            _resolve_oracle(args, ls)
            assert (args.oracle, args.oracle_auto) == (resolved, given == "auto")
    finally:
        ls.close()


def test_clicks_without_a_profile_is_a_clear_error(shared, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    video = shared / "data/video-corners4/calibrate.mp4"
    rc = main(["run", "--source", str(video), "--headless", "--frames", "3", "--oracle", "clicks"])
    err = capsys.readouterr().err
    assert rc == 2 and "calibrate first" in err and "Traceback" not in err
