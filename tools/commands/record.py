"""`gazeloop record`: write a session (img_<ms>.jpg + .json pairs and session.json) from any
source — a camera, a video, a session folder, a 4-corner recording — at a target rate.

Every record of the seed format carries a screen label, so each frame needs one:
`--label targets` takes the recording's own targets (the default when the source has them),
`--label cursor` the mouse pointer the person looks at (needs pynput), `--point X Y` a
fixed point (e.g. the screen's centre). Frames are stored un-mirrored (`"mirrored":
false`); the manifest goes first and every file is written atomically, so a recording cut
short is still a valid session of what was written.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from gazeloop.calibration.store.atomic import WriteError, check_writable
from gazeloop.calibration.store.session import SessionManifest
from gazeloop.calibration.store.writer import SessionWriter
from gazeloop.fastpath.sources import CameraSource
from gazeloop.fastpath.types import Frame
from gazeloop.tools.commands._args import (
    add_camera_args,
    camera_request,
    finite_float,
    positive_float,
    positive_int,
)
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.interrupts import terminate_as_interrupt
from gazeloop.tools.runtime.labelled import LabelledSource, open_labelled
from gazeloop.tools.runtime.recording import RateGate, UnixClock

Labeler = Callable[[Frame], tuple[tuple[float, float] | None, dict]]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "record",
        help="record a session (seed format + session.json) from any source",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, help="session folder to write (new or empty)")
    p.add_argument("--source", default="0", help="camera index (default 0), video or session")
    add_camera_args(p)
    p.add_argument(
        "--fps",
        type=positive_float,
        help="target rate in frames per second of source time (default: every frame)",
    )
    p.add_argument("--seconds", type=positive_float, help="stop after this much source time")
    p.add_argument("--frames", type=positive_int, help="stop after writing this many frames")
    p.add_argument(
        "--label",
        choices=["auto", "targets", "cursor", "point"],
        default="auto",
        help="where each frame's screen label comes from (auto: the source's targets)",
    )
    p.add_argument(
        "--point",
        type=finite_float,
        nargs=2,
        metavar=("X", "Y"),
        help="label every frame with this point",
    )
    p.add_argument(
        "--screen-px",
        type=positive_int,
        nargs=2,
        metavar=("W", "H"),
        help="the screen the labels are pixels of, on macOS points (default: the source's)",
    )
    p.add_argument(
        "--screen-mm", type=positive_float, nargs=2, metavar=("W", "H"), help="screen size, mm"
    )
    p.add_argument(
        "--camera-mm",
        type=finite_float,
        nargs=2,
        metavar=("X", "Y"),
        help="the camera from the screen's top-left corner in mm, x right, y down (above: y < 0)",
    )
    p.add_argument(
        "--mirrored",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a source session without session.json stores selfie views",
    )
    p.add_argument("--user", help="whose session (in session.json)")
    p.add_argument("--device", help="which machine (in session.json)")
    p.add_argument("--notes", help="free text kept in session.json")
    p.set_defaults(func=run)


def _positive(name: str, v: float | None) -> None:
    if v is not None and not v > 0:
        raise UserError(f"--{name} must be positive, got {v}")


def _screen(args, ls: LabelledSource, given: tuple[int, int] | None) -> tuple[int, int] | None:
    """The screen the labels are pixels of: the source's for its own targets (a different
    --screen-px is refused: it was silently ignored), else --screen-px, else the source's;
    never the source's for the mouse pointer, which is on this desktop's screen (a recording
    made on a 2560x1440 screen labelled with a 1280x720 pointer wrote the wrong size)."""
    own = tuple(ls.screen_px) if ls.screen_px else None
    if args.label == "cursor" and given is None:
        raise UserError(
            "--label cursor: give --screen-px W H, the size of the screen the mouse pointer "
            "is on" + (f" ({args.source} was recorded on {own[0]}x{own[1]})" if own else "")
        )
    targets = args.label == "targets" or (args.label == "auto" and args.point is None)
    if targets and own and given and own != given:
        raise UserError(
            f"--screen-px {given[0]}x{given[1]}: {args.source} recorded its targets on a "
            f"{own[0]}x{own[1]} screen, in whose pixels its labels are; leave --screen-px out, "
            "or label with --point or --label cursor"
        )
    return given or own


def _labeler(args, ls: LabelledSource, screen_px: tuple[int, int]) -> tuple[str, Labeler]:
    mode = _label_mode(args, ls)
    if mode == "targets":
        return _from_targets(args, ls)
    if mode == "point":
        return _at_point(args, screen_px)
    return _from_cursor(screen_px)


def _label_mode(args, ls: LabelledSource) -> str:
    """--label as asked, `auto` decided: the fixed point when one is given, else the
    source's targets; a source without targets cannot label itself, and that is said."""
    mode = args.label
    if args.point is not None and mode in ("targets", "cursor"):
        raise UserError(f"--point and --label {mode} contradict each other")
    if mode == "auto" and args.point is not None:
        mode = "point"
    elif mode == "auto":
        if not ls.labelled:
            raise UserError(
                f"{args.source} ({ls.kind}) has no targets, and every session record needs a "
                "screen label: give --label cursor (the person looks at the mouse pointer) or "
                "--point X Y (a fixed point they look at)"
            )
        mode = "targets"
    return mode


def _from_targets(args, ls: LabelledSource) -> tuple[str, Labeler]:
    """Each frame labelled with the recording's target on screen when it was taken (none
    between targets), and whether the eyes were still settling on it."""
    if not ls.labelled:
        raise UserError(f"--label targets: {args.source} ({ls.kind}) has no recorded targets")

    def from_targets(frame: Frame):
        info = ls.target_of(frame)
        if info is None:
            return None, {}
        return info.label_px, {
            "label_source": "targets",
            "target": info.target,
            "settling": info.settling,
            "source_frame": frame.name,
        }

    return "the recorded targets", from_targets


def _at_point(args, screen_px: tuple[int, int]) -> tuple[str, Labeler]:
    """Every frame labelled with --point, which must be on the screen."""
    if args.point is None:
        raise UserError("--label point needs --point X Y (screen pixels)")
    x, y = args.point
    if not (0 <= x <= screen_px[0] and 0 <= y <= screen_px[1]):
        w, h = screen_px
        raise UserError(f"--point ({x:g}, {y:g}) is off the {w}x{h} screen")
    return f"the fixed point ({x:g}, {y:g})", lambda f: ((x, y), {"label_source": "point"})


def _from_cursor(screen_px: tuple[int, int]) -> tuple[str, Labeler]:
    """Each frame labelled with the mouse pointer's position when it is written (pynput);
    a pointer off this screen labels nothing."""
    try:
        from pynput.mouse import Controller
    except ImportError as e:
        from gazeloop.tools.runtime.permissions import no_pointer

        raise UserError(no_pointer("--label cursor", e)) from None
    mouse = Controller()

    def from_cursor(frame: Frame):
        cx, cy = (float(v) for v in mouse.position)
        if not (0 <= cx <= screen_px[0] and 0 <= cy <= screen_px[1]):
            return None, {}  # on another monitor: no label on this screen
        return (cx, cy), {"label_source": "cursor"}

    return "the mouse pointer", from_cursor


def run(args: argparse.Namespace) -> int:
    for name in ("fps", "seconds"):
        _positive(name, getattr(args, name))
    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames must be at least 1, got {args.frames}")
    gate = RateGate(args.fps)
    camera = camera_request(args)
    check_writable(args.out, folder=True)  # before a camera opens or a source is read
    given_px = tuple(args.screen_px) if args.screen_px else None
    ls = open_labelled(args.source, screen_px=given_px, mirrored=args.mirrored, **camera)
    with ls:
        screen_px = _screen(args, ls, given_px)
        if screen_px is None:
            raise UserError(
                f"the screen size is unknown ({args.source} has no session.json): give "
                "--screen-px W H, the screen the labels are pixels of"
            )
        _check_mirroring_known(args, ls)
        described, label_of = _labeler(args, ls, screen_px)
        writer = SessionWriter(args.out, _manifest(args, ls, screen_px))
        clock = UnixClock(ls.source)
        print(f"recording {ls.describe()} to {args.out}; labels: {described}", flush=True)
        try:
            with terminate_as_interrupt():  # a kill ends it as Ctrl-C does: a whole session
                stats = _record(args, ls, writer, gate, clock, label_of)
        except WriteError as e:
            raise UserError(_kept(e, writer)) from None
        notes = _notes(args, ls, writer, described, stats)
        if writer.discard_if_empty():
            print(f"gazeloop record: no frame recorded ({stats['stopped']}); nothing written")
            return 1
        writer.finish(notes)
    span = 0.0 if writer.first_ms is None else (writer.last_ms - writer.first_ms) / 1e3
    rate = (writer.written - 1) / span if span > 0 else 0.0
    print(
        f"gazeloop record: {writer.written} frames over {span:.1f} s ({rate:.1f} fps) in "
        f"{args.out}; {stats['stopped']}"
    )
    if stats["camera_failed"]:  # a whole session of what came before, but not what was asked
        print(f"gazeloop record: failed: {stats['stopped']}; the frames before it are kept")
        return 1
    return 0 if writer.written else 1


def _check_mirroring_known(args, ls: LabelledSource) -> None:
    """A source session that does not say whether its frames are selfie views (no
    session.json, no --mirrored) was copied as it is and marked un-mirrored: grid9 recorded
    so read at 107 px against 79 (`eval`), its gaze on the wrong side of the screen."""
    if ls.session is not None and not ls.session.mirrored_stated:
        raise UserError(
            f"{args.source} has no session.json to say whether its frames are selfie views; "
            "give --mirrored (they are: stored flipped back) or --no-mirrored"
        )


def _manifest(args, ls: LabelledSource, screen_px: tuple[int, int]) -> SessionManifest:
    """The new session's manifest: the flags' words, else the source session's; its frames
    are stored un-mirrored, whatever the source's were. The source's millimetres only for
    the source's own screen: beside another --screen-px they were another screen's."""
    src_manifest = ls.session.manifest if ls.session is not None else None
    same_screen = tuple(_get(src_manifest, "screen_px") or ()) == tuple(screen_px)
    mm = src_manifest if same_screen else None
    return SessionManifest(
        screen_px=screen_px,
        screen_mm=tuple(args.screen_mm) if args.screen_mm else _get(mm, "screen_mm"),
        camera_mm=tuple(args.camera_mm) if args.camera_mm else _get(mm, "camera_mm"),
        mirrored=False,
        user=args.user or _get(src_manifest, "user"),
        device=args.device or _get(src_manifest, "device"),
        notes=args.notes,
        source=f"gazeloop record from {ls.describe()}",
    )


def _notes(args, ls: LabelledSource, writer: SessionWriter, described: str, stats: dict) -> str:
    """The finished session's notes: the user's --notes, then how it was recorded and why
    it stopped, so a session says where it came from."""
    notes = [args.notes] if args.notes else []
    notes.append(
        f"{writer.written} frames at {args.fps or 'the source'} fps from {ls.describe()}; "
        f"labels: {described}; {stats['stopped']}"
    )
    if stats["unlabelled"]:
        notes.append(f"{stats['unlabelled']} frames skipped without a label on this screen")
    return "\n".join(notes)


def _kept(e: WriteError, writer: SessionWriter) -> str:
    """A write that failed mid-recording, and what is still there: every pair written
    before it is complete (atomic writes, the image before its record)."""
    if writer.discard_if_empty():
        return f"{e}; nothing recorded"
    return f"{e}; the {writer.written} frames written before it are a valid session"


def _get(manifest, name: str):
    return None if manifest is None else getattr(manifest, name)


def _record(args, ls, writer: SessionWriter, gate, clock, label_of: Labeler) -> dict:
    t0 = None
    unlabelled = 0
    stopped = "the source ended"
    last_print = None
    try:
        for frame in ls.source:
            if t0 is None:
                t0 = last_print = frame.t_ns
            if args.seconds is not None and frame.t_ns - t0 >= args.seconds * 1e9:
                stopped = f"--seconds {args.seconds:g} reached"
                break
            if not gate.keep(frame.t_ns):
                continue
            label, extra = label_of(frame)
            if label is None:
                unlabelled += 1
                continue
            extra = {**extra, "frame_index": frame.index, "source_time_ms": frame.t_ns / 1e6}
            writer.write(clock.ms(frame.t_ns), frame.image, label, extra)
            if args.frames is not None and writer.written >= args.frames:
                stopped = f"--frames {args.frames} reached"
                break
            if frame.t_ns - last_print >= 1_000_000_000:
                last_print = frame.t_ns
                print(f"  {writer.written} frames, {(frame.t_ns - t0) / 1e9:.1f} s", flush=True)
    except KeyboardInterrupt:
        stopped = "interrupted"
    failed = isinstance(ls.source, CameraSource) and bool(ls.source.error)
    if failed:
        stopped = ls.source.error  # it names the camera
    return {"stopped": stopped, "unlabelled": unlabelled, "camera_failed": failed}
