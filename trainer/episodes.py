"""Episodes: what one training step draws, and the loss it is trained on.

Each step is an episode: `batch_persons` training persons, up to `frames_per_person` frames
each. For persons with screen targets, a random calibration set (`calib_min`..`calib_max`
whole targets, `trainer.ridge_head.sample_calibration_mask`) fits a ridge map from the
network's embedding to the screen and the loss is the screen error of the person's other
frames (`trainer.ridge_head.ridge_head`): the embedding is trained for what the product
does with it, a per-user calibration. Frames with a gaze-vector label add the angular error
of the network's own gaze output (× `angular_weight`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from gazeloop.trainer.config import TrainConfig
from gazeloop.trainer.readers.common import Samples
from gazeloop.trainer.ridge_head import gaze_angle_loss, ridge_head, sample_calibration_mask
from gazeloop.trainer.split import Split


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


def spread_over_targets(
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
        rows = spread_over_targets(rows, samples.target[rows], cfg.frames_per_person, rng)
        out.append(np.sort(rows))
    return np.concatenate(out)


@dataclass(slots=True)
class LossParts:
    loss: torch.Tensor
    ridge: float = math.nan
    angular: float = math.nan
    frames: int = 0

    @property
    def empty(self) -> bool:
        """Neither loss applied (every person too small for a calibration, no gaze labels)."""
        return math.isnan(self.ridge) and math.isnan(self.angular)


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
