"""`gazeloop train` and `gazeloop export`: fine-tune the gaze network on sessions and labels,
and ship it as ONNX into the model registry the fast path watches.

On the CUDA box the same command scales with `accelerate launch -m tools.cli train ...`
(accelerate picks the GPUs; bf16 is used when CUDA is present).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from gazeloop.tools.commands._args import positive_int
from gazeloop.tools.errors import UserError
from gazeloop.trainer.registry import default_registry_root


def add_parser(sub) -> None:
    registry_help = f"model registry (default {default_registry_root()})"
    t = sub.add_parser(
        "train",
        help="fine-tune the gaze network (masked ridge head) and export it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--data", type=Path, action="append", default=[], help="dataset (repeatable)")
    t.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, metrics)")
    t.add_argument("--config", type=Path, help="a TrainConfig JSON; flags override it")
    t.add_argument("--epochs", type=int)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--calib-min", type=int, help="calibration targets per episode, at least")
    t.add_argument("--calib-max", type=int, help="... and at most")
    t.add_argument(
        "--screen-px", type=positive_int, nargs=2, metavar=("W", "H"), help="for sessions"
    )
    t.add_argument("--mirrored", action="store_true", help="session images are selfie views")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--export", action="store_true", help="export the best model when done")
    t.add_argument("--registry", type=Path, help=registry_help)
    t.add_argument("--model-id", default="gazeloop-gazenet", help="registry model id")
    t.add_argument("--json", action="store_true", help="print the summary as JSON only")
    t.set_defaults(func=run_train)

    e = sub.add_parser("export", help="export a training checkpoint to ONNX and register it")
    e.add_argument("checkpoint", type=Path, help="model.safetensors of a training run")
    e.add_argument("--out", type=Path, help="ONNX file (default: beside the checkpoint)")
    e.add_argument("--registry", type=Path, help=registry_help)
    e.add_argument("--no-register", action="store_true")
    e.add_argument("--model-id", default="gazeloop-gazenet")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=run_export)


def _config(args):
    try:
        from gazeloop.trainer.datasets import DataSource
        from gazeloop.trainer.train import TrainConfig
    except ImportError as e:
        raise UserError(
            f"training needs the trainer extra: pip install 'gazeloop[trainer]' ({e})"
        ) from e
    data: dict = {}
    if args.config:
        try:
            data = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{args.config}: cannot read the training config: {e}") from e
    if args.data:
        data["data"] = [
            DataSource(
                path=p,
                screen_px=tuple(args.screen_px) if args.screen_px else None,
                mirrored=True if args.mirrored else None,
            ).model_dump(mode="json")
            for p in args.data
        ]
    data["out_dir"] = str(args.out)
    for k in ("epochs", "max_steps", "lr", "seed", "calib_min", "calib_max"):
        v = getattr(args, k)
        if v is not None:
            data[k] = v
    if args.resume:
        data["resume"] = True
    if not data.get("data"):
        raise UserError("no training data: give --data PATH (a session folder, a dataset...)")
    try:
        return TrainConfig.model_validate(data)
    except Exception as e:
        raise UserError(f"invalid training config: {e}") from e


def run_train(args: argparse.Namespace) -> int:
    from gazeloop.trainer.model import CheckpointError
    from gazeloop.trainer.train import TrainError, train

    cfg = _config(args)
    try:
        summary = train(cfg, progress=not args.json)
    except (TrainError, CheckpointError) as e:
        raise UserError(str(e)) from None
    out = {
        "epochs": summary["epochs"],
        "steps": summary["steps"],
        "losses": [round(float(v), 5) for v in summary["losses"]],
        "val_error_px": _num(summary["val_error_px"]),
        "val_error_pct_diag": _num(summary["val_error_pct_diag"]),
        "val_before": {k: _num(v) for k, v in (summary.get("val_before") or {}).items()},
        "wall_time_s": round(summary["wall_time_s"], 2),
        "samples_per_s": _num(summary["samples_per_s"]),
        "stopped": summary["stopped"],
        "split": summary["split"],
        "best_checkpoint": summary["best_checkpoint"],
    }
    if args.export and summary.get("best_checkpoint"):
        out["export"] = _export(
            Path(summary["best_checkpoint"]), None, args.registry, args.model_id, summary
        )
    if args.json:
        print(json.dumps(out, default=str))
    else:
        print(json.dumps(out, indent=2, default=str))
    ok = summary["stopped"] == "finished" or str(summary["stopped"]).startswith("early")
    return 0 if ok else 1


def _num(v):
    """JSON has no NaN: unknown numbers are null."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return round(v, 3) if isinstance(v, float) else v


def _export(ckpt: Path, out: Path | None, registry: Path | None, model_id: str, summary=None):
    from gazeloop.trainer.export import ExportParityError, export_onnx
    from gazeloop.trainer.model import CheckpointError, load_checkpoint
    from gazeloop.trainer.registry import ModelRegistry, RegistryError

    try:
        model = load_checkpoint(ckpt)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    out = out or ckpt.with_suffix(".onnx")
    card = {"model_id": model_id, "parent_model_id": "gaze-estimation-adas-0002-onnx"}
    if summary is not None:
        card["metrics"] = {
            k: float(summary[k])
            for k in ("val_error_px", "val_error_pct_diag")
            if isinstance(summary.get(k), float) and math.isfinite(summary[k])
        }
    try:
        path = export_onnx(model, out, card=card)
    except ExportParityError as e:
        raise UserError(f"export refused: {e}") from None
    result = {"onnx": str(path)}
    if registry is not False:
        try:
            entry = ModelRegistry(registry or default_registry_root()).register(path)
        except RegistryError as e:
            raise UserError(str(e)) from None
        result["registered"] = str(entry.onnx_path)
        result["version"] = entry.version
    return result


def run_export(args: argparse.Namespace) -> int:
    reg = False if args.no_register else args.registry
    res = _export(args.checkpoint, args.out, reg, args.model_id)
    print(json.dumps(res) if args.json else "\n".join(f"{k}: {v}" for k, v in res.items()))
    return 0
