"""What a run reports while it goes: `metrics.csv` (always; TensorBoard when installed, wandb
when installed and asked), the progress line on stderr (stdout is the summary's), and the
rule that makes every number standard JSON."""

from __future__ import annotations

import csv
import logging
import math
import sys
from pathlib import Path
from typing import Any

from gazeloop.calibration.store.atomic import atomic_path
from gazeloop.trainer.config import TrainConfig

log = logging.getLogger(__name__)

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


def strict_json(v: Any) -> Any:
    """NaN/inf → null: the summary must parse as standard JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: strict_json(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [strict_json(x) for x in v]
    return v


class MetricsLog:
    """metrics.csv (always), TensorBoard when installed, wandb when installed and asked."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, resume_step: int | None) -> None:
        self.path = Path(out_dir) / METRICS
        keep = self._earlier_rows(resume_step) if resume_step is not None else []
        # The kept rows replace the file in one step (a crash here keeps the run's history),
        # then the new ones are appended.
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=_METRIC_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(keep)
        self._f = open(self.path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._w = csv.DictWriter(self._f, fieldnames=_METRIC_FIELDS, extrasaction="ignore")
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

    def _earlier_rows(self, resume_step: int) -> list[dict[str, str]]:
        """The rows of the run being resumed, up to its checkpoint. A file that does not read
        is kept aside (`metrics.csv.unreadable`), not lost, and this run's log starts afresh:
        a log is no reason to refuse a resume."""
        if not self.path.is_file():
            return []
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                return [r for r in csv.DictReader(f) if int(r.get("step") or 0) <= resume_step]
        except (UnicodeDecodeError, ValueError, csv.Error) as e:
            aside, n = self.path.with_name(self.path.name + ".unreadable"), 1
            while aside.exists():  # an earlier one kept aside stays
                n += 1
                aside = self.path.with_name(f"{self.path.name}.unreadable-{n}")
            self.path.replace(aside)
            log.warning(
                "%s does not read (%s): kept as %s; metrics start afresh", self.path, e, aside
            )
            return []

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
    """tqdm on a terminal when installed, else one plain line every `every` steps: a run
    on the training box is often logged to a file (nohup, a job scheduler), where a bar's
    redraws are noise."""

    def __init__(self, total: int, initial: int, every: int, enabled: bool) -> None:
        self.every, self.enabled, self.total = every, enabled, total
        self._bar = None
        if enabled and sys.stderr.isatty():
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
