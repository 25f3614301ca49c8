"""`gazeloop calibrate`: a full-screen target grid → a calibration profile and its session.

Follow the dot with your eyes: it glides to each target of a 9, 16 or 25 point grid, shrinks
while the eye settles, then stays while frames are captured. The profile is fitted on the
captured frames as `gazeloop eval` chooses a mapping (per-target outliers dropped; feature
sets and mapping families compete by nested leave-one-target-out, each choosing its own
hyper-parameters inside), the winner is saved with the leave-one-target-out error of the whole
choice and which candidate it was (printed, and in the profile's fit.chosen), shown with a
plot, beside the session (img_<ms>.jpg + .json pairs, session.json). --mapping or --features
fit that one mapping instead.

With earlier calibrations of the user on this device and screen (their sessions under the
user's folder), the profile of this sitting alone competes with the pool of it and them;
the one with the lower error on this sitting's points, each left out of every sitting, is
saved, and both figures are printed and kept in the profile's fit.history.

--headless replays a recording instead (a session folder, or a 4-corner recording: its
frames say which target was shown and when the eyes were still settling): the same fit,
evaluation and files, no window. `gazeloop run` calls the same grid on its `c` key.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gazeloop.calibration.profile import profile_path
from gazeloop.calibration.store.atomic import check_writable
from gazeloop.calibration.store.writer import SessionWriter
from gazeloop.fastpath.pipeline import FastPath
from gazeloop.tools.commands._args import (
    add_camera_args,
    add_fastpath_args,
    add_grid_args,
    add_model_id_arg,
    add_screen_size_args,
    add_user_args,
    camera_request,
    fastpath_config,
    finite_float,
    positive_float,
    procedure_config,
    run_config,
    screen_from_args,
    serve_users_model,
)
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.calibration import (
    CalibrationResult,
    default_session_dir,
    finish,
    grid_sees,
    manifest_for,
    refused_says_why,
    replay_targets,
)
from gazeloop.tools.runtime.interrupts import terminate_as_interrupt
from gazeloop.tools.runtime.labelled import open_labelled
from gazeloop.tools.runtime.progress import Progress
from gazeloop.tools.runtime.recording import UnixClock
from gazeloop.tools.ui.calibration_grid import calibrate_on_screen
from gazeloop.tools.ui.window import CvDisplay, require_display, screen_size_unknown

WINDOW = "gazeloop calibrate"
# Room for a grid's frames (25 targets x 30 frames of ~60 kB JPEG) and its report.
_SESSION_BYTES = 50 * 1024 * 1024


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="full-screen target grid: fit and save a calibration profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--source",
        help="camera index (default 0); with --headless a session folder or 4-corner "
        "recording (needed)",
    )
    p.add_argument("--headless", action="store_true", help="replay --source's targets, no window")
    add_camera_args(p)
    add_user_args(p)
    add_model_id_arg(p)
    p.add_argument("--out", type=Path, help="session folder to write (default: the user's)")
    p.add_argument("--profile", type=Path, help="profile file to write (default: the user's)")
    add_screen_size_args(p)
    p.add_argument(
        "--camera-mm",
        type=finite_float,
        nargs=2,
        metavar=("X", "Y"),
        help="camera position from the screen's top-left corner (y < 0: above the screen)",
    )
    p.add_argument(
        "--distance-mm", type=positive_float, help="viewing distance (errors in degrees)"
    )
    p.add_argument(
        "--mirrored",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a replayed session without session.json stores selfie views",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_grid_args(p)
    add_fastpath_args(p)
    p.set_defaults(func=run)


# --- the command ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    replay = args.headless
    if args.source is None:
        if replay:  # it tried camera 0 and said the camera would not open
            raise UserError("--headless replays a recording: give --source SESSION_OR_RECORDING")
        args.source = "0"
    camera = camera_request(args)
    cfg = procedure_config(args, replay=replay)
    if not replay:
        require_display("the target grid", "--headless replays a recording without one")
        if not grid_sees(args.source):
            raise UserError(
                f"--source {args.source}: the grid needs a camera index (its frames are labelled "
                "with the dots it shows); --headless replays a recording's own targets"
            )
    screen_px = tuple(args.screen_px) if args.screen_px else None
    ls = open_labelled(
        args.source, screen_px=screen_px, mirrored=args.mirrored, with_targets=replay, **camera
    )
    with ls:
        if ls.kind == "camera":  # the mode granted, before the grid starts
            print(ls.describe(), file=sys.stderr, flush=True)
        if replay and not ls.labelled:
            raise UserError(
                f"--headless replays a recording's targets: {args.source} is a {ls.kind}; give "
                "a session folder or a 4-corner recording (calibrate.mp4 + Calibration.csv)"
            )
        session_dir = args.out or default_session_dir(args.user)
        profile_out = args.profile or profile_path(args.user, args.device)
        # Both outputs before the grid starts: a person should not follow 9 dots for nothing.
        check_writable(session_dir, folder=True, need_bytes=_SESSION_BYTES)
        check_writable(profile_out, folder=False)
        serve_users_model(args)
        before = _stamp(profile_out)
        fp = FastPath(fastpath_config(args))
        try:
            with terminate_as_interrupt():  # a kill as Ctrl-C: the same clean end
                if replay:
                    with Progress(f"calibrate, replaying {args.source}"):
                        res = _run_replay(args, ls, fp, cfg, session_dir, profile_out)
                else:
                    res = _run_window(args, ls, fp, cfg, session_dir, profile_out)
        except KeyboardInterrupt:  # exit 130 with nothing said, the frames left unmentioned
            print(
                f"calibration interrupted; {_said(profile_out, before)}{_kept(session_dir)}",
                file=sys.stderr,  # with --json, stdout is the report alone
            )
            return 130
        finally:
            fp.close()
    if res is None:
        print("calibration cancelled; the profile was not changed")
        return 1
    run_config(args).write(res.report_path.parent)  # beside the report: how it was made
    if args.json:
        print(json.dumps(json.loads(res.report_path.read_text()), indent=2))
    else:
        for line in res.lines():
            print(line)
    return 0


def _stamp(path: Path) -> tuple[int, int] | None:
    """A file's identity and time: a replace changes the first where the second is coarse."""
    try:
        st = path.stat()
    except OSError:  # not there (yet)
        return None
    return (st.st_ino, st.st_mtime_ns)


def _said(profile_out: Path, before: int | None) -> str:
    """Whether an interrupted calibration got as far as saving its profile."""
    if _stamp(profile_out) == before:
        return "the profile was not changed"
    return f"its profile was saved first: {profile_out}"


def _kept(session_dir: Path) -> str:
    """Where the frames an interrupted calibration captured are, if it captured any."""
    return f"; its frames so far are in {session_dir}" if session_dir.is_dir() else ""


def _run_replay(args, ls, fp, cfg, session_dir, profile_out) -> CalibrationResult:
    if ls.screen_px is None:
        raise UserError(
            f"{args.source}: the screen size is unknown (no session.json); give --screen-px W H"
        )
    manifest = ls.session.manifest if ls.session is not None else None
    screen = screen_from_args(args, ls.screen_px, manifest)
    source = f"gazeloop calibrate --headless (replay of {ls.describe()})"
    writer = SessionWriter(session_dir, manifest_for(screen, args.user, args.device, source))
    out = replay_targets(ls, fp, cfg, writer)
    print(
        f"replayed {out.frames} frames of {ls.describe()}: "
        + ", ".join(f"target {i} {t.n_kept} kept" for i, t in enumerate(out.run.targets)),
        file=sys.stderr,  # progress: with --json, stdout is the report alone
    )
    with refused_says_why(writer, source):
        res = finish(
            out.run,
            fp,
            screen,
            user=args.user,
            device=args.device,
            session_dir=session_dir,
            profile_out=profile_out,
            frames_written=writer.written,
            extra_report={"replayed": ls.describe()},
        )
    writer.finish(f"{source}; " + res.lines()[0])
    return res


def _run_window(args, ls, fp, cfg, session_dir, profile_out) -> CalibrationResult | None:
    display = CvDisplay(WINDOW)
    try:
        display.fullscreen(True)
        px = tuple(args.screen_px) if args.screen_px else display.screen_px()
        if px is None:
            raise UserError(screen_size_unknown())
        screen = screen_from_args(args, px)
        return calibrate_on_screen(
            iter(ls.source),
            fp,
            cfg,
            screen,
            display,
            UnixClock(ls.source),
            user=args.user,
            device=args.device,
            session_dir=session_dir,
            profile_out=profile_out,
            source_desc=ls.describe(),
            ready_s=args.ready,
        )
    finally:
        display.close()
