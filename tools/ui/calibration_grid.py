"""What the calibration grid shows, as pure functions: run state in, a BGR picture out.

The dot glides from the previous target to the next (the eye follows it instead of jumping
to a cold target), then shrinks to a point while the eye settles (a small dot pins the
fixation better than a large one), then stays small with a ring filling up while frames are
captured.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from gazeloop.calibration.procedure import CalibrationRun

BACKGROUND = (40, 40, 40)
DOT = (255, 255, 255)
CENTRE = (40, 40, 230)  # the fixation point in the middle of the dot
RING = (0, 190, 255)
TEXT = (200, 200, 200)
FONT = cv2.FONT_HERSHEY_SIMPLEX
MOVE_S = 0.4  # the glide between targets, at most; the rest of the settle time shrinks


@dataclass(frozen=True, slots=True)
class DotView:
    """One picture of the grid."""

    size: tuple[int, int]  # (width, height) of the screen, pixels
    xy: tuple[float, float] | None  # the dot, normalised; None: no dot
    radius: float  # pixels
    capture: float | None = None  # 0..1 while capturing: the ring's fill
    caption: str = ""  # a line along the bottom
    message: str | None = None  # a larger line in the middle (start, end, problems)


def _ease(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3 - 2 * u)


def dot_view(
    run: CalibrationRun, t_ns: int, size: tuple[int, int], *, ready_s: float | None = None
) -> DotView:
    """The grid at source time `t_ns`. `ready_s`: seconds left before the first target
    starts (the dot waits there, large, with the instructions)."""
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
    kept = len(run.targets[run.index].kept)
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
        _centred(img, v.message, h // 2 - int(60 * scale), 0.9 * scale)
    if v.caption:
        cv2.putText(
            img, v.caption, (int(20 * scale), h - int(20 * scale)), FONT, 0.6 * scale, TEXT, 1,
            cv2.LINE_AA,
        )  # fmt: skip
    return img


def _centred(img: np.ndarray, text: str, y: int, scale: float) -> None:
    thick = max(1, int(round(2 * scale)))
    (tw, _), _ = cv2.getTextSize(text, FONT, scale, thick)
    cv2.putText(img, text, ((img.shape[1] - tw) // 2, y), FONT, scale, TEXT, thick, cv2.LINE_AA)


def render_result(size: tuple[int, int], plot: np.ndarray | None, lines: list[str]) -> np.ndarray:
    """The end of a calibration: the evaluation plot, fitted into the screen, and a few
    lines of text below it (the leave-one-target-out error, where things were saved)."""
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    scale = max(0.5, h / 1080)
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
