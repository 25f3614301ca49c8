"""Recording's clocks: source time to the session format's unix milliseconds, and a rate
gate that keeps frames at a target rate by their own time. The files themselves are written
by `calibration.store.writer.SessionWriter`.
"""

from __future__ import annotations

import time

from gazeloop.fastpath.sources import CameraSource, FrameSource, SessionSource, VideoSource
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.importers import mp4_creation_ms


class UnixClock:
    """Source time (`Frame.t_ns`) → unix milliseconds, the session format's timestamps.

    A session's frames are stamped with their recorded unix time already; a camera's with
    the monotonic clock, whose offset to the wall clock is taken once (so frame spacing stays
    exactly the capture spacing); a video's with media time from 0, placed at the file's own
    creation time when it has one (the same file then gives the same names every run), else
    at the time recording started."""

    def __init__(self, source: FrameSource):
        if isinstance(source, SessionSource):
            self._base_ns = 0
        elif isinstance(source, CameraSource):
            self._base_ns = time.time_ns() - time.monotonic_ns()
        else:
            created = mp4_creation_ms(source.path) if isinstance(source, VideoSource) else None
            self._base_ns = (created if created is not None else time.time_ns() // 1_000_000) * (
                1_000_000
            )

    def ms(self, t_ns: int) -> int:
        return (self._base_ns + int(t_ns)) // 1_000_000


class RateGate:
    """Keep frames at a target rate by their own time. Frames are due on a fixed grid of
    periods (so the average rate is the target even when each frame is a little late), with
    a quarter period of slack for capture jitter (a 30 fps camera recorded at 15 fps would
    otherwise lose every other due frame to a millisecond of lateness); two kept frames are
    never closer than that much less than a period (an irregular source's late frame must
    not be followed at once by the next one on the grid)."""

    def __init__(self, fps: float | None):
        if fps is not None and not fps > 0:
            raise UserError(f"--fps must be positive, got {fps}")
        self.period_ns = None if fps is None else round(1e9 / fps)
        self._due: int | None = None
        self._last: int | None = None

    def keep(self, t_ns: int) -> bool:
        period = self.period_ns
        if period is None:
            return True
        slack = period // 4
        if self._due is not None and (
            t_ns < self._due - slack or t_ns - self._last < period - slack
        ):
            return False
        due = t_ns if self._due is None else self._due
        # Fell behind (a gap in the source): start the grid again from this frame.
        self._due = due + period if due + period > t_ns else t_ns + period
        self._last = t_ns
        return True
