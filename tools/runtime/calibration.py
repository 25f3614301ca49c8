"""Calibration without a window: a recording's targets replayed, the fit, its files.

What `gazeloop calibrate` does after (or instead of) the on-screen grid
(`tools.ui.calibration_grid`): the captured frames of a `CalibrationRun` become a profile,
evaluated leave-one-target-out, saved with a plot and a JSON report beside the session the
frames were written to. `--headless` replays a recording (a session folder, or a 4-corner
recording: its frames say which target was shown and when the eyes were still settling)
through the same run, so the same fit and files come out of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping import min_targets
from gazeloop.calibration.metrics.evaluate import MIN_SELECTION_TARGETS, Evaluated, plot_report
from gazeloop.calibration.procedure import (
    CalibrationRun,
    ProcedureConfig,
    fit_profile_report,
    fit_profile_selected,
)
from gazeloop.calibration.profile import Profile, user_dir
from gazeloop.calibration.store.atomic import atomic_write_bytes, write_plot
from gazeloop.calibration.store.session import SessionManifest
from gazeloop.calibration.store.writer import SessionWriter
from gazeloop.fastpath.collect import LazyFastPath
from gazeloop.fastpath.pipeline import FastPath
from gazeloop.fastpath.sources import is_camera
from gazeloop.fastpath.types import Frame, GazeSample
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime import sittings_profile
from gazeloop.tools.runtime.labelled import LabelledSource
from gazeloop.tools.runtime.made_by import made_by
from gazeloop.tools.runtime.recording import UnixClock


def grid_sees(source) -> bool:
    """Whether the on-screen grid may take frames from `source`: it labels each frame with
    the dot it shows, which only a live camera's frames saw (a recording's were taken looking
    elsewhere, and a profile fitted on them would be saved as if they had). One rule for both
    ways into the grid, `calibrate` and `run`'s c key."""
    return is_camera(source)


def default_session_dir(user: str, kind: str = "calibration") -> Path:
    """A new session folder of the user's, named by its kind and the time."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return user_dir(user) / "sessions" / f"{kind}-{stamp}"


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


def record_extra(target: int, status: str, s: GazeSample, frame: Frame, **more) -> dict:
    """What a captured frame's record carries besides its label."""
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
            extra = record_extra(info.target, status, s, frame, replayed_from=frame.name)
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
        c, h = self.profile.fit.chosen, self.profile.fit.history
        pooled = h is not None and h.chosen == "pooled"
        if c is None:
            chose = f"mapping: {r.mapping} on {', '.join(r.features)} (fixed)"
        else:
            hyper = ", ".join(f"{k} {v:.4g}" for k, v in c.hyper.items())
            chose = (
                f"mapping chosen by nested selection{' on the pool' * pooled}: {c.label} "
                f"({c.mapping} on {', '.join(c.features)}{'; ' + hyper if hyper else ''})"
            )
        lines = [
            f"{'this sitting alone, ' * pooled}leave-one-target-out error: mean "
            f"{r.mean_px:.0f} px ({r.mean_pct_diag:.1f}% of the screen diagonal{deg}), median "
            f"{r.median_px:.0f} px; constant predictor {r.baseline_mean_px:.0f} px",
            chose,
            f"{r.targets} targets, {r.frames_used} frames; profile saved: {self.profile_path}",
            f"session: {self.session_dir} ({self.frames_written} frames); plot: {self.plot_path}",
        ]
        if h is not None:
            lines.insert(2, history_line(h))
        return lines


def history_line(h) -> str:
    """What a calibration with earlier sittings chose, and on what evidence."""
    saved = (
        f"saved the pool ({h.pooled_candidate})"
        if h.chosen == "pooled"
        else "saved this sitting's own"
    )
    return (
        f"with {h.earlier_sittings} earlier sitting{'s' * (h.earlier_sittings != 1)} on this "
        f"screen: pooled {h.pooled_px:.0f} px against this sitting alone {h.alone_px:.0f} px "
        f"(its points, each left out; the chosen candidates' own scores): {saved}"
    )


def _target_table(run: CalibrationRun, screen: ScreenGeometry) -> list[dict]:
    rows = []
    for i, t in enumerate(run.targets):
        px = screen.to_px(t.xy)
        rows.append(
            {
                "target": i,
                "xy_px": [round(float(px[0]), 1), round(float(px[1]), 1)],
                "kept": t.n_kept,
                "dropped": dict(t.dropped),
                "tries": t.tries,
                "skipped": i in run.skipped,
            }
        )
    return rows


def _too_few(run: CalibrationRun, screen: ScreenGeometry, need: int) -> str:
    rows = _target_table(run, screen)
    worst = ", ".join(
        f"target {r['target']}: {r['kept']} kept"  # numbered as in the files and `eval`
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
    replaces: bool | None = None,
    cancelled: threading.Event | None = None,
) -> CalibrationResult:
    """Fit, evaluate, save the profile, the plot and a JSON report beside the session.

    With `run.cfg.select` (the default) the mapping is chosen as `gazeloop eval` chooses it
    (`procedure.fit_profile_selected`: nested selection among the candidates, the winner
    recorded in the profile's `fit.chosen`); else the fixed mapping on the fixed features.
    The frames are un-mirrored here (every source hands them over so), so there is one read
    of them to choose in."""
    # one more than the fit needs: one is held out
    need = MIN_SELECTION_TARGETS if run.cfg.select else min_targets(run.cfg.mapping) + 1
    if len(run.used()) < need:
        raise UserError(_too_few(run, screen, need))
    reads = {"as read": run.labelled(screen)}
    prof, ev = _fit(run, fp, screen, reads, user=user, device=device, session_dir=session_dir)
    useless = _no_better_than_guessing(ev)
    # `replaces`: a profile is in use (run's c key), whatever file this one would go to.
    keep_old = useless is not None and (profile_out.is_file() if replaces is None else replaces)
    if cancelled is not None and cancelled.is_set():
        # Stopped while fitting (Ctrl-C at the window): a profile saved after that would
        # replace the one in use behind the person's back.
        raise UserError(f"calibration stopped while fitting; {profile_out} is unchanged")
    history = prof.fit.history
    if history is not None:
        extra_report = {**(extra_report or {}), "history": history.model_dump(mode="json")}
    # The report before the profile: a disk that fills between them must leave the profile
    # in use as it was, not replaced under an error that says the calibration failed.
    report_path, plot = _write_report(
        run, screen, ev, None if keep_old else profile_out, session_dir, user, device, extra_report
    )
    saved = None if keep_old else prof.save(profile_out)
    if keep_old:
        raise UserError(
            f"calibration not used, the profile kept: {useless}; {profile_out} is unchanged "
            f"(the session and its report: {report_path}); calibrate again, face lit and "
            "eyes on each dot"
        )
    if useless is not None:  # nothing to keep: a poor profile, said, beats none
        print(f"WARNING: calibration {useless}; calibrate again", file=sys.stderr, flush=True)
    return CalibrationResult(prof, ev, saved, session_dir, plot, report_path, frames_written)


@contextlib.contextmanager
def refused_says_why(writer: SessionWriter, source: str):
    """Around `finish`: a calibration refused (too few targets, no better than guessing,
    stopped while fitting) leaves its frames as a session whose notes say why, and no folder
    when it captured none: a folder holding a manifest alone was read by `eval-sittings` as
    a sitting it could not read."""
    try:
        yield
    except UserError as e:
        if not writer.discard_if_empty():
            writer.finish(f"{source}; not used: {e}")
        raise


def _fit(
    run: CalibrationRun,
    fp: FastPath,
    screen: ScreenGeometry,
    reads: dict,
    *,
    user: str,
    device: str,
    session_dir: Path,
) -> tuple[Profile, Evaluated]:
    """The profile and its evaluation: chosen by nested selection, pooled with the user's
    earlier sittings when they help (`run.cfg.select`), else the fixed mapping."""
    frames = reads["as read"]
    names = list(run.cfg.features)
    try:
        if run.cfg.select:
            prof, ev, _ = fit_profile_selected(
                reads,
                screen=screen,
                user=user,
                device=device,
                **made_by(fp),
                calibration_session=str(session_dir.resolve()),
                mirrored=False,
            )
        else:
            return fit_profile_report(
                frames.matrix(names),
                screen.to_norm(frames.labels_px),
                frames.groups,
                screen=screen,
                features=names,
                user=user,
                device=device,
                **made_by(fp),
                mapping=run.cfg.mapping,
                calibration_session=str(session_dir.resolve()),
                frame_names=frames.names.tolist(),
            )
    except ValueError as e:
        raise UserError(f"calibration fit: {e}") from None
    return _with_history(prof, reads, screen, session_dir, fp), ev


def _no_better_than_guessing(ev: Evaluated) -> str | None:
    """Why this calibration's points are worth no more than guessing (each target predicted
    by the mean of the others), or None: a grid followed with the eyes elsewhere scored 790
    px against guessing's 749, and replaced the user's working profile."""
    r = ev.report
    if r.mean_px < r.baseline_mean_px:
        return None
    return (
        f"no better than guessing ({r.mean_px:.0f} px leave-one-target-out against "
        f"{r.baseline_mean_px:.0f} px for the centre of the other targets)"
    )


def _with_history(prof: Profile, now, screen, session_dir: Path, fp) -> Profile:
    """`sittings_profile.at_calibration`; when the earlier sittings cannot be pooled, said,
    and this sitting's own profile is saved: a calibration never fails for its history.
    Earlier sessions the feature cache lacks go through a fast path of their own, started
    only then: the live one (`gazeloop run`'s `c` key) keeps its tracking."""
    own = LazyFastPath(fp.cfg)
    try:
        return sittings_profile.at_calibration(prof, now, screen, session_dir, own)
    except (ValueError, OSError) as e:
        print(
            f"calibration: the earlier sittings could not be pooled ({e}); saving this one's",
            file=sys.stderr,
        )
        return prof
    finally:
        own.close()


def _write_report(run, screen, ev, saved, session_dir, user, device, extra) -> tuple[Path, Path]:
    # The report lives in a subfolder: session readers take every *.json/*.png at the top
    # level for a record.
    report_dir = session_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    plot = report_dir / "calibration.png"
    write_plot(lambda f: plot_report(ev, f, title=f"calibration of {user} on {device}"), plot)
    report = {
        "profile": None if saved is None else str(saved),  # None: not saved, see the error
        "session": str(session_dir),
        "evaluation": ev.report.model_dump(mode="json"),
        "targets": _target_table(run, screen),
        **(extra or {}),
    }
    report_path = report_dir / "calibration.json"
    atomic_write_bytes(report_path, json.dumps(report, indent=2).encode() + b"\n")
    return report_path, plot
