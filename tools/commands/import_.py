"""`gazeloop import ...`: turn other recordings into session folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from gazeloop.calibration.store.atomic import MIN_FREE_BYTES, check_writable
from gazeloop.tools.commands._args import non_negative_int
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.importers import (
    DEFAULT_SETTLE_FRAMES,
    SessionImportError,
    import_corners4,
)
from gazeloop.tools.runtime.progress import Progress


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="convert other recordings into session folders")
    isub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    c = isub.add_parser(
        "corners4",
        help="a 4-corner webcam recording (video + Calibration.csv + stats.txt)",
        description="Writes a session folder in the seed format (img_<ms>.jpg + .json, labels "
        "in screen pixels) with a session.json manifest. Frames recorded while the eyes "
        'were still moving to a new target are kept and marked "settling": true.',
    )
    c.add_argument("src", type=Path, help="folder with calibrate.mp4, Calibration.csv, stats.txt")
    c.add_argument("out", type=Path, help="session folder to write")
    c.add_argument(
        "--settle-frames",
        type=non_negative_int,
        help=f"frames marked settling after each target switch ({DEFAULT_SETTLE_FRAMES})",
    )
    c.add_argument("--overwrite", action="store_true", help="replace an existing session")
    c.set_defaults(func=run_corners4)


def run_corners4(args: argparse.Namespace) -> int:
    # About the video's size again in JPEGs: a disk without it is refused before decoding.
    video = args.src / "calibrate.mp4"
    need = 2 * video.stat().st_size if video.is_file() else MIN_FREE_BYTES
    check_writable(args.out, folder=True, need_bytes=max(need, MIN_FREE_BYTES))
    try:
        with Progress(f"import, decoding {args.src}"):
            rep = import_corners4(
                args.src, args.out, settle_frames=args.settle_frames, overwrite=args.overwrite
            )
    except SessionImportError as e:
        raise UserError(str(e)) from None
    print(
        f"wrote {rep.n_records} frames to {rep.out_dir}: {len(rep.frames_per_target)} targets "
        f"({rep.n_settling} frames marked settling), timestamps from {rep.timestamps_from}"
    )
    for note in rep.notes:
        print(f"  note: {note}")
    return 0
