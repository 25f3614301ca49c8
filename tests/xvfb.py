"""A real X server for tests: Xvfb on a display it picks itself."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def xvfb(*args: str, size: str = "1600x1000x24") -> Iterator[str]:
    """Start Xvfb with `args` (e.g. "-extension", "RECORD") and yield its display (":N");
    skip the test when Xvfb is missing or does not start."""
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb): no X server")
    r, w = os.pipe()
    try:
        # -displayfd: Xvfb picks a free display and writes its number once it accepts
        # clients, so there is no guessing and no sleeping.
        proc = subprocess.Popen(
            [exe, "-displayfd", str(w), "-screen", "0", size, "-nolisten", "tcp", *args],
            pass_fds=(w,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(w)
    # Read up to the newline: Xvfb writes the number and the newline separately, and dies
    # ("cannot write display number") if the pipe is closed in between.
    buf = b""
    while not buf.endswith(b"\n"):
        ready, _, _ = select.select([r], [], [], 30)
        chunk = os.read(r, 32) if ready else b""
        if not chunk:
            break
        buf += chunk
    os.close(r)
    number = buf.decode().strip()
    if not number.isdigit():
        proc.kill()
        proc.wait()
        pytest.skip("Xvfb did not start (no display number reported)")
    try:
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
