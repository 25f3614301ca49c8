"""Precision of gaze data: how much the estimate scatters while the eye holds still.

Standard measures (Holmqvist, Nyström & Mulvey, "Eye tracker data quality: what it is and
how to measure it", ETRA 2012; Holmqvist & Andersson, "Eye Tracking", 2017):

- RMS-S2S: root mean square of the distances between successive samples,
  sqrt(mean(|p[i+1] - p[i]|^2)). Sensitive to sample-to-sample noise, blind to slow drift.
- STD: the standard deviation of the samples around their centroid, sqrt(var_x + var_y)
  with population variances (ddof=0), i.e. the RMS distance from the centroid. Sensitive
  to drift and to everything else that spreads the samples.

For white noise RMS-S2S ~ sqrt(2) x STD; a smoothing filter lowers RMS-S2S much more than
STD, which is why both are reported, before and after the filter (DESIGN.md, "Measuring").
Both are computed per fixation (here: the settled samples of one calibration target) and
then averaged over fixations with equal weight.

Pure functions on numpy arrays; no dependency on the rest of gazeloop. Units are whatever
the points are in; `precision_report` converts normalised -> px -> mm -> degrees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

# (n, 2) screen millimetres -> (n, 2) visual angles in degrees (e.g. from `angles_from_eye`).
MmToDeg = Callable[[np.ndarray], np.ndarray]

DEFINITIONS = (
    "Holmqvist et al. 2012: rms_s2s = sqrt(mean |p[i+1]-p[i]|^2) over successive valid "
    "samples; std = sqrt(var_x + var_y) (ddof=0), the RMS distance from the centroid. "
    "Per target, then the unweighted mean over targets."
)


def _points(points: ArrayLike) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must have shape (n, 2), got {p.shape}")
    return p


def _times(t: ArrayLike, n: int) -> np.ndarray:
    """`t` as one time per sample: a length that differs from the points' would pair
    samples with other samples' times."""
    tt = np.asarray(t, dtype=np.float64)
    if tt.shape != (n,):
        raise ValueError(f"timestamps must have shape ({n},), got {tt.shape}")
    return tt


def _order(p: np.ndarray, t: ArrayLike | None) -> tuple[np.ndarray, np.ndarray | None]:
    if t is None:
        return p, None
    tt = _times(t, len(p))
    # Stable sort: samples given out of order are still measured in the order they happened.
    idx = np.argsort(tt, kind="stable")
    return p[idx], tt[idx]


def rms_s2s(
    points: ArrayLike, t: ArrayLike | None = None, *, max_gap: float | None = None
) -> float:
    """RMS of sample-to-sample distances (Holmqvist et al. 2012), in the points' unit.

    Samples are taken in the order of `t` when given (else as given). Only pairs of
    successive samples that are both finite count: a NaN (blink, lost face) breaks the chain
    instead of joining the samples on either side. With `max_gap` (same unit as `t`), pairs
    further apart in time are skipped as well, since a jump across dropped frames is not
    sample noise. NaN when no pair is left (fewer than two samples)."""
    p, tt = _order(_points(points), t)
    if len(p) < 2:
        return math.nan
    d = np.diff(p, axis=0)
    ok = np.all(np.isfinite(d), axis=1)
    if max_gap is not None:
        if tt is None:
            raise ValueError("max_gap needs timestamps t")
        ok &= np.diff(tt) <= max_gap
    if not ok.any():
        return math.nan
    return float(np.sqrt(np.mean(np.sum(d[ok] ** 2, axis=1))))


def std_xy(points: ArrayLike) -> float:
    """sqrt(var_x + var_y) with ddof=0: the RMS distance of the samples from their centroid
    (the STD precision measure of Holmqvist et al. 2012). Non-finite samples are ignored;
    NaN when no sample is left."""
    p = _points(points)
    p = p[np.all(np.isfinite(p), axis=1)]
    if len(p) == 0:
        return math.nan
    return float(np.sqrt(np.sum(np.var(p, axis=0))))


def deg_per_mm(distance_mm: float) -> float:
    """Degrees of visual angle per millimetre at the screen point straight ahead of an eye
    `distance_mm` away (small-angle: exact to 0.01% for 1 mm at 500 mm). Off-axis points
    subtend less; use `angles_from_eye` there."""
    if not distance_mm > 0:
        raise ValueError(f"distance_mm must be > 0, got {distance_mm}")
    return math.degrees(math.atan(1.0 / distance_mm))


def angles_from_eye(eye_xy_mm: tuple[float, float], distance_mm: float) -> MmToDeg:
    """A mm -> degrees map for `precision_report`: the horizontal and vertical angle at which
    an eye at `eye_xy_mm` (screen coordinates, mm) and `distance_mm` in front of the screen
    sees each screen point. Locally Euclidean enough for fixation-sized spreads (< ~2 deg)."""
    if not distance_mm > 0:
        raise ValueError(f"distance_mm must be > 0, got {distance_mm}")
    ex, ey = float(eye_xy_mm[0]), float(eye_xy_mm[1])

    def to_deg(mm: np.ndarray) -> np.ndarray:
        mm = np.asarray(mm, dtype=np.float64)
        return np.degrees(np.arctan2(mm - (ex, ey), distance_mm))

    return to_deg


def _scale(p: np.ndarray, k: tuple[float, float]) -> np.ndarray:
    return p * np.asarray(k, dtype=np.float64)


def _pair(v: float | tuple[float, float], name: str) -> tuple[float, float]:
    pair = (float(v), float(v)) if np.isscalar(v) else (float(v[0]), float(v[1]))  # type: ignore[index]
    if not all(math.isfinite(x) and x > 0 for x in pair):
        raise ValueError(f"{name} must be positive and finite, got {v}")
    return pair


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _one_set(
    points_by_target: Mapping[int, ArrayLike],
    t_by_target: Mapping[int, ArrayLike] | None,
    px_per_norm: tuple[float, float] | None,
    mm_per_px: tuple[float, float] | None,
    to_deg: MmToDeg | None,
    max_gap: float | None,
) -> dict[str, Any]:
    per_target: dict[int, dict[str, Any]] = {}
    for target in sorted(points_by_target):
        p = _points(points_by_target[target])
        t = None if t_by_target is None else t_by_target[target]
        # Convert the points, not the results: a normalised unit is not the same length in
        # x and y, so distances are only meaningful after scaling each axis.
        by_unit: dict[str, np.ndarray] = {}
        if px_per_norm is None:
            by_unit["px"] = p
        else:
            by_unit["norm"] = p
            by_unit["px"] = _scale(p, px_per_norm)
        if mm_per_px is not None:
            by_unit["mm"] = _scale(by_unit["px"], mm_per_px)
            if to_deg is not None:
                deg = np.asarray(to_deg(by_unit["mm"]), dtype=np.float64)
                if deg.shape != p.shape:
                    raise ValueError(f"to_deg returned shape {deg.shape}, expected {p.shape}")
                by_unit["deg"] = deg
        per_target[target] = {
            "n": int(np.sum(np.all(np.isfinite(p), axis=1))),
            "rms_s2s": {u: rms_s2s(q, t, max_gap=max_gap) for u, q in by_unit.items()},
            "std": {u: std_xy(q) for u, q in by_unit.items()},
        }
    units = list(next(iter(per_target.values()))["std"]) if per_target else []
    mean = {
        measure: {u: _nanmean([r[measure][u] for r in per_target.values()]) for u in units}
        for measure in ("rms_s2s", "std")
    }
    counted = [k for k, r in per_target.items() if math.isfinite(r["std"].get("px", math.nan))]
    mean["n_targets"] = len(counted)  # type: ignore[assignment]
    return {"per_target": per_target, "mean": mean}


def precision_report(
    points_by_target: Mapping[int, ArrayLike],
    *,
    filtered_by_target: Mapping[int, ArrayLike] | None = None,
    t_by_target: Mapping[int, ArrayLike] | None = None,
    px_per_norm: tuple[float, float] | None = None,
    mm_per_px: float | tuple[float, float] | None = None,
    to_deg: float | MmToDeg | None = None,
    max_gap: float | None = None,
) -> dict[str, Any]:
    """RMS-S2S and STD (Holmqvist et al. 2012) per target and their mean over targets.

    `points_by_target` maps a target id to its (n, 2) settled gaze samples, raw (before the
    filter); `filtered_by_target` the same samples after the filter (same ids and lengths).
    Units: points are normalised [0,1]^2 when `px_per_norm=(screen_w_px, screen_h_px)` is
    given, else pixels. `mm_per_px` (a number, or (x, y)) adds millimetres; `to_deg` adds
    degrees of visual angle and needs `mm_per_px`: a number is degrees per mm (see
    `deg_per_mm`), a callable maps (n, 2) mm to (n, 2) degrees (see `angles_from_eye`).
    `t_by_target` gives each sample's time (any unit) to order samples and, with `max_gap`
    in that unit, to skip pairs across a gap.

    Returns {"definitions", "units", "raw": {"per_target": {id: {"n", "rms_s2s": {unit: v},
    "std": {unit: v}}}, "mean": {"rms_s2s": {...}, "std": {...}, "n_targets"}},
    "filtered": same or None}. Undefined values (a target with < 2 samples) are NaN and left
    out of the mean, whose `n_targets` counts the targets that had a STD.
    """
    if to_deg is not None and mm_per_px is None:
        raise ValueError("degrees need mm: give mm_per_px together with to_deg")
    ppn = None if px_per_norm is None else _pair(px_per_norm, "px_per_norm")
    mpp = None if mm_per_px is None else _pair(mm_per_px, "mm_per_px")
    if to_deg is None or callable(to_deg):
        deg_fn = to_deg
    else:
        k = _pair(to_deg, "to_deg")

        def deg_fn(mm: np.ndarray) -> np.ndarray:
            return _scale(mm, k)

    if t_by_target is not None:
        missing = set(points_by_target) - set(t_by_target)
        if missing:
            raise ValueError(f"t_by_target lacks targets {sorted(missing)}")
    if filtered_by_target is not None:
        if set(filtered_by_target) != set(points_by_target):
            raise ValueError(
                f"filtered targets {sorted(filtered_by_target)} differ from raw "
                f"{sorted(points_by_target)}"
            )
        for target, raw in points_by_target.items():
            if len(np.asarray(filtered_by_target[target])) != len(np.asarray(raw)):
                raise ValueError(f"target {target}: filtered and raw differ in length")

    raw = _one_set(points_by_target, t_by_target, ppn, mpp, deg_fn, max_gap)
    filtered = (
        None
        if filtered_by_target is None
        else _one_set(filtered_by_target, t_by_target, ppn, mpp, deg_fn, max_gap)
    )
    units = list(raw["mean"]["std"])
    return {"definitions": DEFINITIONS, "units": units, "raw": raw, "filtered": filtered}


# --- lag on a target switch ----------------------------------------------------------------

LAG_DEFINITION = (
    "lag = t_half(filtered) - t_half(raw) at each change of target, in frames (the median "
    "frame period when times are given): t_half is when a stream, projected on the jump from "
    "the old fixation's median to the new one's (each the last half of its target's "
    "samples), first reaches half the jump, linearly interpolated between samples. Not "
    "measured (None, with why) when the jump is under 10 noise STDs or a stream does not "
    "reach half of it before the next switch."
)


def half_crossing(s: ArrayLike, t: ArrayLike | None = None, start: int = 0) -> float:
    """When the 1-d step `s` (0 = old level, 1 = new level) first reaches 0.5 at or after
    index `start`, linearly interpolated from the finite sample before it (which may lie
    before `start`, unless it is itself at 0.5 or more): a fractional index, or a time when
    `t` is given. Non-finite samples are skipped. NaN when it never does."""
    s = np.asarray(s, dtype=np.float64)
    tt = np.arange(len(s), dtype=np.float64) if t is None else np.asarray(t, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(s))
    before = ok[ok < start]
    prev = int(before[-1]) if len(before) else None
    for i in ok[ok >= start]:
        if s[i] >= 0.5:
            if prev is None or s[prev] >= 0.5:
                return float(tt[i])
            f = (0.5 - s[prev]) / (s[i] - s[prev])
            return float(tt[prev] + f * (tt[i] - tt[prev]))
        prev = i
    return math.nan


def switch_lags(
    raw: ArrayLike,
    filtered: ArrayLike,
    labels: ArrayLike,
    t: ArrayLike | None = None,
    *,
    min_jump_sigma: float = 10.0,
) -> list[dict[str, Any]]:
    """Delay of the `filtered` stream behind the `raw` one at each change of `labels`.

    `raw` and `filtered` are the same (n, 2) samples in time order before and after a
    filter; `labels` (n,) says which target was shown; `t` (n,) their times (any unit).

    The measure: both streams are projected on the jump (the median of the last half of the
    old target's raw samples to that of the new target's) so that 0 is the old fixation and 1
    the new one. Each stream's half-way time is when it first reaches 0.5, searched from the
    first sample of the new target up to the next switch (the eye cannot answer a target
    before it appears, and searching earlier would let raw noise reach half a small jump by
    chance), interpolated linearly between samples. The lag is the filtered stream's
    half-way time minus the raw one's.

    Why this and not the shift that best aligns the two by cross-correlation: a smoothing
    filter is not a pure delay but a slower step (the 1€ filter's first frames after a jump
    move part of the way), and "how many frames later does the output get half-way" is the
    delay a person sees and the one control engineering calls delay time. It needs no window
    length beyond the two fixations, gives fractions of a frame (a correlation gives whole
    shifts unless interpolated), and is exact for a pure delay of d frames (every crossing
    moves by d). The eye's own reaction time is in both streams and cancels.

    A jump smaller than `min_jump_sigma` times the noise (the raw samples' STD around their
    level in the two level windows, along the jump) is not a switch worth measuring: a
    stream of noise alone gives None, with the reason, rather than a number.

    Returns one dict per switch: index (first sample of the new target), from/to labels,
    jump (in the points' unit), noise, t_raw/t_filtered (half-way, fractional index or time),
    lag (in t's unit, or frames), lag_frames, and why when not measured.
    """
    r, f = _points(raw), _points(filtered)
    lab = np.asarray(labels)
    if f.shape != r.shape or lab.shape != (len(r),):
        raise ValueError(f"raw {r.shape}, filtered {f.shape} and labels {lab.shape} differ")
    tt = None if t is None else _times(t, len(r))
    if tt is not None and np.any(np.diff(tt) <= 0):
        raise ValueError("samples must be in time order (strictly increasing t)")
    period = 1.0
    if tt is not None and len(tt) > 1:
        period = float(np.median(np.diff(tt)))
    # runs of equal labels: [start, end)
    cuts = [0, *(np.flatnonzero(lab[1:] != lab[:-1]) + 1).tolist(), len(lab)]
    runs = list(zip(cuts[:-1], cuts[1:], strict=True))
    out: list[dict[str, Any]] = []
    for (a0, a1), (b0, b1) in zip(runs[:-1], runs[1:], strict=True):
        rec: dict[str, Any] = {
            "index": int(b0),
            "from": lab[a0].item(),
            "to": lab[b0].item(),
            "lag": None,
            "lag_frames": None,
        }
        out.append(rec)
        old = np.arange(a0 + (a1 - a0) // 2, a1)
        new = np.arange(b0 + (b1 - b0) // 2, b1)
        found = _jump(rec, r[old], r[new], min_jump_sigma)
        if found is not None:
            _half_way_lag(rec, r, f, tt, slice(b0 - 1, b1), *found, period)
    return out


def _jump(
    rec: dict[str, Any], ro: np.ndarray, rn: np.ndarray, min_jump_sigma: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """The old fixation's level and the jump to the new one's, from the raw samples of the
    two level windows (`ro`, `rn`); None, with why in `rec`, when the jump is not a switch
    worth measuring: with noise alone a half-way time would be a number about nothing."""
    ro, rn = ro[np.all(np.isfinite(ro), 1)], rn[np.all(np.isfinite(rn), 1)]
    if len(ro) == 0 or len(rn) == 0:
        rec["why"] = "no finite sample in a fixation"
        return None
    p0, p1 = np.median(ro, axis=0), np.median(rn, axis=0)
    d = p1 - p0
    jump = float(np.hypot(*d))
    rec["jump"] = jump
    u = d / jump if jump > 0 else np.array([1.0, 0.0])
    resid = np.concatenate([(ro - p0) @ u, (rn - p1) @ u])
    noise = float(np.sqrt(np.mean(resid**2))) if len(resid) > 1 else 0.0
    rec["noise"] = noise
    if not jump > min_jump_sigma * noise or jump == 0:
        rec["why"] = f"jump {jump:.3g} is under {min_jump_sigma:g} noise STDs ({noise:.3g})"
        return None
    return p0, d


def _half_way_lag(
    rec: dict[str, Any],
    r: np.ndarray,
    f: np.ndarray,
    tt: np.ndarray | None,
    seg: slice,
    p0: np.ndarray,
    d: np.ndarray,
    period: float,
) -> None:
    """Each stream's half-way time over `seg` and the lag between them, into `rec`. `seg`
    starts at the last sample of the old target, for the interpolation into the new one;
    a stream that never gets half-way leaves the lag unmeasured, with why."""
    jump = rec["jump"]
    ts = None if tt is None else tt[seg]
    h_raw = half_crossing((r[seg] - p0) @ d / jump**2, ts, start=1)
    h_fil = half_crossing((f[seg] - p0) @ d / jump**2, ts, start=1)
    rec["t_raw"], rec["t_filtered"] = _finite_or_none(h_raw), _finite_or_none(h_fil)
    if tt is None and math.isfinite(h_raw):
        rec["t_raw"] += seg.start
    if tt is None and math.isfinite(h_fil):
        rec["t_filtered"] += seg.start
    if not math.isfinite(h_raw):
        rec["why"] = "the raw stream does not reach half the jump before the next switch"
        return
    if not math.isfinite(h_fil):
        rec["why"] = "the filtered stream does not reach half the jump before the next switch"
        return
    rec["lag"] = h_fil - h_raw
    rec["lag_frames"] = (h_fil - h_raw) / period


def lag_summary(lags: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and max of the measured `switch_lags` (frames), with how many switches stand
    behind them and how many could not be measured (a filter that never got half-way counts
    there, so a max over the measured ones is not mistaken for the worst case)."""
    v = [x["lag_frames"] for x in lags if x.get("lag_frames") is not None]
    return {
        "switches": len(lags),
        "measured": len(v),
        "median_frames": float(np.median(v)) if v else None,
        "max_frames": float(np.max(v)) if v else None,
        # measured as a jump (it has t_raw) whose filtered stream never got half-way
        "not_reached": sum(1 for x in lags if "t_raw" in x and x.get("lag_frames") is None),
    }


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


__all__ = [
    "DEFINITIONS",
    "LAG_DEFINITION",
    "MmToDeg",
    "angles_from_eye",
    "deg_per_mm",
    "half_crossing",
    "lag_summary",
    "precision_report",
    "rms_s2s",
    "std_xy",
    "switch_lags",
]
