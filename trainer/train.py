"""Episodic training of the gaze network for per-person calibration.

Each step is an episode: `batch_persons` training persons, up to `frames_per_person` frames
each. For persons with screen targets, a random calibration set (`calib_min`..`calib_max`
whole targets, `trainer.ridge_head.sample_calibration_mask`) fits a ridge map from the
network's embedding to the screen and the loss is the screen error of the person's other
frames (`trainer.ridge_head.ridge_head`): the embedding is trained for what the product
does with it, a per-user calibration. Frames with a gaze-vector label add the angular error
of the network's own gaze output (× `angular_weight`).

Validation is person-disjoint: held-out persons, each calibrated on `val_calib` of their
targets and scored on their other targets, in px and % of the screen diagonal (every target
counts once), next to the constant predictor (mean of the calibration targets). With a
single person the split falls back to held-out targets of that person, and the summary says
so. Early stopping watches the validation % of the diagonal.

Runs under `accelerate` (CPU here; bf16 autocast on CUDA; `accelerate launch` for several
GPUs: each process draws its own episodes, DDP averages gradients). Every random draw is a
function of (seed, step, process), so a resumed run continues exactly where it stopped.

Checkpoints (`out_dir/checkpoints/step-NNNNNNN/`), written atomically, no pickle:
- `model.safetensors` + `.json` sidecar (`trainer.model.save_checkpoint`: MODEL_VERSION,
  architecture, weights hash);
- `optimizer.safetensors` (every state tensor, flattened as `state/<parameter>/<stat>`,
  keyed by parameter name) + `optimizer.json` (param groups and non-tensor state);
- `trainer_state.json` (step, epoch, best metric, early-stopping count, seed).
`latest.json` names the last one. A checkpoint from another MODEL_VERSION is refused with a
`CheckpointError` before anything is written. A non-finite loss (or gradient) stops the run
without a step or a checkpoint, so the last checkpoint on disk is the last good one.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gazeloop.fastpath.pipeline import FastPathConfig
from gazeloop.trainer.datasets import DataSource, GazeData, load_data
from gazeloop.trainer.model import (
    MODEL_VERSION,
    CheckpointError,
    GazeNet,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from gazeloop.trainer.readers.common import Samples
from gazeloop.trainer.ridge_head import (
    angular_error,
    gaze_angle_loss,
    ridge_fit_predict,
    ridge_head,
    sample_calibration_mask,
)

log = logging.getLogger(__name__)

STATE_FORMAT = "gazeloop.trainer.state"
OPTIMIZER_FORMAT = "gazeloop.trainer.optimizer"
STATE_VERSION = 1
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
METRICS = "metrics.csv"
_METRIC_FIELDS = (
    "kind",
    "step",
    "epoch",
    "loss",
    "ridge_loss",
    "angular_loss",
    "lr",
    "samples_per_s",
    "val_px",
    "val_pct_diag",
    "val_baseline_px",
    "val_baseline_pct_diag",
    "val_deg",
    "wall_s",
)


class TrainError(RuntimeError):
    """A run that cannot start (bad data, an out_dir that holds another run)."""


class TrainConfig(BaseModel):
    """Everything a training run needs; JSON in, JSON out (`python -m trainer.train cfg.json`)."""

    model_config = ConfigDict(extra="forbid")

    data: list[DataSource] = Field(default_factory=list)
    out_dir: Path
    cache_dir: Path | None = Field(None, description="preprocessed .npz (default out_dir/cache)")
    init: Path | None = Field(None, description="start from this checkpoint, else the OMZ IR")
    epochs: int = Field(10, ge=1)
    steps_per_epoch: int | None = Field(
        None, ge=1, description="default: about one pass over the training frames"
    )
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps in all")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    batch_persons: int = Field(4, ge=1)
    frames_per_person: int = Field(48, ge=2)
    calib_min: int = Field(8, ge=1, description="calibration targets per episode, at least")
    calib_max: int = Field(40, ge=1, description="... and at most")
    val_calib: int | None = Field(None, ge=1, description="validation calibration targets")
    val_max_frames: int = Field(256, ge=2, description="per validation person")
    ridge_lambda: float = Field(0.1, gt=0, description="= the runtime ridge mapping's alpha")
    angular_weight: float = Field(1.0, ge=0)
    aspect: float = Field(16 / 9, gt=0, description="screen w/h for the loss and % diagonal")
    seed: int = 0
    val_fraction: float = Field(0.2, ge=0, lt=1)
    patience: int = Field(5, ge=1, description="epochs without a better validation")
    checkpoint_every: int = Field(200, ge=1, description="steps")
    keep_checkpoints: int = Field(3, ge=1)
    resume: bool = False
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    log_every: int = Field(10, ge=1)
    fastpath: FastPathConfig = Field(default_factory=FastPathConfig)
    wandb_project: str | None = None

    @model_validator(mode="after")
    def _ranges(self) -> TrainConfig:
        if self.calib_min > self.calib_max:
            raise ValueError(f"calib_min {self.calib_min} > calib_max {self.calib_max}")
        return self

    @property
    def val_k(self) -> int:
        return self.val_calib or self.calib_min


# --- seeds ----------------------------------------------------------------------------------


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from (seed, step, process...): every draw of a step is a function of
    these alone, which is what makes a resumed run identical to an uninterrupted one."""
    return (
        int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0]) >> 1
    )


def seed_everything(seed: int) -> None:
    """python `random`, numpy's global generator and torch (CPU and CUDA)."""
    from accelerate.utils import set_seed

    set_seed(seed)


# --- the split ------------------------------------------------------------------------------


@dataclass(slots=True)
class ValSet:
    """Fixed for the run: rows, which of them calibrate, and the rows for the angle metric."""

    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    calib: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    gaze_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass(slots=True)
class Split:
    train_rows: np.ndarray
    val: ValSet
    train_persons: list[str]
    val_persons: list[str]
    description: str
    notes: list[str] = field(default_factory=list)


def _choose_val_targets(
    rows: np.ndarray, targets: np.ndarray, k: int, cap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """Calibration = k whole targets, queries = the others; frames capped per target.
    None when the person has too few targets to leave one out."""
    ids = np.unique(targets[rows])
    if len(ids) < 2:
        return None
    k = min(k, len(ids) - 1)
    per_target = max(1, math.ceil(cap / len(ids)))
    calib_ids = set(rng.choice(ids, size=k, replace=False).tolist())
    keep, calib = [], []
    for t in ids:
        r = rows[targets[rows] == t]
        if len(r) > per_target:
            r = np.sort(rng.choice(r, size=per_target, replace=False))
        keep.append(r)
        calib.append(np.full(len(r), t in calib_ids))
    return np.concatenate(keep), np.concatenate(calib)


def make_split(samples: Samples, cfg: TrainConfig) -> Split:
    """Person-disjoint train/validation; target-disjoint within the person if only one."""
    rng = np.random.default_rng(derive_seed(cfg.seed, 0x5A17))
    persons = sorted(set(samples.person.tolist()))
    has_screen = np.isfinite(samples.screen).all(1)
    has_gaze = np.isfinite(samples.gaze).all(1)
    notes: list[str] = []
    val = ValSet()
    if not persons:
        raise TrainError("no training samples")

    if cfg.val_fraction == 0:
        return Split(
            np.arange(len(samples)), val, persons, [], "no validation (val_fraction = 0)", notes
        )

    if len(persons) == 1:
        p = persons[0]
        rows = np.flatnonzero(has_screen)
        ids = np.unique(samples.target[rows])
        n_val = max(1, round(cfg.val_fraction * len(ids)))
        if len(ids) - n_val < 2:
            raise TrainError(
                f"only one person ({p}) with {len(ids)} screen target(s): too few to hold "
                "targets out for validation; add persons or set val_fraction = 0"
            )
        val_ids = rng.choice(ids, size=n_val, replace=False)
        is_val = np.isin(samples.target, val_ids) & has_screen
        train_rows = np.flatnonzero(~is_val)
        calib_pool = np.flatnonzero(has_screen & ~is_val)
        chosen = _choose_val_targets(calib_pool, samples.target, cfg.val_k, cfg.val_max_frames, rng)
        if chosen is not None:
            calib_rows = chosen[0][chosen[1]]
            q = np.flatnonzero(is_val)
            if len(q) > cfg.val_max_frames:
                q = np.sort(rng.choice(q, size=cfg.val_max_frames, replace=False))
            val.rows = np.concatenate([calib_rows, q])
            val.calib = np.concatenate([np.ones(len(calib_rows), bool), np.zeros(len(q), bool)])
        desc = (
            f"only one person ({p}): validation is TARGET-disjoint within that person "
            f"({n_val} of {len(ids)} targets held out), not person-disjoint, so it measures "
            "new screen points for this person, not new people"
        )
        return Split(train_rows, val, persons, persons, desc, notes)

    n_val = min(len(persons) - 1, max(1, round(cfg.val_fraction * len(persons))))
    val_persons = sorted(rng.choice(persons, size=n_val, replace=False).tolist())
    train_persons = [p for p in persons if p not in val_persons]
    is_val = np.isin(samples.person, val_persons)
    parts_rows, parts_calib, gaze_rows = [], [], []
    for p in val_persons:
        rows = np.flatnonzero((samples.person == p) & has_screen)
        if len(rows):
            chosen = _choose_val_targets(rows, samples.target, cfg.val_k, cfg.val_max_frames, rng)
            if chosen is None:
                notes.append(f"validation person {p} has one screen target: not scored")
            else:
                parts_rows.append(chosen[0])
                parts_calib.append(chosen[1])
        g = np.flatnonzero((samples.person == p) & has_gaze)
        if len(g) > cfg.val_max_frames:
            g = np.sort(rng.choice(g, size=cfg.val_max_frames, replace=False))
        gaze_rows.append(g)
    if parts_rows:
        val.rows, val.calib = np.concatenate(parts_rows), np.concatenate(parts_calib)
    val.gaze_rows = np.concatenate(gaze_rows) if gaze_rows else val.gaze_rows
    desc = f"person-disjoint: {len(train_persons)} training, {n_val} validation person(s)"
    return Split(np.flatnonzero(~is_val), val, train_persons, val_persons, desc, notes)


# --- batches --------------------------------------------------------------------------------


@dataclass(slots=True)
class Batch:
    left: torch.Tensor  # (B, 3, 60, 60) float BGR 0-255
    right: torch.Tensor
    head: torch.Tensor  # (B, 3) OMZ degrees
    person: torch.Tensor  # (B,) int
    target: torch.Tensor  # (B,) int
    screen: torch.Tensor  # (B, 2) NaN where unknown
    gaze: torch.Tensor  # (B, 3) NaN where unknown
    weight: torch.Tensor  # (B,)

    def __len__(self) -> int:
        return len(self.weight)


def make_batch(samples: Samples, rows: np.ndarray, device: torch.device) -> Batch:
    def crops(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a[rows].transpose(0, 3, 1, 2))).float()

    _, pid = np.unique(samples.person[rows], return_inverse=True)
    b = Batch(
        left=crops(samples.left),
        right=crops(samples.right),
        head=torch.from_numpy(samples.head[rows]).float(),
        person=torch.from_numpy(pid.astype(np.int64)),
        target=torch.from_numpy(samples.target[rows]),
        screen=torch.from_numpy(samples.screen[rows]).float(),
        gaze=torch.from_numpy(samples.gaze[rows]).float(),
        weight=torch.from_numpy(samples.weight[rows]).float(),
    )
    return Batch(**{f.name: getattr(b, f.name).to(device) for f in fields(b)})


def _spread_over_targets(
    rows: np.ndarray, targets: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """n of `rows`, as many distinct targets as possible: targets in random order, one
    random frame of each per round. Calibration counts whole targets, so frames piled on
    few targets would leave the episode without a calibration."""
    if len(rows) <= n:
        return rows
    by_target = [rng.permutation(rows[targets == t]) for t in rng.permutation(np.unique(targets))]
    out: list[int] = []
    depth = 0
    while len(out) < n:
        out.extend(int(r[depth]) for r in by_target if depth < len(r))
        depth += 1
    return np.array(out[:n], np.int64)


def sample_episode(
    samples: Samples, split: Split, cfg: TrainConfig, rng: np.random.Generator
) -> np.ndarray:
    """Rows of one episode: `batch_persons` training persons, up to `frames_per_person`
    frames each, spread over the person's targets."""
    train = split.train_rows
    persons = np.array(sorted(set(samples.person[train].tolist())))
    chosen = rng.choice(persons, size=min(cfg.batch_persons, len(persons)), replace=False)
    out = []
    for p in chosen:
        rows = train[samples.person[train] == p]
        rows = _spread_over_targets(rows, samples.target[rows], cfg.frames_per_person, rng)
        out.append(np.sort(rows))
    return np.concatenate(out)


def check_trainable(samples: Samples, split: Split, cfg: TrainConfig) -> list[str]:
    """Refuse a run in which no episode could ever have a loss; note persons that only the
    angle loss (or nothing) can use."""
    train = split.train_rows
    screen = np.isfinite(samples.screen[train]).all(1)
    gaze = np.isfinite(samples.gaze[train]).all(1)
    notes, ridge_ok = [], 0
    need = cfg.calib_min + 1
    reach = min(cfg.frames_per_person, need)
    for p in sorted(set(samples.person[train].tolist())):
        m = samples.person[train] == p
        n_t = len(np.unique(samples.target[train][m & screen]))
        if n_t >= need and cfg.frames_per_person >= need:
            ridge_ok += 1
        elif n_t and not (m & gaze).any():
            notes.append(
                f"{p}: {n_t} screen target(s) in training (an episode of {reach} frames "
                f"needs {need} for a {cfg.calib_min}-target calibration): no loss from it"
            )
    if ridge_ok == 0 and not (cfg.angular_weight > 0 and gaze.any()):
        raise TrainError(
            f"no training person has the {need} screen targets a calibration of calib_min="
            f"{cfg.calib_min} plus one query needs (within frames_per_person="
            f"{cfg.frames_per_person}), and there are no gaze labels: nothing to train on"
        )
    return notes


@dataclass(slots=True)
class LossParts:
    loss: torch.Tensor
    ridge: float = math.nan
    angular: float = math.nan
    frames: int = 0


def episode_loss(
    model: torch.nn.Module,
    batch: Batch,
    cfg: TrainConfig,
    generator: torch.Generator,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> LossParts:
    """Masked ridge loss on screen-labelled frames + angular loss on gaze-labelled frames."""
    with autocast():
        gaze, emb = model(batch.left, batch.right, batch.head)
    gaze, emb = gaze.float(), emb.float()  # the closed-form solve stays in float32
    # Zero, but every parameter is in the graph: backward works when neither loss applies,
    # and DDP (accelerate launch) sees no unused parameters when only the ridge head uses
    # the embedding and the gaze head gets no gradient.
    total = (emb.sum() + gaze.sum()) * 0.0
    parts = LossParts(loss=total, frames=len(batch))
    s = torch.isfinite(batch.screen).all(1)
    if bool(s.any()):
        pid, groups = batch.person[s], batch.target[s]
        mask = sample_calibration_mask(
            pid.cpu(), cfg.calib_min, cfg.calib_max, generator, groups=groups.cpu()
        ).to(pid.device)
        out = ridge_head(
            emb[s],
            batch.screen[s],
            pid,
            mask,
            aspect=cfg.aspect,
            weights=batch.weight[s],
            lam=cfg.ridge_lambda,
        )
        if bool(out.query.any()):
            total = total + out.loss
            parts.ridge = float(out.loss.detach())
    g = torch.isfinite(batch.gaze).all(1)
    if cfg.angular_weight > 0 and bool(g.any()):
        ang = gaze_angle_loss(gaze[g], batch.gaze[g], batch.weight[g])
        total = total + cfg.angular_weight * ang
        parts.angular = float(ang.detach())
    parts.loss = total
    return parts


# --- validation -----------------------------------------------------------------------------


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
        base = np.empty_like(Y)
        for p in np.unique(pid):
            c = (pid == p) & val.calib
            # Each calibration target once, whatever its frame count.
            tids, inv = np.unique(samples.target[val.rows][c], return_inverse=True)
            pts = np.stack(
                [np.bincount(inv, weights=Y[c, j]) / np.bincount(inv) for j in (0, 1)], 1
            )
            base[pid == p] = pts.mean(0)
        spx = samples.screen_px[val.rows].astype(np.float64)
        targets = samples.target[val.rows]
        for key, p in (("val", pred.numpy()), ("val_baseline", base)):
            px, pct = _pct_diag(p[q] - Y[q], spx[q], cfg.aspect)
            out[f"{key}_px"] = _per_target_mean(px, targets[q])
            out[f"{key}_pct_diag"] = _per_target_mean(pct, targets[q])
    if len(val.gaze_rows):
        gaze, _ = embed(model, samples, val.gaze_rows, device)
        err = angular_error(
            torch.from_numpy(gaze), torch.from_numpy(samples.gaze[val.gaze_rows].astype(np.float64))
        )
        out["val_deg"] = float(np.degrees(err.numpy()).mean())
    return out


def _metric(v: dict[str, float]) -> float:
    """What early stopping watches: % of the diagonal, else the gaze angle."""
    return v["val_pct_diag"] if math.isfinite(v["val_pct_diag"]) else v["val_deg"]


# --- checkpoints ----------------------------------------------------------------------------


def _write_json_atomic(path: Path, doc: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    return v


def _param_names(model: torch.nn.Module) -> list[str]:
    """Names of the trained parameters, sorted: the optimizer's canonical order."""
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def trained_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trained parameters by name, not by registration order: a network rebuilt from a
    checkpoint registers them in another order, and the gradient norm (a sum over them)
    must come out bit for bit the same for a resumed run to match an uninterrupted one."""
    named = dict(model.named_parameters())
    return [named[n] for n in _param_names(model)]


def save_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module, folder: Path) -> None:
    """Optimizer state without pickle: tensors → safetensors, the rest → JSON. Keyed by
    parameter NAME, not position: a network rebuilt from a checkpoint may register its
    parameters in another order than the one built from the IR."""
    from safetensors.torch import save_file

    names = _param_names(model)
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for stat, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state/{names[idx]}/{stat}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(names[idx], {})[stat] = _json_scalar(v)
    meta = {"format": OPTIMIZER_FORMAT, "model_version": MODEL_VERSION}
    save_file(tensors, str(folder / "optimizer.safetensors"), metadata=meta)
    groups = []
    for g in sd["param_groups"]:
        doc = {k: _json_scalar(v) for k, v in g.items() if k != "params"}
        groups.append(doc | {"params": [names[i] for i in g["params"]]})
    doc = {**meta, "type": type(optimizer).__name__, "param_groups": groups, "scalars": scalars}
    _write_json_atomic(folder / "optimizer.json", doc)


def load_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module, folder: Path) -> None:
    from safetensors.torch import load_file

    doc = json.loads((folder / "optimizer.json").read_text())
    if doc.get("model_version") != MODEL_VERSION:
        raise CheckpointError(
            f"{folder}: optimizer state is for model version {doc.get('model_version')!r}, "
            f"not {MODEL_VERSION!r}"
        )
    index = {n: i for i, n in enumerate(_param_names(model))}
    saved = {n for g in doc["param_groups"] for n in g["params"]}
    if saved != set(index):
        raise CheckpointError(
            f"{folder}: optimizer state is for other parameters "
            f"({len(saved ^ set(index))} differ, e.g. {sorted(saved ^ set(index))[:3]})"
        )
    state: dict[int, dict[str, Any]] = {}
    for key, t in load_file(str(folder / "optimizer.safetensors")).items():
        _, name, stat = key.split("/")
        state.setdefault(index[name], {})[stat] = t
    for name, st in doc["scalars"].items():
        state.setdefault(index[name], {}).update(st)
    # torch pairs saved and current parameters by POSITION within the groups, so list them
    # in the current order (the optimizer was built from `trained_parameters`).
    groups = [g | {"params": sorted(index[n] for n in g["params"])} for g in doc["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def latest_checkpoint(out_dir: Path) -> Path | None:
    path = Path(out_dir) / CHECKPOINTS / LATEST
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e
    folder = path.parent / str(name)
    if not folder.is_dir():
        raise CheckpointError(f"{path} names {name}, which does not exist")
    return folder


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """The checkpoint's trainer state, refusing other versions before anything is loaded."""
    path = folder / "trainer_state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: not a gazeloop trainer state v{STATE_VERSION}")
    if state.get("model_version") != MODEL_VERSION:
        raise CheckpointError(
            f"{folder}: checkpoint is for model version {state.get('model_version')!r}, but "
            f"this trainer builds {MODEL_VERSION!r}; nothing was changed. Start a new run "
            "in another out_dir (init from an exported model) instead of resuming"
        )
    read_checkpoint_info(folder / "model.safetensors")  # version and weights hash
    return state


def save_training_checkpoint(
    out_dir: Path,
    model: GazeNet,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Everything in a hidden folder first, renamed into place, then `latest.json`."""
    root = Path(out_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:07d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        save_checkpoint(model, tmp / "model.safetensors", extra={"step": state["step"]})
        save_optimizer(optimizer, model, tmp)
        _write_json_atomic(tmp / "trainer_state.json", state)
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_json_atomic(root / LATEST, {"checkpoint": name, "step": state["step"]})
    old = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for p in old[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return final


# --- metrics --------------------------------------------------------------------------------


class MetricsLog:
    """metrics.csv (always), TensorBoard when installed, wandb when installed and asked."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, resume_step: int | None) -> None:
        self.path = Path(out_dir) / METRICS
        keep: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                keep = [r for r in csv.DictReader(f) if int(r.get("step") or 0) <= resume_step]
        self._f = open(self.path, "w", newline="")  # noqa: SIM115 - closed in close()
        self._w = csv.DictWriter(self._f, fieldnames=_METRIC_FIELDS, extrasaction="ignore")
        self._w.writeheader()
        self._w.writerows(keep)
        self._tb = self._wandb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        except Exception:  # not installed (the tensorboard package) or unusable
            self._tb = None
        if cfg.wandb_project:
            try:
                import wandb

                self._wandb = wandb.init(
                    project=cfg.wandb_project, config=cfg.model_dump(mode="json")
                )
            except Exception as e:
                log.warning("wandb not used: %s", e)

    def write(self, row: dict[str, Any]) -> None:
        self._w.writerow({k: _fmt(v) for k, v in row.items()})
        self._f.flush()
        scalars = {
            f"{row['kind']}/{k}": float(v)
            for k, v in row.items()
            if k not in ("kind", "step", "epoch")
            and isinstance(v, int | float)
            and math.isfinite(v)
        }
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, row["step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=row["step"])

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


class Progress:
    """tqdm when installed, else one plain line every `every` steps."""

    def __init__(self, total: int, initial: int, every: int, enabled: bool) -> None:
        self.every, self.enabled, self.total = every, enabled, total
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, initial=initial, desc="train", unit="step")
            except ImportError:
                self._bar = None

    def update(self, step: int, info: dict[str, float]) -> None:
        if not self.enabled:
            return
        text = " ".join(f"{k}={v:.4g}" for k, v in info.items() if math.isfinite(v))
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(text, refresh=False)
        elif step % self.every == 0 or step == self.total:
            print(f"step {step}/{self.total} {text}", file=sys.stderr, flush=True)

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)  # stdout is the summary's
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# --- the run --------------------------------------------------------------------------------


def _initial_model(cfg: TrainConfig) -> GazeNet:
    if cfg.init is not None:
        return load_checkpoint(cfg.init)
    from gazeloop.fastpath import models

    return GazeNet.from_ir(models.resolve(models.GAZE_IR_XML), models.resolve(models.GAZE_IR_BIN))


def _accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if cuda else "no"
    elif mp == "bf16" and not cuda:
        log.warning("bf16 asked for without CUDA; training in float32")
        mp = "no"
    return Accelerator(mixed_precision=mp, cpu=not cuda), mp


def train(
    cfg: TrainConfig,
    *,
    data: GazeData | None = None,
    model: GazeNet | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train; return a summary (see the module docstring). `data` and `model` replace
    loading `cfg.data` and the initial model (tests, notebooks)."""
    t_start = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # Everything that can refuse the run does so before a single file is written.
    resume_from = latest_checkpoint(out_dir) if out_dir.exists() else None
    state: dict[str, Any] | None = None
    if resume_from is not None:
        if not cfg.resume:
            raise TrainError(
                f"{out_dir} holds checkpoints of an earlier run; pass resume=True to continue "
                "it or choose another out_dir"
            )
        state = read_trainer_state(resume_from)

    accelerator, mp = _accelerator(cfg)
    device = accelerator.device
    main = accelerator.is_main_process
    seed_everything(cfg.seed)

    if data is None:
        with accelerator.main_process_first():  # one process fills the cache
            data = load_data(
                cfg.data,
                cache_dir=cfg.cache_dir or out_dir / "cache",
                fastpath_config=cfg.fastpath,
                min_screen_samples=cfg.calib_min + 1,
            )
    samples = data.samples
    if len(samples) == 0:
        reasons = "; ".join(str(s) for s in (data.excluded + data.skipped)[:5])
        raise TrainError(f"no usable training samples ({reasons})")
    split = make_split(samples, cfg)
    if not len(split.train_rows):
        raise TrainError("no training rows after the validation split")
    split.notes.extend(check_trainable(samples, split, cfg))

    n_train_frames = len(split.train_rows)
    frames_per_step = min(cfg.batch_persons, len(split.train_persons)) * cfg.frames_per_person
    steps_per_epoch = cfg.steps_per_epoch or max(1, math.ceil(n_train_frames / frames_per_step))
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    step, best, best_step, bad_epochs = 0, math.inf, 0, 0
    val_before: dict[str, float] | None = None
    if state is not None:
        assert resume_from is not None
        # The checkpoint's own network (architecture and weights) replaces any given one.
        model = load_checkpoint(resume_from / "model.safetensors")
        step = int(state["step"])
        best = math.inf if state["best_metric"] is None else float(state["best_metric"])
        best_step, bad_epochs = int(state["best_step"]), int(state["bad_epochs"])
        val_before = state.get("val_before")
        if state.get("seed") != cfg.seed:
            log.warning("resuming with seed %s, the run used %s", cfg.seed, state.get("seed"))
    elif model is None:
        model = _initial_model(cfg)
    params = trained_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state is not None:
        load_optimizer(optimizer, model, resume_from)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model: GazeNet = accelerator.unwrap_model(model)

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(out_dir, cfg, step if state is not None else None) if main else None
    bar = Progress(total_steps, step, cfg.log_every, enabled=progress and main)
    bar.write(f"split: {split.description}")
    for n in split.notes:
        bar.write(f"note: {n}")

    best_path = out_dir / "best" / "model.safetensors"
    if state is None and (len(split.val.rows) or len(split.val.gaze_rows)):
        # The starting model is the first candidate: training that only makes the
        # validation worse must not leave a worse "best" behind.
        val_before = validate(raw_model, samples, split.val, cfg, device)
        if math.isfinite(_metric(val_before)):
            best = _metric(val_before)
            if main:
                extra = _strict_json({"step": 0, **val_before})
                save_checkpoint(raw_model, best_path, extra=extra)
    last_val = dict(val_before or {})
    step_losses: list[float] = []
    epoch_losses: list[float] = []
    epoch_acc: list[float] = []
    train_time, train_frames = 0.0, 0
    stop_reason = "finished"
    last_ckpt: Path | None = resume_from
    saved_at = step
    model.train()

    def snapshot() -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "model_version": MODEL_VERSION,
            "step": step,
            "epoch": step // steps_per_epoch,
            "steps_per_epoch": steps_per_epoch,
            "best_metric": best if math.isfinite(best) else None,
            "best_step": best_step,
            "bad_epochs": bad_epochs,
            "seed": cfg.seed,
            "seed_rule": "episode and calibration draws use derive_seed(seed, step, process)",
            "val_before": _strict_json(val_before),
            "config": cfg.model_dump(mode="json"),
        }

    try:
        while step < total_steps:
            t0 = time.perf_counter()
            seed = derive_seed(cfg.seed, step, accelerator.process_index)
            seed_everything(seed)
            rows = sample_episode(samples, split, cfg, np.random.default_rng(seed))
            batch = make_batch(samples, rows, device)
            gen = torch.Generator().manual_seed(seed)
            parts = episode_loss(model, batch, cfg, gen, accelerator.autocast)
            bad = torch.tensor([0.0 if torch.isfinite(parts.loss) else 1.0], device=device)
            if accelerator.gather(bad).sum() > 0:
                stop_reason = (
                    f"loss is not finite ({float(parts.loss.detach())}) at step {step + 1}: "
                    "stopped without stepping; the last good checkpoint is "
                    f"{last_ckpt if last_ckpt else '(none saved yet)'}"
                )
                break
            # No loss term at all (every person too small this time, on every process):
            # skip the update, since Adam would still move the weights by momentum. Every
            # process still runs backward, which DDP needs to stay in step.
            empty = torch.tensor([float(math.isnan(parts.ridge) and math.isnan(parts.angular))])
            skip_update = bool(accelerator.gather(empty.to(device)).min() > 0)
            accelerator.backward(parts.loss)
            if skip_update:
                optimizer.zero_grad(set_to_none=True)
            elif cfg.grad_clip is not None:
                norm = accelerator.clip_grad_norm_(params, cfg.grad_clip)
                if not torch.isfinite(torch.as_tensor(norm)):
                    stop_reason = (
                        f"gradient is not finite at step {step + 1}: stopped without "
                        f"stepping; the last good checkpoint is {last_ckpt or '(none saved yet)'}"
                    )
                    optimizer.zero_grad(set_to_none=True)
                    break
            if not skip_update:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            train_time += dt
            train_frames += len(batch) * accelerator.num_processes
            loss = math.nan if skip_update else float(parts.loss.detach())
            step_losses.append(loss)
            epoch_acc.append(loss)
            info = {"loss": loss, "ridge": parts.ridge, "angular": parts.angular}
            bar.update(step, info)
            if metrics is not None:
                metrics.write(
                    {
                        "kind": "train",
                        "step": step,
                        "epoch": (step - 1) // steps_per_epoch,
                        "loss": loss,
                        "ridge_loss": parts.ridge,
                        "angular_loss": parts.angular,
                        "lr": optimizer.param_groups[0]["lr"],
                        "samples_per_s": len(batch) * accelerator.num_processes / dt,
                        "wall_s": time.perf_counter() - t_start,
                    }
                )

            epoch_end = step % steps_per_epoch == 0
            if epoch_end:
                done = [v for v in epoch_acc if math.isfinite(v)]
                epoch_losses.append(float(np.mean(done)) if done else math.nan)
                epoch_acc = []
                if len(split.val.rows) or len(split.val.gaze_rows):
                    last_val = validate(raw_model, samples, split.val, cfg, device)
                    m = _metric(last_val)
                    if metrics is not None:
                        metrics.write(
                            {"kind": "val", "step": step, "epoch": step // steps_per_epoch - 1}
                            | {k: v for k, v in last_val.items()}
                            | {"wall_s": time.perf_counter() - t_start}
                        )
                    bar.write(
                        f"epoch {step // steps_per_epoch}: val {last_val['val_px']:.1f} px, "
                        f"{last_val['val_pct_diag']:.2f} % diag (constant predictor "
                        f"{last_val['val_baseline_pct_diag']:.2f} %), {last_val['val_deg']:.2f} deg"
                    )
                    if math.isfinite(m) and m < best:
                        best, best_step, bad_epochs = m, step, 0
                        if main:
                            extra = _strict_json({"step": step, **last_val})
                            save_checkpoint(raw_model, best_path, extra=extra)
                    else:
                        bad_epochs += 1
            if step % cfg.checkpoint_every == 0 or (epoch_end and bad_epochs >= cfg.patience):
                accelerator.wait_for_everyone()
                if main:
                    last_ckpt = save_training_checkpoint(
                        out_dir, raw_model, optimizer, snapshot(), cfg.keep_checkpoints
                    )
                saved_at = step
            if epoch_end and bad_epochs >= cfg.patience:
                stop_reason = (
                    f"early stopping: no better validation for {cfg.patience} epoch(s) "
                    f"(best at step {best_step})"
                )
                break
        else:
            if step != saved_at:
                accelerator.wait_for_everyone()
                if main:
                    last_ckpt = save_training_checkpoint(
                        out_dir, raw_model, optimizer, snapshot(), cfg.keep_checkpoints
                    )
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    if stop_reason != "finished":
        bar.write(stop_reason)

    wall = time.perf_counter() - t_start
    return {
        "epochs": step // steps_per_epoch,
        "steps": step,
        "steps_this_run": len(step_losses),
        "steps_per_epoch": steps_per_epoch,
        "resumed_from_step": None if state is None else int(state["step"]),
        "losses": step_losses,
        "epoch_losses": epoch_losses,
        "val_error_px": last_val.get("val_px", math.nan),
        "val_error_pct_diag": last_val.get("val_pct_diag", math.nan),
        "val_baseline_pct_diag": last_val.get("val_baseline_pct_diag", math.nan),
        "val_error_deg": last_val.get("val_deg", math.nan),
        "val_before": val_before,
        "best_metric": best if math.isfinite(best) else None,
        "best_step": best_step if math.isfinite(best) else None,
        "best_checkpoint": str(best_path) if best_path.is_file() else None,
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "stopped": stop_reason,
        "split": split.description,
        "notes": split.notes,
        "train_persons": len(split.train_persons),
        "val_persons": len(split.val_persons),
        "samples": len(samples),
        "skipped": len(data.skipped),
        "excluded_persons": [str(e) for e in data.excluded],
        "wall_time_s": wall,
        "samples_per_s": train_frames / train_time if train_time > 0 else math.nan,
        "device": str(device),
        "mixed_precision": mp,
        "model_version": MODEL_VERSION,
    }


def _strict_json(v: Any) -> Any:
    """NaN/inf → null: the summary must parse as standard JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _strict_json(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_strict_json(x) for x in v]
    return v


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m trainer.train config.json [--resume]` (or under `accelerate launch`)."""
    ap = argparse.ArgumentParser(description="Train the gazeloop gaze network.")
    ap.add_argument("config", type=Path, help="TrainConfig as JSON")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig.model_validate_json(args.config.read_bytes())
    if args.resume:
        cfg = cfg.model_copy(update={"resume": True})
    summary = train(cfg)
    json.dump(_strict_json(summary), sys.stdout, indent=2, default=str)
    print()
    return 0 if summary["stopped"] == "finished" or summary["stopped"].startswith("early") else 1


if __name__ == "__main__":
    raise SystemExit(main())
