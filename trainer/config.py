"""What a training run is told: `TrainConfig` (JSON in, JSON out) and the error for a run
that cannot start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gazeloop.fastpath.pipeline import FastPathConfig
from gazeloop.trainer.datasets import DataSource


class TrainError(RuntimeError):
    """A run that cannot start (bad data, an out_dir that holds another run)."""


class TrainConfig(BaseModel):
    """Everything a training run needs; JSON in, JSON out
    (`python -m gazeloop.trainer.train cfg.json`)."""

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
