"""`gazeloop models ...`: find, check and build the model files."""

from __future__ import annotations

import argparse
from pathlib import Path

from gazeloop.fastpath import models


def add_parser(sub) -> None:
    p = sub.add_parser(
        "models",
        help="find, check and build model files",
        description="Model files are looked up as: explicit path, then $GAZELOOP_MODELS, then "
        f"the user cache ({models.cache_dir()}), then (online only) the publisher's location "
        "with the SHA-256 checked.",
    )
    msub = p.add_subparsers(dest="models", required=True, metavar="ACTION")
    b = msub.add_parser(
        "build",
        help="build the ONNX gaze model from the OpenVINO IR and the face landmarker's "
        "networks from its .task bundle (skipped when up to date)",
    )
    b.add_argument("--out", type=Path, help=f"output folder (default {models.cache_dir()})")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    b.set_defaults(func=run_build)
    c = msub.add_parser("check", help="resolve every model file and print where it is")
    c.set_defaults(func=run_check)


def run_build(args: argparse.Namespace) -> int:
    out_dir = args.out or models.cache_dir()
    out = out_dir / models.GAZE_ONNX.name
    # Resolve the face model too, so `make setup` fails early and clearly when it is missing.
    task = models.resolve(models.FACE_LANDMARKER)
    print(f"face landmarker: {task}")
    _build_face_onnx(out_dir, task, args.force)
    if out.is_file() and not args.force and models.onnx_is_current(out):
        print(f"gaze model:      {out} (up to date)")
        return 0
    path = models.build_gaze_onnx(out_dir)
    print(f"gaze model:      {path} (built from the OpenVINO IR)")
    return 0


def _build_face_onnx(out_dir: Path, task: Path, force: bool) -> None:
    """The face landmarker's detector and mesh networks as ONNX (landmark backend `onnx`)."""
    digest = models.sha256_file(task)
    paths = [out_dir / models.FACE_DETECTOR_ONNX.name, out_dir / models.FACE_LANDMARKS_ONNX.name]
    if not force and all(p.is_file() and models.face_onnx_is_current(p, digest) for p in paths):
        for p in paths:
            print(f"face network:    {p} (up to date)")
        return
    for p in models.build_face_onnx(out_dir, task, digest):
        print(f"face network:    {p} (built from {task.name})")


def run_check(args: argparse.Namespace) -> int:
    bad = 0
    for spec in (models.FACE_LANDMARKER, models.GAZE_IR_XML, models.GAZE_IR_BIN):
        try:
            print(f"ok       {spec.name}: {models.resolve(spec)}")
        except models.ModelFileError as e:
            bad += 1
            print(f"MISSING  {e}")
    try:
        print(f"ok       {models.GAZE_ONNX.name}: {models.resolve(models.GAZE_ONNX)}")
    except models.ModelFileError:
        print(f"not built {models.GAZE_ONNX.name}: run `gazeloop models build`")
    for spec in (models.FACE_DETECTOR_ONNX, models.FACE_LANDMARKS_ONNX):
        try:
            print(f"ok       {spec.name}: {models.resolve(spec)}")
        except models.ModelFileError:
            print(f"not built {spec.name}: run `gazeloop models build`")
    return 1 if bad else 0
