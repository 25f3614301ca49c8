"""SIGTERM taken as Ctrl-C, for commands that end cleanly on an interrupt.

A service manager or `kill` sends SIGTERM, which kills a Python process at once: `run` left
a replay's imported copy behind, and `record` a picture without its label and hidden
temporary files, with a manifest that never said the recording was cut short. Inside
`terminate_as_interrupt()` SIGTERM raises KeyboardInterrupt instead, so the command's own
Ctrl-C path (store what is queued, close, say why it stopped) runs for both.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Only the main thread can set a handler; elsewhere (tests, an embedding program)
    SIGTERM keeps its own."""
    try:
        old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
