"""`gazeloop demo`: the whole hybrid loop on the shared sample data, no camera, no window.

1. Import the 4-corner webcam recording (../shared/data/video-corners4) as a session.
2. Calibrate: fit a profile on its settled frames (leave-one-target-out error reported).
3. Replay the recording as a live stream, several passes, with a drift injected from the
   second pass on (as if the person had moved), through the real fast path, history,
   snapshot policy, oracle worker, drift loop and label store.
   The oracle is the recording's own target labels, replayed — said plainly: a replay of
   ground truth stands in for Moondream, whose weights are not on this machine.
4. Print a live-style line per second of stream time and a summary; write a report (HTML
   with plots) into the output folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.store.atomic import atomic_write_bytes, check_writable, make_folder
from gazeloop.calibration.store.session import read_session
from gazeloop.fastpath.pipeline import FastPath
from gazeloop.tools.commands._args import (
    add_fastpath_args,
    labelling_config,
    non_negative_float,
    positive_float,
    positive_int,
)
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime import demo
from gazeloop.tools.runtime.importers import import_corners4
from gazeloop.tools.runtime.run_config import CONFIG_FILE
from gazeloop.tools.runtime.sample_data import default_shared
from gazeloop.tools.ui import report

# The imported recording (74 frames of JPEG), two plots and the report, with room to spare.
_DEMO_BYTES = 16 * 1024 * 1024


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole loop on the shared sample data (no camera, no window)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="report folder (demo-out)")
    p.add_argument(
        "--passes",
        type=_two_or_more,
        default=8,
        help="replays of the recording (8); the drift starts with the second",
    )
    p.add_argument(
        "--drift-px",
        type=non_negative_float,
        default=150.0,
        help="injected drift, screen px (150)",
    )
    p.add_argument(
        "--snapshot-every",
        type=positive_float,
        help="seconds between labels (default: the config's policy.min_interval_s, else 1.0)",
    )
    p.add_argument(
        "--data",
        type=Path,
        help="the shared data folder (../shared) or its 4-corner recording folder "
        "(data/video-corners4)",
    )
    add_fastpath_args(p)
    p.set_defaults(func=run)


def _recording(data: Path | None) -> Path:
    """The 4-corner recording's folder: `--data` names it or the shared folder it is in."""
    if data is None:
        src = default_shared() / "data" / "video-corners4"
        if not (src / "calibrate.mp4").is_file():
            raise UserError(
                f"{src}: the sample recording is not there; put the shared data beside the "
                "checkout (../shared), set GAZELOOP_SHARED, or give --data"
            )
        return src
    for src in (data, data / "data" / "video-corners4"):
        if (src / "calibrate.mp4").is_file():
            return src
    raise UserError(
        f"--data {data}: neither the shared data folder nor its 4-corner recording "
        "(no calibrate.mp4 in it or in data/video-corners4)"
    )


def _two_or_more(text: str) -> int:
    """--passes: one pass would report a drift it never injected (it starts with the
    second) and an 'error just after' it."""
    n = positive_int(text)
    if n < 2:
        raise argparse.ArgumentTypeError(
            f"must be 2 or more (the drift starts with the second pass), got {text!r}"
        )
    return n


def _replace_earlier_labels(labels: Path) -> None:
    """An earlier demo's label store goes: its labels kept their snapshot ids, so a second
    demo's were dropped as already stored, and its summary named a store holding the first
    run. A store with any run that is not a demo's is never touched."""
    if not labels.exists():
        return
    from gazeloop.calibration.store.labelstore import LabelStore, LabelStoreError

    try:
        with LabelStore(labels, readonly=True) as store:
            commands = {r.settings.get("command") for r in store.runs()}
            unknown = not commands and store.count() > 0  # from before runs were recorded
    except LabelStoreError as e:
        raise UserError(f"{labels}: not an earlier demo's label store ({e})") from None
    if commands - {"demo"} or unknown:
        raise UserError(f"{labels}: holds labels of other runs than a demo's; give a new --out")
    shutil.rmtree(labels)


def _check_out(out: Path) -> None:
    """A folder is written into only when new, empty or an earlier demo's: the demo replaces
    `session/` and `profile.json` there, and replaced a user's own without a word."""
    earlier = any((out / name).is_file() for name in ("summary.json", CONFIG_FILE))
    if out.is_dir() and any(out.iterdir()) and not earlier:
        raise UserError(
            f"--out {out}: a folder with other files in it, where the demo would replace "
            "session/ and profile.json; give a new or empty folder, or an earlier demo's"
        )


def run(args: argparse.Namespace) -> int:
    src = _recording(args.data)
    # A label every second unless the config file or the flag says otherwise (the demo
    # replays 12 s of video; `gazeloop run` waits 5 s); a bad --config is said here, before
    # the folder is made.
    cfg = labelling_config(args, default_interval_s=1.0)
    out = args.out
    _check_out(out)
    check_writable(out, folder=True, need_bytes=_DEMO_BYTES)
    _replace_earlier_labels(out / "labels")
    make_folder(out)
    session_dir = out / "session"
    print(f"gazeloop demo → {out}/")
    rep = import_corners4(src, session_dir, overwrite=True)
    print(
        f"1. imported {rep.n_records} frames of {src.name} ({len(rep.frames_per_target)} targets)"
    )

    cfg.write(out)  # the settings this folder was made with, beside what they made
    fp = FastPath(cfg.fastpath)
    session = read_session(session_dir)
    screen = ScreenGeometry(px=session.manifest.screen_px, mm=session.manifest.screen_mm)
    ev, prof = demo.calibrate(session, fp, screen, out)
    print(
        f"2. calibrated on {ev.report.targets} targets: leave-one-target-out mean "
        f"{ev.report.mean_px:.0f} px (constant predictor {ev.report.baseline_mean_px:.0f} px)"
    )

    onset = demo.drift_onset_ns(session)
    drift = np.array([args.drift_px / screen.px[0], 0.0])
    store, store_note = demo.open_label_store(out)
    live = demo.demo_live(fp, prof, session, screen, drift, onset, cfg=cfg, store=store)
    print(
        f"3. replaying {args.passes} passes, drift of {args.drift_px:.0f} px from t="
        f"{(onset - session.items[0].t_ms * 1_000_000) / 1e9:.1f} s; oracle: the recording's "
        "own target labels (ground truth replayed, not a model); the errors below are "
        "in-sample: the profile was fitted on these frames"
    )
    trace = demo.replay(
        live, session, screen, args.passes, onset, on_status=lambda line: print(line, flush=True)
    )
    live.close()
    summary = demo.summarise(trace, ev, args.drift_px, live, store_note)
    demo.plot_trace(trace, drift * screen.px[0], out, summary)
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    _html(out, summary, ev)
    print("4. summary:")
    for k, v in summary.items():
        print(f"   {k:28s} {v}")
    print(f"   report: {out / 'report.html'}")
    return 0


def _html(out: Path, summary: dict, ev) -> None:
    report.write(
        out / "report.html",
        report.page(
            "gazeloop demo",
            "The 4-corner webcam recording, calibrated, then replayed as a live stream with a "
            "drift injected; the oracle replays the recording's own target labels (ground "
            "truth, not a model). The errors are in-sample: the profile was fitted on the "
            "frames it replays (its leave-one-target-out error is calibration_loto_mean_px).",
            [
                (None, report.key_values(summary)),
                ("Drift correction", report.image("loop.png", "error and loop offset over time")),
                (
                    "Calibration (leave-one-target-out)",
                    report.image("calibration.png", "calibration"),
                ),
                ("Calibration per target", report.per_target_table(ev.report)),
            ],
        ),
    )
