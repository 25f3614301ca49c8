"""Bad input on the command line: one clear line naming the flag, exit 2, never a traceback
and never a silent wrong result (issue 16's corpus, the part that needs no data written)."""

from __future__ import annotations

import pytest

from gazeloop.tools.cli import main

GRID9 = "../shared/data/sessions/grid9"


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["track", GRID9, "--frames", "-1"], "--frames: must be a positive integer, got '-1'"),
        (["track", GRID9, "--frames", "0"], "--frames: must be a positive integer"),
        (["eval", GRID9, "--distance-mm", "-600"], "--distance-mm: must be a positive number"),
        (["eval", GRID9, "--distance-mm", "nan"], "--distance-mm: must be a positive number"),
        (["eval", GRID9, "--screen-px", "0", "0"], "--screen-px: must be a positive integer"),
        (["eval", GRID9, "--screen-mm", "300", "-1"], "--screen-mm: must be a positive number"),
        (["bench", "fastpath", "--source", GRID9, "--frames", "-5"], "--frames: must be a"),
        (["record", "out", "--seconds", "0"], "--seconds: must be a positive number"),
        (["record", "out", "--fps", "inf"], "--fps: must be a positive number"),
        (["run", "--frames", "-3"], "--frames: must be a positive integer"),
        # --screen-px 0 0 gave nine "outside the screen 0x0" lines, then "no usable pairs".
        (["track", GRID9, "--screen-px", "0", "0"], "--screen-px: must be a positive integer"),
        (["profile", "fit", GRID9, "--screen-px", "0", "0"], "--screen-px: must be a positive"),
        (["calibrate", "--headless", "--screen-px", "0", "1"], "--screen-px: must be a positive"),
        (["record", "out", "--screen-px", "1920", "0"], "--screen-px: must be a positive"),
        (["train", "--out", "o", "--screen-px", "0", "0"], "--screen-px: must be a positive"),
        (["track", GRID9, "--threads", "0"], "--threads: must be a positive integer"),
        (["demo", "--passes", "0"], "--passes: must be a positive integer"),
        (["demo", "--snapshot-every", "-1"], "--snapshot-every: must be a positive number"),
        (["import", "corners4", "a", "b", "--settle-frames", "-1"], "must be a non-negative"),
        (["bench", "loop", "--session", GRID9, "--seeds", "0"], "--seeds: must be a positive"),
        # numpy's "expected non-negative integer" traceback, after the networks had run.
        (["bench", "loop", "--session", GRID9, "--seed", "-1"], "--seed: must be a non-negative"),
        (["oracle", "eval", GRID9, "--oracle", "clicks", "--seed", "-1"], "--seed: must be a"),
        (["bench", "loop", "--session", GRID9, "--outlier-rate", "2"], "a fraction from 0 to 1"),
        (["train", "--out", "o", "--lr", "0"], "--lr: must be a positive number"),
        (["train", "--out", "o", "--calib-min", "0"], "--calib-min: must be a positive integer"),
        (["run", "--snapshot-every", "nan"], "--snapshot-every: must be a non-negative number"),
        (["run", "--oracle-threads", "0"], "--oracle-threads: must be a positive integer"),
        # These three were tracebacks.
        (["bench", "mapping", "--mapping", "bogus"], "--mapping: unknown ['bogus']"),
        # Refused by the profile only after the fast path had run.
        (["eval", GRID9, "--features", "gaze_yaw,gaze_pitch,gaze_yaw"], "more than once"),
        # "cannot open camera 0": --headless replays a recording, and none was named.
        (["calibrate", "--headless"], "--headless replays a recording: give --source"),
        (["bench", "mapping", "--mapping", "poly2", "--targets", "4"], "'poly2' needs at least 5"),
        # A GeometryError traceback: its features are not in the synthetic calibration.
        (["bench", "mapping", "--mapping", "geometric"], "--mapping geometric: it reads named"),
        (
            ["bench", "fastpath", "--source", "../shared/data/video-corners4/no_face.jpg"],
            "no_face.jpg: a still image",
        ),
        # Taken and ignored without --calibrate-on; a video called "no such folder".
        (["bench", "loop", "--session", GRID9, "--label-targets", "1,2"], "give --calibrate-on"),
        # In-sample numbers reported as another sitting's.
        (
            ["bench", "loop", "--session", GRID9, "--calibrate-on", GRID9 + "/"],
            "--calibrate-on is --session itself",
        ),
        (
            [
                "oracle",
                "eval",
                "../shared/data/video-corners4/calibrate.mp4",
                "--oracle",
                "targets",
            ],
            "calibrate.mp4: a file; oracle eval reads a labelled session folder",
        ),
    ],
)
def test_numbers_out_of_bounds_are_one_line_errors(argv, says, capsys):
    rc, err = _run(argv, capsys)
    assert rc == 2 and says in err and "Traceback" not in err
    # The line, and where the usage is; not argparse's whole usage first (19 lines for run).
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b"\xff\xfe\x00\x01", "cannot read config"),
        (b'{"filter_params": {"min_cutoff": NaN}}', "filter_params.min_cutoff: Input should be a"),
        (b'{"filter_params": {"bogus": 1.0}}', "filter 'one_euro' does not take bogus"),
        (b'{"filter": "kalman", "filter_params": {"min_cutoff": 1.0}}', "does not take"),
        (b'{"threads": "many"}', "threads: Input should be a valid integer"),
        (b'{"threads": 100000}', "threads: Input should be less than or equal to 128"),
        (b'{"still_gap_s": -1}', "still_gap_s: Input should be greater than 0"),
        (b'{"surprise": 1}', "surprise: not a known field"),
    ],
)
def test_a_bad_config_file_is_one_line_before_anything_runs(tmp_path, capsys, text, says):
    """A binary file and bad filter parameters were tracebacks (eval-sittings took the
    parameters silently), 100000 threads hung onnxruntime, the rest were pydantic's dump."""
    cfg = tmp_path / "cfg.json"
    cfg.write_bytes(text)
    for argv in (["eval", GRID9], ["eval-sittings", "../shared/data/evit"], ["track", GRID9]):
        rc, err = _run([*argv, "--config", str(cfg)], capsys)
        assert rc == 2 and says in err and str(cfg) in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err


def test_a_filter_without_parameters_runs(shared, capsys):
    """`--filter none` used to get the 1€ filter's defaults and fail with a traceback."""
    rc, err = _run(["track", str(shared / "data/sessions/grid9"), "--filter", "none"], capsys)
    assert rc == 0, err


def test_a_camera_that_is_not_there_is_named_not_a_crash(shared, capsys):
    """`bench fastpath --source 0` crashed on every machine (a camera takes no `loop`)."""
    rc, err = _run(["bench", "fastpath", "--source", "7", "--frames", "5"], capsys)
    assert rc == 2 and "cannot open camera 7" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_profile_place_that_cannot_hold_one_is_said_not_taken_for_no_profile(
    shared, tmp_path, capsys, monkeypatch
):
    """A folder where the profile should be, or GAZELOOP_HOME being a file, ran on with
    "no calibration profile yet"; calibrating would then fail on the same thing."""
    video = str(shared / "data/video-corners4/calibrate.mp4")
    argv = ["run", "--headless", "--source", video, "--frames", "3", "--oracle", "none"]
    rc, err = _run([*argv, "--profile", str(tmp_path)], capsys)
    assert rc == 2 and f"{tmp_path}: a folder, not a profile" in err, err
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("GAZELOOP_HOME", str(home))
    rc, err = _run(argv, capsys)
    assert rc == 2 and f"{home} is a file, not a folder" in err, err


def test_argparse_errors_are_one_line_with_where_the_usage_is(capsys):
    """argparse printed the whole usage first: 19 lines for `run`."""
    rc, err = _run(["run", "--frames", "0"], capsys)
    assert rc == 2 and err.strip().splitlines() == [
        "gazeloop run: error: argument --frames: must be a positive integer, got '0' "
        "(usage: gazeloop run -h)"
    ]


def test_a_link_loop_and_training_data_given_twice_are_one_line(tmp_path, capsys):
    """A link loop was Python's RuntimeError from Path.resolve(); `train --data S --data S/`
    trained on the same frames twice and its validation read 51 px against an honest 168."""
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    loop = str(tmp_path / "a")
    rc, err = _run(["profile", "fit", loop, "--out", str(tmp_path / "p.json")], capsys)
    assert rc == 2 and f"{loop}: cannot follow its links" in err, err
    assert len(err.strip().splitlines()) == 1
    rc, err = _run(["train", "--labels", loop, "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    s = "../shared/data/evit/p1_s00"
    argv = ["train", "--data", s, "--data", s + "/", "--out", str(tmp_path / "r2")]
    rc, err = _run(argv, capsys)
    assert rc == 2 and "is given twice" in err and "each source once" in err, err
    assert not (tmp_path / "r2").exists()


def test_a_sitting_given_twice_and_a_profile_that_cannot_be_saved_are_said_first(tmp_path, capsys):
    """`profile fit S S` pooled a sitting with itself (75.8 px against its own 85.6);
    `eval --save-profile` under a file was found after the whole evaluation."""
    s = "../shared/data/evit/p1_s00"
    rc, err = _run(["profile", "fit", s, s + "/", "--out", str(tmp_path / "p.json")], capsys)
    assert rc == 2 and "is given twice" in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "file").write_text("x")
    rc, err = _run(["eval", s, "--save-profile", str(tmp_path / "file" / "p.json")], capsys)
    assert rc == 2 and f"{tmp_path / 'file'} is a file, not a folder" in err, err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (
            ["run", "--headless", "--frames", "1", "--oracle", "none", "--move-cursor"],
            "--move-cursor",
        ),
        (
            ["record", "OUT", "--label", "cursor", "--screen-px", "1280", "720", "--frames", "1"],
            "--label cursor",
        ),
    ],
)
def test_the_pointer_without_a_desktop_says_so_not_pip_install(shared, tmp_path, argv, flag):
    """pynput is installed; what fails is reaching a desktop (no DISPLAY): the import's
    own reason is said, not an advice to install what is there."""
    import os
    import subprocess
    import sys

    video = str(shared / "data/video-corners4/calibrate.mp4")
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv] + ["--source", video]
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["GAZELOOP_HOME"] = str(tmp_path / "home")
    p = subprocess.run(
        [sys.executable, "-m", "gazeloop", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert f"{flag} needs pynput and a desktop session: " in line and "pip install" not in line
