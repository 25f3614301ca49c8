"""`gazeloop calibrate`: a full-screen target grid → a calibration profile and its session.

Follow the dot with your eyes: it glides to each target of a 9, 16 or 25 point grid, shrinks
while the eye settles, then stays while frames are captured. The profile is fitted on the
captured frames (per-target outliers dropped, hyper-parameters by nested
leave-one-target-out), its leave-one-target-out error is shown with a plot, and the profile
and the session (img_<ms>.jpg + .json pairs, session.json) are saved.

--headless replays a recording instead (a session folder, or a 4-corner recording: its
frames say which target was shown and when the eyes were still settling): the same fit,
evaluation and files, no window. `gazeloop run` calls the same grid on its `c` key.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping import MAPPINGS, min_targets
from gazeloop.calibration.metrics.evaluate import Evaluated, plot_report
from gazeloop.calibration.procedure import (
    LAYOUTS,
    CalibrationRun,
    ProcedureConfig,
    fit_profile_report,
)
from gazeloop.calibration.profile import DEFAULT_FEATURES, Profile, data_dir, profile_path
from gazeloop.calibration.store.atomic import atomic_write_bytes
from gazeloop.calibration.store.session import SessionManifest
from gazeloop.calibration.store.writer import SessionWriter
from gazeloop.fastpath.pipeline import FastPath
from gazeloop.fastpath.types import Frame, GazeSample
from gazeloop.tools.commands._args import add_fastpath_args, fastpath_config
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.labelled import LabelledSource, open_labelled
from gazeloop.tools.runtime.recording import UnixClock
from gazeloop.tools.ui.calibration_grid import DotView, dot_view, render_dot, render_result
from gazeloop.tools.ui.window import ESC, CvDisplay, require_display

WINDOW = "gazeloop calibrate"
# What the fast path's samples offer (GazeSample.feature_dict), embedding features aside.
KNOWN_FEATURES = (
    "gaze_yaw",
    "gaze_pitch",
    "head_yaw",
    "head_pitch",
    "head_roll",
    "iris_lx",
    "iris_ly",
    "iris_rx",
    "iris_ry",
    "aperture_l",
    "aperture_r",
)


def add_grid_args(p: argparse.ArgumentParser) -> None:
    """The grid's options; `gazeloop run` takes them too, for its `c` key."""
    g = p.add_argument_group("calibration grid")
    g.add_argument("--points", type=int, choices=LAYOUTS, default=9, help="targets (default 9)")
    g.add_argument(
        "--settle", type=float, default=0.8, help="seconds per target before capture (0.8)"
    )
    g.add_argument("--capture", type=int, default=30, help="frames captured per target (30)")
    g.add_argument(
        "--capture-timeout",
        type=float,
        default=2.0,
        help="seconds a target may take to capture its frames (2.0)",
    )
    g.add_argument("--ready", type=float, default=2.0, help="seconds before the first target")
    g.add_argument(
        "--min-frames",
        type=int,
        help="usable frames a target needs (default 8, or --capture if smaller; "
        "1 when replaying a recording)",
    )
    g.add_argument("--mapping", default="ridge", choices=sorted(MAPPINGS))
    g.add_argument("--features", default=",".join(DEFAULT_FEATURES))


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="full-screen target grid: fit and save a calibration profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--source",
        default="0",
        help="camera index (default 0); with --headless a session folder or 4-corner recording",
    )
    p.add_argument("--headless", action="store_true", help="replay --source's targets, no window")
    p.add_argument("--user", default="default")
    p.add_argument("--device", default="default")
    p.add_argument("--out", type=Path, help="session folder to write (default: the user's)")
    p.add_argument("--profile", type=Path, help="profile file to write (default: the user's)")
    p.add_argument("--screen-px", type=int, nargs=2, metavar=("W", "H"))
    p.add_argument("--screen-mm", type=float, nargs=2, metavar=("W", "H"))
    p.add_argument(
        "--camera-mm",
        type=float,
        nargs=2,
        metavar=("X", "Y"),
        help="camera position from the screen's top-left corner (y < 0: above the screen)",
    )
    p.add_argument("--distance-mm", type=float, help="viewing distance (errors in degrees)")
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


# --- options -------------------------------------------------------------------------------


def feature_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in KNOWN_FEATURES and not _is_emb(n)]
    if not names or bad:
        raise UserError(
            f"--features: unknown {bad or 'empty list'}; choose from {', '.join(KNOWN_FEATURES)} "
            "or emb_<i>"
        )
    return names


def _is_emb(n: str) -> bool:
    return n.startswith("emb_") and n[4:].isdigit()


def procedure_config(args: argparse.Namespace, *, replay: bool) -> ProcedureConfig:
    for name in ("settle", "capture_timeout", "ready"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v >= 0):
            raise UserError(f"--{name.replace('_', '-')} must be a number of seconds >= 0")
    if args.capture < 1:
        raise UserError("--capture must be at least 1 frame")
    if args.min_frames is not None:
        min_frames = args.min_frames
    else:
        # A recording is what it is (grid9 has one frame per target); a live grid asks for
        # enough frames that one blink cannot make a target.
        min_frames = 1 if replay else min(8, args.capture)
    if min_frames < 1:
        raise UserError("--min-frames must be at least 1")
    return ProcedureConfig(
        n_targets=args.points,
        settle_s=args.settle,
        collect_s=args.capture_timeout,
        frames=args.capture,
        min_frames=min_frames,
        features=tuple(feature_names(args.features)),
        mapping=args.mapping,
    )


def screen_from_args(args, px: tuple[int, int], manifest: SessionManifest | None = None):
    """The screen: pixels as resolved, millimetres and camera from the flags, else from the
    recording's manifest."""
    mm = tuple(args.screen_mm) if getattr(args, "screen_mm", None) else None
    cam = tuple(args.camera_mm) if getattr(args, "camera_mm", None) else None
    if manifest is not None:
        mm = mm or manifest.screen_mm
        cam = cam or manifest.camera_mm
    try:
        return ScreenGeometry(
            px=px, mm=mm, camera_mm=cam, viewing_distance_mm=getattr(args, "distance_mm", None)
        )
    except ValueError as e:
        raise UserError(f"screen: {e}") from None


def default_session_dir(user: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return data_dir() / "users" / user / "sessions" / f"calibration-{stamp}"


def manifest_for(screen: ScreenGeometry, user: str, device: str, source: str) -> SessionManifest:
    return SessionManifest(
        screen_px=screen.px,
        screen_mm=screen.mm,
        camera_mm=None if screen.camera_mm is None else screen.camera_mm[:2],
        mirrored=False,  # every source hands over un-mirrored frames; they are stored so
        user=user,
        device=device,
        source=source,
    )


# --- collecting ----------------------------------------------------------------------------


def _record_extra(target: int, status: str, s: GazeSample, frame: Frame, **more) -> dict:
    extra = {"target": target, "settling": False, "capture": status, "frame_index": frame.index}
    if s.gaze_yp_raw is not None:
        # What this tracker said, for comparison later; not ground truth (the target is).
        extra["fast_gaze_deg"] = [round(math.degrees(float(v)), 3) for v in s.gaze_yp_raw]
    extra.update(more)
    return extra


@dataclass
class GridOutcome:
    run: CalibrationRun
    cancelled: bool = False
    frames: int = 0

    @property
    def source_ended(self) -> bool:
        return not self.cancelled and not self.run.done


def run_grid(
    frames: Iterator[Frame],
    fp: FastPath,
    cfg: ProcedureConfig,
    screen: ScreenGeometry,
    display: CvDisplay | None,
    *,
    writer: SessionWriter | None = None,
    clock: UnixClock | None = None,
    ready_s: float = 2.0,
) -> GridOutcome:
    """The live grid: targets timed by the frames' own clock, one picture per frame. Frames
    captured at a target are written to `writer` (settle frames are not: the eye was moving).
    Esc or q cancels."""
    run = CalibrationRun(cfg)
    out = GridOutcome(run)
    t_start: int | None = None
    for frame in frames:
        out.frames += 1
        if t_start is None:
            t_start = frame.t_ns
        s = fp.process(frame)
        left = ready_s - (frame.t_ns - t_start) / 1e9
        if left > 0:
            view = dot_view(run, frame.t_ns, screen.px, ready_s=left)
        else:
            i, tries = run.index, run.targets[run.index].tries
            status = run.feed(frame.t_ns, s, name=f"frame {frame.index}")
            if writer is not None and status in ("kept", "dropped"):
                label = screen.to_px(run.targets[i].xy)
                extra = _record_extra(i, status, s, frame, attempt=tries + 1)
                writer.write(clock.ms(frame.t_ns), frame.image, tuple(label), extra)
            view = dot_view(run, frame.t_ns, screen.px)
        if display is not None:
            key = display.show(render_dot(view))
            if key in (ESC, ord("q")):
                out.cancelled = True
                break
        if run.done:
            break
    return out


def replay_targets(
    ls: LabelledSource, fp: FastPath, cfg: ProcedureConfig, writer: SessionWriter | None
) -> GridOutcome:
    """A recording's frames with the targets and settling it recorded; no clock of ours."""
    screen_px = ls.screen_px
    targets = np.array(ls.targets_px, dtype=np.float64) / np.array(screen_px, dtype=np.float64)
    run = CalibrationRun(cfg, targets=targets)
    out = GridOutcome(run)
    clock = UnixClock(ls.source)
    fp.reset()
    for frame in ls.source:
        out.frames += 1
        info = ls.target_of(frame)
        if info is None:  # not a frame of the recording's pairs (cannot happen for sessions)
            continue
        s = fp.process(frame)
        status = run.feed_replay(
            frame.t_ns, s, info.target, settling=info.settling, name=frame.name or ""
        )
        if writer is not None and status in ("kept", "dropped"):
            extra = _record_extra(info.target, status, s, frame, replayed_from=frame.name)
            writer.write(clock.ms(frame.t_ns), frame.image, info.label_px, extra)
    run.finish()
    return out


# --- fitting and reporting -----------------------------------------------------------------


@dataclass
class CalibrationResult:
    profile: Profile
    evaluated: Evaluated
    profile_path: Path
    session_dir: Path
    plot_path: Path
    report_path: Path
    frames_written: int

    def lines(self) -> list[str]:
        r = self.evaluated.report
        deg = f", {r.mean_deg:.1f} deg" if r.mean_deg is not None else ""
        return [
            f"leave-one-target-out error: mean {r.mean_px:.0f} px ({r.mean_pct_diag:.1f}% of the "
            f"screen diagonal{deg}), median {r.median_px:.0f} px; constant predictor "
            f"{r.baseline_mean_px:.0f} px",
            f"{r.targets} targets, {r.frames_used} frames; profile saved: {self.profile_path}",
            f"session: {self.session_dir} ({self.frames_written} frames); plot: {self.plot_path}",
        ]


def _target_table(run: CalibrationRun, screen: ScreenGeometry) -> list[dict]:
    rows = []
    for i, t in enumerate(run.targets):
        px = screen.to_px(t.xy)
        rows.append(
            {
                "target": i,
                "xy_px": [round(float(px[0]), 1), round(float(px[1]), 1)],
                "kept": len(t.kept),
                "dropped": dict(t.dropped),
                "tries": t.tries,
                "skipped": i in run.skipped,
            }
        )
    return rows


def _too_few(run: CalibrationRun, screen: ScreenGeometry, need: int) -> str:
    rows = _target_table(run, screen)
    worst = ", ".join(
        f"target {r['target'] + 1}: {r['kept']} kept"
        + (f" ({', '.join(f'{k} x{v}' for k, v in r['dropped'].items())})" if r["dropped"] else "")
        for r in rows
        if r["skipped"] or not r["kept"]
    )
    return (
        f"only {len(run.used())} of {len(run.targets)} targets had at least "
        f"{run.cfg.min_frames} usable frames; the fit needs {need}. {worst}"
    )


def finish(
    run: CalibrationRun,
    fp: FastPath,
    screen: ScreenGeometry,
    *,
    user: str,
    device: str,
    session_dir: Path,
    profile_out: Path,
    frames_written: int,
    extra_report: dict | None = None,
) -> CalibrationResult:
    """Fit, evaluate, save the profile, the plot and a JSON report beside the session."""
    names = list(run.cfg.features)
    need = min_targets(run.cfg.mapping) + 1  # one more than the fit: one is held out
    if len(run.used()) < need:
        raise UserError(_too_few(run, screen, need))
    x, y, groups = run.arrays()
    try:
        prof, ev = fit_profile_report(
            x,
            y,
            groups,
            screen=screen,
            features=names,
            user=user,
            device=device,
            gaze_model_id=fp.gaze.model_id,
            gaze_model_sha256=fp.gaze.sha256,
            mapping=run.cfg.mapping,
            calibration_session=str(session_dir.resolve()),
            frame_names=run.frame_names(),
        )
    except ValueError as e:
        raise UserError(f"calibration fit: {e}") from None
    saved = prof.save(profile_out)
    # The report lives in a subfolder: session readers take every *.json/*.png at the top
    # level for a record.
    report_dir = session_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    plot = report_dir / "calibration.png"
    plot_report(ev, plot, title=f"calibration of {user} on {device}")
    report = {
        "profile": str(saved),
        "session": str(session_dir),
        "evaluation": ev.report.model_dump(mode="json"),
        "targets": _target_table(run, screen),
        **(extra_report or {}),
    }
    report_path = report_dir / "calibration.json"
    atomic_write_bytes(report_path, json.dumps(report, indent=2).encode() + b"\n")
    return CalibrationResult(prof, ev, saved, session_dir, plot, report_path, frames_written)


# --- the grid on screen, shared with `gazeloop run` ----------------------------------------


def calibrate_on_screen(
    frames: Iterator[Frame],
    fp: FastPath,
    cfg: ProcedureConfig,
    screen: ScreenGeometry,
    display: CvDisplay,
    clock: UnixClock,
    *,
    user: str,
    device: str,
    session_dir: Path,
    profile_out: Path,
    source_desc: str,
    ready_s: float,
    program: str = "gazeloop calibrate",
    result_wait_s: float | None = None,
) -> CalibrationResult | None:
    """Full screen, the grid, the fit, the result with its plot; None when cancelled.
    `result_wait_s`: how long the result stays up (None: until a key)."""
    source = f"{program}, on-screen grid ({source_desc})"
    writer = SessionWriter(session_dir, manifest_for(screen, user, device, source))
    display.fullscreen(True)
    display.size_to(*screen.px)
    try:
        out = run_grid(
            frames, fp, cfg, screen, display, writer=writer, clock=clock, ready_s=ready_s
        )
        if out.cancelled or out.source_ended:
            why = "cancelled" if out.cancelled else "the source ended"
            if not writer.discard_if_empty():
                writer.finish(f"calibration {why} after {writer.written} captured frames")
            if out.source_ended:
                raise UserError(
                    f"calibration stopped: {source_desc} ended before the last target "
                    f"({out.run.index} of {len(out.run.targets)} done)"
                )
            return None
        display.show(render_dot(DotView(screen.px, None, 0.0, message="Fitting...")))
        try:
            res = finish(
                out.run,
                fp,
                screen,
                user=user,
                device=device,
                session_dir=session_dir,
                profile_out=profile_out,
                frames_written=writer.written,
            )
        except UserError as e:
            msg = render_dot(DotView(screen.px, None, 0.0, message=str(e)[:90]))
            display.wait_any_key(msg, result_wait_s)
            raise
        writer.finish(f"gazeloop calibrate: {cfg.n_targets}-point grid; " + res.lines()[0])
        plot = cv2.imread(str(res.plot_path))
        lines = [*res.lines()[:1], "any key continues"]
        display.wait_any_key(render_result(screen.px, plot, lines), result_wait_s)
        return res
    finally:
        display.fullscreen(False)


# --- the command ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    replay = args.headless
    cfg = procedure_config(args, replay=replay)
    if not replay:
        require_display("the target grid", "--headless replays a recording without one")
    screen_px = tuple(args.screen_px) if args.screen_px else None
    ls = open_labelled(
        args.source, screen_px=screen_px, mirrored=args.mirrored, with_targets=replay
    )
    with ls:
        if replay and not ls.labelled:
            raise UserError(
                f"--headless replays a recording's targets: {args.source} is a {ls.kind}; give "
                "a session folder or a 4-corner recording (calibrate.mp4 + Calibration.csv)"
            )
        session_dir = args.out or default_session_dir(args.user)
        profile_out = args.profile or profile_path(args.user, args.device)
        fp = FastPath(fastpath_config(args))
        try:
            if replay:
                res = _run_replay(args, ls, fp, cfg, session_dir, profile_out)
            else:
                res = _run_window(args, ls, fp, cfg, session_dir, profile_out)
        finally:
            fp.close()
    if res is None:
        print("calibration cancelled; the profile was not changed")
        return 1
    if args.json:
        print(json.dumps(json.loads(res.report_path.read_text()), indent=2))
    else:
        for line in res.lines():
            print(line)
    return 0


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
        + ", ".join(f"target {i + 1} {len(t.kept)} kept" for i, t in enumerate(out.run.targets))
    )
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
            raise UserError(
                "cannot tell the screen size from the window system; give --screen-px W H"
            )
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
