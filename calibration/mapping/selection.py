"""Choosing a mapping's hyper-parameters and measuring it honestly.

Hyper-parameters are chosen by leave-one-TARGET-out, never leave-one-frame-out (frames of one
target are not independent, DESIGN.md "Measuring"); `loto_predict` is the nested outer loop
whose held-out target never reaches any fit, and `constant_baseline_loto` is the reference
every error is reported next to. Errors are Euclidean in normalised units with x scaled by
the screen's aspect ratio (w/h), each target counting once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from gazeloop.calibration.mapping.families import (
    NotEnoughTargets,
    ScreenMapping,
    _as_x,
    _check_aspect,
    _dist,
    _prepare,
    mapping_class,
)


def _combos(cls: type[ScreenMapping], grid: dict[str, Iterable[float]] | None) -> list[dict]:
    grid = dict(grid or {})
    unknown = set(grid) - set(cls.defaults)
    if unknown:
        raise ValueError(
            f"grid for '{cls.name}' names unknown hyper-parameter(s) {sorted(unknown)}; "
            f"it takes {sorted(cls.defaults) or 'none'}"
        )
    full = {**cls.default_grid, **{k: [float(v) for v in vals] for k, vals in grid.items()}}
    keys = sorted(full)
    if any(len(full[k]) == 0 for k in keys):
        raise ValueError(f"empty grid for '{cls.name}': {full}")
    combos = [
        dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(full[k] for k in keys))
    ]
    for c in combos:
        cls(**c)  # the mapping's own checks (e.g. rbf alpha > 0) before any work
    return combos


def fit_select(
    name: str,
    X: Any,
    Y: Any,
    groups: Any,
    grid: dict[str, Iterable[float]] | None = None,
    *,
    aspect: float = 1.0,
    sample_weight: Any = None,
    options: dict[str, Any] | None = None,
) -> tuple[ScreenMapping, dict[str, float], float]:
    """`fit_select_detail` without the per-target errors."""
    m, chosen, score, _ = fit_select_detail(
        name, X, Y, groups, grid, aspect=aspect, sample_weight=sample_weight, options=options
    )
    return m, chosen, score


def fit_select_detail(
    name: str,
    X: Any,
    Y: Any,
    groups: Any,
    grid: dict[str, Iterable[float]] | None = None,
    *,
    aspect: float = 1.0,
    sample_weight: Any = None,
    options: dict[str, Any] | None = None,
) -> tuple[ScreenMapping, dict[str, float], float, np.ndarray | None]:
    """Choose hyper-parameters by leave-one-target-out over these targets, then refit on
    all of them. Returns (mapping, chosen hyper, mean per-target inner LOTO error).

    The inner error is in normalised units with x scaled by `aspect` (= w/h). With exactly
    `min_targets` targets there is no fold left to choose with: the grid's only combination
    or the mapping's `no_spare_hyper` rule (else its defaults) is used and the score is NaN.
    `options` are passed to the mapping unchanged (`columns`, `feature_names`). Also returns
    the chosen combination's inner error per target (sorted ids; None with no spare target),
    for comparing mappings target by target."""
    aspect = _check_aspect(aspect)
    cls = mapping_class(name)
    if groups is None:
        raise ValueError("fit_select needs target ids (groups) for leave-one-target-out")
    X, Y, w, groups = _prepare(X, Y, sample_weight, groups)
    options = dict(options or {})
    proto = cls(**options)
    combos = _combos(cls, grid)
    n_targets = len(np.unique(groups))
    if n_targets < cls.min_targets:
        raise NotEnoughTargets(cls.name, cls.min_targets, n_targets)
    if n_targets == cls.min_targets:
        # No target to spare, so nothing to choose with: a grid of one is the caller's
        # choice, else a rule measured on other calibrations (never a silent default).
        chosen = combos[0] if len(combos) == 1 else dict(cls.no_spare_hyper or cls.defaults)
        score, per = math.nan, None
    else:
        errs = proto._loto_target_errors(proto._select(X), Y, w, groups, combos, aspect)
        scores = errs.mean(axis=1)
        best = int(np.nanargmin(scores)) if np.isfinite(scores).any() else 0
        chosen, score, per = combos[best], float(scores[best]), errs[best]
    mapping = cls(**options, **chosen).fit(X, Y, w, groups)
    return mapping, dict(chosen), score, per


def loto_predict(
    name: str,
    X: Any,
    Y: Any,
    groups: Any,
    grid: dict[str, Iterable[float]] | None = None,
    aspect: float = 1.0,
    *,
    sample_weight: Any = None,
    options: dict[str, Any] | None = None,
) -> np.ndarray:
    """The honest outer loop: each target's frames predicted by `fit_select` (itself nested)
    on the other targets only. → (n, 2) predictions aligned with the rows of X."""
    aspect = _check_aspect(aspect)
    cls = mapping_class(name)
    X = _as_x(X)
    n = len(X)
    groups = np.asarray(groups).reshape(-1)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} frames")
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, float).reshape(-1)
    if len(w) != n:
        raise ValueError(f"sample_weight has {len(w)} entries for {n} frames")
    ids = np.unique(groups)
    if len(ids) < cls.min_targets + 1:
        raise NotEnoughTargets(
            cls.name, cls.min_targets + 1, len(ids), "evaluate leave-one-target-out"
        )
    Y = np.asarray(Y, dtype=np.float64)
    pred = np.empty((n, 2))
    for g in ids:
        out = groups == g
        mapping, _, _ = fit_select(
            name,
            X[~out],
            Y[~out],
            groups[~out],
            grid,
            aspect=aspect,
            sample_weight=w[~out],
            options=options,
        )
        pred[out] = mapping.predict(X[out])
    return pred


def constant_baseline_loto(Y: Any, groups: Any) -> np.ndarray:
    """The reference every error is reported next to: each held-out target predicted by the
    mean of the other targets' points (each target once, whatever its frame count)."""
    Y = np.asarray(Y, dtype=np.float64)
    groups = np.asarray(groups).reshape(-1)
    ids, inv = np.unique(groups, return_inverse=True)
    if len(ids) < 2:
        raise ValueError(f"the constant baseline needs at least 2 targets, got {len(ids)}")
    points = np.array([Y[inv == k].mean(axis=0) for k in range(len(ids))])
    others = (points.sum(axis=0)[None, :] - points) / (len(ids) - 1)
    return others[inv]


def target_errors(pred: Any, Y: Any, groups: Any, aspect: float = 1.0) -> np.ndarray:
    """Mean error per target (sorted target ids), Euclidean with x scaled by `aspect`."""
    aspect = _check_aspect(aspect)
    err = _dist(np.asarray(pred, float) - np.asarray(Y, float), aspect)
    groups = np.asarray(groups).reshape(-1)
    ids, inv = np.unique(groups, return_inverse=True)
    return np.bincount(inv, weights=err) / np.bincount(inv)


def mean_error(pred: Any, Y: Any, groups: Any, aspect: float = 1.0) -> float:
    """Mean over targets of each target's mean error: every target counts once."""
    return float(target_errors(pred, Y, groups, aspect).mean())
