"""Clicks as gaze labels: a person looks at what they click, just before they click it.

Sugano et al. (IEEE THMS 2015) reach 2.9° from mouse clicks alone and WebGazer refits on its
last 50 clicks; but a click is a label only when the gaze really was on the click point.
The eye lands on a target first and the hand follows 150-600 ms later, so what is
compared with the click is the fast path's *fixation* that ends at the click (from the
History), never the single sample at the click's time. A click is refused when

- `burst`: another press came within `burst_ms` (a double click: the second press follows
  the first without a new look, and the first may already be a re-click);
- `drag`: the button was held longer than `drag_ms` or moved more than `drag_px` (the eye
  follows the dragged thing, not the press point);
- `no_samples`: the fast path had nothing in the `lookback_ms` before the click (no face);
- `no_fixation`: no stable stretch of at least `min_fixation_ms` in the lookback;
- `saccade`: there was a fixation, but the gaze was moving at the click (the samples just
  before it are not part of one): the eye had already left, or not yet arrived;
- `far`: the fixation is more than `max_distance_px` from the click. The limit is
  generous on purpose: a drifted calibration puts the fixation off the click by the very
  drift the label is meant to correct, so only a fixation on something else is refused.

"Stable" is dispersion-based (I-DT, Salvucci & Goldberg 2000) made robust to the fast
path's per-frame noise: every sample of the stretch lies within `radius_px` of the stretch's
median. Everything here is a pure function of arrays: the live listener
(`gazeloop.tools.runtime.clicks`) and the benchmark's click replay call the same `judge`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class ClickRules:
    lookback_ms: float = 600.0
    min_fixation_ms: float = 100.0
    radius_px: float = 250.0
    end_slack_ms: float = 100.0  # the last sample may be this old at the click (frame gaps)
    max_distance_px: float = 350.0
    burst_ms: float = 400.0
    drag_ms: float = 600.0
    drag_px: float = 12.0

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if not getattr(self, name) > 0:
                raise ValueError(f"click rule {name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class Click:
    """One press (and its release, once known) in screen pixels of the profile's monitor."""

    t_ns: int
    xy_px: tuple[float, float]
    release_t_ns: int | None = None
    release_xy_px: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class Fixation:
    t0_ns: int
    t1_ns: int  # its last sample: the label's time (the History has the estimate there)
    centre_px: tuple[float, float]
    samples: int


@dataclass(frozen=True, slots=True)
class ClickVerdict:
    click: Click
    reason: str  # "ok" or why it is not a label (see the module docstring)
    fixation: Fixation | None = None

    @property
    def accepted(self) -> bool:
        return self.reason == "ok"


def stable_run_start(xy: np.ndarray, end: int, radius_px: float) -> int:
    """The first index of the longest stretch ending at `end` whose samples all lie within
    `radius_px` of the stretch's median."""
    start = end
    while start > 0:
        part = xy[start - 1 : end + 1]
        centre = np.median(part, axis=0)
        if np.max(np.hypot(*(part - centre).T)) > radius_px:
            break
        start -= 1
    return start


def fixation_before(
    t_ns: np.ndarray, xy_px: np.ndarray, click_t_ns: int, rules: ClickRules
) -> tuple[Fixation | None, str]:
    """The fixation in progress at the click, from the fast path's samples (times ascending,
    (n, 2) pixels), and "ok", or None and why not."""
    t = np.asarray(t_ns, dtype=np.int64)
    xy = np.asarray(xy_px, dtype=np.float64).reshape(-1, 2)
    keep = (t <= click_t_ns) & (t >= click_t_ns - rules.lookback_ms * _MS)
    t, xy = t[keep], xy[keep]
    if len(t) == 0 or click_t_ns - t[-1] > rules.end_slack_ms * _MS:
        return None, "no_samples"
    min_ns = rules.min_fixation_ms * _MS
    last = len(t) - 1
    start = stable_run_start(xy, last, rules.radius_px)
    if t[last] - t[start] >= min_ns:
        centre = np.median(xy[start:], axis=0)
        return Fixation(int(t[start]), int(t[last]), (centre[0], centre[1]), last - start + 1), "ok"
    # Not fixating at the click: was there a fixation earlier in the lookback?
    for end in range(start - 1, -1, -1):
        if t[end] - t[0] < min_ns:
            break  # too little time left before it for a fixation
        s = stable_run_start(xy, end, rules.radius_px)
        if t[end] - t[s] >= min_ns:
            return None, "saccade"
    return None, "no_fixation"


def is_drag(click: Click, rules: ClickRules) -> bool:
    if click.release_t_ns is not None and click.release_t_ns - click.t_ns > rules.drag_ms * _MS:
        return True
    if click.release_xy_px is None:
        return False
    dx, dy = np.subtract(click.release_xy_px, click.xy_px)
    return bool(np.hypot(dx, dy) > rules.drag_px)


def burst_mask(press_t_ns: Sequence[int], rules: ClickRules) -> np.ndarray:
    """True for every press with another press within `burst_ms` before or after it."""
    t = np.sort(np.asarray(press_t_ns, dtype=np.int64))
    gap = rules.burst_ms * _MS
    near = np.zeros(len(t), dtype=bool)
    if len(t) > 1:
        close = np.diff(t) <= gap
        near[:-1] |= close
        near[1:] |= close
    order = np.argsort(np.asarray(press_t_ns, dtype=np.int64), kind="stable")
    out = np.empty(len(t), dtype=bool)
    out[order] = near
    return out


def judge(
    clicks: Sequence[Click], t_ns: np.ndarray, xy_px: np.ndarray, rules: ClickRules
) -> list[ClickVerdict]:
    """A verdict for each click (in the order given), from all of them (bursts need the
    neighbours) and the fast path's samples around them."""
    bursts = burst_mask([c.t_ns for c in clicks], rules)
    out = []
    for click, burst in zip(clicks, bursts, strict=True):
        if burst:
            out.append(ClickVerdict(click, "burst"))
            continue
        if is_drag(click, rules):
            out.append(ClickVerdict(click, "drag"))
            continue
        fix, reason = fixation_before(t_ns, xy_px, click.t_ns, rules)
        if fix is not None:
            d = np.hypot(*np.subtract(fix.centre_px, click.xy_px))
            reason = "far" if d > rules.max_distance_px else "ok"
        out.append(ClickVerdict(click, reason, fix))
    return out
