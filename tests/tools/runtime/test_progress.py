"""The progress line: drawn in place on a terminal, erased at the end, nothing elsewhere."""

from __future__ import annotations

import io

from gazeloop.tools.runtime.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_is_drawn_in_place_and_erased():
    out = _Tty()
    p = Progress("eval", stream=out, after_s=3600)  # the thread never draws: ticks by hand
    with p:
        p.tick(elapsed_s=4.2)
        p.note("frame 120 of 740")
        p.tick(elapsed_s=5.0)
    drawn = out.getvalue()
    first, second = "gazeloop eval: 4 s", "gazeloop eval: 5 s, frame 120 of 740"
    assert drawn == f"\r{first}\r{second}\r{' ' * len(second)}\r"


def test_a_shorter_line_covers_the_longer_one_before_it():
    out = _Tty()
    p = Progress("import", stream=out, enabled=True)
    p.note("a long note")
    p.tick(elapsed_s=1)
    p.note("")
    p.tick(elapsed_s=2)
    long = "gazeloop import: 1 s, a long note"
    assert out.getvalue() == f"\r{long}\r{'gazeloop import: 2 s'.ljust(len(long))}"


def test_nothing_is_written_where_stderr_is_not_a_terminal():
    out = io.StringIO()  # a pipe, a log file, a test capture
    p = Progress("bench loop", stream=out, after_s=0)
    with p:
        p.tick(elapsed_s=10)
    assert not p.enabled and out.getvalue() == ""
