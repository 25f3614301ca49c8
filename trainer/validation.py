"""Validation numbers: the held-out persons (or targets) of `trainer.split`, each calibrated
on its calibration targets with the training ridge in float64 and scored on its other
targets, in px and % of the screen diagonal (every target counts once), next to the constant
predictor (mean of the calibration targets); and the gaze angle where there are gaze labels.
Early stopping watches the validation % of the diagonal (`metric`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gazeloop.trainer.config import TrainConfig
from gazeloop.trainer.episodes import make_batch
from gazeloop.trainer.readers.common import Samples
from gazeloop.trainer.ridge_head import angular_error, ridge_fit_predict
from gazeloop.trainer.split import ValSet


@torch.no_grad()
def embed(
    model: torch.nn.Module,
    samples: Samples,
    rows: np.ndarray,
    device: torch.device,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """(gaze (N, 3), embedding (N, D)) in float64, evaluation mode."""
    was_training = model.training
    model.eval()
    gs, es = [], []
    try:
        for i in range(0, len(rows), chunk):
            b = make_batch(samples, rows[i : i + chunk], device)
            g, e = model(b.left, b.right, b.head)
            gs.append(g.double().cpu().numpy())
            es.append(e.double().cpu().numpy())
    finally:
        model.train(was_training)
    if not gs:
        return np.zeros((0, 3)), np.zeros((0, 0))
    return np.concatenate(gs), np.concatenate(es)


def _pct_diag(
    diff: np.ndarray, screen_px: np.ndarray, aspect: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample error in px (NaN where the screen size is unknown) and in % of the
    diagonal (from px when known, else from `aspect`)."""
    px = np.hypot(diff[:, 0] * screen_px[:, 0], diff[:, 1] * screen_px[:, 1])
    pct_px = 100.0 * px / np.hypot(screen_px[:, 0], screen_px[:, 1])
    pct_aspect = 100.0 * np.hypot(diff[:, 0] * aspect, diff[:, 1]) / math.hypot(aspect, 1.0)
    return px, np.where(np.isfinite(pct_px), pct_px, pct_aspect)


def _per_target_mean(values: np.ndarray, targets: np.ndarray) -> float:
    """Mean over targets of each target's mean (DESIGN.md: every target counts once)."""
    ok = np.isfinite(values)
    if not ok.any():
        return math.nan
    ids, inv = np.unique(targets[ok], return_inverse=True)
    return float((np.bincount(inv, weights=values[ok]) / np.bincount(inv)).mean())


def _constant_predictor(targets: np.ndarray, Y: np.ndarray, pid: np.ndarray, calib: np.ndarray):
    """Per person, the mean of its calibration targets, each target once whatever its
    frame count."""
    base = np.empty_like(Y)
    for p in np.unique(pid):
        c = (pid == p) & calib
        tids, inv = np.unique(targets[c], return_inverse=True)
        pts = np.stack([np.bincount(inv, weights=Y[c, j]) / np.bincount(inv) for j in (0, 1)], 1)
        base[pid == p] = pts.mean(0)
    return base


def _screen_errors(
    model: torch.nn.Module,
    samples: Samples,
    val: ValSet,
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """Ridge-calibrated and constant-predictor errors on the query targets."""
    _, emb = embed(model, samples, val.rows, device)
    _, pid = np.unique(samples.person[val.rows], return_inverse=True)
    Y = samples.screen[val.rows].astype(np.float64)
    pred, fitted = ridge_fit_predict(
        torch.from_numpy(emb),
        torch.from_numpy(Y),
        torch.from_numpy(pid),
        torch.from_numpy(val.calib),
        weights=torch.from_numpy(samples.weight[val.rows].astype(np.float64)),
        lam=cfg.ridge_lambda,
    )
    q = fitted.numpy() & ~val.calib
    targets = samples.target[val.rows]
    base = _constant_predictor(targets, Y, pid, val.calib)
    spx = samples.screen_px[val.rows].astype(np.float64)
    out = {}
    for key, p in (("val", pred.numpy()), ("val_baseline", base)):
        px, pct = _pct_diag(p[q] - Y[q], spx[q], cfg.aspect)
        out[f"{key}_px"] = _per_target_mean(px, targets[q])
        out[f"{key}_pct_diag"] = _per_target_mean(pct, targets[q])
    return out


def validate(
    model: torch.nn.Module, samples: Samples, val: ValSet, cfg: TrainConfig, device: torch.device
) -> dict[str, float]:
    """Calibrate each validation person on its calibration targets (the training ridge,
    float64), score the other targets; also the constant predictor and the gaze angle."""
    out = {
        "val_px": math.nan,
        "val_pct_diag": math.nan,
        "val_baseline_px": math.nan,
        "val_baseline_pct_diag": math.nan,
        "val_deg": math.nan,
    }
    if len(val.rows):
        out.update(_screen_errors(model, samples, val, cfg, device))
    if len(val.gaze_rows):
        gaze, _ = embed(model, samples, val.gaze_rows, device)
        err = angular_error(
            torch.from_numpy(gaze), torch.from_numpy(samples.gaze[val.gaze_rows].astype(np.float64))
        )
        out["val_deg"] = float(np.degrees(err.numpy()).mean())
    return out


def metric(v: dict[str, float]) -> float:
    """What early stopping watches: % of the diagonal, else the gaze angle."""
    return v["val_pct_diag"] if math.isfinite(v["val_pct_diag"]) else v["val_deg"]
