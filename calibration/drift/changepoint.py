"""The drift loop's estimator as pure functions: a robust fit of one offset to a run of
labels, the noise scale, and a scan for the label at which the offset last changed.

Every label is one equation P·C = P·g (see `calibration.loop`): P the identity for a point
label (2 dof), n·nᵀ for a line label (1 dof), g an offset that explains the label. Inputs are
stacks: Ps (m, 2, 2), gs (m, 2), dims (m,) in {1, 2}; lengths in screen widths, and an
"information" (Σ w·P, plus a prior) counts labels, so its inverse times σ² is a covariance.

Labels of unequal noise: a label whose source has σₛ = σ/√w comes in as w·P (its inverse
variance relative to σ), and `label_weights` (m,) gives each label's w. The residuals the functions
compute from w·P are then w times the label's own; everything that asks "how many σ away"
(the gate, the Huber clip, the scan's "near" radius and spread) divides by √w, so a noisy
source's label is judged by its own σₛ: one 4σₛ away is beyond a 3σ gate whatever its
weight. Without `label_weights` every label weighs 1 and nothing is rescaled.

Why these pieces
----------------
- `robust_fit`: Huber M-estimate by iteratively reweighted least squares, started at the L1
  centre (50 % breakdown for point labels) and *redescending*: a label beyond the gate radius
  from the fit gets weight zero, so junk far away has no influence at all and junk near the
  fit at most a Huber-bounded one.
- `robust_scale`: the median of the labels' residual lengths about the fit of the run they
  belong to (standardised by their leverage, so a short run does not shrink σ), converted to
  σ per axis. A median: up to half the labels may be junk.
- `change_scan`: for every candidate onset τ of the current run, the score test of "the labels
  from τ on have another offset than the labels before τ". The residuals of the later labels
  about the earlier labels' fit are clipped at `huber_k`·σ (so one wild label adds at most a
  bounded amount, and it takes several consistent labels to make a change), summed, and
  weighed by their covariance: the clipped noise of the later labels plus the uncertainty of
  the earlier fit. Under no change the statistic is χ² with as many dof as the later labels
  constrain; the best τ is returned with −log of its tail probability. The loop declares a
  change above a threshold and then re-estimates the offset from the labels since τ alone: the
  estimate a loop *told* the onset would make, instead of creeping there by α steps.
- The short-run penalty: the scan is a maximum over every split at every label, so its
  false alarms are spent wherever chance puts them, and most land on splits with few later
  labels. Those are the costly ones: at the threshold the later labels' mean sits
  σ·√(2·h/n) from the old offset, so a false change on 3-6 labels moves the offset 150-250
  px in 128 px of noise per label, one on 20 labels under 100. Nor do they buy recovery:
  an estimator told the onset needs 11-15 labels of a 150 px step before its own mean is
  in the 10 % band, so detecting the step at its 4th label instead of its 9th gains
  nothing. So the false-alarm budget is moved from short splits to long ones: a split
  with n later labels must show `short_logp`·(1 − n/`short_labels`) more −log p (6 at
  none, 0 from 12 on; a weighted Bonferroni split of one family-wise rate over run
  lengths). Chosen on simulated streams (seeds apart from the benchmarks'): at the same
  `change_logp`, the share of 100-label no-drift streams whose offset ever walks past 100
  px fell from 18 % to 8 % on a grid9-like session and to 3 % on the synthetic 5×5 one,
  and a pure-noise scan no longer fires on fewer than 6 later labels. A 150 px step is
  declared about 2 labels later in median (the scan alone, σ known: 8-9 → 11), but the
  labels to recover it did not move (18 vs 14 told on the 5×5 session; 14.5 vs 15 on the
  grid9-like one): what is lost is detections the estimator told the onset could not use
  yet either. The price: a drift far beyond the noise, which clipped at `huber_k`·σ adds
  −log p ≈ 2.3 per label, is declared at its 5th label instead of its 3rd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from gazeloop.calibration.masked import row_medians

# Median of a 2-D N(0, σ²I) radial distance, and of |N(0, σ²)|, in units of σ.
MEDIAN_RADIAL = math.sqrt(2.0 * math.log(2.0))
MEDIAN_ABS = NormalDist().inv_cdf(0.75)
_L1_ITERS = 12
_IRLS_ITERS = 10
_EPS = 1e-6  # in screen widths: 2 µm of a 2 m wall
_TINY = 1e-9  # information that only pins directions nothing else constrains
_COHERENT = 2.5  # largest median spread of a run of labels about its centre, in σ medians
# The short-run penalty (module doc): a split with n < SHORT_RUN_LABELS later labels must
# show SHORT_RUN_LOGP·(1 − n/SHORT_RUN_LABELS) more −log p. Chosen on simulated streams
# (calibration.drift.simulation, seeds 50000+ and 60000+, apart from every benchmark's).
SHORT_RUN_LOGP = 6.0
SHORT_RUN_LABELS = 12


@dataclass(frozen=True, slots=True)
class Fit:
    """A robust fit of one offset to a run of labels."""

    mean: np.ndarray  # (2,) the offset, screen widths
    info: np.ndarray  # (2,2) Σ w·P + prior, in labels: covariance = σ²·info⁻¹
    weights: np.ndarray  # (m,) each label's final weight (0: beyond the gate)
    resid: np.ndarray  # (m,) |P·(g − mean)|, screen widths
    leverage: np.ndarray  # (m,) how much each label pulled the fit toward itself, [0, 1)


def inv2(A: np.ndarray) -> np.ndarray:
    """Inverse of one (2,2) or a stack (..., 2, 2) of 2×2 matrices, in closed form."""
    det = A[..., 0, 0] * A[..., 1, 1] - A[..., 0, 1] * A[..., 1, 0]
    out = np.empty_like(A)
    out[..., 0, 0] = A[..., 1, 1]
    out[..., 1, 1] = A[..., 0, 0]
    out[..., 0, 1] = -A[..., 0, 1]
    out[..., 1, 0] = -A[..., 1, 0]
    return out / det[..., None, None]


def gate_1d(gate_2d: float) -> float:
    """The 1-D distance with the same tail probability as a 2-D radial distance `gate_2d`,
    so one gate serves point labels (2 dof) and line labels (1 dof)."""
    tail = max(math.exp(-0.5 * gate_2d * gate_2d), 1e-15)
    return NormalDist().inv_cdf(1.0 - 0.5 * tail)


def radial_of_1d(x: float) -> float:
    """The inverse of `gate_1d`: a 1-D normalised distance as the 2-D radial distance of the
    same tail probability, so one gate serves point labels (2 dof) and line labels (1 dof)."""
    tail = max(math.erfc(abs(x) / math.sqrt(2.0)), 1e-300)
    return math.sqrt(-2.0 * math.log(tail))


def clip_kappa(k: float, dim: int) -> float:
    """E|ψ(e)|² / (dim·σ²) for e ~ N(0, σ²I_dim) clipped radially at k·σ: the variance a
    clipped residual keeps, per axis."""
    if dim == 2:
        return 1.0 - math.exp(-0.5 * k * k)
    nd = NormalDist()
    inside = 2.0 * nd.cdf(k) - 1.0
    return inside - 2.0 * k * nd.pdf(k) + k * k * (1.0 - inside)


def neg_log_tail(T: np.ndarray, dof: np.ndarray) -> np.ndarray:
    """−log P(χ²_dof ≥ T) for dof 1 or 2 (0 where dof is 0)."""
    T = np.maximum(np.asarray(T, dtype=np.float64), 0.0)
    dof = np.asarray(dof)
    out = np.where(dof == 2, 0.5 * T, 0.0)
    one = dof == 1
    if one.any():
        z = np.sqrt(0.5 * T[one])
        tail = np.array([math.erfc(v) for v in z])
        # erfc underflows past z ≈ 26; its asymptote −log erfc(z) ≈ z² + log(z·√π) there.
        big = tail < 1e-300
        lt = np.where(big, z * z + np.log(np.maximum(z, 1.0) * math.sqrt(math.pi)), 0.0)
        lt[~big] = -np.log(tail[~big])
        out[one] = lt
    return out


def _stacked(Ps: np.ndarray, Pg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The labels as two matrices every IRLS step multiplies: M (6, m), whose product with
    the weights gives the step's sums (P's three numbers, P·g, and the weights' total), and
    R (3, 2m), whose product with (1, −cx, −cy) gives P·(g − c) of every label (x parts,
    then y parts). The iterations run a few times per label, and numpy's per-call overhead
    on a few dozen labels, not the arithmetic, was most of their cost: two products a step
    replace a dozen elementwise ones."""
    m = len(Pg)
    a, b, d = Ps[:, 0, 0], Ps[:, 0, 1], Ps[:, 1, 1]  # P is symmetric
    M = np.empty((6, m))
    M[0], M[1], M[2], M[3], M[4], M[5] = a, b, d, Pg[:, 0], Pg[:, 1], 1.0
    R = np.empty((3, 2 * m))
    R[0, :m], R[1, :m], R[2, :m] = M[3], a, b
    R[0, m:], R[1, m:], R[2, m:] = M[4], b, d
    return M, R


def _diffs(R: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P·(g − c) of every label from `_stacked`'s R, as its x and y parts: each (m,) for
    one centre c (3,) = (1, −cx, −cy), (T, m) for a stack of them (T, 3)."""
    e = c @ R
    m = R.shape[1] // 2
    return e[..., :m], e[..., m:]


def _lengths(R: np.ndarray, c: np.ndarray) -> np.ndarray:
    """|P·(g − c)| of every label (`_diffs`)."""
    return np.hypot(*_diffs(R, c))


def _homogeneous(c: np.ndarray) -> np.ndarray:
    """Centres (T, 2) as the (T, 3) rows (1, −cx, −cy) `_diffs` takes."""
    return np.column_stack([np.ones(len(c)), -c])


def _l1_centre(M: np.ndarray, R: np.ndarray, c0: np.ndarray) -> np.ndarray:
    """L1 (spatial-median-like) centre by IRLS on `_stacked`'s matrices; directions no
    label constrains stay at c0."""
    w = np.ones(M.shape[1])
    c0x, c0y = float(c0[0]), float(c0[1])
    cx, cy = c0x, c0y
    c = np.ones(3)
    for _ in range(_L1_ITERS + 1):
        sa, sb, sd, sx, sy, sw = (M @ w).tolist()
        r = _TINY * (sw + 1.0)
        a00, a01, a11 = sa + r, sb, sd + r
        bx, by = sx + r * c0x, sy + r * c0y
        det = a00 * a11 - a01 * a01
        nx, ny = (a11 * bx - a01 * by) / det, (a00 * by - a01 * bx) / det
        if abs(nx - cx) + abs(ny - cy) < 1e-12:
            cx, cy = nx, ny
            break
        cx, cy = nx, ny
        c[1], c[2] = -cx, -cy
        w = 1.0 / np.maximum(_lengths(R, c), _EPS)
    return np.array([cx, cy])


def _whitening(label_weights: np.ndarray | None, m: int) -> np.ndarray:
    """√w per label: how much a w·P residual's σ shrinks (module doc); ones without weights."""
    if label_weights is None:
        return np.ones(m)
    return np.sqrt(np.asarray(label_weights, dtype=np.float64))


def _huber(
    R: np.ndarray, cx: float, cy: float, k: np.ndarray, cut: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each label's residual length about (cx, cy) and its redescending Huber weight: 1
    within `k`, k/r beyond it, 0 beyond the gate radius `cut` (`robust_fit`)."""
    r = _lengths(R, np.array([1.0, -cx, -cy]))
    return r, np.where(r > cut, 0.0, np.minimum(1.0, k / np.maximum(r, _EPS)))


def robust_fit(
    Ps: np.ndarray,
    gs: np.ndarray,
    dims: np.ndarray,
    prior_info: np.ndarray,
    prior_mean: np.ndarray,
    sigma: float,
    *,
    huber_k: float,
    gate: float,
    label_weights: np.ndarray | None = None,
) -> Fit:
    """Huber fit of one offset to the labels (see the module doc), with a Gaussian prior of
    `prior_info` labels' worth at `prior_mean`. `gate` is a 2-D radius in σ (1-D labels use
    the radius of the same tail probability). `label_weights`: each label's w, already in
    `Ps` (module doc). No labels: the prior."""
    prior_info = np.asarray(prior_info, dtype=np.float64) + _TINY * np.eye(2)
    prior_mean = np.asarray(prior_mean, dtype=np.float64)
    m = len(gs)
    if m == 0:
        z = np.zeros(0)
        return Fit(prior_mean.copy(), prior_info, z, z, z)
    # In σ units each label is judged by its own source's: w·P gives w·r, so k and the gate
    # radius scale by √w (module doc).
    root = _whitening(label_weights, m)
    k = huber_k * sigma * root
    cut = np.where(dims == 2, gate, gate_1d(gate)) * sigma * root
    M, R = _stacked(Ps, np.einsum("nij,nj->ni", Ps, gs))
    (p00, p01), (_, p11) = prior_info.tolist()
    pbx, pby = (prior_info @ prior_mean).tolist()
    cx, cy = _l1_centre(M, R, prior_mean).tolist()
    w = np.ones(m)
    for _ in range(_IRLS_ITERS):
        r, w = _huber(R, cx, cy, k, cut)
        sa, sb, sd, sx, sy, _ = (M @ w).tolist()
        s00, s01, s11 = sa + p00, sb + p01, sd + p11
        bx, by = sx + pbx, sy + pby
        det = s00 * s11 - s01 * s01
        nx, ny = (s11 * bx - s01 * by) / det, (s00 * by - s01 * bx) / det
        done = math.hypot(nx - cx, ny - cy) < 1e-9
        cx, cy = nx, ny
        if done:
            break
    c = np.array([cx, cy])
    r, w = _huber(R, cx, cy, k, cut)
    sa, sb, sd = (M[:3] @ w).tolist()
    S = np.array([[sa, sb], [sb, sd]]) + prior_info
    Si = inv2(S)
    # Leverage of a label: w·tr(P·S⁻¹)/dim, the share of the fit it explains itself.
    lev = w * (np.array([Si[0, 0], Si[0, 1] + Si[1, 0], Si[1, 1]]) @ M[:3]) / dims
    return Fit(c, S, w, r, np.clip(lev, 0.0, 0.95))


def _truncated_median(cut: float, dim: int) -> float:
    """Median of |e|/σ for e ~ N(0, σ²I_dim) given |e| ≤ cut·σ."""
    nd = NormalDist()
    if dim == 2:
        half = 0.5 * (1.0 - math.exp(-0.5 * cut * cut))
        return math.sqrt(-2.0 * math.log(1.0 - half))
    half = 0.5 * (2.0 * nd.cdf(cut) - 1.0)
    return nd.inv_cdf(0.5 + 0.5 * half)


def robust_scale(
    resid: np.ndarray, dims: np.ndarray, leverage: np.ndarray, gate: float = 3.0
) -> float:
    """σ per axis from residual lengths about the fits they belong to (module doc).

    Starts from the median (50 % breakdown), then re-takes the median of the residuals
    within `gate`·σ against the median a Gaussian has inside that radius: the median alone
    is pulled up by junk (30 % junk far away inflates it by a third, and a wider σ lets
    more junk through the gate), the truncated median only by junk that lands near. One
    step, and never below 3/4 of the plain median: iterated, it can spiral down on a small
    sample whose far labels are real (a drift not yet detected), and a σ too small turns
    noise into changes."""
    dims = np.asarray(dims)
    r = np.asarray(resid) / np.sqrt(1.0 - np.asarray(leverage))
    med = np.where(dims == 2, MEDIAN_RADIAL, MEDIAN_ABS)
    sigma = float(np.median(r / med))
    cut = np.where(dims == 2, gate, gate_1d(gate))
    tmed = np.where(dims == 2, _truncated_median(gate, 2), _truncated_median(gate_1d(gate), 1))
    inside = r <= cut * sigma
    if inside.sum() < 3:
        return sigma
    return min(sigma, max(0.75 * sigma, float(np.median(r[inside] / tmed[inside]))))


def short_run_penalty(
    n_after: np.ndarray, short_logp: float = SHORT_RUN_LOGP, short_labels: int = SHORT_RUN_LABELS
) -> np.ndarray:
    """The extra −log p a split with `n_after` later labels must show (module doc):
    `short_logp` at none, falling linearly to 0 at `short_labels`."""
    if short_logp <= 0.0 or short_labels <= 0:
        return np.zeros(np.shape(n_after))
    n = np.asarray(n_after, dtype=np.float64)
    return short_logp * np.maximum(0.0, (short_labels - n) / short_labels)


@dataclass(frozen=True, slots=True)
class Scan:
    onset: int  # index of the first label of the best candidate run; -1: no candidate
    neg_log_p: float  # −log of its χ² tail probability less the short-run penalty (0: none)


def _l1_batched(M: np.ndarray, R: np.ndarray, mask: np.ndarray, c0: np.ndarray) -> np.ndarray:
    """For each row t of `mask` (T, m), the L1 centre of the labels it selects by
    `_l1_centre`'s IRLS (on `_stacked`'s matrices), but `_L1_ITERS` steps without an early
    stop; c0 (T, 2) pins what those labels leave unconstrained."""
    w = mask.astype(np.float64)
    c0x, c0y = c0[:, 0], c0[:, 1]
    c = _homogeneous(c0)
    for i in range(_L1_ITERS):
        if i:  # the weights of the last step's centres (the caller takes its own lengths)
            w = mask / np.maximum(_lengths(R, c), _EPS)
        S = w @ M.T
        # The pin grows with the weights, as in `_l1_centre`: a row of parallel lines has
        # weights up to 1/_EPS, and a fixed pin left its solve to rounding (centres off by
        # up to 0.14 screen widths along the lines).
        pin = _TINY * (S[:, 5] + 1.0)
        s00, s01, s11 = S[:, 0] + pin, S[:, 1], S[:, 2] + pin
        bx, by = S[:, 3] + pin * c0x, S[:, 4] + pin * c0y
        det = s00 * s11 - s01 * s01
        c[:, 1] = (s01 * by - s11 * bx) / det  # −cx
        c[:, 2] = (s01 * bx - s00 * by) / det  # −cy
    return -c[:, 1:]


def _sum_P(w: np.ndarray, Ps: np.ndarray) -> np.ndarray:
    """Σₙ w[t, n]·Pₙ for every row t: (T, 2, 2)."""
    out = np.empty((len(w), 2, 2))
    out[:, 0, 0] = w @ Ps[:, 0, 0]
    out[:, 0, 1] = out[:, 1, 0] = w @ Ps[:, 0, 1]
    out[:, 1, 1] = w @ Ps[:, 1, 1]
    return out


def _splits(m: int, window: int, min_after: int, first: int, taus: np.ndarray | None) -> np.ndarray:
    """The candidate onsets of `change_scan` (empty: none to test). A split with no label
    after it has nothing to test, whatever `min_after` or `taus` say (it was an IndexError)."""
    if taus is None:
        lo_tau = max(first, m - window)
        hi_tau = m - min_after
        taus = np.arange(lo_tau, hi_tau + 1) if hi_tau >= lo_tau else []
    taus = np.asarray(taus, dtype=np.int64)
    return taus[(taus >= 0) & (taus < m)]


def _earlier_fits(
    Ps: np.ndarray,
    Pg: np.ndarray,
    weights: np.ndarray,
    prior_info: np.ndarray,
    prior_mean: np.ndarray,
    taus: np.ndarray,
    window: int,
) -> tuple[np.ndarray, np.ndarray]:
    """For each onset τ, the weighted fit of the last `window` labels before it with the
    prior, and the inverse of its information: (T, 2), (T, 2, 2)."""
    zero2, zero22 = np.zeros((1, 2)), np.zeros((1, 2, 2))
    cS = np.concatenate([zero22, np.cumsum(weights[:, None, None] * Ps, axis=0)])
    cb = np.concatenate([zero2, np.cumsum(weights[:, None] * Pg, axis=0)])
    lo = np.maximum(0, taus - window)
    prior_info = np.asarray(prior_info, dtype=np.float64) + _TINY * np.eye(2)
    SA = cS[taus] - cS[lo] + prior_info
    bA = cb[taus] - cb[lo] + prior_info @ np.asarray(prior_mean, dtype=np.float64)
    SAi = inv2(SA)
    return np.einsum("tij,tj->ti", SAi, bA), SAi


def _score(
    u: np.ndarray,
    use: np.ndarray,
    kap: np.ndarray,
    Ps: np.ndarray,
    SAi: np.ndarray,
    sigma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The score statistic of each split's summed clipped residuals `u` (T, 2), weighed by
    their covariance: the later labels' clipped noise plus the earlier fit's uncertainty
    carried by every one of them. → (statistic, degrees of freedom), each (T,)."""
    SB = _sum_P(use, Ps)
    KB = _sum_P(use * kap[None, :], Ps)
    V = KB + np.einsum("tij,tjk,tkl->til", SB, SAi, SB)
    lam, vec = np.linalg.eigh(V * sigma * sigma)
    ok = lam > 1e-9 * np.maximum(lam[:, -1:], 1e-300)
    proj = np.einsum("tji,tj->ti", vec, u)  # u in V's eigenbasis
    T = np.sum(np.where(ok, proj * proj / np.where(ok, lam, 1.0), 0.0), axis=1)
    return T, ok.sum(axis=1)


def change_scan(
    Ps: np.ndarray,
    gs: np.ndarray,
    dims: np.ndarray,
    weights: np.ndarray,
    prior_info: np.ndarray,
    prior_mean: np.ndarray,
    sigma: float,
    *,
    huber_k: float,
    gate: float,
    window: int,
    min_after: int = 1,
    first: int = 1,
    taus: np.ndarray | None = None,
    short_logp: float = SHORT_RUN_LOGP,
    short_labels: int = SHORT_RUN_LABELS,
    label_weights: np.ndarray | None = None,
) -> Scan:
    """The best onset τ of the labels (module doc). The earlier part of each split is the
    last `window` labels before τ (with their `weights` from the run's robust fit, plus the
    prior); the later part is τ to the end, at most `window` labels and at least
    `min_after`. τ starts at `first`: 0 tests every label against the prior alone. `taus`:
    test only these splits instead. `short_logp`, `short_labels`: the evidence a split with
    n later labels must add, `short_logp`·(1 − n/`short_labels`) when n < `short_labels`
    (`short_run_penalty`; 0 turns it off and leaves the plain −log p). `label_weights`:
    each label's w, already in `Ps` (module doc; `weights` are the robust fit's).

    A later label counts only when it lies within the gate of the earlier fit or of the
    later labels' own L1 centre: a real change, however large, gathers its labels around a
    new centre, while junk is far from both and must not add up to a "change"."""
    m = len(gs)
    taus = _splits(m, window, min_after, first, taus)
    if len(taus) == 0:
        return Scan(-1, 0.0)
    Pg = np.einsum("nij,nj->ni", Ps, gs)
    cA, SAi = _earlier_fits(Ps, Pg, weights, prior_info, prior_mean, taus, window)
    # Residuals of w·P are w times the label's own: each label's σ is σ·√w here (module doc).
    root = _whitening(label_weights, m)
    # From here on only the labels from the earliest onset on, the only ones any split
    # calls later: once a run holds more than a window, the (T, m) work below was half on
    # labels every row masks out (a label update on the frame thread, 2 windows held).
    lo = int(taus.min())
    Ps, Pg, dims, root = Ps[lo:], Pg[lo:], dims[lo:], root[lo:]
    # Residuals of every later label about every earlier fit.
    after = np.arange(lo, m)[None, :] >= taus[:, None]
    M, R = _stacked(Ps, Pg)
    ex, ey = _diffs(R, _homogeneous(cA))  # (T, m − lo) each
    r = np.hypot(ex, ey)
    cut = np.where(dims == 2, gate, gate_1d(gate)) * sigma * root
    rB = _lengths(R, _homogeneous(_l1_batched(M, R, after, cA)))
    near = (r <= cut) | (rB <= cut)
    use = (after & near).astype(np.float64)
    # And the later labels must look like one run: spread about their own centre no wider
    # than noise (median residual within 2.5 times what σ gives). A short run of junk mixed
    # with a label or two has a centre between them and a spread far wider than σ.
    med = np.where(dims == 2, MEDIAN_RADIAL, MEDIAN_ABS) * sigma * root
    coherent = row_medians(rB / med[None, :], after) <= _COHERENT
    # Clipped, summed over the later labels: a bounded pull from each.
    clip = use * np.minimum(1.0, huber_k * sigma * root / np.maximum(r, _EPS))
    u = np.column_stack([np.sum(clip * ex, axis=1), np.sum(clip * ey, axis=1)])
    kap = np.where(dims == 2, clip_kappa(huber_k, 2), clip_kappa(huber_k, 1))
    T, dof = _score(u, use, kap, Ps, SAi, sigma)
    nlp = np.where(coherent, neg_log_tail(T, dof), 0.0)
    # Short later runs pay for their share of the false alarms (module doc).
    nlp = nlp - short_run_penalty(m - taus, short_logp, short_labels)
    best = int(np.argmax(nlp))
    return Scan(int(taus[best]), float(nlp[best]))
