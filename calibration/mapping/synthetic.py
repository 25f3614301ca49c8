"""A synthetic calibration (the shape of a real one) and the time of fitting a mapping on it,
for `gazeloop bench mapping`."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from gazeloop.calibration.mapping.families import DEFAULT_MAPPING
from gazeloop.calibration.mapping.selection import fit_select


def synthetic_calibration(
    n_targets: int = 25, frames: int = 30, d: int = 11, noise: float = 0.02, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grid of targets and frames whose features are a smooth, mildly nonlinear function
    of the target plus per-frame noise: the shape of a real calibration. → (X, Y, groups)."""
    rng = np.random.default_rng(seed)
    side = math.ceil(math.sqrt(n_targets))
    grid = np.linspace(0.1, 0.9, side)
    pts = np.array([(x, y) for y in grid for x in grid])[:n_targets]
    Y = np.repeat(pts, frames, axis=0)
    groups = np.repeat(np.arange(n_targets), frames)
    P = rng.normal(size=(2, d))
    Z = (Y - 0.5) @ P
    X = Z + 0.3 * np.tanh(Z) ** 2 + noise * rng.normal(size=Z.shape)
    return X, Y, groups


def benchmark_fit(
    n_targets: int = 25,
    frames: int = 30,
    d: int = 11,
    name: str = DEFAULT_MAPPING,
    repeats: int = 20,
    grid: dict[str, Iterable[float]] | None = None,
) -> dict[str, Any]:
    """Wall time of one `fit_select` (default grid, nested LOTO selection + refit) on a
    synthetic calibration, in ms. One warm-up run is not counted."""
    X, Y, groups = synthetic_calibration(n_targets, frames, d)
    fit_select(name, X, Y, groups, grid)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        _, chosen, score = fit_select(name, X, Y, groups, grid)
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.array(times)
    return {
        "mapping": name,
        "n_targets": n_targets,
        "frames": frames,
        "d": d,
        "repeats": len(t),
        "p50_ms": float(np.percentile(t, 50)),
        "p95_ms": float(np.percentile(t, 95)),
        "min_ms": float(t.min()),
        "chosen": chosen,
        "inner_score": score,
    }
