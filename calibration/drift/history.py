"""A bounded, time-indexed buffer of fast-path samples.

The calibration loop needs the fast estimate at the *time of a snapshot*, which the oracle
answers seconds later; this buffer keeps recent samples so that estimate can be looked up
(or interpolated) then. The fast-path thread appends; the loop and the UI read.

Times are integer nanoseconds in the source's own clock (`Frame.t_ns`). The age bound is
measured from the newest sample in the buffer, not from the wall clock, so a video or a
recorded session replayed faster or slower than real time keeps the same window.
"""

from __future__ import annotations

import math
import operator
import threading
from typing import NamedTuple

import numpy as np
from sortedcontainers import SortedDict


class Entry(NamedTuple):
    t_ns: int
    xy: np.ndarray  # read-only: it is shared with the buffer and other readers
    payload: object | None


class History:
    """Samples keyed by time, bounded by age (`max_age_s`) and count (`max_len`).

    Each value is a small 1-D float array (screen xy, gaze yaw/pitch, ...) whose length is
    fixed by the first append for the life of the buffer. Appends may come out of order
    (they are inserted in time order); an append at an existing time replaces that sample.
    All methods are thread-safe; every lock hold is short (a few tree operations, or one
    list of references for `window`).
    """

    def __init__(self, max_age_s: float = 60.0, max_len: int = 8192) -> None:
        if not (math.isfinite(max_age_s) and max_age_s > 0):
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_age_ns = int(round(max_age_s * 1e9))
        self.max_len = int(max_len)
        self._data: SortedDict = SortedDict()  # t_ns -> (xy, payload)
        self._dim: int | None = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int | None:
        """Length of the stored arrays, or None before the first append."""
        return self._dim

    def append(self, t_ns: int, xy: np.ndarray, payload: object | None = None) -> None:
        t_ns = operator.index(t_ns)  # a float time here is a unit bug: refuse it
        # Copied and frozen outside the lock, so readers can be handed the array itself.
        value = np.array(xy, dtype=np.float64)
        if value.ndim != 1 or value.size == 0:
            raise ValueError(f"xy must be a non-empty 1-D array, got shape {value.shape}")
        if not np.isfinite(value).all():
            # A NaN stored here would be interpolated into the loop's residual and poison
            # the calibration offset; append only usable estimates.
            raise ValueError(f"xy must be finite, got {value}")
        value.flags.writeable = False
        with self._lock:
            if self._dim is None:
                self._dim = value.size
            elif value.size != self._dim:
                raise ValueError(f"xy has {value.size} values; this history holds {self._dim}")
            data = self._data
            data[t_ns] = (value, payload)
            while len(data) > self.max_len:
                data.popitem(0)
            oldest_kept = data.peekitem(-1)[0] - self.max_age_ns
            while data.peekitem(0)[0] < oldest_kept:
                data.popitem(0)

    def at(self, t_ns: int, max_gap_ns: int) -> np.ndarray | None:
        """The value at `t_ns`: the sample itself on an exact hit, else linear
        interpolation between the neighbours on both sides, each within `max_gap_ns` of
        `t_ns`. None outside the buffer's time range or across a larger gap (a blink or a
        lost face leaves no samples, and interpolating across it would invent a gaze).
        Returns a new, writable array."""
        t_ns = operator.index(t_ns)
        with self._lock:
            data = self._data
            i = data.bisect_left(t_ns)
            if i == len(data):
                return None
            t_hi, (v_hi, _) = data.peekitem(i)
            if t_hi == t_ns:
                return v_hi.copy()
            if i == 0:
                return None
            t_lo, (v_lo, _) = data.peekitem(i - 1)
        if t_ns - t_lo > max_gap_ns or t_hi - t_ns > max_gap_ns:
            return None
        w = (t_ns - t_lo) / (t_hi - t_lo)
        return v_lo + w * (v_hi - v_lo)

    def nearest(self, t_ns: int, max_gap_ns: int) -> Entry | None:
        """The sample closest in time to `t_ns` (the earlier one on a tie), or None when
        none is within `max_gap_ns`."""
        t_ns = operator.index(t_ns)
        with self._lock:
            data = self._data
            i = data.bisect_left(t_ns)
            best: tuple[int, tuple[np.ndarray, object | None]] | None = None
            if i > 0:
                best = data.peekitem(i - 1)
            if i < len(data):
                hi = data.peekitem(i)
                if best is None or hi[0] - t_ns < t_ns - best[0]:
                    best = hi
        if best is None or abs(best[0] - t_ns) > max_gap_ns:
            return None
        t, (xy, payload) = best
        return Entry(t, xy, payload)

    def window(self, t0_ns: int, t1_ns: int) -> list[Entry]:
        """All samples with t0_ns <= t <= t1_ns, oldest first (empty if t0_ns > t1_ns)."""
        t0_ns, t1_ns = operator.index(t0_ns), operator.index(t1_ns)
        if t0_ns > t1_ns:
            return []
        with self._lock:
            data = self._data
            lo = data.bisect_left(t0_ns)
            hi = data.bisect_right(t1_ns)
            items = data.items()[lo:hi]
        return [Entry(t, xy, payload) for t, (xy, payload) in items]

    def window_px(self, t0_ns: int, t1_ns: int, screen_px) -> tuple[np.ndarray, np.ndarray]:
        """`window` as the fixation rules of clicks and glances (`oracle.clicks`) take it:
        the times (int64) and each sample's first two values, the normalised screen point,
        in pixels of a `screen_px` (w, h) screen, shape (n, 2) even when empty."""
        entries = self.window(t0_ns, t1_ns)
        t = np.array([e.t_ns for e in entries], dtype=np.int64)
        xy = np.array([e.xy[:2] for e in entries]).reshape(-1, 2)
        return t, xy * np.asarray(screen_px, dtype=np.float64)

    def latest(self) -> Entry | None:
        """The newest sample, or None when empty."""
        with self._lock:
            if not self._data:
                return None
            t, (xy, payload) = self._data.peekitem(-1)
        return Entry(t, xy, payload)

    def clear(self) -> None:
        """Drop every sample; the value length stays fixed."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
