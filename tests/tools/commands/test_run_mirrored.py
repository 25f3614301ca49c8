"""`gazeloop run --mirrored`: a replayed session without session.json that stores selfie
views. run had no way to say so: it read the frames as they lie (σ 1720 px, 5 of 12 labels
refused in an audit) and stored the accepted ones as unflipped frames."""

from __future__ import annotations

from gazeloop.tools.commands import run as run_command
from tests.cli import cli


def test_run_reads_a_replayed_session_as_its_flag_says(shared, monkeypatch):
    grid9 = shared / "data/sessions/grid9"  # selfie views, no session.json
    seen = {}

    def capture(args, ls):
        seen[args.mirrored] = ls.session.mirrored
        return 0

    monkeypatch.setattr(run_command, "_run", capture)
    for flag in ("--mirrored", "--no-mirrored"):
        rc, _, err = cli("run", "--headless", "--source", grid9, "--screen-px", 1920, 1080, flag)
        assert rc == 0, err
    assert seen == {True: True, False: False}
    # Said where it would be ignored: a video, the 4-corner recording's folder (imported,
    # its own reading), a camera.
    c4 = shared / "data/video-corners4"
    for source in (c4 / "calibrate.mp4", c4, "0"):
        rc, _, err = cli("run", "--headless", "--source", source, "--mirrored")
        assert rc == 2 and "--mirrored is for a session folder's images" in err, err
