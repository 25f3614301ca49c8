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

from gazeloop.calibration.masked import row_medians

_MS = 1_000_000


def _require_positive(rules, what: str) -> None:
    """Every rule is a duration or a distance, none of which means anything at zero or
    below (or NaN): refused when the rules are made, naming the rule, not at a verdict."""
    for name in rules.__dataclass_fields__:
        if not getattr(rules, name) > 0:
            raise ValueError(f"{what} rule {name} must be positive, got {getattr(rules, name)}")


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
    max_gap_ms: float = 150.0  # a hole in the samples longer than this breaks a stretch

    def __post_init__(self) -> None:
        _require_positive(self, "click")


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


def stable_run_start(xy: np.ndarray, end: int, radius_px: float, floor: int = 0) -> int:
    """The first index (`floor` at the earliest) of the longest stretch ending at `end`
    whose samples all lie within `radius_px` of the stretch's median, every shorter stretch
    ending there too (growing back from `end`, the first one that does not stops it).

    Every stretch is judged at once: grown one sample at a time, a median per sample made
    this most of a replayed click's cost (a click judges the lookback's samples, and one
    not at a fixation asks again for each earlier end). A stretch holding a sample with a
    NaN fails no test, as its NaN median fails none."""
    if end <= floor:
        return end
    seg = np.asarray(xy[floor : end + 1], dtype=np.float64)
    n = len(seg)
    # Row j: the stretch from floor + j to end (j < n − 1: at least two samples).
    keep = np.arange(n)[None, :] >= np.arange(n - 1)[:, None]
    centre = np.column_stack([row_medians(seg[:, axis], keep) for axis in (0, 1)])
    d = np.where(
        keep,
        np.hypot(seg[None, :, 0] - centre[:, None, 0], seg[None, :, 1] - centre[:, None, 1]),
        0.0,
    )
    lost = (keep & np.isnan(seg).any(axis=1)[None, :]).any(axis=1)
    fails = np.flatnonzero((d.max(axis=1) > radius_px) & ~lost)
    return floor if len(fails) == 0 else floor + int(fails[-1]) + 1


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
    # A stretch never spans a hole (the face lost, the eyes shut): two samples 480 ms apart
    # with nothing between were a "fixation" of whatever happened in between.
    holes = _holes(t, rules.max_gap_ms * _MS)
    last = len(t) - 1
    start = stable_run_start(xy, last, rules.radius_px, _unbroken_from(holes, last))
    if t[last] - t[start] >= min_ns:
        centre = np.median(xy[start:], axis=0)
        return Fixation(int(t[start]), int(t[last]), (centre[0], centre[1]), last - start + 1), "ok"
    # Not fixating at the click: was there a fixation earlier in the lookback?
    for end in range(start - 1, -1, -1):
        if t[end] - t[0] < min_ns:
            break  # too little time left before it for a fixation
        s = stable_run_start(xy, end, rules.radius_px, _unbroken_from(holes, end))
        if t[end] - t[s] >= min_ns:
            return None, "saccade"
    return None, "no_fixation"


def _holes(t: np.ndarray, gap_ns: float) -> np.ndarray:
    """The holes (gaps over `gap_ns`) before each sample, counted: two samples with the same
    count have no hole between them."""
    return np.concatenate([[0], np.cumsum(np.diff(t) > gap_ns)])


def _unbroken_from(holes: np.ndarray, end: int) -> int:
    """The first sample after the last hole before sample `end` (`holes`: the holes before
    each sample, cumulated)."""
    return int(np.searchsorted(holes, holes[end], side="left"))


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
    return [judge_one(c, bool(b), t_ns, xy_px, rules) for c, b in zip(clicks, bursts, strict=True)]


def judge_one(
    click: Click, burst: bool, t_ns: np.ndarray, xy_px: np.ndarray, rules: ClickRules
) -> ClickVerdict:
    """`judge` for one click whose burst flag (`burst_mask` over its neighbours) is known."""
    if burst:
        return ClickVerdict(click, "burst")
    if is_drag(click, rules):
        return ClickVerdict(click, "drag")
    fix, reason = fixation_before(t_ns, xy_px, click.t_ns, rules)
    if fix is not None:
        d = np.hypot(*np.subtract(fix.centre_px, click.xy_px))
        reason = "far" if d > rules.max_distance_px else "ok"
    return ClickVerdict(click, reason, fix)


# --- the validation glance ------------------------------------------------------------------
# A single dot on the screen (the verify key, or rarely on its own when the loop has had no
# label for long): the fixation on it is a point label, the idea of EyeLink's drift check.
# The eye needs about 200 ms to leave for a new target and a saccade to land, so what labels
# the dot is the first stable stretch that *starts* after the dot appeared (plus
# `latency_ms`), lasts `min_fixation_ms`, and lies within `max_distance_px` of the dot (as
# for clicks, generous: a drifted calibration puts the fixation off by the very drift the
# label is to measure). Nothing of the kind within `timeout_ms`: no label.


@dataclass(frozen=True, slots=True)
class GlanceRules:
    latency_ms: float = 200.0  # no fixation on the dot can start sooner than this
    min_fixation_ms: float = 250.0
    radius_px: float = 120.0  # every sample of the stretch within this of its median
    max_distance_px: float = 350.0
    timeout_ms: float = 2500.0
    max_gap_ms: float = 150.0  # a hole in the samples longer than this breaks a stretch

    def __post_init__(self) -> None:
        _require_positive(self, "glance")


def fixation_on_dot(
    t_ns: np.ndarray,
    xy_px: np.ndarray,
    shown_t_ns: int,
    dot_px: tuple[float, float],
    now_t_ns: int,
    rules: GlanceRules,
) -> tuple[Fixation | None, str]:
    """The fixation on a dot shown at `shown_t_ns`, from the fast path's samples (times
    ascending, (n, 2) pixels) up to `now_t_ns`, and "ok"; or None and

    - `waiting`: none yet, and the timeout has not passed (call again with more samples);
    - `no_samples`: the timeout passed with no sample after the dot (no face, eyes shut);
    - `far`: the timeout passed; the eye did rest, but not within `max_distance_px`;
    - `no_fixation`: the timeout passed with samples but no stable stretch (the eye kept
      moving).

    The fixation is the first stretch of `min_fixation_ms` (from a sample to the first one
    that far after it, no hole over `max_gap_ms` between them) whose samples all lie within
    `radius_px` of its median; it ends there (its last sample is the label's time), so a
    live caller can take the dot away at once."""
    t = np.asarray(t_ns, dtype=np.int64)
    xy = np.asarray(xy_px, dtype=np.float64).reshape(-1, 2)
    start_t = shown_t_ns + round(rules.latency_ms * _MS)
    deadline = shown_t_ns + round(rules.timeout_ms * _MS)
    keep = (t >= start_t) & (t <= min(now_t_ns, deadline))
    t, xy = t[keep], xy[keep]
    dot = np.asarray(dot_px, dtype=np.float64)
    min_ns, gap_ns = rules.min_fixation_ms * _MS, rules.max_gap_ms * _MS
    # For each start, the sample that makes the stretch long enough; all stretches at once
    # (this runs every frame while the dot shows).
    ends = np.searchsorted(t, t + round(min_ns), side="left")
    gaps = _holes(t, gap_ns)
    starts = np.nonzero(ends < len(t))[0]  # long enough by now (later calls have more)
    starts = starts[gaps[ends[starts]] == gaps[starts]]  # and no hole in the stretch
    rested_far = False
    if len(starts):
        ends = ends[starts]
        span = int(np.max(ends - starts)) + 1
        idx = starts[:, None] + np.arange(span)[None, :]
        inside = idx <= ends[:, None]
        part = np.where(inside[..., None], xy[np.minimum(idx, len(t) - 1)], np.nan)
        centre = np.nanmedian(part, axis=1)
        dist = np.hypot(*(part - centre[:, None, :]).transpose(2, 0, 1))
        stable = np.nanmax(dist, axis=1) <= rules.radius_px
        near = np.hypot(*(centre - dot).T) <= rules.max_distance_px
        hits = np.nonzero(stable & near)[0]
        if len(hits):
            k = hits[0]
            i, j = int(starts[k]), int(ends[k])
            fix = Fixation(int(t[i]), int(t[j]), (centre[k, 0], centre[k, 1]), j - i + 1)
            return fix, "ok"
        rested_far = bool(np.any(stable))
    if now_t_ns < deadline:
        return None, "waiting"
    if len(t) == 0:
        return None, "no_samples"
    return None, "far" if rested_far else "no_fixation"
