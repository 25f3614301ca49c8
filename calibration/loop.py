"""The closed loop: oracle labels in, a bounded drift offset C out.

The fast path adds `DriftLoop.offset` to every screen point it produces. Each oracle label is
compared with the fast estimate at the snapshot's *own* time (looked up in the `History`,
which holds the final points, offset included), and C moves to explain the labels.

How C moves, and why it is not a fixed-gain `C ← C + α·Δ`
---------------------------------------------------------
A label's residual mixes the oracle's noise with the fast path's own per-frame error (about
100 px and 80 px per axis in the done criteria). With a fixed gain, small α leaves C lagging
for dozens of labels and large α makes C a random walk whose wander alone costs more than
10 % accuracy; measured on the simulator, no α in 0.1–0.3 brings a 150 px drift back within
10 % of the pre-drift error inside 15 labels in more than 3 % of runs. So:

- Every usable label becomes an equation `P·C = P·g` in a *segment* of recent labels: g is
  the offset that would have made the fast estimate agree with the label (observation minus
  the estimate without the offset that was in force at t), P the identity for a point label
  and n·nᵀ for a line label (n its normal), so a line constrains only the component of C
  across it. The segment's robust centre (L1 start, then Tukey biweight) is C's target; the
  step is α times the move toward it, restricted to directions the segment constrains
  (eigenvalues of Σ wP ≥ `min_constraint`), clipped to `max_step`, and |C| to `max_total`.
  For clean point labels this is the running mean, i.e. `C ← C + Δ/n`: the best a constant
  drift allows, and quieter than any fixed gain once n is large.
- A change detector restarts the segment when a drift begins: for each split of the newest
  labels, the robust centre of the labels after it is compared with C, weighted by how much
  those labels constrain (a χ²-like statistic); above `change_threshold` the segment
  restarts at the best split, so recovery does not wait for old labels to be outvoted.
- The gate: the robust centre of the current segment (including labels the gate rejected,
  so a persistent drift moves the centre and is accepted after `change_min_labels` labels)
  and a robust scale (median absolute deviation of the last `gate_labels` labels, rejected
  ones included). A label farther than `gate_sigma` from that centre is an outlier and moves
  nothing; an isolated outlier never gets in because it cannot move the centre, and a label
  outvoted once keeps a Tukey weight of zero in every later estimate.
- The initial segment carries the starting offset as `prior_weight` pseudo point labels, so
  the first noisy label after a good calibration moves C by a fraction only.

Lengths are measured in screen widths: normalised x, and normalised y divided by the aspect
(physical width / height), so a bound or a scale is the same physical distance in every
direction and "perpendicular to a line" is perpendicular on the glass. Inputs and outputs
(residual, step, offset) are ordinary normalised screen units.

Thread-safety: `update` may run on any one thread at a time (it holds a lock); the fast path
reads `offset` every frame without a lock. `offset` is a read-only array that `update`
replaces by assignment, never mutates, so a reader sees the old offset or the new one.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from calibration.history import History
from calibration.labels import LineObservation, OracleLabel, PointObservation

# Median of a 2-D N(0, σ²I) radial distance, and of |N(0, σ²)|, in units of σ.
_MEDIAN_RADIAL = math.sqrt(2.0 * math.log(2.0))
_MEDIAN_ABS = NormalDist().inv_cdf(0.75)
_TUKEY_C = 4.685  # 95 % efficiency at the Gaussian
# The spatial median's variance relative to the mean's, for the change statistic.
_L1_INEFFICIENCY = 1.3
_L1_ITERS = 12
_EPS = 1e-6  # in screen widths: 2 µm of a 2 m wall


class LoopConfig(BaseModel):
    """Every knob of the loop. Lengths are in screen widths (see the module doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aspect: float = Field(16 / 9, gt=0, description="physical width / height of the screen")
    alpha: float = Field(1.0, gt=0, le=1, description="gain toward the segment's estimate")
    max_step: float = Field(0.06, gt=0, description="largest |step| per label")
    max_total: float = Field(0.15, gt=0, description="largest |C|")
    max_gap_ms: float = Field(100.0, gt=0, description="history interpolation gap at t")
    max_label_age_s: float = Field(
        30.0, gt=0, description="a label older than this behind the newest sample is stale"
    )
    min_confidence: float = Field(0.3, ge=0, le=1)
    accept_lines: bool = Field(True, description="False when no camera position is known")
    # Robust gate.
    gate_labels: int = Field(15, ge=3, description="labels (rejected included) for the scale")
    gate_sigma: float = Field(3.0, gt=0, description="gate radius in robust σ (2-D)")
    noise_prior: float = Field(0.07, gt=0, description="σ per axis until enough labels")
    noise_floor: float = Field(0.01, gt=0, description="smallest σ the gate believes")
    min_scale_labels: int = Field(5, ge=2, description="labels before the scale is measured")
    prior_weight: float = Field(2.0, ge=0, description="starting offset's worth, in labels")
    # Estimation window: defines the constrained directions too.
    window_labels: int = Field(40, ge=2)
    window_s: float = Field(600.0, gt=0)
    min_constraint: float = Field(0.75, gt=0, description="eigenvalue of ΣwP to constrain")
    # Change detection.
    change_min_labels: int = Field(3, ge=2, description="labels after a split, at least")
    change_splits: int = Field(12, ge=1, description="newest splits examined")
    change_threshold: float = Field(14.0, gt=0, description="χ²-like statistic to restart")
    # Drift alarm.
    alarm_labels: int = Field(8, ge=2, description="accepted labels the median runs over")
    alarm_residual: float = Field(0.12, gt=0, description="median |residual| that alarms")
    alarm_pinned_labels: int = Field(3, ge=1, description="updates with |C| at its bound")
    alarm_rejected_labels: int = Field(10, ge=2, description="outliers in a row")


@dataclass(frozen=True, slots=True)
class LoopDecision:
    """What the loop did with one label. Arrays are normalised screen units, read-only."""

    accepted: bool
    why: str
    residual: np.ndarray  # (2,) obs − estimate along what the label constrains; NaN if none
    step: np.ndarray  # (2,) the change of the offset this label made
    offset: np.ndarray  # (2,) the offset after this label
    fast_xy: np.ndarray | None = None  # (2,) the fast estimate at the label's time
    alarm: bool = False
    alarm_reason: str = ""
    change: bool = False  # this label restarted the estimate (a drift began)


@dataclass(slots=True)
class _Sample:
    t_ns: int
    P: np.ndarray  # (2,2) projector onto what the label constrains, width units
    g: np.ndarray  # (2,) an offset that explains the label: P·C = P·g
    rank: int  # 2 point, 1 line


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.flags.writeable = False
    return a


def _solve2(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Closed form: np.linalg.solve's overhead dominates for 2×2 systems solved thousands
    # of times per label by the change detector.
    det = A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0]
    return np.array(
        [(A[1, 1] * b[0] - A[0, 1] * b[1]) / det, (A[0, 0] * b[1] - A[1, 0] * b[0]) / det]
    )


def _wls(Ps: np.ndarray, gs: np.ndarray, w: np.ndarray, c0: np.ndarray) -> np.ndarray:
    """argmin Σ w|P(g − c)|²; directions nobody constrains stay at c0 (a tiny ridge)."""
    A = np.einsum("n,nij->ij", w, Ps)
    b = np.einsum("n,nij,nj->i", w, Ps, gs)
    ridge = 1e-9 * (float(w.sum()) + 1.0)
    return _solve2(A + ridge * np.eye(2), b + ridge * c0)


def _dist(Ps: np.ndarray, gs: np.ndarray, c: np.ndarray) -> np.ndarray:
    e = np.einsum("nij,nj->ni", Ps, gs - c)
    return np.hypot(e[:, 0], e[:, 1])


def _l1_centre(Ps: np.ndarray, gs: np.ndarray, w: np.ndarray, c0: np.ndarray) -> np.ndarray:
    """Weighted L1 (spatial-median-like) centre by IRLS: 50 % breakdown for point labels."""
    c = _wls(Ps, gs, w, c0)
    for _ in range(_L1_ITERS):
        u = w / np.maximum(_dist(Ps, gs, c), _EPS)
        c = _wls(Ps, gs, u, c0)
    return c


def _equiv_radial(x: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Normalised distances as 2-D radial distances of the same tail probability, so one
    gate and one Tukey cutoff serve point labels (2 dof) and line labels (1 dof)."""
    out = np.array(x, dtype=np.float64)
    for i in np.flatnonzero(ranks == 1):
        tail = max(math.erfc(float(x[i]) / math.sqrt(2.0)), 1e-300)
        out[i] = math.sqrt(-2.0 * math.log(tail))
    return out


def _scale_of(dists: np.ndarray, ranks: np.ndarray) -> float:
    """Robust σ per axis: each distance over its expected median, then the median."""
    return float(np.median(dists / np.where(ranks == 2, _MEDIAN_RADIAL, _MEDIAN_ABS)))


def _tukey_centre(
    Ps: np.ndarray,
    gs: np.ndarray,
    ranks: np.ndarray,
    w: np.ndarray,
    c0: np.ndarray,
    s: float,
    iters: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Biweight M-estimate from c0; returns the centre and the final weights (0 = ignored)."""
    c = c0
    u = w
    for _ in range(iters):
        d = _equiv_radial(_dist(Ps, gs, c) / s, ranks)
        u = w * np.where(d < _TUKEY_C, (1.0 - (d / _TUKEY_C) ** 2) ** 2, 0.0)
        if u.sum() <= 0:
            return c0, u
        c = _wls(Ps, gs, u, c0)
    return c, u


class DriftLoop:
    """The stateful loop. `update` takes one label and returns what it did with it; nothing
    a label contains makes it raise."""

    def __init__(
        self,
        cfg: LoopConfig | None = None,
        history: History | None = None,
        offset: tuple[float, float] | np.ndarray = (0.0, 0.0),
    ) -> None:
        if history is None:
            raise ValueError("DriftLoop needs the History the fast path writes")
        self.cfg = cfg or LoopConfig()
        self.history = history
        self._lock = threading.Lock()
        self._k = np.array([1.0, 1.0 / self.cfg.aspect])  # normalised → width units
        self._samples: deque[_Sample] = deque(maxlen=max(self.cfg.window_labels, 1))
        self._gate_flags: deque[bool] = deque(maxlen=self.cfg.window_labels)
        self._seen: deque[str] = deque(maxlen=256)
        self._accepted_resid: deque[float] = deque(maxlen=self.cfg.alarm_labels)
        self._offset_log: deque[tuple[int, np.ndarray]] = deque(maxlen=512)
        self.alarm = False
        self.alarm_reason = ""
        self.reset(offset)

    # --- the offset the fast path reads --------------------------------------------------

    @property
    def offset(self) -> np.ndarray:
        """(2,) normalised offset to add to fast-path points; read-only, replaced whole."""
        return self._offset

    def reset(self, offset: tuple[float, float] | np.ndarray = (0.0, 0.0)) -> None:
        """Start over from `offset` (e.g. after a recalibration): forget every label."""
        off = np.asarray(offset, dtype=np.float64).reshape(2)
        if not np.isfinite(off).all():
            raise ValueError(f"offset must be finite, got {off}")
        with self._lock:
            self._samples.clear()
            self._gate_flags.clear()
            self._accepted_resid.clear()
            self._seen.clear()
            self._seg_start = 0  # index into _samples where the current segment begins
            self._initial_segment = True
            self._prior_q = off * self._k
            self._pinned = 0
            self._rejected_run = 0
            self.alarm, self.alarm_reason = False, ""
            self._offset_log.clear()
            self._offset_log.append((-(2**62), _ro(off)))
            self._offset = _ro(off)

    # --- one label -----------------------------------------------------------------------

    def update(self, label: OracleLabel) -> LoopDecision:
        with self._lock:
            try:
                return self._update(label)
            except Exception as e:  # noqa: BLE001 — a bad label must never stop the loop
                return self._reject(f"internal error on this label: {type(e).__name__}: {e}")

    def _reject(
        self, why: str, residual: np.ndarray | None = None, fast: np.ndarray | None = None
    ) -> LoopDecision:
        return LoopDecision(
            accepted=False,
            why=why,
            residual=_ro(residual if residual is not None else [np.nan, np.nan]),
            step=_ro([0.0, 0.0]),
            offset=self._offset,
            fast_xy=None if fast is None else _ro(fast),
            alarm=self.alarm,
            alarm_reason=self.alarm_reason,
        )

    def _offset_at(self, t_ns: int) -> np.ndarray:
        """The offset that was in force for the frame at t_ns (the estimate includes it)."""
        best = self._offset_log[0][1]
        for t_eff, off in self._offset_log:
            if t_eff > t_ns:
                break
            best = off
        return best

    def _update(self, label: OracleLabel) -> LoopDecision:
        cfg = self.cfg
        if not isinstance(label, OracleLabel):
            return self._reject(f"not an OracleLabel: {type(label).__name__}")
        obs = label.observation
        if obs is None:
            where = " (target outside the frame)" if label.in_frame is False else ""
            return self._reject(f"no observation{where}")
        conf = float(label.confidence)
        if not math.isfinite(conf) or conf < cfg.min_confidence:
            return self._reject(f"confidence {conf:.2f} < {cfg.min_confidence:.2f}")
        if label.snapshot_id in self._seen:
            return self._reject(f"duplicate snapshot {label.snapshot_id!r}")

        if isinstance(obs, PointObservation):
            a = np.asarray(obs.xy, dtype=np.float64)
            if a.shape != (2,) or not np.isfinite(a).all():
                return self._reject(f"point {obs.xy!r} is not two finite numbers")
        elif isinstance(obs, LineObservation):
            if not cfg.accept_lines:
                return self._reject("line label, but this loop takes no lines (no camera)")
            a = np.asarray(obs.origin, dtype=np.float64)
            u = np.asarray(obs.direction, dtype=np.float64)
            if a.shape != (2,) or not np.isfinite(a).all():
                return self._reject(f"line origin {obs.origin!r} missing or not finite")
            if u.shape != (2,) or not np.isfinite(u).all() or math.hypot(*u) < 1e-9:
                return self._reject(f"line direction {obs.direction!r} unusable")
        else:
            return self._reject(f"unknown observation {type(obs).__name__}")

        t = int(label.t_ns)
        latest = self.history.latest()
        if latest is not None and latest.t_ns - t > cfg.max_label_age_s * 1e9:
            age = (latest.t_ns - t) / 1e9
            return self._reject(f"stale: {age:.1f} s behind the newest sample")
        est = self.history.at(t, int(cfg.max_gap_ms * 1e6))
        if est is None or est.size < 2 or not np.isfinite(est[:2]).all():
            return self._reject("no fast estimate at t")
        est = est[:2].astype(np.float64)

        k = self._k
        e_q = est * k
        raw_q = e_q - self._offset_at(t) * k
        if isinstance(obs, PointObservation):
            P = np.eye(2)
            g = a * k - raw_q
            rank = 2
            resid_q = a * k - e_q
        else:
            d = u * k
            d /= math.hypot(*d)
            n = np.array([-d[1], d[0]])
            o_q = a * k
            if float(np.dot(e_q - o_q, d)) < 0.0:
                return self._reject(
                    "the fast estimate lies behind the ray's origin", fast=est
                )  # no point of the ray is near it: the label contradicts it outright
            P = np.outer(n, n)
            g = P @ (o_q - raw_q)
            rank = 1
            resid_q = P @ (o_q - e_q)
        self._seen.append(label.snapshot_id)
        residual = resid_q / k

        self._append(_Sample(t, P, g, rank))
        return self._decide(residual, float(np.hypot(*resid_q)), est)

    def _append(self, s: _Sample) -> None:
        cfg = self.cfg
        if len(self._samples) == self._samples.maxlen:
            self._seg_start = max(0, self._seg_start - 1)
        self._samples.append(s)
        # Old labels leave the window by age too; the segment start follows.
        while len(self._samples) > 1 and s.t_ns - self._samples[0].t_ns > cfg.window_s * 1e9:
            self._samples.popleft()
            self._seg_start = max(0, self._seg_start - 1)

    def _decide(self, residual: np.ndarray, resid_len: float, est: np.ndarray) -> LoopDecision:
        cfg = self.cfg
        C = self._offset * self._k
        Ps = np.stack([s.P for s in self._samples])
        gs = np.stack([s.g for s in self._samples])
        ranks = np.array([s.rank for s in self._samples])
        n = len(gs)

        # Scale: the last gate_labels labels, rejected ones included, about their centre.
        lo = max(0, n - cfg.gate_labels)
        if n - lo >= cfg.min_scale_labels:
            ones = np.ones(n - lo)
            c_rec = _l1_centre(Ps[lo:], gs[lo:], ones, C)
            s = _scale_of(_dist(Ps[lo:], gs[lo:], c_rec), ranks[lo:])
        else:
            s = cfg.noise_prior
        s = max(s, cfg.noise_floor)

        change = self._detect_change(Ps, gs, ranks, C, s)

        # The segment's robust centre: what C should be.
        seg = slice(self._seg_start, n)
        Pz, gz, rz = Ps[seg], gs[seg], ranks[seg]
        w = np.ones(len(gz))
        if self._initial_segment and cfg.prior_weight > 0:
            Pz = np.concatenate([Pz, np.eye(2)[None]])
            gz = np.concatenate([gz, self._prior_q[None]])
            rz = np.concatenate([rz, [2]])
            w = np.concatenate([w, [cfg.prior_weight]])
        start = _l1_centre(Pz, gz, w, C)
        centre, u = _tukey_centre(Pz, gz, rz, w, start, s)

        # The gate: this label against the centre.
        d_new = float(_equiv_radial(_dist(Ps[-1:], gs[-1:], centre) / s, ranks[-1:])[0])
        accepted = d_new <= cfg.gate_sigma
        self._gate_flags.append(accepted)

        step_q = np.zeros(2)
        if accepted:
            # Only directions the labels (not the prior) constrain may move.
            nl = len(Ps) - self._seg_start
            A = np.einsum("n,nij->ij", u[:nl], Pz[:nl])
            lam, V = np.linalg.eigh(A)
            Vc = V[:, lam >= cfg.min_constraint]
            step_q = cfg.alpha * (Vc @ (Vc.T @ (centre - C)))
            norm = math.hypot(*step_q)
            if norm > cfg.max_step:
                step_q *= cfg.max_step / norm
            new_q = C + step_q
            total = math.hypot(*new_q)
            if total > cfg.max_total:
                new_q *= cfg.max_total / total
            step_q = new_q - C
            self._set_offset(new_q / self._k)
            self._accepted_resid.append(resid_len)
            self._rejected_run = 0
        else:
            self._rejected_run += 1
        self._pinned = (
            self._pinned + 1
            if math.hypot(*(self._offset * self._k)) >= (cfg.max_total * (1 - 1e-9))
            else 0
        )
        self._update_alarm()

        if accepted:
            why = "accepted" + (": a new drift segment began" if change else "")
        else:
            why = (
                f"outlier: {d_new:.1f}σ from the robust centre of recent labels "
                f"(gate {cfg.gate_sigma:g}σ, σ = {s:.3f} screen widths)"
            )
        return LoopDecision(
            accepted=accepted,
            why=why,
            residual=_ro(residual),
            step=_ro(step_q / self._k),
            offset=self._offset,
            fast_xy=_ro(est),
            alarm=self.alarm,
            alarm_reason=self.alarm_reason,
            change=change,
        )

    def _detect_change(
        self, Ps: np.ndarray, gs: np.ndarray, ranks: np.ndarray, C: np.ndarray, s: float
    ) -> bool:
        """Restart the segment at the split whose later labels disagree most with C."""
        cfg = self.cfg
        n = len(gs)
        first = max(self._seg_start + 1, n - cfg.change_splits)
        best_T, best_j = 0.0, -1
        for j in range(first, n - cfg.change_min_labels + 1):
            Pa, ga, ra = Ps[j:], gs[j:], ranks[j:]
            m = _l1_centre(Pa, ga, np.ones(n - j), C)
            d = _equiv_radial(_dist(Pa, ga, m) / s, ra)
            keep = d < _TUKEY_C
            if keep.sum() < cfg.change_min_labels:
                continue
            A = Pa[keep].sum(axis=0)
            delta = m - C
            T = float(delta @ A @ delta) / (_L1_INEFFICIENCY * s * s)
            if T > best_T:
                best_T, best_j = T, j
        if best_T <= cfg.change_threshold:
            return False
        self._seg_start = best_j
        self._initial_segment = False
        return True

    def _set_offset(self, off: np.ndarray) -> None:
        new = _ro(off)
        latest = self.history.latest()
        # Frames already in the history carry the old offset; the new one applies after.
        t_eff = latest.t_ns + 1 if latest is not None else -(2**62)
        self._offset_log.append((t_eff, new))
        self._offset = new  # one reference assignment: atomic for the fast path's reader

    def _update_alarm(self) -> None:
        cfg = self.cfg
        reasons = []
        if len(self._accepted_resid) >= cfg.alarm_labels:
            med = float(np.median(self._accepted_resid))
            if med > cfg.alarm_residual:
                reasons.append(
                    f"median residual of the last {cfg.alarm_labels} accepted labels is "
                    f"{med:.3f} screen widths (> {cfg.alarm_residual:g}): an offset cannot "
                    "absorb it"
                )
        if self._pinned >= cfg.alarm_pinned_labels:
            reasons.append(
                f"the offset has sat at its bound {cfg.max_total:g} for {self._pinned} labels"
            )
        if self._rejected_run >= cfg.alarm_rejected_labels:
            reasons.append(f"{self._rejected_run} labels in a row rejected as outliers")
        self.alarm = bool(reasons)
        self.alarm_reason = "; ".join(reasons) + ("; recalibrate" if reasons else "")

    # --- introspection -------------------------------------------------------------------

    @property
    def n_labels(self) -> int:
        """Labels in the estimation window (usable ones: those that reached the gate)."""
        return len(self._samples)

    @property
    def segment_labels(self) -> int:
        """Labels in the current segment (since the last detected change)."""
        return len(self._samples) - self._seg_start
