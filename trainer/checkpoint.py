"""Training checkpoints: saving, finding and resuming, optimizer state included, no pickle.

Layout (`out_dir/checkpoints/step-NNNNNNN/`), every file written atomically:
- `model.safetensors` + `.json` sidecar (`trainer.model.save_checkpoint`: MODEL_VERSION,
  architecture, weights hash);
- `optimizer.safetensors` (every state tensor, flattened as `state/<parameter>/<stat>`,
  keyed by parameter name) + `optimizer.json` (param groups, non-tensor state and the
  tensors' hash);
- `trainer_state.json` (step, epoch, best metric, early-stopping count, seed).
A checkpoint is assembled in a hidden folder and renamed into place; `latest.json` then names
it. A checkpoint from another MODEL_VERSION, or with a damaged file, is refused with a
`CheckpointError` naming the file before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from gazeloop.calibration.store.atomic import WriteError, atomic_write_bytes, fsync_dir
from gazeloop.fastpath.models import sha256_file
from gazeloop.trainer.config import TrainConfig, TrainError
from gazeloop.trainer.logs import strict_json
from gazeloop.trainer.model import (
    MODEL_VERSION,
    CheckpointError,
    GazeNet,
    read_checkpoint_info,
    save_checkpoint,
    save_tensors,
)

STATE_FORMAT = "gazeloop.trainer.state"
OPTIMIZER_FORMAT = "gazeloop.trainer.optimizer"
STATE_VERSION = 1
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
OPTIMIZER_DOC = "optimizer.json"
OPTIMIZER_TENSORS = "optimizer.safetensors"


def _write_json(path: Path, doc: Any) -> None:
    atomic_write_bytes(path, json.dumps(doc, indent=1, sort_keys=True).encode())


def _json_scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    return v


# --- optimizer state ------------------------------------------------------------------------


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
    save_tensors(tensors, folder / OPTIMIZER_TENSORS, meta)
    groups = []
    for g in sd["param_groups"]:
        doc = {k: _json_scalar(v) for k, v in g.items() if k != "params"}
        groups.append(doc | {"params": [names[i] for i in g["params"]]})
    doc = {**meta, "type": type(optimizer).__name__, "param_groups": groups, "scalars": scalars}
    # As the weights' sidecar does: a damaged file is refused before a resume reads data.
    doc["tensors_sha256"] = sha256_file(folder / OPTIMIZER_TENSORS)
    _write_json(folder / OPTIMIZER_DOC, doc)


def check_optimizer_state(folder: Path) -> dict[str, Any]:
    """`optimizer.json`, in the shape `load_optimizer` reads, and `optimizer.safetensors`
    against its hash (checkpoints written before the hash: its header is read instead), so
    a damaged file is one line naming it, before a resumed run loads any data."""
    path = folder / OPTIMIZER_DOC
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e
    if not _is_optimizer_doc(doc):
        raise CheckpointError(f"{path}: not a gazeloop optimizer state")
    if doc.get("model_version") != MODEL_VERSION:
        raise CheckpointError(
            f"{folder}: optimizer state is for model version {doc.get('model_version')!r}, "
            f"not {MODEL_VERSION!r}"
        )
    tensors = folder / OPTIMIZER_TENSORS
    want = doc.get("tensors_sha256")
    if want is not None and (not tensors.is_file() or sha256_file(tensors) != want):
        raise CheckpointError(f"{tensors}: missing or damaged (does not match {path.name})")
    if want is None:
        _optimizer_tensors(folder, header_only=True)
    return doc


def _is_optimizer_doc(doc: Any) -> bool:
    if not isinstance(doc, dict) or not isinstance(doc.get("scalars"), dict):
        return False
    groups = doc.get("param_groups")
    return isinstance(groups, list) and all(
        isinstance(g, dict)
        and isinstance(g.get("params"), list)
        and all(isinstance(n, str) for n in g["params"])
        for g in groups
    )


def _optimizer_tensors(folder: Path, *, header_only: bool = False) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = folder / OPTIMIZER_TENSORS
    try:
        if header_only:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
            return {}
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable ({' '.join(str(e).split())})") from e


def load_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module, folder: Path) -> None:
    doc = check_optimizer_state(folder)
    index = {n: i for i, n in enumerate(_param_names(model))}
    saved = {n for g in doc["param_groups"] for n in g["params"]}
    if saved != set(index):
        raise CheckpointError(
            f"{folder}: optimizer state is for other parameters "
            f"({len(saved ^ set(index))} differ, e.g. {sorted(saved ^ set(index))[:3]})"
        )
    try:
        state = _indexed_state(_optimizer_tensors(folder), doc["scalars"], index)
        # torch pairs saved and current parameters by POSITION within the groups, so list
        # them in the current order (the optimizer was built from `trained_parameters`).
        groups = [
            g | {"params": sorted(index[n] for n in g["params"])} for g in doc["param_groups"]
        ]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        # Hash and shape checked, yet not this optimizer's state: edited by hand, or written
        # by another build. Refused whole: a half-loaded state would train on silently.
        raise CheckpointError(f"{folder}: optimizer state does not fit ({e!r})") from e


def _indexed_state(
    tensors: dict[str, torch.Tensor], scalars: dict[str, Any], index: dict[str, int]
) -> dict[int, dict[str, Any]]:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        _, name, stat = key.split("/")
        state.setdefault(index[name], {})[stat] = t
    for name, st in scalars.items():
        state.setdefault(index[name], {}).update(st)
    return state


# --- the trainer state and the checkpoint folder ---------------------------------------------


def trainer_state(
    cfg: TrainConfig,
    *,
    step: int,
    steps_per_epoch: int,
    best: float,
    best_step: int,
    bad_epochs: int,
    val_before: dict[str, float] | None,
    last_val: dict[str, float] | None = None,
    units: list[str] | None = None,
) -> dict[str, Any]:
    """`trainer_state.json`: where the run stands, the config it ran with and the units
    (sessions, files) its data was read from."""
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
        "val_before": strict_json(val_before),
        "last_val": strict_json(last_val or None),
        "config": cfg.model_dump(mode="json"),
        "units": units,
    }


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


def earlier_run(out_dir: Path, resume: bool) -> Path | None:
    """The checkpoint a run in `out_dir` continues from, None for a fresh folder. An earlier
    run's checkpoints are refused unless resuming, and before anything is written: a fresh
    run would overwrite them, and `gazeloop train --labels` would replace that run's
    exported labels, its training data, so it asks here before exporting."""
    out_dir = Path(out_dir)
    found = latest_checkpoint(out_dir) if out_dir.exists() else None
    if found is not None and not resume:
        raise TrainError(
            f"{out_dir} holds checkpoints of an earlier run; resume it (--resume, or "
            "resume: true in the config) or choose another output folder (--out)"
        )
    return found


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """The checkpoint's trainer state, refusing other versions before anything is loaded."""
    path = folder / "trainer_state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a gazeloop trainer state v{STATE_VERSION}")
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: not a gazeloop trainer state v{STATE_VERSION}")
    if state.get("model_version") != MODEL_VERSION:
        raise CheckpointError(
            f"{folder}: checkpoint is for model version {state.get('model_version')!r}, but "
            f"this trainer builds {MODEL_VERSION!r}; nothing was changed. Start a new run "
            "in another out_dir (init from an exported model) instead of resuming"
        )
    _check_standing(path, state)
    read_checkpoint_info(folder / "model.safetensors")  # version and weights hash
    check_optimizer_state(folder)
    return state


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_standing(path: Path, state: dict[str, Any]) -> None:
    """Where the run stands, each field of the type a resume reads it as: a bad one was a
    traceback (`int("x")`, a KeyError) after the data had loaded."""
    for key in ("step", "best_step", "bad_epochs"):
        if not _is_count(state.get(key)):
            raise CheckpointError(f"{path}: {key} {state.get(key)!r} is not a count")
    if "best_metric" not in state:
        raise CheckpointError(f"{path}: best_metric is missing")
    best = state["best_metric"]
    if best is not None and not (isinstance(best, int | float) and not isinstance(best, bool)):
        raise CheckpointError(f"{path}: best_metric {best!r} is not a number (or null)")
    if not isinstance(state.get("config", {}), dict):
        raise CheckpointError(f"{path}: config is not an object of the run's settings")


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
    final = root / name
    try:
        save_checkpoint(model, tmp / "model.safetensors", extra={"step": state["step"]})
        save_optimizer(optimizer, model, tmp)
        _write_json(tmp / "trainer_state.json", state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except WriteError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # Named as the checkpoint it was to become, not the hidden folder just removed.
        where = str(e.filename).replace(str(tmp), str(final))
        raise WriteError(e.errno, e.strerror, where) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)  # the folder's rename is on disk before latest.json names it
    _write_json(root / LATEST, {"checkpoint": name, "step": state["step"]})
    old = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for p in old[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    return final
