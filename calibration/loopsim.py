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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from calibration.history import History
from calibration.labels import LineObservation, OracleLabel, PointObservation
from calibration.loop import DriftLoop, LoopConfig

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


def _label(
    k: int,
    t_ns: int,
    truth: np.ndarray,
    stream: LabelStream,
    rng: np.random.Generator,
    size: np.ndarray,
) -> tuple[OracleLabel, bool]:
    outlier = bool(rng.random() < stream.outlier_fraction)
    if outlier:
        p = rng.uniform(0.0, 1.0, 2)
    else:
        p = truth + (np.asarray(stream.bias_px) + rng.normal(0.0, stream.noise_px, 2)) / size
    if stream.kind == "point":
        obs: PointObservation | LineObservation = PointObservation(xy=(p[0], p[1]))
    else:
        cam = np.asarray(stream.camera_norm, dtype=np.float64)
        d = p - cam
        if np.hypot(*d) < 1e-9:
            d = np.array([0.0, 1.0])
        obs = LineObservation(origin=(cam[0], cam[1]), direction=(d[0], d[1]))
    label = OracleLabel(t_ns=t_ns, snapshot_id=f"sim-{k}", oracle="simulated", observation=obs)
    return label, outlier


def _run(
    pred: np.ndarray,
    truth: np.ndarray,
    screen_px: tuple[int, int],
    drift: DriftSchedule,
    stream: LabelStream,
    cfg: LoopConfig | None,
    label_frames: np.ndarray,
    eval_frames: np.ndarray,
) -> SimResult:
    size = np.asarray(screen_px, dtype=np.float64)
    if cfg is None:
        cfg = LoopConfig(aspect=size[0] / size[1])
    rng = np.random.default_rng(stream.seed)
    history = History(max_age_s=max(120.0, 4 * stream.interval_s), max_len=4096)
    loop = DriftLoop(cfg, history)
    n = stream.n_labels
    err = np.empty(n)
    offs = np.empty((n, 2))
    drifts = np.empty((n, 2))
    acc = np.zeros(n, dtype=bool)
    outl = np.zeros(n, dtype=bool)
    alarm = np.zeros(n, dtype=bool)
    p_eval, t_eval = pred[eval_frames], truth[eval_frames]
    t0 = 1_000_000_000
    for k in range(n):
        d_norm = drift.at(k) / size
        i = int(label_frames[rng.integers(len(label_frames))])
        t_ns = t0 + int(round(k * stream.interval_s * 1e9))
        history.append(t_ns, pred[i] + d_norm + loop.offset)
        label, outl[k] = _label(k, t_ns, truth[i], stream, rng, size)
        dec = loop.update(label)
        acc[k], alarm[k] = dec.accepted, dec.alarm
        offs[k] = loop.offset
        drifts[k] = drift.at(k)
        err[k] = mean_error_px(p_eval + d_norm + loop.offset, t_eval, screen_px)

    before = mean_error_px(p_eval, t_eval, screen_px)
    drifted = mean_error_px(p_eval + drift.at(n - 1) / size, t_eval, screen_px)
    onsets = np.flatnonzero(np.hypot(drifts[:, 0], drifts[:, 1]) > 0)
    onset = int(onsets[0]) if len(onsets) else None
    summary: dict[str, Any] = {
        "oracle": "simulated",
        "label_kind": stream.kind,
        "n_labels": n,
        "noise_px": stream.noise_px,
        "bias_px": list(stream.bias_px),
        "outlier_rate": stream.outlier_fraction,
        "outliers_drawn": int(outl.sum()),
        "seed": stream.seed,
        "drift": drift.model_dump(),
        "screen_px": list(screen_px),
        "frames": int(len(pred)),
        "error_before_px": before,
        "error_drifted_px": drifted,
        "error_after_px": float(err[-1]),
        "labels_to_recover": labels_to_recover(err, before, onset),
        "accepted": int(acc.sum()),
        "outliers_accepted": int((acc & outl).sum()),
        "inliers_rejected": int((~acc & ~outl).sum()),
        "final_offset_px": (offs[-1] * size).tolist(),
        "alarm_labels": int(alarm.sum()),
    }
    return SimResult(err, offs, drifts, acc, outl, alarm, summary)


def simulate_drift(
    pred: Any,
    truth: Any,
    screen_px: tuple[int, int],
    drift: DriftSchedule | None = None,
    stream: LabelStream | None = None,
    cfg: LoopConfig | None = None,
) -> SimResult:
    """Inject `drift` into a session's predictions and let the loop correct it from the
    simulated `stream`. `pred`, `truth`: (n, 2) normalised, one row per frame."""
    pred, truth = _as_points(pred, "pred"), _as_points(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} differ")
    allf = np.arange(len(pred))
    return _run(
        pred, truth, screen_px, drift or DriftSchedule(), stream or LabelStream(), cfg, allf, allf
    )


def simulate_transfer(
    pred: Any,
    truth: Any,
    target_ids: Any,
    label_targets: Any,
    screen_px: tuple[int, int],
    stream: LabelStream | None = None,
    cfg: LoopConfig | None = None,
) -> SimResult:
    """The `--calibrate-on OTHER` mode: no injected drift (the drift is the real change
    between the sitting the profile was fitted on and this one). Labels come only from
    frames of `label_targets`; every error is measured on the frames of the other targets,
    so the loop gets no credit for memorising the labelled points.

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
    )
    res.summary["mode"] = "calibrate-on-other"
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
