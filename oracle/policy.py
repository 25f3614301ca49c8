"""When the fast path's current frame should become a snapshot for the oracle.

An oracle label is worth seconds of compute and is compared with the fast estimate at the
snapshot's own time, so a snapshot should be taken while that estimate means something: the
eyes are open, the face is tracked and the gaze is resting on one point (not mid-saccade,
where the picture and the estimate disagree by whatever the eye did within a frame). The
unattended policy also spaces snapshots out: the worker labels only the latest anyway, and
the loop gains little from labels seconds apart at the same spot.

It works on primitives (time, screen point, a usable flag) so it knows nothing of the fast
path's types; time is the frames' own `t_ns`, never the wall clock, so a replay decides
exactly as the live run did.
"""

from __future__ import annotations

import math

import numpy as np

# Normalised screen units per second. At a typical 60 cm from a 30 cm-wide laptop screen one
# normalised unit of width spans about 28°, so 0.5/s ≈ 14°/s: far below saccades (above
# ~30°/s, peaks of hundreds) and fast pursuit, far above fixational drift and tremor (under
# 1°/s), and above the jitter of the filtered fast path (a few °/s frame to frame at 60 Hz
# after the One Euro filter). Raise it for an unfiltered or noisier stream.
DEFAULT_MAX_SPEED = 0.5
# A hole in the stream longer than this hides what the eye did (a saccade there and back),
# so a fixation does not span it. Long enough for a dropped frame or two at 30 fps.
DEFAULT_MAX_GAP_MS = 200.0
# The verify key waits this long (stream time, from the first frame it sees) for a usable
# frame, then gives up: a snapshot popping up many seconds later would surprise the user.
DEFAULT_REQUEST_TIMEOUT_S = 3.0
# An unattended snapshot at most this often, and only after a fixation this long.
DEFAULT_MIN_INTERVAL_S = 5.0
DEFAULT_FIXATION_MS = 150.0

_MS = 1_000_000


class SnapshotPolicy:
    """`offer(t_ns, xy, usable)` once per fast-path frame; True means take this frame.

    - unattended: during a stable fixation (speed between consecutive frames below
      `max_speed` for at least `fixation_ms`), with `usable` (face found, eyes open), and at
      most one every `min_interval_s` since the last snapshot of either kind;
    - on demand: after `request()`, the next usable frame, fixation and interval ignored
      (the user pressed the verify key; they know what they are looking at). It expires
      after `request_timeout_s` of stream time without a usable frame.
    `last_on_demand` says which kind the last True was (for `Snapshot.on_demand`).
    """

    def __init__(
        self,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        fixation_ms: float = DEFAULT_FIXATION_MS,
        max_speed: float = DEFAULT_MAX_SPEED,
        *,
        max_gap_ms: float = DEFAULT_MAX_GAP_MS,
        request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        for name, v in (
            ("min_interval_s", min_interval_s),
            ("fixation_ms", fixation_ms),
            ("max_gap_ms", max_gap_ms),
        ):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        if not (math.isfinite(max_speed) and max_speed > 0):
            raise ValueError(f"max_speed must be finite and > 0, got {max_speed}")
        if request_timeout_s is not None and not request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0 or None, got {request_timeout_s}")
        self.min_interval_ns = round(min_interval_s * 1e9)
        self.fixation_ns = round(fixation_ms * _MS)
        self.max_speed = float(max_speed)
        self.max_gap_ns = round(max_gap_ms * _MS)
        self._request_timeout_ns = (
            None if request_timeout_s is None else round(request_timeout_s * 1e9)
        )
        self.last_on_demand = False
        self.last_taken_ns: int | None = None
        self.offered = 0  # frames offered
        self.gaps = 0  # of them, frames that came more than max_gap_ms after the one before
        self._requested = False
        self._request_deadline: int | None = None
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._prev_t: int | None = None
        self._prev_xy: tuple[float, float] | None = None
        self._fix_start: int | None = None

    def reset(self) -> None:
        """Forget everything except a pending request (e.g. the source changed)."""
        self._reset_stream()
        self.last_taken_ns = None

    # --- on demand -----------------------------------------------------------------------

    def request(self) -> None:
        """Take the next usable frame, whatever the fixation and the interval."""
        self._requested = True
        self._request_deadline = None  # starts at the next offered frame: stream time

    def cancel_request(self) -> None:
        self._requested = False
        self._request_deadline = None

    @property
    def requested(self) -> bool:
        return self._requested

    # --- per frame -----------------------------------------------------------------------

    def fixation_ns_at(self, t_ns: int) -> int:
        """How long the current fixation has lasted at `t_ns` (0 when there is none)."""
        return 0 if self._fix_start is None else max(0, t_ns - self._fix_start)

    def offer(self, t_ns: int, xy: np.ndarray | None, usable: bool) -> bool:
        t_ns = int(t_ns)
        if self._prev_t is not None:
            if t_ns == self._prev_t:
                return False  # the same frame twice says nothing new
            if t_ns < self._prev_t:
                self.reset()  # time went back: another stream, old timings mean nothing

        self.offered += 1
        if self._prev_t is not None and t_ns - self._prev_t > self.max_gap_ns:
            self.gaps += 1
        self._track(t_ns, xy, usable)

        if self._requested:
            if self._request_deadline is None and self._request_timeout_ns is not None:
                self._request_deadline = t_ns + self._request_timeout_ns
            if usable:
                return self._take(t_ns, on_demand=True)
            if self._request_deadline is not None and t_ns > self._request_deadline:
                self.cancel_request()

        if self.fixation_ns_at(t_ns) < self.fixation_ns or self._fix_start is None:
            return False
        if self.last_taken_ns is not None and t_ns - self.last_taken_ns < self.min_interval_ns:
            return False
        return self._take(t_ns, on_demand=False)

    def _track(self, t_ns: int, xy: np.ndarray | None, usable: bool) -> None:
        point = None
        if usable and xy is not None:
            x, y = float(xy[0]), float(xy[1])
            if math.isfinite(x) and math.isfinite(y):
                point = (x, y)
        if point is None:
            # A blink or a lost face ends the fixation: the eye may have moved unseen.
            self._fix_start = None
        elif (
            self._fix_start is None
            or self._prev_xy is None
            or self._prev_t is None
            or t_ns - self._prev_t > self.max_gap_ns
        ):
            self._fix_start = t_ns
        else:
            dt_s = (t_ns - self._prev_t) / 1e9
            speed = math.hypot(point[0] - self._prev_xy[0], point[1] - self._prev_xy[1]) / dt_s
            if speed > self.max_speed:
                self._fix_start = t_ns  # the eye has just arrived here; count from now
        self._prev_xy = point
        self._prev_t = t_ns

    def why_none(self) -> str | None:
        """Why no snapshot was taken, when the stream itself is why: frames so far apart
        (stills replayed, a stalled camera) that no fixation can be seen. None otherwise."""
        if self.last_taken_ns is not None or not self.offered or 2 * self.gaps < self.offered:
            return None
        ms = self.max_gap_ns / _MS
        return (
            f"no snapshot: {self.gaps} of {self.offered} frames came more than {ms:.0f} ms after "
            "the one before, so no fixation could be seen (a session of stills has none)"
        )

    def _take(self, t_ns: int, *, on_demand: bool) -> bool:
        self.last_taken_ns = t_ns
        self.last_on_demand = on_demand
        if on_demand:
            self.cancel_request()
        return True
