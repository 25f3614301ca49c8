"""The closed loop: oracle labels in, a bounded drift offset C out.

The fast path adds `DriftLoop.offset` to every screen point it produces. Each oracle label is
compared with the fast estimate at the snapshot's *own* time (looked up in the `History`,
which holds the final points, offset included), and C moves to explain the labels.

What a label says
-----------------
A usable label becomes one equation `P·C = P·g`: g is the offset that would have made the
fast estimate agree with the label (the observation minus the estimate without the offset
that was in force at t), P the identity for a point label and n·nᵀ for a line label (n the
line's normal). So a line label constrains only the component of C across the line, and
the residual it reports is the perpendicular one; a point label constrains both axes.

Why not a fixed gain `C ← C + α·Δ`
----------------------------------
A residual mixes the oracle's noise with the fast path's own error (100 px and 80 px per
axis in the done criteria), so a single label says little. Measured with `loopsim` (300
seeds, a 150 px step drift after 10 labels, 60 labels): a fixed gain α = 0.1 brings the
seed-averaged error back within 10 % of the pre-drift error after 15 labels, but each run
keeps wandering (5 % of runs are in that band from the 15th label to the end; +7 % error at
the end), and with 30 % junk labels behind a median/MAD gate its worst run ends 24 % *worse*
than no correction at all; α ≥ 0.15 never settles in the band. So the loop keeps a posterior
over *when the drift last changed* (Bayesian online change-point detection, Adams & MacKay
2007): every hypothesis "the offset has been constant for the last r labels" carries the
Gaussian posterior of C given those labels (information form, so point and line labels mix
freely and a direction no label constrains stays at its prior), and the hypotheses are
weighted by how well each predicted the labels (Student-t predictive: a misjudged σ must
not turn two noisy labels into a "change"). C's target is the posterior mean, in which a
run younger than `min_run_labels` still counts as "no change yet". For a constant drift
this is the running mean of the labels since the change (`C ← C + Δ/n`, the best a
constant drift allows). Same simulation: 18 labels seed-averaged, 32 % of runs in the band
from the 15th label on, +3.7 % at the end, worst junk run at 0.79 of the drifted error;
an estimator *told* the onset (`loopsim.known_onset_reference`) needs 13 labels, 52 %.

The gate
--------
- Robust scale σ: the median absolute deviation of the last `gate_labels` labels (rejected
  ones included) about their spatial median, floored at `noise_floor`.
- Robust centre: the posterior mean above. One outlier cannot move it (it is explained by
  the outlier component: with probability `outlier_prior` a label is uniform over the
  screen), while a persistent drift moves it once a short-run hypothesis wins.
- A label farther than `gate_sigma` (2-D, in units of the predictive spread: σ and the
  centre's own uncertainty) from the centre is an outlier and moves nothing.
Accepted labels step C toward the centre: α times the move, restricted to the directions
that recent labels constrain (eigenvalues of Σ P over the last `window_labels` labels within
`window_s` ≥ `min_constraint`), clipped to `max_step`, with |C| clipped to `max_total`.

Lengths are measured in screen widths: normalised x, and normalised y divided by the aspect
(physical width / height), so a bound or a scale is the same physical distance in every
direction and "perpendicular to a line" is perpendicular on the glass. Inputs and outputs
(residual, step, offset) are ordinary normalised screen units.

Thread-safety: `update` holds a lock; the fast path reads `offset` every frame without one.
`offset` is a read-only array that `update` replaces by assignment, never mutates, so a
reader sees the old offset or the new one, never half of each.
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
_L1_ITERS = 12
_EPS = 1e-6  # in screen widths: 2 µm of a 2 m wall
_LOG_2PI = math.log(2.0 * math.pi)
_NEGLIGIBLE = 30.0  # run hypotheses e^-30 below the best are dropped


class LoopConfig(BaseModel):
    """Every knob of the loop. Lengths are in screen widths (see the module doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aspect: float = Field(16 / 9, gt=0, description="physical width / height of the screen")
    alpha: float = Field(1.0, gt=0, le=1, description="gain toward the posterior mean")
    max_step: float = Field(0.06, gt=0, description="largest |step| per label")
    max_total: float = Field(0.15, gt=0, description="largest |C|")
    max_gap_ms: float = Field(100.0, gt=0, description="history interpolation gap at t")
    max_label_age_s: float = Field(
        30.0, gt=0, description="a label older than this behind the newest sample is stale"
    )
    min_confidence: float = Field(0.3, ge=0, le=1)
    accept_lines: bool = Field(True, description="False when no camera position is known")
    # Robust gate.
    gate_labels: int = Field(25, ge=3, description="labels (rejected included) for σ")
    gate_sigma: float = Field(3.0, gt=0, description="gate radius, 2-D, in predictive σ")
    noise_prior: float = Field(0.075, gt=0, description="σ per axis until enough labels")
    noise_floor: float = Field(0.01, gt=0, description="smallest σ the gate believes")
    min_scale_labels: int = Field(5, ge=2, description="labels before σ is measured")
    outlier_prior: float = Field(0.2, gt=0, lt=1, description="P(label is junk), a priori")
    tail_dof: float = Field(
        4.0,
        gt=0,
        description="Student-t dof of the predictive (inf: Gaussian); heavy tails "
        "keep a misjudged σ from turning two noisy labels into a change",
    )
    # Change-point model.
    prior_weight: float = Field(4.0, ge=0, description="starting offset's worth, in labels")
    drift_every: float = Field(30.0, gt=1, description="expected labels between changes")
    drift_scale: float = Field(0.06, gt=0, description="σ per axis of a change of drift")
    max_runs: int = Field(40, ge=2, description="change-point hypotheses kept")
    min_run_labels: int = Field(8, ge=1, description="labels before a new run may move C")
    # Memory: a run's weight in labels, and which directions may move.
    window_labels: int = Field(40, ge=1, description="memory of a run, and of constraints")
    window_s: float = Field(600.0, gt=0, description="age limit of constraining labels")
    min_constraint: float = Field(0.75, gt=0, description="eigenvalue of ΣP to constrain")
    # Drift alarm.
    alarm_labels: int = Field(8, ge=2, description="accepted labels the median runs over")
    alarm_residual: float = Field(0.15, gt=0, description="median |residual| that alarms")
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
    p_change: float = 0.0  # P(the drift changed within the last 3 labels), for display


@dataclass(slots=True)
class _Sample:
    t_ns: int
    P: np.ndarray  # (2,2) projector onto what the label constrains, width units
    g: np.ndarray  # (2,) an offset that explains the label: P·C = P·g
    n: np.ndarray | None  # unit normal of a line label, None for a point
    accepted: bool = False


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.flags.writeable = False
    return a


def _inv2(A: np.ndarray) -> np.ndarray:
    """Inverse of one (2,2) or a stack (..., 2, 2) of 2×2 matrices, in closed form."""
    det = A[..., 0, 0] * A[..., 1, 1] - A[..., 0, 1] * A[..., 1, 0]
    out = np.empty_like(A)
    out[..., 0, 0] = A[..., 1, 1]
    out[..., 1, 1] = A[..., 0, 0]
    out[..., 0, 1] = -A[..., 0, 1]
    out[..., 1, 0] = -A[..., 1, 0]
    return out / det[..., None, None]


def _dist(Ps: np.ndarray, gs: np.ndarray, c: np.ndarray) -> np.ndarray:
    e = np.einsum("nij,nj->ni", Ps, gs - c)
    return np.hypot(e[:, 0], e[:, 1])


def _l1_centre(Ps: np.ndarray, gs: np.ndarray, c0: np.ndarray) -> np.ndarray:
    """L1 (spatial-median-like) centre by IRLS: 50 % breakdown for point labels; directions
    no label constrains stay at c0. Written out per element: it runs every label."""
    a, b, d = Ps[:, 0, 0], Ps[:, 0, 1], Ps[:, 1, 1]  # P is symmetric
    px, py = a * gs[:, 0] + b * gs[:, 1], b * gs[:, 0] + d * gs[:, 1]  # P·g
    w = np.ones(len(gs))
    c = (float(c0[0]), float(c0[1]))
    for _ in range(_L1_ITERS + 1):
        r = 1e-9 * (float(w.sum()) + 1.0)
        a00, a01, a11 = float(w @ a) + r, float(w @ b), float(w @ d) + r
        bx, by = float(w @ px) + r * c0[0], float(w @ py) + r * c0[1]
        det = a00 * a11 - a01 * a01
        new = ((a11 * bx - a01 * by) / det, (a00 * by - a01 * bx) / det)
        if abs(new[0] - c[0]) + abs(new[1] - c[1]) < 1e-12:
            c = new
            break
        c = new
        ex, ey = px - (a * c[0] + b * c[1]), py - (b * c[0] + d * c[1])
        w = 1.0 / np.maximum(np.hypot(ex, ey), _EPS)
    return np.array(c)


def _equiv_radial_1d(x: float) -> float:
    """A 1-D normalised distance as the 2-D radial distance of the same tail probability,
    so one gate serves point labels (2 dof) and line labels (1 dof)."""
    tail = max(math.erfc(abs(x) / math.sqrt(2.0)), 1e-300)
    return math.sqrt(-2.0 * math.log(tail))


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
        cfg = self.cfg
        with self._lock:
            self._samples.clear()
            self._accepted_resid.clear()
            self._seen.clear()
            self._pinned = 0
            self._rejected_run = 0
            self.alarm, self.alarm_reason = False, ""
            q = off * self._k
            self._prior_q = q
            # One hypothesis: "nothing changed since the calibration", which carries the
            # starting offset as `prior_weight` labels' worth of evidence.
            self._S = (cfg.prior_weight * np.eye(2))[None].copy()  # Σ w·P (in labels)
            self._b = (cfg.prior_weight * q)[None].copy()  # Σ w·P·g
            self._mu0 = q[None].copy()  # prior mean of a run born at a change
            self._born = np.array([False])  # False: the calibration's own run
            self._age = np.array([0])  # labels in each run
            self._lp = np.array([0.0])  # log posterior of each run
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
            sample = _Sample(t, np.eye(2), a * k - raw_q, None)
            resid_q = a * k - e_q
        else:
            d = u * k
            d = d / math.hypot(*d)
            n = np.array([-d[1], d[0]])
            o_q = a * k
            if float(np.dot(e_q - o_q, d)) < 0.0:
                # The ray points away from the estimate: no point of it is near, so the
                # label contradicts the fast path outright rather than constraining it.
                return self._reject("the fast estimate lies behind the ray's origin", fast=est)
            P = np.outer(n, n)
            sample = _Sample(t, P, P @ (o_q - raw_q), n)
            resid_q = P @ (o_q - e_q)
        self._seen.append(label.snapshot_id)
        return self._decide(sample, resid_q / k, float(np.hypot(*resid_q)), est)

    # --- the estimator -------------------------------------------------------------------

    def _scale(self, C: np.ndarray) -> float:
        cfg = self.cfg
        recent = list(self._samples)[-cfg.gate_labels :]
        if len(recent) < cfg.min_scale_labels:
            return max(cfg.noise_prior, cfg.noise_floor)
        Ps = np.stack([s.P for s in recent])
        gs = np.stack([s.g for s in recent])
        dist = _dist(Ps, gs, _l1_centre(Ps, gs, C))
        expected = np.array([_MEDIAN_RADIAL if s.n is None else _MEDIAN_ABS for s in recent])
        return max(float(np.median(dist / expected)), cfg.noise_floor)

    def _posteriors(self, s2: float) -> tuple[np.ndarray, np.ndarray]:
        """Mean (R,2) and covariance (R,2,2) of C under each run hypothesis."""
        tau2 = self.cfg.drift_scale**2
        eye = np.eye(2)
        born = self._born[:, None, None]
        lam0 = np.where(born, eye / tau2, 1e-9 * eye)
        eta0 = np.where(self._born[:, None], self._mu0 / tau2, 1e-9 * self._prior_q)
        Lam = self._S / s2 + lam0
        cov = _inv2(Lam)
        mu = np.einsum("rij,rj->ri", cov, self._b / s2 + eta0)
        return mu, cov

    def _log_pred(self, sample: _Sample, mu: np.ndarray, cov: np.ndarray, s2: float) -> np.ndarray:
        """Log predictive density of the label under each hypothesis."""
        e = sample.g - mu
        nu = self.cfg.tail_dof
        if sample.n is None:
            V = cov + s2 * np.eye(2)
            Vi = _inv2(V)
            m2 = np.einsum("ri,rij,rj->r", e, Vi, e)
            det = V[:, 0, 0] * V[:, 1, 1] - V[:, 0, 1] * V[:, 1, 0]
            return _log_t(m2, 0.5 * np.log(det), nu, 2)
        n = sample.n
        v = np.einsum("i,rij,j->r", n, cov, n) + s2
        r = e @ n
        m2 = r * r / v
        return _log_t(m2, 0.5 * np.log(v), nu, 1)

    def _decide(
        self, sample: _Sample, residual: np.ndarray, resid_len: float, est: np.ndarray
    ) -> LoopDecision:
        cfg = self.cfg
        C = self._offset * self._k
        self._samples.append(sample)
        while len(self._samples) > 1 and sample.t_ns - self._samples[0].t_ns > cfg.window_s * 1e9:
            self._samples.popleft()
        s = self._scale(C)
        s2 = s * s

        # Hypotheses: every existing run grows by this label, or a new run starts with it
        # (its prior: C now, give or take a change of drift_scale).
        mu, cov = self._posteriors(s2)
        mu = np.vstack([mu, C[None]])
        cov = np.concatenate([cov, (cfg.drift_scale**2 * np.eye(2))[None]])
        lg = self._log_pred(sample, mu, cov, s2)
        eps = cfg.outlier_prior
        # Junk is uniform over the screen: density aspect per width² for a point, about one
        # per width for a line's perpendicular offset.
        log_junk = math.log(eps) + (math.log(cfg.aspect) if sample.n is None else 0.0)
        lin = math.log1p(-eps) + lg
        lpred = np.logaddexp(lin, log_junk)
        inlier = np.exp(lin - lpred)  # P(this label is not junk | hypothesis)

        h = 1.0 / cfg.drift_every
        lse_prev = _logsumexp(self._lp)
        lp = np.append(self._lp + math.log1p(-h), lse_prev + math.log(h)) + lpred
        lp -= _logsumexp(lp)

        # The gate, against the pre-label belief: mean and spread of the mixture.
        w_prior = np.exp(np.append(self._lp + math.log1p(-h), lse_prev + math.log(h)) - lse_prev)
        centre = w_prior @ mu
        spread = np.einsum("r,rij->ij", w_prior, cov + np.einsum("ri,rj->rij", mu, mu))
        spread -= np.outer(centre, centre)
        d = self._gate_distance(sample, centre, spread, s2)
        accepted = d <= cfg.gate_sigma
        sample.accepted = accepted

        # Bayesian update of every run with this label, weighted by how likely it is real.
        w = inlier
        S = np.concatenate([self._S, np.zeros((1, 2, 2))]) + w[:, None, None] * sample.P
        b = np.concatenate([self._b, np.zeros((1, 2))]) + w[:, None] * (sample.P @ sample.g)
        # Fading memory: a run never holds more than window_labels labels' worth, so hours
        # of labels do not freeze C and a slow drift is followed without a change-point.
        n_eff = np.trace(S, axis1=1, axis2=2) / 2.0
        fade = np.minimum(1.0, cfg.window_labels / np.maximum(n_eff, 1e-12))
        self._S, self._b = S * fade[:, None, None], b * fade[:, None]
        self._mu0 = np.vstack([self._mu0, C[None]])
        self._born = np.append(self._born, True)
        self._age = np.append(self._age + 1, 1)
        self._lp = lp
        self._prune()

        step_q = np.zeros(2)
        if accepted:
            mu_post, _ = self._posteriors(s2)
            # A run younger than min_run_labels speaks for "no change yet": one label in the
            # tail must not move C, two or three in a row may.
            young = self._born & (self._age < cfg.min_run_labels)
            mu_post[young] = C
            target = np.exp(self._lp) @ mu_post
            step_q = cfg.alpha * self._constrain(target - C)
            norm = math.hypot(*step_q)
            if norm > cfg.max_step:
                step_q *= cfg.max_step / norm
            new_q = C + step_q
            total = math.hypot(*new_q)
            if total > cfg.max_total:
                new_q *= cfg.max_total / total
            step_q = new_q - C
            if math.hypot(*step_q) > 0.0:
                self._set_offset(new_q / self._k)
            self._accepted_resid.append(resid_len)
            self._rejected_run = 0
        else:
            self._rejected_run += 1
        at_bound = math.hypot(*(self._offset * self._k)) >= cfg.max_total * (1 - 1e-9)
        self._pinned = self._pinned + 1 if at_bound else 0
        self._update_alarm()

        p_change = float(np.exp(self._lp[self._born & (self._age <= 3)]).sum())
        if accepted:
            why = "accepted"
        else:
            why = (
                f"outlier: {d:.1f}σ from the robust centre of recent labels "
                f"(gate {cfg.gate_sigma:g}σ; σ = {s:.3f} screen widths)"
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
            p_change=p_change,
        )

    def _gate_distance(
        self, sample: _Sample, centre: np.ndarray, spread: np.ndarray, s2: float
    ) -> float:
        V = spread + s2 * np.eye(2)
        e = sample.g - centre
        if sample.n is None:
            return math.sqrt(max(float(e @ _inv2(V) @ e), 0.0))
        n = sample.n
        return _equiv_radial_1d(float(e @ n) / math.sqrt(float(n @ V @ n)))

    def _constrain(self, delta: np.ndarray) -> np.ndarray:
        """`delta` restricted to the directions recent accepted labels constrain."""
        acc = [s.P for s in self._samples if s.accepted]
        if not acc:
            return np.zeros(2)
        lam, V = np.linalg.eigh(np.sum(acc, axis=0))
        Vc = V[:, lam >= self.cfg.min_constraint]
        return Vc @ (Vc.T @ delta)

    def _prune(self) -> None:
        lp = self._lp
        keep = lp >= lp.max() - _NEGLIGIBLE
        if keep.sum() > self.cfg.max_runs:
            keep &= lp >= np.sort(lp)[-self.cfg.max_runs]
        if keep.all():
            return
        self._S, self._b, self._mu0 = self._S[keep], self._b[keep], self._mu0[keep]
        self._born, self._age = self._born[keep], self._age[keep]
        self._lp = lp[keep] - _logsumexp(lp[keep])

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
                    f"{med:.3f} screen widths (> {cfg.alarm_residual:g}): an offset does "
                    "not absorb it"
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
        """Usable labels in the window (those that reached the gate)."""
        return len(self._samples)

    @property
    def run_hypotheses(self) -> int:
        return len(self._lp)


def _log_t(m2: np.ndarray, half_logdet: np.ndarray, nu: float, dim: int) -> np.ndarray:
    """Log density of a `dim`-variate Student t with `nu` dof at squared Mahalanobis
    distance m2 (the Gaussian when nu is infinite)."""
    if math.isinf(nu):
        return -0.5 * m2 - half_logdet - 0.5 * dim * _LOG_2PI
    const = (
        math.lgamma(0.5 * (nu + dim)) - math.lgamma(0.5 * nu) - 0.5 * dim * math.log(nu * math.pi)
    )
    return const - half_logdet - 0.5 * (nu + dim) * np.log1p(m2 / nu)


def _logsumexp(a: np.ndarray) -> float:
    m = float(a.max())
    return m + math.log(float(np.exp(a - m).sum()))
