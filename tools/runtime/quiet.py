"""Keep third-party C++ log lines off the user's terminal.

MediaPipe's C++ core logs through absl/glog straight to file descriptor 2 ("W0000 ...
inference_feedback_manager.cc:114] ...", TensorFlow Lite's "INFO: Created ... delegate"),
bypassing Python's logging, on every command; no environment variable silences them (absl
reads none before `InitializeLog`). A user reads them as errors. So the command line points
fd 2 at a pipe and a thread forwards every line except those: our own warnings and errors,
Python tracebacks and any other program's output pass unchanged. `--verbose` keeps all.
"""

from __future__ import annotations

import os
import re
import sys
import threading

# glog/absl's prefix: severity, MMDD or 0000, time, thread id, file:line]
THIRD_PARTY = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w./-]+:\d+\] "
    rb"|INFO: Created TensorFlow Lite"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|WARNING: Logging before InitGoogle\(\) is written to STDERR)"
)


def silence_opencv() -> None:
    """OpenCV's own log off: probing a camera index that is not there prints a dozen C++
    lines ("[ WARN:0@1.1] global cap_v4l.cpp ...", an FFMPEG exception text over several
    lines) that read as a crash, and a multi-line record cannot be filtered line by line.
    Our own message says what failed; `-v` leaves OpenCV's log as it is."""
    # FFmpeg, inside OpenCV, logs through its own channel ("[mov,mp4,...] moov atom not
    # found" before our one line on a truncated video); OpenCV reads this when it opens one.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    logging_mod = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_mod is not None and hasattr(logging_mod, "setLogLevel"):
        logging_mod.setLogLevel(logging_mod.LOG_LEVEL_SILENT)


class StderrFilter:
    """fd 2 → pipe → (filter) → the real stderr. `close` restores fd 2 and drains the pipe."""

    def __init__(self, pattern: re.Pattern[bytes] = THIRD_PARTY):
        self.pattern = pattern
        self.dropped = 0
        sys.stderr.flush()
        self._real = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
        self._thread = threading.Thread(target=self._pump, args=(r,), daemon=True, name="stderr")
        self._thread.start()

    def _pump(self, r: int) -> None:
        with os.fdopen(r, "rb", buffering=0) as pipe:
            buf = b""
            while chunk := pipe.read(65536):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                self._forward(lines)
            if buf:
                self._forward([buf])

    def _forward(self, lines: list[bytes]) -> None:
        keep = [ln for ln in lines if not self.pattern.match(ln)]
        self.dropped += len(lines) - len(keep)
        if keep:
            os.write(self._real, b"".join(ln + b"\n" for ln in keep))

    def close(self, timeout_s: float = 1.0) -> None:
        """Restore fd 2. Lines already written are forwarded first; a child process still
        holding the pipe (an oracle being killed) is waited for at most `timeout_s`; then
        the forwarding thread keeps its copy of the real stderr open (closed under it, its
        late lines would be lost, or written to whatever file next took that number)."""
        sys.stderr.flush()
        os.dup2(self._real, 2)  # our copy of the pipe's write end closes with this
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            os.close(self._real)
