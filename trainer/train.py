"""Episodic training of the gaze network for per-person calibration: the loop.

The stages live in their own modules: `trainer.config` (TrainConfig), `trainer.split` (the
person-disjoint train/validation split), `trainer.episodes` (what a step draws and the
ridge + angular loss it is trained on), `trainer.validation` (px and % of the screen
diagonal next to the constant predictor), `trainer.checkpoint` (saving and resuming,
optimizer state included) and `trainer.logs` (metrics.csv, progress). This module runs them:
`train()` and the `python -m gazeloop.trainer.train cfg.json` command.

Runs under `accelerate` (CPU here; bf16 autocast on CUDA; `accelerate launch` for several
GPUs: each process draws its own episodes, DDP averages gradients). Every random draw is a
function of (seed, step, process) (`trainer.seeds`), so a resumed run continues where it
stopped: bit for bit on the CPU (tested), and on CUDA as closely as its kernels allow (some,
cuDNN's convolution backward among them, add in an order that varies from run to run).
Early stopping watches the validation % of the diagonal; the best model so far is kept in
`out_dir/best/`, the starting model being the first candidate (without a validation set,
the model as trained at the end). A non-finite loss (or gradient) stops the run without a
step or a checkpoint, so the last checkpoint on disk is the last good one. Checkpoints are
written every `checkpoint_every` steps, every `checkpoint_minutes`, at the end, and when
SIGINT or SIGTERM arrives (after the current step; the commands then exit 130 or 143), so
any run that took a step can be resumed. A resume goes on with the config saved in its
checkpoint: only the run's length and checkpoint cadence may change (`resumed_config`).
Under several processes only the main one preprocesses the data (the others wait on the
cache's ready file: `_load_shared`) and writes; whether a model is then served is the
promotion gate's call (`trainer.ship`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from gazeloop.calibration.problems import first_problem
from gazeloop.calibration.store.atomic import atomic_write_bytes, first_signal_noted
from gazeloop.trainer.checkpoint import (
    earlier_run,
    load_optimizer,
    read_trainer_state,
    save_training_checkpoint,
    trained_parameters,
    trainer_state,
)
from gazeloop.trainer.config import TrainConfig, TrainError
from gazeloop.trainer.datasets import DataSource, GazeData, load_data, real_path
from gazeloop.trainer.episodes import LossParts, episode_loss, make_batch, sample_episode
from gazeloop.trainer.export import card_path_for
from gazeloop.trainer.logs import MetricsLog, Progress, strict_json
from gazeloop.trainer.model import (
    MODEL_VERSION,
    CheckpointError,
    GazeNet,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from gazeloop.trainer.readers.common import Samples
from gazeloop.trainer.seeds import derive_seed, seed_everything
from gazeloop.trainer.split import Split, check_trainable, make_split
from gazeloop.trainer.tune import apply_tune
from gazeloop.trainer.validation import metric, validate

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainError", "main", "resumed_config", "train"]


def _initial_model(cfg: TrainConfig) -> GazeNet:
    if cfg.init is not None:
        return load_checkpoint(cfg.init)
    from gazeloop.fastpath import models

    return GazeNet.from_ir(models.resolve(models.GAZE_IR_XML), models.resolve(models.GAZE_IR_BIN))


def _accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    cuda = _on_cuda()
    mp = _precision(cfg.mixed_precision, cuda)
    return Accelerator(mixed_precision=mp, cpu=not cuda), mp


def _on_cuda() -> bool:
    """Whether the run goes on CUDA: there, and not sent to the CPU by accelerate (`accelerate
    launch --cpu`, ACCELERATE_USE_CPU), and it runs. A CUDA that is there and fails (a torch
    build without kernels for this GPU) is said before any data is read, not as a traceback
    at the first step."""
    from accelerate.utils import parse_flag_from_env

    if not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU"):
        return False
    try:
        # On this process's own GPU: on cuda:0 every rank of a multi-GPU launch would leave
        # a context there, before accelerate gives each its device.
        torch.ones(2, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}").sum().item()
    except (RuntimeError, AssertionError) as e:  # torch says a CUDA it lacks by assertion
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TrainError(
            f"CUDA is there but does not run ({first}): install the torch build for this GPU, "
            "or train on the CPU with ACCELERATE_USE_CPU=1"
        ) from None
    return True


def _precision(asked: str, cuda: bool) -> str:
    """The run's mixed precision: `auto` is bf16 on the device the run really uses when it
    is CUDA (not merely when CUDA is present: `accelerate launch --cpu` trained in bf16 on
    the CPU), float32 elsewhere; `no` (the training config's) is float32 everywhere.
    accelerate's own setting is not read: `accelerate launch` sets it to "no" whenever its
    config names none, so it cannot tell a choice from a default."""
    mp = asked
    if mp == "auto":
        mp = "bf16" if cuda else "no"
    if mp == "bf16" and not cuda:
        log.warning("bf16 asked for without CUDA; training in float32")
        mp = "no"
    return mp


@dataclass(slots=True)
class Standing:
    """Where the run stands: what a checkpoint keeps, and the tallies of this process."""

    step: int = 0
    best: float = math.inf
    best_step: int = 0
    bad_epochs: int = 0
    val_before: dict[str, float] | None = None
    last_val: dict[str, float] = field(default_factory=dict)
    step_losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    epoch_acc: list[float] = field(default_factory=list)
    train_time: float = 0.0
    train_frames: int = 0
    stop_reason: str = "finished"
    signal: int | None = None  # SIGINT/SIGTERM received: stop after this step
    last_ckpt: Path | None = None
    saved_at: int = 0
    saved_t: float = field(default_factory=time.monotonic)

    @classmethod
    def resumed(cls, state: dict[str, Any], cfg: TrainConfig) -> Standing:
        if state.get("seed") != cfg.seed:
            log.warning("resuming with seed %s, the run used %s", cfg.seed, state.get("seed"))
        return cls(
            step=int(state["step"]),
            best=math.inf if state["best_metric"] is None else float(state["best_metric"]),
            best_step=int(state["best_step"]),
            bad_epochs=int(state["bad_epochs"]),
            val_before=state.get("val_before"),
            # The validation the run last reported (before 2026-12-07 not kept: a relaunch
            # of a finished run then says it has none, not the model's before training).
            last_val=dict(state.get("last_val") or {}),
        )


@dataclass(slots=True)
class _Run:
    """One run's moving parts, put together by `_start`."""

    cfg: TrainConfig
    out_dir: Path
    accelerator: Any
    samples: Samples
    split: Split
    model: torch.nn.Module  # as prepared by accelerate (DDP-wrapped under several processes)
    raw_model: GazeNet
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    tuned: dict[str, Any]  # what trains and what is frozen (trainer.tune)
    steps_per_epoch: int
    total_steps: int
    metrics: MetricsLog | None
    bar: Progress
    t_start: float
    at: Standing
    units: list[str]  # what the data was read from (`_same_units`), kept in each checkpoint

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best" / "model.safetensors"


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
    resume_from = earlier_run(out_dir, cfg.resume)
    state: dict[str, Any] | None = None
    if resume_from is not None:
        state = read_trainer_state(resume_from)
        cfg = resumed_config(cfg, state.get("config") or {}, out_dir)
    elif cfg.init is not None and model is None:
        # The model a fresh run starts from, read before the data: a wrong path was said
        # only after every session had been preprocessed into the run folder.
        read_checkpoint_info(cfg.init)

    accelerator, mp = _accelerator(cfg)
    if cfg.resume and resume_from is None and accelerator.is_main_process:
        # Not refused: a relaunch script (or a config with resume: true) passes it from
        # the first launch on, and a run stopped before its first checkpoint restarts.
        log.warning("no checkpoint in %s: starting from step 0", out_dir)
    seed_everything(cfg.seed)
    if data is None:
        data = _load_shared(cfg, accelerator, out_dir, progress)
    run = _start(cfg, accelerator, data, model, resume_from, state, progress, t_start)
    try:
        with _stop_on_signals(run.at):
            _loop(run)
    finally:
        run.bar.close()
        if run.metrics is not None:
            run.metrics.close()
    if run.at.stop_reason != "finished":
        run.bar.write(run.at.stop_reason)
    summary = _summary(run, data, state, mp)
    _end_processes(accelerator)
    return summary


# What a resume may change: how long the run goes on and how often it is saved, and where
# and how this process runs. Everything else (the lr lives in the optimizer state, the
# split follows val_fraction and the seed, ...) is what the run was, and the saved value wins.
RUN_LENGTH = ("epochs", "max_steps", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints")
_LOCAL = ("resume", "out_dir", "cache_dir", "threads", "log_every", "wandb_project")


def resumed_config(cfg: TrainConfig, was: dict[str, Any], out_dir: Path) -> TrainConfig:
    """The config a resume goes on with: the saved one (`was`), with the run length and
    checkpoint cadence `cfg` sets. A setting `cfg` was given (`model_fields_set`) that
    differs from the saved one is refused in one line naming the field and both values."""
    if not was:  # a state written before configs were saved whole: nothing to hold to
        return cfg
    _check_sources(out_dir, was, cfg)
    try:
        saved = TrainConfig.model_validate(was | {"out_dir": was.get("out_dir", out_dir)})
    except ValidationError as e:
        # Not a silent fall back to the flags given: the run would go on with another
        # split, seed or learning rate than its checkpoint's and say it had not.
        raise TrainError(
            f"{out_dir}: the run's saved settings are not ones this gazeloop takes "
            f"({first_problem(e)}); train in a new --out"
        ) from None
    differ = []
    for key in sorted(cfg.model_fields_set - set(RUN_LENGTH) - set(_LOCAL) - {"data", "holdout"}):
        before, now = _plain(getattr(saved, key)), _plain(getattr(cfg, key))
        if before != now:
            differ.append(f"{key} {before!r} (now {now!r})")
    if differ:
        raise TrainError(
            f"{out_dir} was trained with {'; '.join(differ)}: a resume keeps the run's settings "
            f"(only {', '.join(RUN_LENGTH)} may change); drop the flag, or train in a new --out"
        )
    keep = {k: getattr(cfg, k) for k in (*RUN_LENGTH, *_LOCAL) if k in cfg.model_fields_set}
    return saved.model_copy(update=keep | {"out_dir": cfg.out_dir, "resume": True})


def _plain(v: Any) -> Any:
    return v.model_dump(mode="json") if hasattr(v, "model_dump") else v


def _same_units(out_dir: Path, state: dict[str, Any], units: list[str]) -> None:
    """The sessions (and other units) a resumed run reads are those it was trained on: a
    sitting added inside a `--data` folder since was trained on silently, under the old
    run's validation and best model. Checkpoints from before units were recorded pass."""
    was = state.get("units")
    if was is None:
        return
    added, gone = sorted(set(units) - set(was)), sorted(set(was) - set(units))
    if added or gone:
        said = "; ".join(
            f"{what} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for what, names in (("added", added), ("gone", gone))
            if names
        )
        raise TrainError(
            f"{out_dir} was trained on other data than its folders hold now ({said}): resume "
            "it on what it read, or train on these in a new --out folder"
        )


def _check_sources(out_dir: Path, was: dict[str, Any], cfg: TrainConfig) -> None:
    """A resumed run goes on with what the run was: its trained layers (the optimizer state
    is theirs) and its data and holdout (other data under the old run's "before training"
    and best model makes a summary of two runs, and may put a holdout into training)."""
    tune = was.get("tune", "all")
    if tune != cfg.tune:
        raise TrainError(
            f"{out_dir} was trained with tune {tune!r}, not {cfg.tune!r}: resume it with "
            f"the same choice (--tune {tune})"
        )
    if "data" not in was:  # a state written before configs were saved whole
        return
    for key in ("data", "holdout"):
        try:
            saved = [DataSource.model_validate(d) for d in was.get(key) or []]
        except ValidationError as e:
            raise TrainError(f"{out_dir}: the run's saved {key} does not read: {e}") from None
        was_at = [(str(real_path(d.path)), d) for d in saved]
        now_at = [(str(real_path(d.path)), d) for d in getattr(cfg, key)]
        was_keys, now_keys = sorted(k for k, _ in was_at), sorted(k for k, _ in now_at)
        if was_keys != now_keys:
            raise TrainError(
                f"{out_dir} was trained with {key} {was_keys}, not {now_keys}: resume it on "
                "the same sources, or train on these in a new --out folder"
            )
        before = dict(was_at)
        for path, d in now_at:
            differ = _read_otherwise(before[path], d)
            if differ:
                why = " (a selfie view read the other way trains on mirrored labels)"
                raise TrainError(
                    f"{out_dir} read {key} {path} with {differ}: resume it with the same "
                    f"options{why if 'mirrored' in differ else ''}"
                )


def _read_otherwise(was: DataSource, now: DataSource) -> str:
    """How `now` reads the same folder otherwise than `was` did ('' when alike): mirroring,
    screen size, person, weights, the folders left out. Options that read the same are
    alike: no split is the train split, `auto` finds the kind, unset mirroring is none, and
    a session.json's screen and mirroring win over the options (the command says so)."""
    a, b = _as_read(was), _as_read(now)
    if "auto" in (a["kind"], b["kind"]):
        a.pop("kind"), b.pop("kind")
    keys = sorted(k for k in a if a[k] != b[k])
    return "; ".join(f"{k} {a[k]!r} (now {b[k]!r})" for k in keys)


def _as_read(d: DataSource) -> dict[str, Any]:
    out = d.model_dump(mode="json", exclude={"path"})
    out["split"] = d.split or "train"  # what the readers read without one
    out["mirrored"] = bool(d.mirrored)
    out["exclude"] = sorted(str(real_path(p)) for p in d.exclude)
    if (Path(d.path) / "session.json").is_file():
        del out["screen_px"], out["mirrored"]
    return out


def _end_processes(accelerator: Any) -> None:
    """Take the process group down while every process is still here. Left to interpreter
    shutdown, gloo's threads meet a half-torn-down process and one in a dozen runs ends in
    `terminate called without an active exception` (SIGABRT) after the work was done, which
    torchrun reports as the whole run failing. Nothing after training is collective: the
    main process exports and registers alone."""
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
        accelerator.end_training()


def _load_shared(cfg: TrainConfig, accelerator: Any, out_dir: Path, progress: bool) -> GazeData:
    """The training data, preprocessed once: the main process fills the cache (saying which
    unit it is on), then writes a ready file; the others poll for that file and read the
    cache. Waiting on a file has no timeout, where a collective around a long preprocessing
    pass would hit the distributed one. The ready file's name is drawn by the main process
    at start-up (a collective when every process arrives at once), so a file left by an
    earlier launch is never taken for this one's; a barrier after the others have read the
    cache (seconds, not the preprocessing) lets the main process remove the file."""
    cache_dir = Path(cfg.cache_dir or out_dir / "cache")
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else None
    kw: dict[str, Any] = {
        "cache_dir": cache_dir,
        "fastpath_config": cfg.fastpath,
        "min_screen_samples": cfg.calib_min + 1,
    }
    if accelerator.num_processes == 1:
        return load_data(cfg.data, progress=say, **kw)
    from accelerate.utils import broadcast_object_list

    token = [uuid.uuid4().hex if accelerator.is_main_process else ""]
    broadcast_object_list(token)
    ready = cache_dir / f".ready-{token[0]}"
    if accelerator.is_main_process:
        data = load_data(cfg.data, progress=say, **kw)
        cache_dir.mkdir(parents=True, exist_ok=True)  # absent when no unit could be cached
        atomic_write_bytes(ready, str(len(data.units)).encode())
        # The others only read the cache now, which is quick: then the file has done its job.
        accelerator.wait_for_everyone()
        ready.unlink(missing_ok=True)
        return data
    waited, t0, note_at = 0.0, time.monotonic(), 30.0
    while not ready.is_file():
        time.sleep(0.2)
        waited = time.monotonic() - t0
        if waited >= note_at:  # a long preprocessing pass is not a hang: say so now and then
            note_at += 30.0
            log.info(
                "process %d: waiting for the main process to fill %s (%.0f s)",
                accelerator.process_index,
                cache_dir,
                waited,
            )
    data = load_data(cfg.data, **kw)
    fresh = sum(not u.cached for u in data.units)
    log.info(
        "process %d: read the cache after %.1f s; units preprocessed here: %d",
        accelerator.process_index,
        waited,
        fresh,
    )
    accelerator.wait_for_everyone()
    return data


def _split(data: GazeData, cfg: TrainConfig) -> Split:
    samples = data.samples
    if len(samples) == 0:
        reasons = "; ".join(str(s) for s in (data.excluded + data.skipped)[:5])
        raise TrainError(f"no usable training samples ({reasons})")
    split = make_split(samples, cfg)
    if not len(split.train_rows):
        raise TrainError("no training rows after the validation split")
    split.notes.extend(check_trainable(samples, split, cfg))
    return split


def _schedule(cfg: TrainConfig, split: Split, processes: int = 1) -> tuple[int, int]:
    """(steps per epoch, total steps): an epoch is about one pass over the training frames,
    and a step under several processes draws one episode in each."""
    n_train_frames = len(split.train_rows)
    per_process = min(cfg.batch_persons, len(split.train_persons)) * cfg.frames_per_person
    frames_per_step = per_process * processes
    steps_per_epoch = cfg.steps_per_epoch or max(1, math.ceil(n_train_frames / frames_per_step))
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    return steps_per_epoch, total_steps


def _prepared_model(
    cfg: TrainConfig,
    accelerator: Any,
    model: GazeNet | None,
    resume_from: Path | None,
    state: dict[str, Any] | None,
) -> tuple[
    torch.nn.Module, torch.optim.Optimizer, list[torch.nn.Parameter], Standing, dict[str, Any]
]:
    """The model (the checkpoint's, the given one or the initial one) with the layers
    outside `cfg.tune` frozen, its optimizer (over the trained parameters only), prepared
    by accelerate, where a resumed run stands, and what `trainer.tune` froze."""
    at = Standing()
    if state is not None:
        assert resume_from is not None
        # The checkpoint's own network (architecture and weights) replaces any given one.
        model = load_checkpoint(resume_from / "model.safetensors")
        at = Standing.resumed(state, cfg)
    elif model is None:
        model = _initial_model(cfg)
    tuned = apply_tune(model, cfg.tune)  # before the optimizer: frozen layers are not in it
    params = trained_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state is not None:
        load_optimizer(optimizer, model, resume_from)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    return prepared, optimizer, params, at, tuned


def _start(
    cfg: TrainConfig,
    accelerator: Any,
    data: GazeData,
    model: GazeNet | None,
    resume_from: Path | None,
    state: dict[str, Any] | None,
    progress: bool,
    t_start: float,
) -> _Run:
    """Everything a run needs, the logs opened, and the starting model's validation as
    the first "best"."""
    units = sorted(u.unit for u in data.units)
    if state is not None:
        _same_units(Path(cfg.out_dir), state, units)
    split = _split(data, cfg)
    steps_per_epoch, total_steps = _schedule(cfg, split, accelerator.num_processes)
    prepared, optimizer, params, at, tuned = _prepared_model(
        cfg, accelerator, model, resume_from, state
    )
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    main = accelerator.is_main_process
    if main:  # the resolved config beside the run's output
        atomic_write_bytes(out_dir / "config.json", cfg.model_dump_json(indent=2).encode())
    metrics = MetricsLog(out_dir, cfg, at.step if state is not None else None) if main else None
    bar = Progress(total_steps, at.step, cfg.log_every, enabled=progress and main)
    _say_split(bar, split, cfg, tuned)
    run = _Run(
        cfg=cfg,
        out_dir=out_dir,
        accelerator=accelerator,
        samples=data.samples,
        split=split,
        model=prepared,
        # Without accelerate's autocast wrapper on forward: validation (and so the choice of
        # the best model) is float32. Training still autocasts: `episode_loss` enters
        # `accelerator.autocast` itself, and the wrapper's removal reaches the same module
        # the prepared (DDP) model calls.
        raw_model=accelerator.unwrap_model(prepared, keep_fp32_wrapper=False),
        optimizer=optimizer,
        params=params,
        tuned=tuned,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        metrics=metrics,
        bar=bar,
        t_start=t_start,
        at=at,
        units=units,
    )
    if state is None and not split.val.empty:
        _starting_model_is_best(run)
    if state is None:
        at.last_val = dict(at.val_before or {})
    at.last_ckpt, at.saved_at = resume_from, at.step
    prepared.train()
    return run


def _say_split(bar: Progress, split: Split, cfg: TrainConfig, tuned: dict[str, Any]) -> None:
    """What the run trains on and what it trains, before the first step."""
    bar.write(f"split: {split.description}")
    if cfg.tune != "all":
        bar.write(
            f"tune {cfg.tune}: training {', '.join(tuned['trained_modules'])} "
            f"({tuned['trained_parameters']} parameters; {tuned['frozen_parameters']} frozen)"
        )
    for n in split.notes:
        bar.write(f"note: {n}")


def _starting_model_is_best(run: _Run) -> None:
    """The starting model is the first candidate: training that only makes the validation
    worse must not leave a worse "best" behind."""
    at = run.at
    at.val_before = validate(
        run.raw_model, run.samples, run.split.val, run.cfg, run.accelerator.device
    )
    if math.isfinite(metric(at.val_before)):
        at.best = metric(at.val_before)
        _save_best(run, 0, at.val_before)


@contextlib.contextmanager
def _stop_on_signals(at: Standing):
    """Ctrl-C or SIGTERM (a scheduler, `kill`) ends the run after the current step with a
    checkpoint, instead of losing every step since the last one. The handlers step aside
    after the first signal, so a second one stops the process at once."""
    with first_signal_noted(lambda signum: setattr(at, "signal", signum)):
        yield


def _interrupted(run: _Run) -> bool:
    """A signal reached this process (or, under several, any of them: every process must
    stop at the same step, or the checkpoint barrier would hang)."""
    got = run.at.signal is not None
    acc = run.accelerator
    if acc.num_processes == 1:
        return got
    flag = torch.tensor([float(run.at.signal or 0)], device=acc.device)
    signum = int(acc.gather(flag).max())
    run.at.signal = signum or None
    return bool(signum)


def _stop_for_signal(run: _Run) -> None:
    at = run.at
    if at.step != at.saved_at:
        _checkpoint(run)
    name = signal.Signals(at.signal).name if at.signal else "a signal"
    where = at.last_ckpt or "(none: no step was taken)"
    at.stop_reason = (
        f"interrupted by {name} at step {at.step}: checkpoint {where}; to go on, run the "
        "same command again with --resume"
    )


def _loop(run: _Run) -> None:
    """Steps until the schedule ends, early stopping, or a non-finite loss or gradient."""
    cfg, at = run.cfg, run.at
    while at.step < run.total_steps:
        stop = _train_step(run)
        if stop is not None:
            at.stop_reason = stop
            break
        epoch_end = at.step % run.steps_per_epoch == 0
        if epoch_end:
            _end_epoch(run)
        patience_out = _agreed(run, epoch_end and at.bad_epochs >= cfg.patience)
        if at.step % cfg.checkpoint_every == 0 or patience_out or _time_for_checkpoint(run):
            _checkpoint(run)
        if patience_out:
            at.stop_reason = (
                f"early stopping: no better validation for {cfg.patience} epoch(s) "
                f"(best at step {at.best_step})"
            )
            break
        # After the last step the run ends as it would have, its tail validated: stopped
        # here, it exited as interrupted and a resume had no step left to validate it in.
        if at.step < run.total_steps and _interrupted(run):
            _stop_for_signal(run)
            break
    else:
        # Only for steps this run took: a resumed run that had already ended mid-epoch was
        # validated then.
        stepped = bool(at.step_losses)
        if stepped and at.step % run.steps_per_epoch and not run.split.val.empty:
            _validate_tail(run)
        if at.step != at.saved_at:
            _checkpoint(run)
    if run.split.val.empty and at.step_losses:
        # Nothing to choose a best by: the model as trained is the one to export (and the
        # promotion gate, not this run, decides whether it is any good).
        _save_best(run, at.step, {})


def _agreed(run: _Run, flag: bool) -> bool:
    """The main process's `flag` on every process. Each validates on its own, and float
    sums on two GPUs may differ in the last bit: a process that alone stopped early would
    leave the others hanging at the next collective."""
    acc = run.accelerator
    if acc.num_processes == 1:
        return flag
    flags = acc.gather(torch.tensor([float(flag)], device=acc.device))
    return bool(flags[0] > 0)  # gathered in process order: the main process is first


def _time_for_checkpoint(run: _Run) -> bool:
    """True when `checkpoint_minutes` have passed since the last checkpoint, by the main
    process's clock (every process must agree, or the checkpoint barrier would hang)."""
    minutes = run.cfg.checkpoint_minutes
    if minutes is None:
        return False
    return _agreed(run, time.monotonic() - run.at.saved_t >= 60.0 * minutes)


def _train_step(run: _Run) -> str | None:
    """One episode: draw, loss, backward, optimizer step. The reason to stop instead (a
    non-finite loss or gradient, on any process), or None."""
    acc, cfg, at = run.accelerator, run.cfg, run.at
    t0 = time.perf_counter()
    seed = derive_seed(cfg.seed, at.step, acc.process_index)
    seed_everything(seed)
    rows = sample_episode(run.samples, run.split, cfg, np.random.default_rng(seed))
    batch = make_batch(run.samples, rows, acc.device)
    gen = torch.Generator().manual_seed(seed)
    parts = episode_loss(run.model, batch, cfg, gen, acc.autocast)
    bad = torch.tensor([0.0 if torch.isfinite(parts.loss) else 1.0], device=acc.device)
    if acc.gather(bad).sum() > 0:
        return (
            f"loss is not finite ({float(parts.loss.detach())}) at step {at.step + 1}: "
            "stopped without stepping; the last good checkpoint is "
            f"{at.last_ckpt if at.last_ckpt else '(none saved yet)'}"
        )
    # No loss term at all (every person too small this time, on every process): skip the
    # update, since Adam would still move the weights by momentum. Every process still runs
    # backward, which DDP needs to stay in step.
    empty = torch.tensor([float(parts.empty)])
    skip_update = bool(acc.gather(empty.to(acc.device)).min() > 0)
    acc.backward(parts.loss)
    stop = _update(run, skip_update)
    if stop is not None:
        return stop
    at.step += 1
    _record_step(run, parts, len(batch), skip_update, time.perf_counter() - t0)
    return None


def _update(run: _Run, skip_update: bool) -> str | None:
    """Clip and step, or only clear the gradients; the reason to stop on a non-finite
    gradient norm."""
    optimizer = run.optimizer
    if skip_update:
        optimizer.zero_grad(set_to_none=True)
        return None
    if run.cfg.grad_clip is not None:
        norm = run.accelerator.clip_grad_norm_(run.params, run.cfg.grad_clip)
        if not torch.isfinite(torch.as_tensor(norm)):
            optimizer.zero_grad(set_to_none=True)
            return (
                f"gradient is not finite at step {run.at.step + 1}: stopped without "
                f"stepping; the last good checkpoint is {run.at.last_ckpt or '(none saved yet)'}"
            )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return None


def _record_step(
    run: _Run, parts: LossParts, frames: int, skip_update: bool, seconds: float
) -> None:
    at, n_proc = run.at, run.accelerator.num_processes
    at.train_time += seconds
    at.train_frames += frames * n_proc
    loss = math.nan if skip_update else float(parts.loss.detach())
    at.step_losses.append(loss)
    at.epoch_acc.append(loss)
    run.bar.update(at.step, {"loss": loss, "ridge": parts.ridge, "angular": parts.angular})
    if run.metrics is not None:
        run.metrics.write(
            {
                "kind": "train",
                "step": at.step,
                "epoch": (at.step - 1) // run.steps_per_epoch,
                "loss": loss,
                "ridge_loss": parts.ridge,
                "angular_loss": parts.angular,
                "lr": run.optimizer.param_groups[0]["lr"],
                "samples_per_s": frames * n_proc / seconds,
                "wall_s": time.perf_counter() - run.t_start,
            }
        )


def _end_epoch(run: _Run) -> None:
    """The epoch's mean loss; validation, the best model and the early-stopping count."""
    at, spe = run.at, run.steps_per_epoch
    done = [v for v in at.epoch_acc if math.isfinite(v)]
    at.epoch_losses.append(float(np.mean(done)) if done else math.nan)
    at.epoch_acc = []
    if run.split.val.empty:
        return
    if _validate(run, at.step // spe - 1, f"epoch {at.step // spe}"):
        at.bad_epochs = 0
    else:
        at.bad_epochs += 1


def _validate_tail(run: _Run) -> None:
    """The steps after the last whole epoch, validated once when the schedule ends there
    (`max_steps` mid-epoch): else the best model would be the last one validated, the
    untrained start when no epoch ended, exported without a word. Early stopping's count
    is left alone: no epoch ended."""
    at, spe = run.at, run.steps_per_epoch
    _validate(run, at.step // spe, f"step {at.step} (epoch {at.step // spe + 1}, part)")


def _validate(run: _Run, epoch: int, name: str) -> bool:
    """Validation now: its metrics row and line, and the best model when it is better.
    → whether it was."""
    at = run.at
    device = run.accelerator.device
    v = at.last_val = validate(run.raw_model, run.samples, run.split.val, run.cfg, device)
    m = metric(v)
    if run.metrics is not None:
        run.metrics.write(
            {"kind": "val", "step": at.step, "epoch": epoch}
            | {k: x for k, x in v.items()}
            | {"wall_s": time.perf_counter() - run.t_start}
        )
    # The gaze angle's error needs labels that are gaze directions (datasets); sessions'
    # labels are screen points (the line said "nan deg").
    deg = v["val_deg"]
    deg_text = f"{deg:.2f} deg" if math.isfinite(deg) else "no gaze-angle labels"
    run.bar.write(
        f"{name}: val {v['val_px']:.1f} px, "
        f"{v['val_pct_diag']:.2f} % diag (constant predictor "
        f"{v['val_baseline_pct_diag']:.2f} %), {deg_text}"
    )
    if math.isfinite(m) and m < at.best:
        at.best, at.best_step = m, at.step
        _save_best(run, at.step, v)
        return True
    return False


def _save_best(run: _Run, step: int, val: dict[str, float]) -> None:
    if run.main:
        # An ONNX exported from the earlier best (`--export`, `gazeloop export`) is about to
        # be another model: gone first (a crash between must not leave it beside the new
        # best), rather than served as this one. Registered copies stay.
        onnx = run.best_path.with_suffix(".onnx")
        for stale in (onnx, card_path_for(onnx)):
            stale.unlink(missing_ok=True)
        extra = strict_json({"step": step, **val})
        save_checkpoint(run.raw_model, run.best_path, extra=extra)


def _checkpoint(run: _Run) -> None:
    at = run.at
    run.accelerator.wait_for_everyone()
    if run.main:
        state = trainer_state(
            run.cfg,
            step=at.step,
            steps_per_epoch=run.steps_per_epoch,
            best=at.best,
            best_step=at.best_step,
            bad_epochs=at.bad_epochs,
            val_before=at.val_before,
            last_val=at.last_val,
            units=run.units,
        )
        at.last_ckpt = save_training_checkpoint(
            run.out_dir, run.raw_model, run.optimizer, state, run.cfg.keep_checkpoints
        )
    at.saved_at, at.saved_t = at.step, time.monotonic()


def _summary(run: _Run, data: GazeData, state: dict[str, Any] | None, mp: str) -> dict[str, Any]:
    at, split, best_path = run.at, run.split, run.best_path
    wall = time.perf_counter() - run.t_start
    return {
        "epochs": at.step // run.steps_per_epoch,
        "steps": at.step,
        "steps_this_run": len(at.step_losses),
        "steps_per_epoch": run.steps_per_epoch,
        "resumed_from_step": None if state is None else int(state["step"]),
        "losses": at.step_losses,
        "epoch_losses": at.epoch_losses,
        "val_error_px": at.last_val.get("val_px", math.nan),
        "val_error_pct_diag": at.last_val.get("val_pct_diag", math.nan),
        "val_baseline_pct_diag": at.last_val.get("val_baseline_pct_diag", math.nan),
        "val_error_deg": at.last_val.get("val_deg", math.nan),
        "val_before": at.val_before,
        "best_metric": at.best if math.isfinite(at.best) else None,
        "best_step": at.best_step if math.isfinite(at.best) else None,
        "best_checkpoint": str(best_path) if best_path.is_file() else None,
        "checkpoint": str(at.last_ckpt) if at.last_ckpt else None,
        "stopped": at.stop_reason,
        # a signal that came with the last step is not an interruption: the run finished
        "signal": at.signal if at.stop_reason.startswith("interrupted") else None,
        "split": split.description,
        "notes": split.notes,
        "train_persons": len(split.train_persons),
        "val_persons": len(split.val_persons),
        "samples": len(run.samples),
        "samples_by_person": _counts(run.samples.person),
        "samples_by_unit": {u.unit: u.samples for u in data.units},
        "tune": run.tuned,
        "skipped": len(data.skipped),
        "excluded_persons": [str(e) for e in data.excluded],
        "wall_time_s": wall,
        "samples_per_s": at.train_frames / at.train_time if at.train_time > 0 else math.nan,
        "device": str(run.accelerator.device),
        "main_process": run.main,
        "num_processes": run.accelerator.num_processes,
        "mixed_precision": mp,
        "model_version": MODEL_VERSION,
    }


def _counts(persons: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(persons, return_counts=True)
    return {str(n): int(c) for n, c in zip(names.tolist(), counts.tolist(), strict=True)}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gazeloop.trainer.train config.json [--resume]` (or under `accelerate
    launch`)."""
    ap = argparse.ArgumentParser(
        prog="python -m gazeloop.trainer.train", description="Train the gazeloop gaze network."
    )
    ap.add_argument("config", type=Path, help="TrainConfig as JSON")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = TrainConfig.model_validate_json(args.config.read_bytes())
    except OSError as e:
        ap.error(f"{args.config}: {e.strerror or e}")
    except ValidationError as e:  # bad JSON too: one line naming the field, not the dump
        ap.error(f"{args.config}: invalid training config: {first_problem(e)}")
    if args.resume:
        cfg = cfg.model_copy(update={"resume": True})
    try:
        summary = train(cfg)
    except (TrainError, CheckpointError) as e:
        ap.exit(2, f"{ap.prog}: {e}\n")
    if summary["main_process"]:  # one summary per run, not one per process
        json.dump(strict_json(summary), sys.stdout, indent=2, default=str)
        print()
    if summary.get("signal"):
        return 128 + int(summary["signal"])  # as a shell reports a process the signal ended
    return 0 if summary["stopped"] == "finished" or summary["stopped"].startswith("early") else 1


if __name__ == "__main__":
    raise SystemExit(main())
