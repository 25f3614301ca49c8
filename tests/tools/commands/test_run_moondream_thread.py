"""`gazeloop run --oracle moondream --oracle-in thread` without the model stack: the same
one-line refusal (exit 2) as the default process mode, not a traceback (exit 1)."""

from __future__ import annotations

import sys

from gazeloop.tools.cli import main


def test_moondream_in_a_thread_without_transformers_is_one_line(
    shared, c4_profile, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails, as when absent
    video = str(shared / "data/video-corners4/calibrate.mp4")
    argv = ["run", "--source", video, "--headless", "--frames", "3"]
    argv += ["--profile", str(c4_profile), "--oracle", "moondream", "--oracle-in", "thread"]
    # A pin, so no "unpinned" warning shares stderr with the refusal.
    rc = main([*argv, "--code-commit", "0" * 40])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("gazeloop run:")
    assert "transformers<5" in err and "pip install" in err
