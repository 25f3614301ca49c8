"""Training losses: the masked weighted ridge head and a plain gaze-angle loss.

The ridge head trains an embedding for what happens at run time: a person calibrates on a
few points and a ridge map from the embedding to the screen predicts the rest (the idea of
the jspsych eye-tracking-training model's MaskedWeightedRidgeRegressionLayer). Per person in
a batch, the calibration samples' embeddings are regressed onto their screen points in
closed form (a differentiable `torch.linalg.solve`), and the person's other samples are
predicted with that map; the loss is their screen distance.

The regression is the one `calibration.mapping.RidgeMapping` fits at run time, so `lam` means
the same as its `alpha`: features standardised with the calibration samples' weighted mean
and std (constant features dropped), an unpenalised intercept, and the objective
Σ wᵢ‖yᵢ − f(xᵢ)‖² / Σ wᵢ + λ‖β‖². A head trained with λ is then served by the runtime mapping
with alpha = λ and behaves the same.

Distances are in normalised screen units with x scaled by the aspect ratio (w/h), so one
unit is one screen height in both axes, as everywhere in calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Calibration-set variance below this means the feature is constant for that person (a dead
# ReLU unit, say): it is dropped, as the runtime mapping does, instead of divided by ~0.
VAR_TOL = 1e-10


@dataclass(frozen=True, slots=True)
class RidgeOutput:
    pred: torch.Tensor  # (B, 2) every sample predicted from its person's calibration map
    query: torch.Tensor  # (B,) bool: samples the loss is over (not calibration, person fitted)
    loss: torch.Tensor  # () mean aspect-scaled distance over query samples (0 if none)


def screen_distance(pred: torch.Tensor, target: torch.Tensor, aspect: float) -> torch.Tensor:
    """(…, 2) → (…,) Euclidean distance with x scaled by `aspect`; a tiny floor inside the
    root keeps the gradient finite at zero error."""
    d = pred - target
    return torch.sqrt((d[..., 0] * aspect) ** 2 + d[..., 1] ** 2 + 1e-12)


def _check(
    E: torch.Tensor,
    Y: torch.Tensor,
    person_ids: torch.Tensor,
    calib_mask: torch.Tensor,
    weights: torch.Tensor | None,
) -> None:
    b = E.shape[0]
    if E.dim() != 2:
        raise ValueError(f"embeddings must be (B, D), got {tuple(E.shape)}")
    if Y.shape != (b, 2):
        raise ValueError(f"targets must be (B, 2) = ({b}, 2), got {tuple(Y.shape)}")
    if person_ids.shape != (b,) or calib_mask.shape != (b,):
        raise ValueError("person_ids and calib_mask must be (B,)")
    if calib_mask.dtype != torch.bool:
        raise TypeError("calib_mask must be a bool tensor")
    if weights is not None and weights.shape != (b,):
        raise ValueError(f"weights must be (B,), got {tuple(weights.shape)}")


def ridge_fit_predict(
    E: torch.Tensor,
    Y: torch.Tensor,
    person_ids: torch.Tensor,
    calib_mask: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    lam: float | torch.Tensor = 0.1,
    standardize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit one ridge per person on its calibration samples and predict all of its samples.

    E (B, D) embeddings, Y (B, 2) normalised screen targets, person_ids (B,) any integers,
    calib_mask (B,) bool, weights (B,) ≥ 0 for the calibration samples (default 1).
    Returns (pred (B, 2), fitted (B,) bool: the sample's person had calibration weight).
    Everything is batched over persons: one (P, D, D) solve.
    """
    _check(E, Y, person_ids, calib_mask, weights)
    if float(lam) <= 0:
        raise ValueError("lam must be > 0 (the closed form is singular without it)")
    dtype = E.dtype
    Y = Y.to(dtype)
    _, inv = torch.unique(person_ids, return_inverse=True)
    n_persons = int(inv.max()) + 1 if len(inv) else 0
    w = torch.ones_like(E[:, 0]) if weights is None else weights.to(dtype)
    w = w * calib_mask.to(dtype)
    onehot = torch.nn.functional.one_hot(inv, n_persons).to(dtype)  # (B, P)
    Wm = onehot.T * w[None, :]  # (P, B): calibration weight of each sample for its person
    sw = Wm.sum(1)  # (P,)
    fitted_p = sw > 0
    sw_safe = torch.where(fitted_p, sw, torch.ones_like(sw))

    mu = (Wm @ E) / sw_safe[:, None]  # (P, D)
    ybar = (Wm @ Y) / sw_safe[:, None]  # (P, 2)
    # Centring each sample on its own person's calibration mean is what makes the intercept
    # unpenalised; it also keeps float32 Gram matrices free of cancellation.
    Ec = E - mu[inv]
    if standardize:
        var = (Wm @ Ec**2) / sw_safe[:, None]
        ok = var > VAR_TOL
        scale = torch.where(ok, torch.rsqrt(torch.where(ok, var, torch.ones_like(var))), 0.0)
    else:
        scale = torch.ones_like(mu)
    Z = Ec * scale[inv]  # (B, D)
    Yc = Y - ybar[inv]
    Zw = Wm[:, :, None] * Z[None, :, :]  # (P, B, D)
    C = Zw.transpose(1, 2) @ Z / sw_safe[:, None, None]  # (P, D, D)
    r = Zw.transpose(1, 2) @ Yc / sw_safe[:, None, None]  # (P, D, 2)
    eye = torch.eye(E.shape[1], dtype=dtype, device=E.device)
    beta = torch.linalg.solve(C + lam * eye, r)  # (P, D, 2)
    pred = ybar[inv] + torch.einsum("bd,bdk->bk", Z, beta[inv])
    return pred, fitted_p[inv]


def ridge_head(
    E: torch.Tensor,
    Y: torch.Tensor,
    person_ids: torch.Tensor,
    calib_mask: torch.Tensor,
    *,
    aspect: float,
    weights: torch.Tensor | None = None,
    lam: float | torch.Tensor = 0.1,
    standardize: bool = True,
) -> RidgeOutput:
    """`ridge_fit_predict`, and the loss over the samples that are not calibration points:
    mean per-sample aspect-scaled distance (0 with a graph when there are none)."""
    pred, fitted = ridge_fit_predict(
        E, Y, person_ids, calib_mask, weights=weights, lam=lam, standardize=standardize
    )
    query = fitted & ~calib_mask
    dist = screen_distance(pred, Y.to(pred.dtype), aspect)
    # An episode with nothing to predict still gives a loss with a graph, so backward() works.
    loss = dist[query].mean() if bool(query.any()) else (pred * 0.0).sum()
    return RidgeOutput(pred=pred, query=query, loss=loss)


def sample_calibration_mask(
    person_ids: torch.Tensor,
    k_min: int = 8,
    k_max: int = 40,
    generator: torch.Generator | None = None,
    *,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """A random calibration episode: per person, k ~ U{k_min..k_max} calibration units.

    A unit is a sample, or with `groups` (target ids, (B,)) a whole target: frames of one
    target are not independent (DESIGN.md), so calibrating on some frames of a target and
    scoring the others would flatter the model. k is capped so at least one unit per person
    is left to predict; a person with k_min or fewer units gets no calibration (its samples
    are left out of the loss) rather than an episode unlike any real calibration.
    """
    if not 1 <= k_min <= k_max:
        raise ValueError(f"need 1 <= k_min <= k_max, got {k_min}, {k_max}")
    if person_ids.dim() != 1:
        raise ValueError("person_ids must be (B,)")
    if groups is not None and groups.shape != person_ids.shape:
        raise ValueError("groups must have the shape of person_ids")
    pid = person_ids.cpu()
    units_of = groups.cpu() if groups is not None else torch.arange(len(pid))
    mask = torch.zeros(len(pid), dtype=torch.bool)
    for p in torch.unique(pid):
        rows = torch.nonzero(pid == p).flatten()
        units = torch.unique(units_of[rows])
        n = len(units)
        hi = min(k_max, n - 1)
        if hi < k_min:
            continue
        k = int(torch.randint(k_min, hi + 1, (1,), generator=generator))
        chosen = units[torch.randperm(n, generator=generator)[:k]]
        mask[rows[torch.isin(units_of[rows], chosen)]] = True
    return mask.to(person_ids.device)


def angular_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(…, 3) gaze vectors (any length) → (…,) angle between them in radians.

    atan2(|a×b|, a·b) rather than acos of the cosine: acos has an infinite slope at 0, the
    very place training drives the error to."""
    cross = torch.linalg.cross(pred, target, dim=-1)
    sin = torch.sqrt((cross**2).sum(-1) + 1e-20)
    cos = (pred * target).sum(-1)
    return torch.atan2(sin, cos)


def gaze_angle_loss(
    pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean angular error (radians) for datasets with gaze angles and no screen; `weights`
    (…,) make it a weighted mean."""
    err = angular_error(pred, target)
    if weights is None:
        return err.mean()
    w = weights.to(err.dtype)
    return (err * w).sum() / w.sum().clamp_min(1e-12)


__all__ = [
    "RidgeOutput",
    "angular_error",
    "gaze_angle_loss",
    "ridge_fit_predict",
    "ridge_head",
    "sample_calibration_mask",
    "screen_distance",
]
