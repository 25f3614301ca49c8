"""`gazeloop run` stopped from outside: SIGTERM as Ctrl-C, the summary said either way."""

from __future__ import annotations

import os
import signal

import pytest


@pytest.fixture
def many_stills(shared, tmp_path):
    """The stills of nine of p1's evit sittings as one session (144 stills, several seconds
    of work): a run that is still going when it is stopped."""
    out = tmp_path / "stills"
    out.mkdir()
    (out / "session.json").symlink_to(shared / "data/evit/p1_s01/session.json")
    for sitting in sorted((shared / "data/evit").glob("p1_s0*")):
        for f in sitting.glob("img_*"):
            if not (out / f.name).exists():
                (out / f.name).symlink_to(f)
    return out


def test_sigterm_stops_a_run_like_ctrl_c_with_its_summary(
    many_stills, tmp_path, monkeypatch, capsys
):
    """SIGTERM killed `run` at once: no summary, labels in the writer's queue not stored, a
    replay's imported copy left behind. Ctrl-C did not say the summary either. The signal
    is sent from inside the third frame's processing, so it lands mid-run every time."""
    from gazeloop.tools.cli import main
    from gazeloop.tools.runtime.live import Live

    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    real, seen = Live.process, []

    def process(self, frame):
        seen.append(frame)
        if len(seen) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, frame)

    monkeypatch.setattr(Live, "process", process)
    before = signal.getsignal(signal.SIGTERM)
    rc = main(["run", "--headless", "--source", str(many_stills), "--oracle", "none"])
    out = capsys.readouterr().out
    assert rc == 130
    (summary,) = [x for x in out.splitlines() if x.startswith("gazeloop run: ")]
    assert summary.startswith("gazeloop run: 2 frames (interrupted);")
    assert len(seen) == 3 and signal.getsignal(signal.SIGTERM) is before  # handed back


def test_the_status_line_says_oracle_failures_and_why_there_is_no_gaze():
    """43 failed oracle calls read as "oracle 0 done"; a gaze model that answers NaN read as
    "eyes closed" on every frame."""
    from types import SimpleNamespace

    from gazeloop.fastpath.types import Quality
    from gazeloop.tools.commands.run import _no_estimate, _oracle_text

    o = {"done": 0, "failed": 43, "timed_out": 2, "bad": 0, "busy": True}
    assert _oracle_text(o | {"last_error": "CUDA out of memory"}) == (
        "oracle 0 done, 43 failed, 2 timed out (last: CUDA out of memory) (busy)"
    )
    assert _oracle_text({"done": 5, "busy": False}) == "oracle 5 done"
    nan = Quality(face=True, error="gaze model output is not finite")
    assert _no_estimate(SimpleNamespace(quality=nan)) == "no gaze: gaze model output is not finite"
    assert _no_estimate(SimpleNamespace(quality=Quality(face=True))) == "eyes closed"
    assert _no_estimate(SimpleNamespace(quality=Quality())) == "no face"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--settle", "nan"], "--settle must be a number of seconds >= 0"),
        (["--capture", "0"], "--capture must be at least 1 frame"),
        (["--oracle-threads", "7"], "--oracle-in and --oracle-threads are for --oracle moondream"),
        (["--mqtt-wait", "99"], "--mqtt-wait are for the broker: give --mqtt URL too"),
    ],
)
def test_flags_run_would_ignore_or_check_too_late_are_refused_at_once(
    shared, tmp_path, monkeypatch, capsys, flags, says
):
    """The c key's grid flags were checked only when c was pressed, and flags for a model
    oracle or a broker the run does not have were taken and ignored."""
    from gazeloop.tools.cli import main

    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    video = str(shared / "data/video-corners4/calibrate.mp4")
    argv = ["run", "--headless", "--source", video, "--frames", "2", "--oracle", "none"]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def test_a_profile_where_names_were_kept_before_is_used_only_by_its_own_user(
    shared, tmp_path, monkeypatch, capsys
):
    """Names with spaces or other letters had their profile in a folder several names
    shared ("李雷" and "王芳" were both "_"); they are one-to-one now, and a profile left in
    the old place is used by the user and device it names, said, and by nobody else."""
    import json

    from gazeloop.calibration.profile import legacy_profile_path, profile_path
    from gazeloop.tools.cli import main

    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    grid9 = shared / "data/sessions/grid9"
    made = tmp_path / "p.json"
    flags = ["--mirrored", "--screen-px", "1920", "1080", "--save-profile", str(made), "--json"]
    assert main(["eval", str(grid9), *flags]) == 0
    old = legacy_profile_path("李雷", "laptop")
    old.parent.mkdir(parents=True)
    doc = json.loads(made.read_text()) | {"user": "李雷", "device": "laptop"}
    old.write_text(json.dumps(doc))
    capsys.readouterr()
    run = ["run", "--headless", "--source", str(grid9), "--frames", "2", "--oracle", "none"]
    assert main([*run, "--user", "李雷", "--device", "laptop"]) == 0
    out = capsys.readouterr().out
    assert f"profile: {old} (where it was kept before; a calibration saves it to " in out
    assert "no calibration profile" not in out
    assert main([*run, "--user", "王芳", "--device", "laptop"]) == 0  # the same old file
    out = capsys.readouterr().out
    assert f"no calibration profile for 王芳/laptop yet ({profile_path('王芳', 'laptop')})" in out
