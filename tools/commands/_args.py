"""Options shared by the commands (not a command itself): the fast-path flags and the
screen, grid and feature flags that several commands take."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import ValidationError

from gazeloop.fastpath.pipeline import FastPathConfig
from gazeloop.tools.errors import UserError


def add_fastpath_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fast path")
    g.add_argument("--config", type=Path, help="a JSON file of fast-path settings")
    g.add_argument("--landmarks", choices=["legacy", "tasks"], help="landmark backend")
    g.add_argument("--face-model", type=Path, help="face_landmarker.task")
    g.add_argument("--gaze-model", type=Path, help="ONNX gaze model")
    g.add_argument("--filter", choices=["one_euro", "kalman", "none"], help="smoothing filter")
    g.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default 1)")


def fastpath_config(args: argparse.Namespace) -> FastPathConfig:
    """The config file (if any) overridden by the flags that were given."""
    data: dict = {}
    if getattr(args, "config", None):
        try:
            data = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{args.config}: cannot read config: {e}") from e
        if not isinstance(data, dict):
            raise UserError(f"{args.config}: a config is a JSON object")
    for key in ("landmarks", "face_model", "gaze_model", "filter", "threads"):
        v = getattr(args, key, None)
        if v is not None:
            data[key] = v
    try:
        return FastPathConfig.model_validate(data)
    except ValidationError as e:
        where = args.config or "command line"
        raise UserError(f"{where}: invalid fast-path setting: {e}") from e
