"""One time base on the wire: a sample's capture time on the wall clock, converted once, at
the source, plus a monotonic stamp for judging staleness.

Frames carry their source's own time (`Frame.t_ns`, see `fastpath.sources`): a camera's
monotonic capture time, a video's media time from 0, a session's recorded unix time. Those
three cannot be told apart by value, so the conversion to the wall clock must be made by
something that knows the source — `recording.UnixClock`, the same conversion `record` uses
to name a session's files, so a stream and a recording of the same frames share their
times. Converting anywhere later (the publisher once added "wall minus monotonic" to every
`t_ns`) counted a session's unix time twice (the year 2081) and judged a video's media
time as minutes old.

Staleness is a different question ("has this point been waiting too long to be worth
sending?") and is answered by this process's monotonic clock: for a camera, from the
capture itself (`t_ns` is already monotonic); for a replay, from when the frame was read,
so a file replays at its own pace, however much faster or slower than real time that is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gazeloop.fastpath.sources import CameraSource, FrameSource
from gazeloop.tools.runtime.recording import UnixClock


@dataclass(frozen=True, slots=True)
class SampleTime:
    """When a sample was captured (unix ms) and this process's monotonic clock at that
    moment (camera) or when its frame was read (replays)."""

    epoch_ms: int
    mono_ns: int

    @classmethod
    def now(cls) -> SampleTime:
        """Both clocks read back to back: for samples made on the spot."""
        mono = time.monotonic_ns()
        return cls(time.time_ns() // 1_000_000, mono)

    def age_ns(self, now_mono_ns: int) -> int:
        return now_mono_ns - self.mono_ns


class SourceClock:
    """Frame time of one source → `SampleTime`. Made once per source: a camera's
    monotonic-to-wall offset is read once, so the spacing of the stamps is exactly the
    capture spacing (a wall clock stepped by NTP mid-run does not bend the stream)."""

    def __init__(self, source: FrameSource) -> None:
        self.unix = UnixClock(source)
        self.live = isinstance(source, CameraSource)

    def ms(self, t_ns: int) -> int:
        """The frame's capture time, unix ms (what the label store and sessions keep)."""
        return self.unix.ms(t_ns)

    def stamp(self, t_ns: int) -> SampleTime:
        mono = int(t_ns) if self.live else time.monotonic_ns()
        return SampleTime(self.unix.ms(t_ns), mono)


__all__ = ["SampleTime", "SourceClock"]
