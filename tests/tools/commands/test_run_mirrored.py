"""`gazeloop run --mirrored`: a replayed session without session.json that stores selfie
views. run had no way to say so: it read the frames as they lie (σ 1720 px, 5 of 12 labels
refused in an audit) and stored the accepted ones as unflipped frames."""

from __future__ import annotations

import pytest

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


@pytest.mark.slow
def test_run_reads_a_folder_that_says_nothing_as_the_profiles_frames_were(
    shared, gaze_onnx, tmp_path, monkeypatch
):
    """Without --mirrored, run read grid9 (selfie views, no session.json) as it lies while
    its profile was fitted on the frames flipped back, as `track` and `eval --profile` read
    them: every point came out mirrored across the screen (an audit: 1164 px off). The
    frames run reads are the ones `track --profile` reads, whose points the track tests
    check against the targets."""
    grid9 = shared / "data/sessions/grid9"
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    read = {}
    live = run_command._live

    def seen(args, ls, *rest):
        read[args.profile.name] = ls.source.unmirror
        return live(args, ls, *rest)

    monkeypatch.setattr(run_command, "_live", seen)
    for flag in ("--mirrored", "--no-mirrored"):
        prof = tmp_path / f"g9{flag}.json"
        fit = ["profile", "fit", grid9, "--screen-px", 1920, 1080, flag, "--out", prof]
        assert cli(*fit)[0] == 0
        rc, _, err = cli(
            "run", "--headless", "--source", grid9, "--profile", prof, "--oracle", "none",
            "--frames", 2, "--no-watch-models",
        )  # fmt: skip
        assert rc == 0, err
    assert read == {"g9--mirrored.json": True, "g9--no-mirrored.json": False}
    # The flag still wins over the profile.
    prof = tmp_path / "g9--mirrored.json"
    rc, _, err = cli(
        "run", "--headless", "--source", grid9, "--profile", prof, "--oracle", "none",
        "--frames", 2, "--no-watch-models", "--no-mirrored",
    )  # fmt: skip
    assert rc == 0, err
    assert read["g9--mirrored.json"] is False
