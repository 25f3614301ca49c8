"""A progress line for commands that work for more than a few seconds before they print
anything (`eval`, `import`, `bench loop`, `profile fit`, `calibrate --headless`, `models
build`): `gazeloop eval: 14 s, frame 120 of 740`, rewritten in place once a second on
stderr and erased when the work ends, so the result is printed as if it had never been there.

Only on a terminal: a pipe, a log file or a test's capture gets nothing, and stdout (where
`--json` goes) is never touched. A background thread draws, so the work itself needs no
hooks; a stage that knows how far it is says so with `note()`.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

# Where progress goes when no stream is given: the command line points it at the terminal
# itself, since its stderr filter forwards whole lines only (`tools.runtime.quiet`).
_terminal: TextIO | None = None


def use_terminal(stream: TextIO | None) -> None:
    """Progress goes to `stream` from now on; the one it replaces is closed (it was ours)."""
    global _terminal
    if _terminal is not None and _terminal is not stream:
        _terminal.close()
    _terminal = stream


class Progress:
    """`with Progress("eval"): ...`; `note("frame 3 of 9")` from the work, if it can."""

    def __init__(
        self,
        label: str,
        *,
        after_s: float = 2.0,
        every_s: float = 1.0,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ):
        self.label = label
        self.after_s, self.every_s = after_s, every_s
        self.stream = stream or _terminal or sys.stderr
        self.enabled = _is_tty(self.stream) if enabled is None else enabled
        self.text = ""
        self._t0 = time.monotonic()
        self._width = 0  # of the line on screen, to erase it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def note(self, text: str) -> None:
        self.text = text  # a str assignment: atomic, the drawing thread reads the latest

    def line(self, elapsed_s: float) -> str:
        tail = f", {self.text}" if self.text else ""
        return f"gazeloop {self.label}: {elapsed_s:.0f} s{tail}"

    def tick(self, elapsed_s: float | None = None) -> None:
        """Draw the line now (the thread calls this; so may a test, with the time)."""
        if not self.enabled:
            return
        elapsed = time.monotonic() - self._t0 if elapsed_s is None else elapsed_s
        text = self.line(elapsed)
        pad = " " * max(0, self._width - len(text))
        self.stream.write(f"\r{text}{pad}")
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def __enter__(self) -> Progress:
        self._t0 = time.monotonic()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.clear()

    def _run(self) -> None:
        # Nothing for work that ends quickly: a line that flashes is noise.
        if self._stop.wait(self.after_s):
            return
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.every_s)


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
