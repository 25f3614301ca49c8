"""The calibration grid on screen: what it shows, and the procedure that shows it.

The dot glides from the previous target to the next (the eye follows it instead of jumping
to a cold target), then shrinks to a point while the eye settles (a small dot pins the
fixation better than a large one), then stays small with a ring filling up while frames are
captured. The pictures are pure functions (run state in, a BGR picture out); `run_grid` and
`calibrate_on_screen` drive them in a window, full screen, for `gazeloop calibrate` and for
`gazeloop run`'s `c` key. The fit and its files are window-free
(`tools.runtime.calibration`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.procedure import CalibrationRun, ProcedureConfig
from gazeloop.calibration.store.writer import SessionWriter
from gazeloop.fastpath.pipeline import FastPath
from gazeloop.fastpath.types import Frame
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.calibration import (
    CalibrationResult,
    GridOutcome,
    finish,
    manifest_for,
    record_extra,
    refused_says_why,
)
from gazeloop.tools.runtime.recording import UnixClock
from gazeloop.tools.ui.render import drawable, wrap
from gazeloop.tools.ui.window import CLOSED, ESC, CvDisplay

BACKGROUND = (40, 40, 40)
DOT = (255, 255, 255)
CENTRE = (40, 40, 230)  # the fixation point in the middle of the dot
RING = (0, 190, 255)
TEXT = (200, 200, 200)
FONT = cv2.FONT_HERSHEY_SIMPLEX
MOVE_S = 0.4  # the glide between targets, at most; the rest of the settle time shrinks
FACE_LOST = "no face: look at the dot, face lit, in view"
# A face missing this long is said; a frame or two the detector misses would only flicker.
FACE_LOST_S = 0.3
FIT_PUMP_MS = 100  # the window's events are taken this often while the fit runs
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class DotView:
    """One picture of the grid."""

    size: tuple[int, int]  # (width, height) of the screen, pixels
    xy: tuple[float, float] | None  # the dot, normalised; None: no dot
    radius: float  # pixels
    capture: float | None = None  # 0..1 while capturing: the ring's fill
    caption: str = ""  # a line along the bottom
    # Larger text in the middle (start, end, problems); wrapped to the screen, and a newline
    # starts a line of its own.
    message: str | None = None


def _ease(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3 - 2 * u)


def dot_view(
    run: CalibrationRun,
    t_ns: int,
    size: tuple[int, int],
    *,
    ready_s: float | None = None,
    face_lost: bool = False,
) -> DotView:
    """The grid at source time `t_ns`. `ready_s`: seconds left before the first target
    starts (the dot waits there, large, with the instructions). `face_lost`: no face has
    been seen for a while, which is said on the screen: otherwise the ring just stayed
    empty and the target was skipped without a word."""
    v = _dot_view(run, t_ns, size, ready_s)
    if not face_lost or v.xy is None:
        return v
    return replace(v, message=f"{v.message}\n{FACE_LOST}" if v.message else FACE_LOST)


def _dot_view(
    run: CalibrationRun, t_ns: int, size: tuple[int, int], ready_s: float | None
) -> DotView:
    h = size[1]
    big, small = max(12.0, 0.035 * h), max(4.0, 0.008 * h)
    n = len(run.targets)
    if run.done:
        return DotView(size, None, 0.0, message="Done: fitting the calibration...")
    cur = run.current
    caption = f"target {run.index + 1} of {n}    Esc cancels"
    if ready_s is not None:
        msg = f"Follow the dot with your eyes. Starting in {max(ready_s, 0.0):.0f} s"
        return DotView(size, (float(cur[0]), float(cur[1])), big, caption=caption, message=msg)
    settle = run.cfg.settle_s
    t = run.elapsed_s(t_ns)
    move = min(MOVE_S, 0.5 * settle)
    prev = run.previous
    if t < settle:
        if prev is not None and t < move:
            u = _ease(t / move) if move > 0 else 1.0
            xy = prev + (cur - prev) * u
            return DotView(size, (float(xy[0]), float(xy[1])), big, caption=caption)
        shrink = settle - (move if prev is not None else 0.0)
        done = t - (move if prev is not None else 0.0)
        u = _ease(done / shrink) if shrink > 0 else 1.0
        return DotView(
            size, (float(cur[0]), float(cur[1])), big + (small - big) * u, caption=caption
        )
    want = run.cfg.frames
    kept = run.targets[run.index].n_kept
    if want:
        frac = kept / want
    else:
        frac = (t - settle) / run.cfg.collect_s if run.cfg.collect_s > 0 else 1.0
    return DotView(
        size,
        (float(cur[0]), float(cur[1])),
        small,
        capture=min(max(frac, 0.0), 1.0),
        caption=caption,
    )


def render_dot(v: DotView) -> np.ndarray:
    w, h = v.size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    if v.xy is not None:
        c = (int(round(v.xy[0] * w)), int(round(v.xy[1] * h)))
        r = max(2, int(round(v.radius)))
        cv2.circle(img, c, r, DOT, -1, cv2.LINE_AA)
        cv2.circle(img, c, max(1, r // 4), CENTRE, -1, cv2.LINE_AA)
        if v.capture is not None:
            ring = r + max(6, r)
            cv2.ellipse(img, c, (ring, ring), -90, 0, 360 * v.capture, RING, 3, cv2.LINE_AA)
    scale = max(0.5, h / 1080)
    if v.message:
        lines = _wrapped(v.message, w - int(80 * scale), 0.9 * scale)
        line_h = int(44 * scale)
        y = h // 2 - int(60 * scale) - line_h * (len(lines) - 1) // 2
        for line in lines:
            _centred(img, line, y, 0.9 * scale)
            y += line_h
    if v.caption:
        at = (int(20 * scale), h - int(20 * scale))
        cv2.putText(img, drawable(v.caption), at, FONT, 0.6 * scale, TEXT, 1, cv2.LINE_AA)
    return img


def _thick(scale: float) -> int:
    return max(1, int(round(2 * scale)))


def _wrapped(text: str, width: int, scale: float) -> list[str]:
    """`text` in lines `_centred` draws within `width` pixels; a newline starts one."""
    return [line for part in text.split("\n") for line in wrap(part, width, scale, _thick(scale))]


def _centred(img: np.ndarray, text: str, y: int, scale: float) -> None:
    text = drawable(text)
    thick = _thick(scale)
    (tw, _), _ = cv2.getTextSize(text, FONT, scale, thick)
    cv2.putText(img, text, ((img.shape[1] - tw) // 2, y), FONT, scale, TEXT, thick, cv2.LINE_AA)


def render_result(size: tuple[int, int], plot: np.ndarray | None, lines: list[str]) -> np.ndarray:
    """The end of a calibration: the evaluation plot, fitted into the screen, and a few
    lines of text below it (the leave-one-target-out error, where things were saved), each
    wrapped to the screen's width."""
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    scale = max(0.5, h / 1080)
    lines = [part for line in lines for part in _wrapped(line, w - 40, 0.7 * scale)]
    line_h = int(34 * scale)
    text_h = line_h * (len(lines) + 1)
    if plot is not None:
        avail_w, avail_h = w - 40, h - text_h - 40
        f = min(avail_w / plot.shape[1], avail_h / plot.shape[0])
        if f > 0:
            pw, ph = max(1, int(plot.shape[1] * f)), max(1, int(plot.shape[0] * f))
            small = cv2.resize(plot, (pw, ph), interpolation=cv2.INTER_AREA)
            x0, y0 = (w - pw) // 2, 20
            img[y0 : y0 + ph, x0 : x0 + pw] = small
    y = h - text_h + line_h // 2
    for line in lines:
        _centred(img, line, y, 0.7 * scale)
        y += line_h
    return img


# --- the grid in a window ------------------------------------------------------------------


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
    A face missing for `FACE_LOST_S` is said on screen until it is back. Esc or q cancels."""
    run = CalibrationRun(cfg)
    out = GridOutcome(run)
    t_start: int | None = None
    no_face_since: int | None = None
    for frame in frames:
        out.frames += 1
        if t_start is None:
            t_start = frame.t_ns
        s = fp.process(frame)
        if s.quality.face:
            no_face_since = None
        elif no_face_since is None:
            no_face_since = frame.t_ns
        lost = no_face_since is not None and frame.t_ns - no_face_since >= FACE_LOST_S * 1e9
        left = ready_s - (frame.t_ns - t_start) / 1e9
        if left > 0:
            view = dot_view(run, frame.t_ns, screen.px, ready_s=left, face_lost=lost)
        else:
            i, tries = run.index, run.targets[run.index].tries
            status = run.feed(frame.t_ns, s, name=f"frame {frame.index}")
            if writer is not None and status in ("kept", "dropped"):
                label = screen.to_px(run.targets[i].xy)
                extra = record_extra(i, status, s, frame, attempt=tries + 1)
                writer.write(clock.ms(frame.t_ns), frame.image, tuple(label), extra)
            view = dot_view(run, frame.t_ns, screen.px, face_lost=lost)
        if display is not None:
            key = display.show(render_dot(view))
            if key in (ESC, ord("q"), CLOSED):
                out.cancelled = True
                break
        if run.done:
            break
    return out


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
    replaces: bool | None = None,
) -> CalibrationResult | None:
    """Full screen, the grid, the fit, the result with its plot; None when cancelled.
    `result_wait_s`: how long the result, or why there is none, stays up (None: until a
    key; the full-screen window hides the terminal, and the person came to read it).
    `replaces`: whether a profile is in use that a useless fit must not replace (None:
    `profile_out` exists)."""
    source = f"{program}, on-screen grid ({source_desc})"
    writer = SessionWriter(session_dir, manifest_for(screen, user, device, source))
    display.fullscreen(True)
    display.size_to(*screen.px)
    try:
        try:
            out = run_grid(
                frames, fp, cfg, screen, display, writer=writer, clock=clock, ready_s=ready_s
            )
        except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) mid-grid: as Esc, then on up
            if not writer.discard_if_empty():
                writer.finish(f"calibration interrupted after {writer.written} captured frames")
            raise
        if out.cancelled or out.source_ended:
            _abandon(out, writer, source_desc)
            return None
        with refused_says_why(writer, source):
            res = _fit_or_say_why(
                display,
                screen,
                result_wait_s,
                lambda stop: finish(
                    out.run,
                    fp,
                    screen,
                    user=user,
                    device=device,
                    session_dir=session_dir,
                    profile_out=profile_out,
                    frames_written=writer.written,
                    replaces=replaces,
                    cancelled=stop,
                ),
            )
        writer.finish(f"gazeloop calibrate: {cfg.n_targets}-point grid; " + res.lines()[0])
        plot = cv2.imread(str(res.plot_path))
        lines = [*res.lines()[:1], _continues(result_wait_s)]
        display.wait_any_key(render_result(screen.px, plot, lines), result_wait_s)
        return res
    finally:
        display.fullscreen(False)


def _fit_or_say_why(
    display: CvDisplay,
    screen: ScreenGeometry,
    result_wait_s: float | None,
    fit: Callable[[threading.Event], CalibrationResult],
) -> CalibrationResult:
    """`fit_in_view`; a calibration refused (too few dots, no better than guessing, stopped)
    is said on the screen before it is raised."""
    try:
        return fit_in_view(display, screen.px, fit)
    except UserError as e:
        # The whole of it: the figures, where the session was kept and the advice come
        # last, and a message cut at 90 characters lost them.
        view = DotView(screen.px, None, 0.0, message=f"{e}\n{_continues(result_wait_s)}")
        display.wait_any_key(render_dot(view), result_wait_s)
        raise


def fit_in_view(
    display: CvDisplay, size: tuple[int, int], fit: Callable[[threading.Event], _T]
) -> _T:
    """`fit(stop)` on a thread of its own while the window says how long it has been fitting.

    A fit with earlier sittings reads the last one through the networks (the first time) and
    chooses again over all their frames: 11 s on this 2-core machine with 4 earlier sittings
    of 16 targets × 30 frames (2026-12-07). Run on the window's thread, the full-screen window
    took no events for all that time, which macOS answers with its spinning cursor and a
    "not responding" offer to force quit, over a picture that said only "Fitting...". HighGUI
    stays on this thread (Cocoa wants its windows on the main one); keys are read and
    dropped. Ctrl-C here sets `stop`, which `fit` checks before it saves anything, and waits
    for the fit to end (a second Ctrl-C does not wait): left running, the fit saved its
    profile after the person had stopped. What `fit` raises is raised here."""
    done: dict[str, object] = {}
    stop = threading.Event()

    def work() -> None:
        try:
            done["value"] = fit(stop)
        except BaseException as e:  # handed to the window's thread, raised there
            done["error"] = e

    worker = threading.Thread(target=work, name="gazeloop-calibration-fit", daemon=True)
    start = time.monotonic()
    worker.start()
    try:
        _pump_while(worker, display, size, lambda s: f"Fitting the calibration: {s:.0f} s", start)
    except BaseException:
        stop.set()
        _pump_while(worker, display, size, lambda s: "Stopping: the fit ends first", start)
        raise
    if "error" in done:
        raise done["error"]  # type: ignore[misc]
    return done["value"]  # type: ignore[return-value]


def _pump_while(worker, display, size, say: Callable[[float], str], start: float) -> None:
    """The window's events taken, and `say(seconds)` shown, until `worker` has ended."""
    while worker.is_alive():
        msg = say(time.monotonic() - start)
        display.show(render_dot(DotView(size, None, 0.0, message=msg)), FIT_PUMP_MS)


def _continues(wait_s: float | None) -> str:
    """What ends a picture `CvDisplay.wait_any_key` shows: a screen waiting for a key
    without saying so looked hung."""
    return "any key continues" + (f" (or {wait_s:g} s)" if wait_s is not None else "")


def _abandon(out: GridOutcome, writer: SessionWriter, source_desc: str) -> None:
    """A grid that did not reach its last target: the frames captured so far are kept (or
    no folder is left when there are none); a source that ended is an error, Esc is not."""
    why = "cancelled" if out.cancelled else "the source ended"
    if not writer.discard_if_empty():
        writer.finish(f"calibration {why} after {writer.written} captured frames")
    if out.source_ended:
        raise UserError(
            f"calibration stopped: {source_desc} ended before the last target "
            f"({out.run.index} of {len(out.run.targets)} done)"
        )
