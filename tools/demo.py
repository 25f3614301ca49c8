"""`gazeloop demo`: the main job on the shared sample data, no camera, no window.

For now: the fast path over the 4-corner webcam recording, a status line per second of video
and a summary. Later issues extend it to the whole loop (calibration, oracle, drift).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fastpath.pipeline import FastPath
from fastpath.sources import open_source
from tools.common import UserError, add_fastpath_args, fastpath_config
from tools.track import _pretty, run_stream


def default_shared() -> Path:
    """`../shared` beside the checkout (the layout of development machines and CI)."""
    env = os.environ.get("GAZELOOP_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run gazeloop on the shared sample data (no camera needed)",
        description="Runs the fast path over ../shared/data/video-corners4/calibrate.mp4 and "
        "prints a live-style line per second of video and a summary.",
    )
    p.add_argument("--video", type=Path, help="video to use instead of the shared sample")
    add_fastpath_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    video = args.video or default_shared() / "data" / "video-corners4" / "calibrate.mp4"
    if not video.is_file():
        raise UserError(
            f"{video}: sample video not found; put the shared data beside the checkout "
            "(../shared) or set GAZELOOP_SHARED"
        )
    print(f"gazeloop demo: fast path over {video}")
    fp = FastPath(fastpath_config(args))
    with open_source(str(video)) as src:
        summary = run_stream(src, fp, frames=None, jsonl=False)
    fp.close()
    print(_pretty(summary))
    return 0
