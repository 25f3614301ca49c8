"""Third-party C++ log lines stay off stderr unless --verbose; everything else passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gazeloop.tools.runtime.quiet import THIRD_PARTY

GLOG = b"W0000 00:00:1796385761.977471    2325 inference_feedback_manager.cc:114] Feedback manager"


@pytest.mark.parametrize(
    ("line", "dropped"),
    [
        (GLOG, True),
        (b"I1204 12:00:01.5 99 landmark_projection_calculator.cc:186] Using NORM_RECT", True),
        (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", True),
        (b"WARNING: All log messages before absl::InitializeLog() is called are written", True),
        (b"WARNING: Logging before InitGoogle() is written to STDERR", True),  # MediaPipe 1.x
        (b"gazeloop eval: session folder does not exist: /x", False),
        (b"WARNING gazeloop.fastpath.sources: frame 3 unreadable", False),
        (b"Traceback (most recent call last):", False),
        (b"W0000 is not a glog line without the rest", False),
    ],
)
def test_which_lines_are_third_party(line, dropped):
    assert bool(THIRD_PARTY.match(line)) is dropped


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gazeloop", *args], capture_output=True, timeout=300
    )


@pytest.mark.slow
def test_eval_with_the_default_backend_leaves_stderr_empty(shared):
    grid9 = str(shared / "data" / "sessions" / "grid9")
    quiet = _run("eval", grid9, "--json", "--no-cache")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == b""


@pytest.mark.slow
def test_mediapipe_lines_are_dropped_unless_verbose(shared):
    """The `tasks` backend runs MediaPipe's C++ graph, which logs on fd 2 by itself."""
    pytest.importorskip("mediapipe.tasks.python", reason="the mediapipe extra is not installed")
    grid9 = str(shared / "data" / "sessions" / "grid9")
    quiet = _run("eval", grid9, "--json", "--landmarks", "tasks", "--no-cache")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == b""
    loud = _run("-v", "eval", grid9, "--json", "--landmarks", "tasks", "--no-cache")
    assert loud.returncode == 0
    assert any(THIRD_PARTY.match(ln) for ln in loud.stderr.splitlines()), loud.stderr[:500]
    assert quiet.stdout == loud.stdout


@pytest.mark.slow
def test_our_own_error_still_reaches_stderr(tmp_path):
    r = _run("eval", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert r.stderr.decode().strip().startswith("gazeloop eval: ")


@pytest.mark.slow
@pytest.mark.skipif(Path("/dev/video0").exists(), reason="this machine has a camera 0")
def test_a_missing_camera_is_our_one_line_not_opencvs_log():
    r = _run("bench", "fastpath", "--source", "0", "--frames", "1")
    assert r.returncode == 2
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gazeloop bench: cannot open camera 0"), lines
    loud = _run("-v", "bench", "fastpath", "--source", "0", "--frames", "1")
    assert len(loud.stderr.decode().splitlines()) > 1  # OpenCV's own lines, when asked for


@pytest.mark.slow
def test_a_truncated_video_is_our_one_line_not_ffmpegs(shared, tmp_path):
    video = tmp_path / "cut.mp4"
    video.write_bytes((shared / "data/video-corners4/calibrate.mp4").read_bytes()[:50_000])
    r = _run("track", str(video))
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 2 and len(lines) == 1, lines  # FFmpeg's "moov atom not found" too
    assert lines[0].startswith("gazeloop track: cannot open video") and str(video) in lines[0]


LATE_WRITER = r"""
import os, subprocess, sys, time
from pathlib import Path
from gazeloop.tools.runtime.quiet import StderrFilter

go = Path(sys.argv[1]) / "go"
f = StderrFilter()
# A child holding the pipe (as an oracle being killed does) writes only once told to.
child = subprocess.Popen([sys.executable, "-c", (
    "import os, sys, time\n"
    f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
    "os.write(2, b'late line from the child\\n')\n"
)])
f.close(timeout_s=0.05)
other = open(Path(sys.argv[1]) / "other.txt", "wb", buffering=0)  # may reuse a closed fd
go.touch()
child.wait()
f._thread.join(30)
other.close()
"""


def test_a_line_written_after_close_gave_up_waiting_reaches_stderr_not_another_file(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", LATE_WRITER, str(tmp_path)],
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "other.txt").read_bytes() == b""
    assert b"late line from the child" in r.stderr


@pytest.mark.slow
def test_a_reader_that_goes_away_ends_the_command_without_a_traceback(shared):
    """`gazeloop track ... | head -1`: the pipe closes after one line; the command stops
    with SIGPIPE's conventional 141 and says nothing (it printed a BrokenPipeError)."""
    video = str(shared / "data/video-corners4/calibrate.mp4")
    p = subprocess.Popen(
        [sys.executable, "-m", "gazeloop", "track", video, "--jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=300) == 141, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err
