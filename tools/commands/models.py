"""`gazeloop models ...`: find, check and build the model files; list the registry's trained
versions, and promote or roll back the one the fast path serves."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from gazeloop.calibration.store.atomic import atomic_writer, check_writable, make_folder
from gazeloop.fastpath import models
from gazeloop.tools.commands._args import add_registry_args, registry_root
from gazeloop.tools.errors import UserError


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
    _add_registry_parsers(msub)


def _add_registry_parsers(msub) -> None:
    ls = msub.add_parser("list", help="registered versions, their gate numbers, which is served")
    p = msub.add_parser(
        "promote",
        help="serve this version (overrides the promotion gate: a person's decision)",
    )
    p.add_argument("version", type=int, help="registry version number")
    p.add_argument("--reason", default="", help="recorded in the promotion history")
    r = msub.add_parser("rollback", help="serve the version promoted before the current one")
    for sp in (ls, p, r):
        add_registry_args(sp)
        sp.add_argument("--model-id", help="needed when the registry holds several models")
    ls.set_defaults(func=run_list)
    p.set_defaults(func=run_promote)
    r.set_defaults(func=run_rollback)


def _registry(args):
    from gazeloop.trainer.registry import ModelRegistry

    return ModelRegistry(registry_root(args))


def run_list(args: argparse.Namespace) -> int:
    from gazeloop.trainer.registry import RegistryError, unmoved_registry_note

    reg = _registry(args)
    try:
        entries = reg.list(args.model_id)
        served = {e.model_id: e.version for e in map(reg.promoted, reg.model_ids()) if e}
        listed = {e.model_id for e in entries}
        promoted_here = {mid: _promotions_by_version(reg, mid) for mid in listed}
    except RegistryError as e:
        raise UserError(str(e)) from None
    if not entries:
        print(f"no registered models in {reg.root}")
        stray = [n for n in reg.stray_versions() if (reg.root / n).is_dir()]
        if stray:
            print(f"  ({stray[0]} there is a version folder; it goes in a model id's folder:")
            print(f"   {reg.root}/<model-id>/{stray[0]}, the trainer's id is gazeloop-gazenet)")
        if note := unmoved_registry_note(reg.root):
            print(f"  ({note})")
    # A run serves a promoted model when the registry has one model id, else the one its
    # --model-id names: with several, both were starred "served" while run served neither.
    star = "*" if len(reg.model_ids()) <= 1 else "+"
    for e in entries:
        mark = star if served.get(e.model_id) == e.version else " "
        ev = e.card.evaluation or {}
        reason = f": {ev['reason']}" if ev.get("reason") else ""
        by_hand = ev.get("promoted_by_hand")
        here = promoted_here.get(e.model_id, {}).get(e.version)
        if by_hand is None and here is not None and ev.get("promoted") is not True:
            by_hand = here  # promoted in this registry although the gate had not: a person
        if by_hand is not None:  # the gate did not promote it; a person did, where it was made
            verdict = "refused" + reason if "reason" in ev else "not judged"
            gate = f"gate: {verdict}; promoted by hand" + (f": {by_hand}" if by_hand else "")
        elif ev:
            gate = f"gate: {'promoted' if ev.get('promoted') else 'refused'}{reason}"
        else:
            gate = "gate: not judged"
        print(f"{mark} {e.model_id} v{e.version}  {e.card.created:%Y-%m-%d %H:%M}  {gate}")
    if star == "*":
        print("(* = served by the fast path)")
    else:
        print(
            "(+ = promoted; the registry holds several model ids: run serves the one "
            "`run --model-id ID` names, else the stock model)"
        )
    return 0


def _promotions_by_version(reg, model_id: str) -> dict[int, str]:
    """Each version's latest promotion reason in this registry (rolled back or not: a
    person's override stays on record)."""
    return {
        int(h["version"]): str(h.get("reason") or "")
        for h in reg.promotions(model_id)
        if not h.get("rollback") and h.get("version") is not None
    }


def run_promote(args: argparse.Namespace) -> int:
    from gazeloop.trainer.registry import RegistryError

    reg = _registry(args)
    try:
        why = args.reason or "gazeloop models promote"
        changed = reg.promote(args.version, args.model_id, reason=why)
        entry = reg.promoted(args.model_id)
        assert entry is not None
        others = [m for m in reg.model_ids() if m != entry.model_id]
    except RegistryError as e:
        raise UserError(str(e)) from None
    if not changed:
        print(f"{entry.model_id} v{entry.version} is served already: nothing changed")
        return 0
    then = (
        "a running fast path switches to it"
        if not others
        else f"served by `run --model-id {entry.model_id}` (the registry holds "
        f"{', '.join(others)} too)"
    )
    print(f"promoted {entry.model_id} v{entry.version}: {then}")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from gazeloop.trainer.registry import RegistryError

    reg = _registry(args)
    try:
        entry = reg.rollback(args.model_id, reason="gazeloop models rollback")
    except RegistryError as e:
        raise UserError(str(e)) from None
    if entry is None:
        print("rolled back: nothing is promoted; the fast path serves the stock model")
    else:
        print(f"rolled back: {entry.model_id} v{entry.version} is served again")
    return 0


def run_build(args: argparse.Namespace) -> int:
    out_dir = args.out or models.cache_dir()
    out = out_dir / models.GAZE_ONNX.name
    # The ONNX files (~13 MB) and the cached copies of their sources (~11 MB).
    check_writable(out_dir, folder=True, need_bytes=32 * 1024 * 1024)
    # Resolve the face model too, so `make setup` fails early and clearly when it is missing.
    task = models.resolve(models.FACE_LANDMARKER)
    print(f"face landmarker: {task}")
    if out_dir == models.cache_dir():
        _keep_in_cache()
    _build_face_onnx(out_dir, task, args.force)
    if out.is_file() and not args.force and models.onnx_is_current(out):
        print(f"gaze model:      {out} (up to date)")
        return 0
    path = models.build_gaze_onnx(out_dir)
    print(f"gaze model:      {path} (built from the OpenVINO IR)")
    return 0


def _keep_in_cache() -> None:
    """Put a checked copy of every downloadable model file found elsewhere ($GAZELOOP_MODELS)
    into the user cache, where every later command looks: after `make setup` (or one
    `GAZELOOP_MODELS=... gazeloop models build` beside a wheel) a plain shell finds them
    without exporting anything, as it would after a download."""
    cache = models.cache_dir()
    for spec in (models.FACE_LANDMARKER, models.GAZE_IR_XML, models.GAZE_IR_BIN):
        src = models.resolve(spec)  # hash-checked wherever it was found
        dst = cache / spec.name
        if src == dst or (dst.is_file() and models.sha256_file(dst) == spec.sha256):
            continue
        make_folder(dst.parent)
        with open(src, "rb") as f_in, atomic_writer(dst) as f_out:
            shutil.copyfileobj(f_in, f_out)
        print(f"cached:          {dst} (from {src})")


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
    task = None
    for spec in (models.FACE_LANDMARKER, models.GAZE_IR_XML, models.GAZE_IR_BIN):
        try:
            path = models.resolve(spec)
            print(f"ok       {spec.name}: {path}")
            task = path if spec is models.FACE_LANDMARKER else task
        except models.ModelFileError as e:
            bad += 1
            print(f"{'CORRUPT' if isinstance(e, models.ModelFileCorrupt) else 'MISSING'}  {e}")
    _check_built(models.GAZE_ONNX, models.onnx_is_current)
    digest = models.sha256_file(task) if task is not None else None
    for spec in (models.FACE_DETECTOR_ONNX, models.FACE_LANDMARKS_ONNX):
        _check_built(spec, lambda p: digest is not None and models.face_onnx_is_current(p, digest))
    return 1 if bad else 0


def _check_built(spec, current) -> None:
    """A built ONNX file is "ok" only when it reads and came from the pinned sources with
    this builder (a truncated or stale one was reported ok, and rebuilt at the next use)."""
    try:
        path = models.resolve(spec)
    except models.ModelFileError:
        print(f"not built {spec.name}: run `gazeloop models build`")
        return
    if current(path):
        print(f"ok       {spec.name}: {path}")
    else:
        print(
            f"stale    {spec.name}: {path} is damaged or from other sources; it is rebuilt "
            "at its next use, or now with `gazeloop models build --force`"
        )
