"""`gazeloop head-shift SESSION`: does a mapping follow a moved head?

The session's frames are re-rendered as if the head had moved (the image translated, or
scaled about its centre: `calibration.metrics.head_shift` says why these are exact head
moves with an unchanged gaze direction), run through the fast path again, and every
candidate mapping fitted on the original frames predicts both. A mapping that models where
the eyes are should move its prediction as the geometry demands; a ridge on gaze angles
cannot know the head moved. Reported per move and candidate: the expected and predicted mean
displacement in screen px, the fraction followed and the miss as a fraction of the shift.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from gazeloop.calibration.frames import LabelledFrames, Reads, rows_of
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping.candidates import choose, columns_for, default_candidates
from gazeloop.calibration.metrics.evaluate import MIN_SELECTION_TARGETS, geometric_options
from gazeloop.calibration.metrics.head_shift import expected_shift_mm, follow_stats
from gazeloop.calibration.store.atomic import write_plot
from gazeloop.calibration.store.session import read_session
from gazeloop.fastpath.collect import LazyFastPath
from gazeloop.fastpath.sources import SessionSource
from gazeloop.tools.commands._args import (
    add_fastpath_args,
    check_plot_path,
    fastpath_config,
    positive_float,
    resolved_settings,
)
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.head_shift_plot import plot_head_shift
from gazeloop.tools.runtime.selection import session_views

# Moves as fractions of the image (shift) or factors (scale): a head sliding a hand's width
# sideways, a little up/down, and leaning in or back by about a seventh of the distance.
MOVES = {
    "right": {"du": 0.08},
    "down": {"dv": 0.08},
    "closer": {"scale": 1.15},
    "farther": {"scale": 0.87},
}
# Without a known screen size, the geometric mapping's own laptop prior (mm).
DEFAULT_SCREEN_MM = (300.0, 190.0)
CAMERA_ABOVE_MM = 5.0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "head-shift",
        help="re-render a session as if the head moved; how far each mapping follows",
        description="Translates and scales each frame (a head moved sideways, down, closer, "
        "farther), reruns the fast path, and compares every candidate mapping's change of "
        "prediction with where the gaze point must go.",
    )
    p.add_argument("session", type=str, help="session folder")
    p.add_argument(
        "--screen-mm",
        type=positive_float,
        nargs=2,
        metavar=("W", "H"),
        help="the screen's size in mm (default: the manifest's, else a laptop's): where the "
        "gaze point must go is worked out in mm",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="a picture: per move, where the gaze point must go and where each mapping put it",
    )
    add_fastpath_args(p)
    p.set_defaults(func=run)


def render(image: np.ndarray, *, du: float = 0.0, dv: float = 0.0, scale: float = 1.0):
    """The image scaled by `scale` about its centre, then moved by (du, dv) × its size."""
    h, w = image.shape[:2]
    cx, cy = w / 2, h / 2
    m = np.array(
        [[scale, 0, (1 - scale) * cx + du * w], [0, scale, (1 - scale) * cy + dv * h]],
        dtype=np.float64,
    )
    return cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


def _shifted_features(session, fp, names, move) -> tuple[dict[str, dict], tuple[int, int]]:
    """Features of each re-rendered frame by name (frames that lost their gaze left out)."""
    out, size = {}, (0, 0)
    live = fp.get()
    with SessionSource(session, unmirror=session.mirrored) as src:
        for frame in src:
            if frame.name not in names:
                continue
            size = frame.image.shape[1], frame.image.shape[0]
            live.reset()  # stills: fresh landmarks on every frame
            frame.image = render(frame.image, **move)
            d = live.process(frame).feature_dict()
            if d:
                out[frame.name] = d
    return out, size


def run(args: argparse.Namespace) -> int:
    if args.plot is not None:
        check_plot_path(args.plot)
    session = read_session(args.session)
    fp = LazyFastPath(fastpath_config(args))
    try:
        report = check(session, fp, args)
    finally:
        fp.close()
    report["settings"] = resolved_settings(args)
    print(json.dumps(report, indent=2) if args.json else _text(report), flush=True)
    if args.plot is not None:  # after the report: a failed picture loses no results
        write_plot(lambda f: plot_head_shift(report, f), args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _text(report: dict) -> str:
    lines = [f"{report['session']}: {report['targets']} targets, {report['frames']} frames"]
    for mv, per in report["moves"].items():
        lines.append(f"  head {mv}: expected {per['expected_px']} px")
        for c, st in per["by_candidate"].items():
            mark = " (chosen)" if c == report["chosen"] else ""
            frac = (
                f", followed {st['followed']:.2f}, miss {st['miss_fraction']:.2f} of the shift"
                if st["followed"] is not None
                else ""
            )
            lines.append(
                f"    {c:28s} moved {st['predicted_px']} px: miss {st['miss_px']} px{frac}{mark}"
            )
    return "\n".join(lines)


def check(session, fp: LazyFastPath, args) -> dict:
    v = session_views(session, fp, both_reads=False)
    frames = v.frames
    _enough_targets(session, frames)
    px = session.screen_px
    geo = ScreenGeometry(px=px) if px else ScreenGeometry.from_targets(frames.labels_px)
    mm = _screen_mm(args, session)
    mm_per_px = np.array(mm, dtype=np.float64) / np.array(geo.px, dtype=np.float64)
    screen = ScreenGeometry(px=geo.px, mm=mm)
    options = {"geometric": geometric_options(screen)}
    ch = choose(default_candidates(), v.reads, geo, options=options)
    eye = _eyes(session, frames)
    camera = np.array([mm[0] / 2, -CAMERA_ABOVE_MM])  # centred above the top edge
    target_mm = frames.labels_px * mm_per_px - camera
    names = frames.names.tolist()
    moves = {}
    for mv, spec in MOVES.items():
        feats, (w, h) = _shifted_features(session, fp, set(names), spec)
        rows = [i for i, n in enumerate(names) if n in feats]
        focal = fp.cfg.focal_px or w  # as the fast path assumes without a camera
        exp_px = _expected_mm(spec, eye[rows], target_mm[rows], focal, (w, h)) / mm_per_px
        moves[mv] = {
            "frames": len(rows),
            "expected_px": follow_stats(exp_px, exp_px)["expected_px"],
            "by_candidate": _followed(ch, v.reads, feats, rows, geo, exp_px),
        }
    return {
        "session": str(session.folder),
        "targets": frames.n_targets,
        "frames": len(names),
        "screen_mm": list(mm),
        "chosen": ch.candidate.label,
        "moves": moves,
    }


def _enough_targets(session, frames: LabelledFrames) -> None:
    """Refuses a session with too few targets to choose a mapping by."""
    n = frames.n_targets
    if n < MIN_SELECTION_TARGETS:
        # As `gazeloop eval`: with fewer, nested selection has no target to judge by, and
        # the numbers would crown a mapping fitted on as many points as it has parameters.
        raise UserError(
            f"{session.folder}: {n} usable targets; choosing the mapping by leave-one-target-"
            f"out needs at least {MIN_SELECTION_TARGETS}"
        )


def _screen_mm(args, session) -> tuple[float, float]:
    """The screen's size in mm: the flag's, else the manifest's, else a laptop's (the
    expected shift is in mm, so some size is needed)."""
    return (
        tuple(args.screen_mm)
        if args.screen_mm
        else ((session.manifest.screen_mm if session.manifest else None) or DEFAULT_SCREEN_MM)
    )


def _eyes(session, frames: LabelledFrames) -> np.ndarray:
    """Where the eyes are (mm, camera frame) in each frame: the geometry of a head move
    starts from them, so a fast path that gives none ends the check."""
    try:
        return frames.matrix(("eye_x_mm", "eye_y_mm", "eye_z_mm"))
    except KeyError:
        raise UserError(f"{session.folder}: the fast path gave no eye positions") from None


def _expected_mm(spec: dict, eye, target_mm, focal: float, size: tuple[int, int]):
    """Where each gaze point must move on the screen (mm) when the head makes the move
    `spec` (fractions of the image, turned into pixels of a `size` frame here)."""
    w, h = size
    move_px = {
        "du": spec.get("du", 0.0) * w,
        "dv": spec.get("dv", 0.0) * h,
        "scale": spec.get("scale", 1.0),
    }
    return expected_shift_mm(eye, target_mm, focal, **move_px)


def _followed(ch, reads: Reads, feats: dict[str, dict], rows: list[int], geo, exp_px) -> dict:
    """Per candidate: how far its prediction moved (screen px) from the original frames to
    the re-rendered ones, against where it should have gone (`exp_px`)."""
    names = rows_of(reads).names
    per = {}
    for label, (cand, mapping) in (ch.fitted or {}).items():
        x0 = columns_for(reads, cand)[rows]
        x1 = np.array([[feats[names[i]][f] for f in cand.features] for i in rows])
        shift = (mapping.predict(x1) - mapping.predict(x0)) * np.array(geo.px)
        per[label] = follow_stats(shift, exp_px)
    return per
