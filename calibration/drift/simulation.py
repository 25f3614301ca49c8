"""A pure simulation of the closed loop, for benchmarks and tests.

Given a session's per-frame fast-path predictions and ground truth (normalised arrays), a
drift schedule and a simulated oracle, it runs a real `DriftLoop` on a real `History` and
reports per-label error traces and a summary. Nothing here touches a camera or a model; the
oracle is simulated and the summary says so (`"oracle": "simulated"`).

Definitions (all errors in screen pixels, means over *every* frame of the session, so the
number is the fast path's accuracy with the offset in force, not the error at one frame):

- error_before_px: predictions as given (no drift, no offset).
- error_drifted_px: predictions + the final drift, no offset (what the user would get
  without the loop).
- err_px[k]: predictions + the drift in force at label k + the offset after label k.
- error_after_px: err_px at the last label.
- labels_to_recover: with k0 the first label at which the drift is non-zero, the smallest
  m ≥ 1 such that err_px[k] ≤ 1.1·error_before_px for every k ≥ k0 + m − 1 (the error is
  back within 10 % from the m-th label of the drift on, and stays there to the end of the
  stream); None when the last label is still outside that band or there is no drift.

The simulated oracle: each label picks a frame uniformly at random; with probability
`outlier_fraction` it answers a point drawn uniformly over the screen, otherwise the truth
plus `bias_px` plus Gaussian noise of `noise_px` per axis (independent in x and y). A line
oracle answers the line from `camera_norm` through that point. The fast estimate the loop
sees is the frame's prediction + drift + the offset in force, appended to the History at the
label's time, exactly as the fast path would have written it (not clamped to the screen, so
the error measure is not flattered by the screen edge).

`DriftingMapper` is the same injected drift for a stream that runs through the real fast
path (`gazeloop demo`): a profile's mapper whose output moves by a known amount from a given
time on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gazeloop.calibration.drift.history import History
from gazeloop.calibration.drift.loop import DriftLoop, LoopConfig
from gazeloop.calibration.labels import LineObservation, OracleLabel, PointObservation
from gazeloop.calibration.profile import ProfileMapper

RECOVER_TOLERANCE = 0.10


class DriftSchedule(BaseModel):
    """Injected drift, in screen pixels. `step`: `px` from label `at_label` on. `ramp`: from
    0 at label `at_label` − 1 linearly to `px` at label `at_label` + `over_labels` − 1."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["none", "step", "ramp"] = "step"
    px: float = 150.0
    at_label: int = Field(10, ge=0)
    over_labels: int = Field(1, ge=1)
    direction: tuple[float, float] = (1.0, 0.0)  # in pixels; normalised to unit length

    def at(self, k: int) -> np.ndarray:
        """The drift (px, x and y) in force at label k."""
        if self.kind == "none" or k < self.at_label:
            return np.zeros(2)
        d = np.asarray(self.direction, dtype=np.float64)
        d = d / np.hypot(*d)
        if self.kind == "step":
            return self.px * d
        frac = min(1.0, (k - self.at_label + 1) / self.over_labels)
        return frac * self.px * d


class LabelStream(BaseModel):
    """The simulated oracle (see the module doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_labels: int = Field(60, ge=1)
    noise_px: float = Field(100.0, ge=0)  # Gaussian σ per axis
    bias_px: tuple[float, float] = (0.0, 0.0)
    outlier_fraction: float = Field(0.0, ge=0, le=1)
    seed: int = 0
    interval_s: float = Field(3.0, gt=0)
    kind: Literal["point", "line"] = "point"
    camera_norm: tuple[float, float] = (0.5, -0.03)  # line origin (a bezel webcam)


@dataclass(slots=True)
class SimResult:
    err_px: np.ndarray  # (n_labels,) session error after each label
    offset: np.ndarray  # (n_labels, 2) normalised offset after each label
    drift_px: np.ndarray  # (n_labels, 2) injected drift at each label
    accepted: np.ndarray  # (n_labels,) bool
    outlier: np.ndarray  # (n_labels,) bool: the simulated oracle answered at random
    alarm: np.ndarray  # (n_labels,) bool
    summary: dict[str, Any] = field(default_factory=dict)
    # (n_labels,) the session error with the drift in force and no offset (simulate_drift)
    uncorrected_px: np.ndarray | None = None
    # (n_labels,) wall time of each `DriftLoop.update`, ms, and the labels the loop held
    # after it (simulate_drift): what a label costs the thread that hands it over
    update_ms: np.ndarray | None = None
    held: np.ndarray | None = None


def _as_points(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0:
        raise ValueError(f"{name} must have shape (n, 2), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr


def mean_error_px(pred: np.ndarray, truth: np.ndarray, screen_px: tuple[int, int]) -> float:
    d = (pred - truth) * np.asarray(screen_px, dtype=np.float64)
    return float(np.mean(np.hypot(d[:, 0], d[:, 1])))


def labels_to_recover(err_px: np.ndarray, error_before_px: float, onset: int | None) -> int | None:
    """See the module doc; `onset` is the first label index with drift."""
    if onset is None or onset >= len(err_px):
        return None
    band = (1.0 + RECOVER_TOLERANCE) * error_before_px
    out = np.flatnonzero(err_px[onset:] > band)
    if len(out) == 0:
        return 1
    last_out = int(out[-1])
    if onset + last_out == len(err_px) - 1:
        return None
    return last_out + 2


def recovery_summary(values: list[int | None]) -> dict[str, Any]:
    """Median and 90th percentile over seeds of per-seed `labels_to_recover`, a run that never
    recovers counting as worse than any that did (None when the quantile falls on one)."""
    a = np.array([math.inf if v is None else v for v in values], dtype=np.float64)
    if len(a) == 0:
        raise ValueError("no runs")

    def q(p: float) -> float | None:
        with np.errstate(invalid="ignore"):
            v = float(np.percentile(a, p))
        return v if math.isfinite(v) else None

    return {
        "median": q(50),
        "p90": q(90),
        "recovered": int(np.isfinite(a).sum()),
        "runs": len(a),
    }


@dataclass(slots=True)
class _Draws:
    frames: np.ndarray  # (n,) frame index of each label
    labels: list[OracleLabel]
    outlier: np.ndarray  # (n,) bool
    t_ns: np.ndarray  # (n,)


def _draw(
    stream: LabelStream, truth: np.ndarray, label_frames: np.ndarray, size: np.ndarray
) -> _Draws:
    """The simulated oracle's whole answer stream, drawn up front so that the loop and the
    known-onset reference see exactly the same labels."""
    rng = np.random.default_rng(stream.seed)
    n = stream.n_labels
    frames = np.empty(n, dtype=np.int64)
    outlier = np.zeros(n, dtype=bool)
    t_ns = 1_000_000_000 + np.round(np.arange(n) * stream.interval_s * 1e9).astype(np.int64)
    labels = []
    cam = np.asarray(stream.camera_norm, dtype=np.float64)
    for k in range(n):
        i = int(label_frames[rng.integers(len(label_frames))])
        frames[k] = i
        outlier[k] = rng.random() < stream.outlier_fraction
        if outlier[k]:
            p = rng.uniform(0.0, 1.0, 2)
        else:
            noise = np.asarray(stream.bias_px) + rng.normal(0.0, stream.noise_px, 2)
            p = truth[i] + noise / size
        if stream.kind == "point":
            obs: PointObservation | LineObservation = PointObservation(xy=(p[0], p[1]))
        else:
            d = p - cam
            if np.hypot(*d) < 1e-9:
                d = np.array([0.0, 1.0])
            obs = LineObservation(origin=(cam[0], cam[1]), direction=(d[0], d[1]))
        labels.append(
            OracleLabel(
                t_ns=int(t_ns[k]), snapshot_id=f"sim-{k}", oracle="simulated", observation=obs
            )
        )
    return _Draws(frames, labels, outlier, t_ns)


def point_draws(frames: Any, xy: Any, interval_s: float = 3.0, oracle: str = "clicks") -> _Draws:
    """Labels drawn elsewhere (a click replay): point k at normalised `xy[k]`, about frame
    `frames[k]`, none of them junk by construction, `interval_s` apart."""
    frames = np.asarray(frames, dtype=np.int64)
    xy = _as_points(xy, "xy")
    if len(frames) != len(xy) or len(frames) == 0:
        raise ValueError(f"{len(frames)} frames for {len(xy)} points")
    n = len(frames)
    t_ns = 1_000_000_000 + np.round(np.arange(n) * interval_s * 1e9).astype(np.int64)
    labels = [
        OracleLabel(
            t_ns=int(t_ns[k]),
            snapshot_id=f"{oracle}-{k}",
            oracle=oracle,
            observation=PointObservation(xy=(float(xy[k, 0]), float(xy[k, 1]))),
        )
        for k in range(n)
    ]
    return _Draws(frames, labels, np.zeros(n, dtype=bool), t_ns)


def _summary(
    err: np.ndarray,
    offs: np.ndarray,
    drifts: np.ndarray,
    before: float,
    drifted: float,
    stream: LabelStream,
    drift: DriftSchedule,
    screen_px: tuple[int, int],
    frames: int,
) -> dict[str, Any]:
    onsets = np.flatnonzero(np.hypot(drifts[:, 0], drifts[:, 1]) > 0)
    onset = int(onsets[0]) if len(onsets) else None
    return {
        "oracle": "simulated",
        "label_kind": stream.kind,
        "n_labels": stream.n_labels,
        "noise_px": stream.noise_px,
        "bias_px": list(stream.bias_px),
        "outlier_rate": stream.outlier_fraction,
        "seed": stream.seed,
        "drift": drift.model_dump(),
        "screen_px": list(screen_px),
        "frames": frames,
        "error_before_px": before,
        "error_drifted_px": drifted,
        "error_after_px": float(err[-1]),
        "labels_to_recover": labels_to_recover(err, before, onset),
        "final_offset_px": (offs[-1] * np.asarray(screen_px, dtype=np.float64)).tolist(),
    }


def _run(
    pred: np.ndarray,
    truth: np.ndarray,
    screen_px: tuple[int, int],
    drift: DriftSchedule,
    stream: LabelStream,
    cfg: LoopConfig | None,
    label_frames: np.ndarray,
    eval_frames: np.ndarray,
    draws: _Draws | None = None,
    new_sitting: bool = False,
) -> SimResult:
    size = np.asarray(screen_px, dtype=np.float64)
    if cfg is None:
        cfg = LoopConfig(aspect=size[0] / size[1])
    if draws is None:
        draws = _draw(stream, truth, label_frames, size)
    elif len(draws.labels) != stream.n_labels:
        raise ValueError(f"{len(draws.labels)} drawn labels, stream says {stream.n_labels}")
    history = History(max_age_s=max(120.0, 4 * stream.interval_s), max_len=4096)
    loop = DriftLoop(cfg, history, new_sitting=new_sitting)
    n = stream.n_labels
    err, raw = np.empty(n), np.empty(n)
    offs = np.empty((n, 2))
    drifts = np.array([drift.at(k) for k in range(n)])
    acc = np.zeros(n, dtype=bool)
    alarm = np.zeros(n, dtype=bool)
    took, held = np.empty(n), np.empty(n, dtype=np.int64)
    p_eval, t_eval = pred[eval_frames], truth[eval_frames]
    for k in range(n):
        d_norm = drifts[k] / size
        # The fast path's point for the snapshot's frame, as it would have been written.
        history.append(int(draws.t_ns[k]), pred[draws.frames[k]] + d_norm + loop.offset)
        t0 = time.perf_counter_ns()
        dec = loop.update(draws.labels[k])
        took[k], held[k] = (time.perf_counter_ns() - t0) / 1e6, loop.n_labels
        acc[k], alarm[k] = dec.accepted, dec.alarm
        offs[k] = loop.offset
        err[k] = mean_error_px(p_eval + d_norm + loop.offset, t_eval, screen_px)
        raw[k] = mean_error_px(p_eval + d_norm, t_eval, screen_px)

    before = mean_error_px(p_eval, t_eval, screen_px)
    drifted = mean_error_px(p_eval + drifts[-1] / size, t_eval, screen_px)
    summary = _summary(err, offs, drifts, before, drifted, stream, drift, screen_px, len(pred))
    outl = draws.outlier
    summary.update(
        {
            "estimator": "DriftLoop",
            "outliers_drawn": int(outl.sum()),
            "accepted": int(acc.sum()),
            "outliers_accepted": int((acc & outl).sum()),
            "inliers_rejected": int((~acc & ~outl).sum()),
            "alarm_labels": int(alarm.sum()),
        }
    )
    return SimResult(
        err, offs, drifts, acc, outl, alarm, summary, uncorrected_px=raw, update_ms=took, held=held
    )


def known_onset_reference(
    pred: Any,
    truth: Any,
    screen_px: tuple[int, int],
    drift: DriftSchedule | None = None,
    stream: LabelStream | None = None,
    draws: _Draws | None = None,
) -> SimResult:
    """What no loop can beat on a step drift: an estimator *told* when the drift began and
    which labels are junk, that sets the offset to the least-squares answer of the clean
    labels since the onset (before it, the offset stays 0). It replays exactly the labels
    `simulate_drift` draws for the same stream, so the two traces compare label by label;
    the gap between them is the price of having to detect the change."""
    pred, truth = _as_points(pred, "pred"), _as_points(truth, "truth")
    drift = drift or DriftSchedule()
    stream = stream or LabelStream()
    if drift.kind == "ramp":
        raise ValueError("the known-onset reference is defined for step drifts only")
    size = np.asarray(screen_px, dtype=np.float64)
    kq = np.array([1.0, size[1] / size[0]])  # normalised → screen widths (square pixels)
    if draws is None:
        draws = _draw(stream, truth, np.arange(len(pred)), size)
    n = len(draws.labels)
    onset = drift.at_label if drift.kind == "step" else 0
    A, b = np.zeros((2, 2)), np.zeros(2)
    offs, err = np.zeros((n, 2)), np.empty(n)
    drifts = np.array([drift.at(k) for k in range(n)])
    off = np.zeros(2)
    for k in range(n):
        d_norm = drifts[k] / size
        if k >= onset and not draws.outlier[k]:
            raw_q = (pred[draws.frames[k]] + d_norm) * kq
            obs = draws.labels[k].observation
            if isinstance(obs, PointObservation):
                P, a = np.eye(2), np.asarray(obs.xy) * kq
            else:
                u = np.asarray(obs.direction) * kq
                u /= np.hypot(*u)
                P, a = np.eye(2) - np.outer(u, u), np.asarray(obs.origin) * kq
            A += P
            b += P @ (a - raw_q)
            lam, V = np.linalg.eigh(A)
            Vc = V[:, lam > 1e-6]  # only what the labels constrain; the rest stays 0
            off = (Vc @ ((Vc.T @ b) / lam[lam > 1e-6])) / kq
        offs[k] = off
        err[k] = mean_error_px(pred + d_norm + off, truth, screen_px)
    before = mean_error_px(pred, truth, screen_px)
    drifted = mean_error_px(pred + drifts[-1] / size, truth, screen_px)
    summary = _summary(err, offs, drifts, before, drifted, stream, drift, screen_px, len(pred))
    summary["estimator"] = "known-onset least squares (a bound, not a loop)"
    return SimResult(err, offs, drifts, np.ones(n, bool), draws.outlier, np.zeros(n, bool), summary)


def simulate_drift(
    pred: Any,
    truth: Any,
    screen_px: tuple[int, int],
    drift: DriftSchedule | None = None,
    stream: LabelStream | None = None,
    cfg: LoopConfig | None = None,
    draws: _Draws | None = None,
) -> SimResult:
    """Inject `drift` into a session's predictions and let the loop correct it from the
    simulated `stream` (or from labels drawn elsewhere, `point_draws`; the stream then gives
    only their count and spacing). `pred`, `truth`: (n, 2) normalised, one row per frame."""
    pred, truth = _as_points(pred, "pred"), _as_points(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} differ")
    allf = np.arange(len(pred))
    return _run(
        pred,
        truth,
        screen_px,
        drift or DriftSchedule(),
        stream or LabelStream(),
        cfg,
        allf,
        allf,
        draws,
    )


def simulate_transfer(
    pred: Any,
    truth: Any,
    target_ids: Any,
    label_targets: Any,
    screen_px: tuple[int, int],
    stream: LabelStream | None = None,
    cfg: LoopConfig | None = None,
    draws: _Draws | None = None,
    new_sitting: bool = True,
) -> SimResult:
    """The `--calibrate-on OTHER` mode: no injected drift (the drift is the real change
    between the sitting the profile was fitted on and this one). Labels come only from
    frames of `label_targets`; every error is measured on the frames of the other targets,
    so the loop gets no credit for memorising the labelled points. `draws` (`point_draws`):
    labels given rather than simulated, e.g. the real clicks on those targets.
    `new_sitting`: the loop starts as `gazeloop run` does with a profile from an earlier
    sitting (`DriftLoop.reset`).

    In the summary, error_before_px is the held-out error without the loop, error_after_px
    with it, and labels_to_recover is None (there is no injected onset)."""
    pred, truth = _as_points(pred, "pred"), _as_points(truth, "truth")
    ids = np.asarray(target_ids)
    if ids.shape != (len(pred),):
        raise ValueError(f"target_ids must have shape ({len(pred)},), got {ids.shape}")
    lab = np.isin(ids, np.asarray(list(label_targets)))
    if not lab.any():
        raise ValueError("no frame belongs to label_targets")
    if lab.all():
        raise ValueError("every frame belongs to label_targets: nothing is left to measure")
    res = _run(
        pred,
        truth,
        screen_px,
        DriftSchedule(kind="none"),
        stream or LabelStream(),
        cfg,
        np.flatnonzero(lab),
        np.flatnonzero(~lab),
        draws,
        new_sitting,
    )
    res.summary["mode"] = "calibrate-on-other"
    res.summary["labels_to_recover"] = None
    res.summary["label_targets"] = sorted({int(x) for x in ids[lab]})
    res.summary["eval_targets"] = sorted({int(x) for x in ids[~lab]})
    res.summary["eval_frames"] = int((~lab).sum())
    return res


def synthetic_session(
    screen_px: tuple[int, int] = (1728, 1080),
    grid: tuple[int, int] = (5, 5),
    frames_per_target: int = 30,
    noise_px: float = 80.0,
    target_bias_px: float = 0.0,
    margin: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred, truth, target_ids): a grid of targets, each fixated for `frames_per_target`
    frames, predicted with a per-target bias (σ `target_bias_px` per axis, the mapping's
    error) plus per-frame Gaussian noise (σ `noise_px` per axis)."""
    rng = np.random.default_rng(seed)
    size = np.asarray(screen_px, dtype=np.float64)
    gx = np.linspace(margin, 1 - margin, grid[0])
    gy = np.linspace(margin, 1 - margin, grid[1])
    targets = np.array([(x, y) for y in gy for x in gx])
    return frames_around(targets, size, frames_per_target, noise_px, target_bias_px, rng)


def frames_around(
    targets_norm: np.ndarray,
    screen_px: Any,
    frames_per_target: int,
    noise_px: float,
    target_bias_px: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames of fixation on each target with simulated fast-path error (see above)."""
    size = np.asarray(screen_px, dtype=np.float64)
    m = len(targets_norm)
    truth = np.repeat(targets_norm, frames_per_target, axis=0)
    ids = np.repeat(np.arange(m), frames_per_target)
    bias = rng.normal(0.0, target_bias_px, (m, 2))[ids] if target_bias_px > 0 else 0.0
    pred = truth + (bias + rng.normal(0.0, noise_px, truth.shape)) / size
    return pred, truth, ids


def screen_from_targets(targets_px: np.ndarray) -> tuple[int, int]:
    """A session without its screen size: assume equal margins on both sides of the targets'
    extent (the usual calibration grid), i.e. width = max x + min x, height = max y + min y."""
    t = np.asarray(targets_px, dtype=np.float64)
    lo, hi = t.min(axis=0), t.max(axis=0)
    return (int(math.ceil(hi[0] + lo[0])), int(math.ceil(hi[1] + lo[1])))


class DriftingMapper(ProfileMapper):
    """The profile with a known drift added after `onset_ns`: what a person moving in their
    chair does to a calibration. The loop's offset is added on top, as in real use."""

    def __init__(self, base: ProfileMapper, drift_norm: np.ndarray, onset_ns: int):
        self.__dict__.update(base.__dict__)
        self.drift = drift_norm
        self.onset_ns = onset_ns

    def __call__(self, sample):
        xy = super().__call__(sample)
        if xy is None or sample.t_ns < self.onset_ns:
            return xy
        return xy + self.drift  # the fast path clips what it shows, as for any mapper
