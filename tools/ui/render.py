"""Pure renderers: data in, a BGR image out. No windows, no state — tested as images.

Colours mean the same everywhere: red = the fast path's cursor, blue = the pupils, gold = the
oracle's gaze.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from gazeloop.calibration.labels import OracleLabel

RED = (40, 40, 230)
BLUE = (230, 120, 30)
GOLD = (0, 190, 255)
WHITE = (255, 255, 255)
GREY = (90, 90, 90)
DARK = (25, 25, 25)
FONT = cv2.FONT_HERSHEY_SIMPLEX
STATUS_SCALE = 0.5
STATUS_LINE_H = 20  # pixels from one status line to the next
# The strip has room for this many lines, more when the status needs them. A status near a
# line's width takes one line or two from frame to frame (a field comes and goes), and a
# picture whose height changed is scaled into the window sized for the first one.
STATUS_LINES = 2


@dataclass(slots=True)
class PipData:
    """Everything the picture-in-picture shows about one oracle snapshot."""

    image: np.ndarray  # the snapshot, un-mirrored BGR
    eye_px: tuple[float, float] | None = None  # midpoint of the eyes, image pixels
    iris_px: list[tuple[float, float]] = field(default_factory=list)  # pupil/iris centres
    label: OracleLabel | None = None
    oracle_target_px: tuple[float, float] | None = None  # where the oracle says the eye looks
    busy: bool = False  # the oracle is still working: draw a spinner
    spinner_phase: float = 0.0  # radians, advanced by the caller each frame
    mirror_display: bool = True  # show a selfie view, as people expect to see themselves


# OpenCV's Hershey fonts draw ASCII only: anything else became "??" on screen ("yaw
# -20.3?? pitch", "σ" in the sources' line). The status text is shared with the terminal,
# which keeps the symbols; the window gets these.
_ASCII = {"°": " deg", "σ": "sd", "±": "+/-", "…": "...", "→": "->", "−": "-", "×": "x"}


def drawable(s: str) -> str:
    """`s` as the window's font can draw it (pure)."""
    s = "".join(_ASCII.get(c, c) for c in s)
    return s.encode("ascii", "replace").decode("ascii")


def wrap(text: str, width: int, scale: float, thick: int = 1, sep: str = " ") -> list[str]:
    """`text` as the window's font draws it, in lines no wider than `width` pixels at `scale`
    and `thick` (pure; no text, no lines). Broken at `sep` first (the status line's fields
    are two spaces apart: a field then stays whole when it can), then at spaces, and a word
    wider than a line (a long path) across lines: a cut line hid the figures and the advice
    that came last."""

    def fits(s: str) -> bool:
        return cv2.getTextSize(s, FONT, scale, thick)[0][0] <= width

    lines: list[str] = []
    for piece in (p.strip() for p in drawable(text).split(sep)):
        if not piece:
            continue
        if lines and fits(lines[-1] + sep + piece):
            lines[-1] += sep + piece
        elif fits(piece):
            lines.append(piece)
        elif sep != " ":
            lines += wrap(piece, width, scale, thick)
        else:
            lines += _break(piece, fits)
    return lines


def _break(word: str, fits) -> list[str]:
    """A word too wide for a line, cut where the line is full (at least a character each)."""
    out, cur = [], ""
    for ch in word:
        if cur and not fits(cur + ch):
            out.append(cur)
            cur = ""
        cur += ch
    return [*out, cur]


def _text(img, s, org, scale=0.5, color=WHITE, thick=1):
    s = drawable(s)
    cv2.putText(img, s, org, FONT, scale, DARK, thick + 2, cv2.LINE_AA)
    cv2.putText(img, s, org, FONT, scale, color, thick, cv2.LINE_AA)


def _pt(p) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


def _arrow(img, a, b, color, thick=2):
    cv2.arrowedLine(img, _pt(a), _pt(b), DARK, thick + 2, cv2.LINE_AA, tipLength=0.15)
    cv2.arrowedLine(img, _pt(a), _pt(b), color, thick, cv2.LINE_AA, tipLength=0.15)


def _fit(image: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    s = width / w
    return cv2.resize(image, (width, max(1, int(round(h * s)))), interpolation=cv2.INTER_AREA), s


def _mirror_x(p, w, on: bool):
    return (w - 1 - p[0], p[1]) if on else p


def draw_snapshot_overlays(canvas: np.ndarray, d: PipData, scale: float, *, thick: int = 2) -> None:
    """Eye point, iris centres (blue) and the oracle's ray to its target (gold), drawn on a
    scaled (and maybe mirrored) copy of the snapshot."""
    w = canvas.shape[1]
    m = d.mirror_display

    def tr(p):
        return _mirror_x((p[0] * scale, p[1] * scale), w, m)

    for p in d.iris_px:
        cv2.circle(canvas, _pt(tr(p)), max(2, thick + 1), BLUE, -1, cv2.LINE_AA)
    if d.eye_px is None:
        return
    eye = tr(d.eye_px)
    if d.oracle_target_px is not None:
        _arrow(canvas, eye, tr(d.oracle_target_px), GOLD, thick)
    cv2.circle(canvas, _pt(eye), thick + 2, WHITE, 1, cv2.LINE_AA)


def render_pip(d: PipData, width: int = 320) -> np.ndarray:
    """The picture-in-picture: the last oracle snapshot, small, with its overlays and a
    one-line caption (oracle, confidence, accepted or not)."""
    img, s = _fit(d.image, width)
    if d.mirror_display:
        img = np.ascontiguousarray(img[:, ::-1])
    draw_snapshot_overlays(img, d, s, thick=1)
    cv2.rectangle(img, (0, 0), (img.shape[1] - 1, img.shape[0] - 1), GOLD, 2)
    cap = "oracle: waiting"
    if d.label is not None:
        lab = d.label
        cap = f"{lab.oracle} {lab.confidence:.2f}"
        if lab.observation is None:
            cap += " (no screen gaze)"
    _text(img, cap, (6, img.shape[0] - 8), 0.45, GOLD)
    if d.busy:
        _spinner(img, (img.shape[1] - 18, 18), 10, d.spinner_phase)
    return img


def _spinner(img, c, r, phase):
    for k in range(8):
        a = phase + k * math.pi / 4
        shade = int(80 + 175 * k / 7)
        p = (c[0] + r * math.cos(a), c[1] + r * math.sin(a))
        cv2.circle(img, _pt(p), 2, (shade, shade, shade), -1, cv2.LINE_AA)


def render_waiting(last: np.ndarray | None, message: str) -> np.ndarray:
    """The last live view dimmed, with `message` across its middle: what the window shows
    while the camera gives no frame (nothing drawn, it froze on the last one)."""
    img = np.full((480, 960, 3), 30, np.uint8) if last is None else (last // 3).astype(np.uint8)
    h, w = img.shape[:2]
    scale = 0.7
    (tw, th), _ = cv2.getTextSize(drawable(message), FONT, scale, 2)
    _text(img, message, (max(8, (w - tw) // 2), (h + th) // 2), scale, GOLD, 2)
    return img


@dataclass(slots=True)
class LiveData:
    """One frame of the live window."""

    image: np.ndarray  # the camera frame, un-mirrored BGR
    landmarks: np.ndarray | None = None  # (478, 2+) image pixels
    screen_xy: tuple[float, float] | None = None  # the cursor, normalised
    screen_aspect: float = 16 / 9
    pip: np.ndarray | None = None  # render_pip output, or None before the first label
    status: str = ""
    alarm: str | None = None
    usable: bool = True
    mirror_display: bool = True
    target_xy: tuple[float, float] | None = None  # a calibration dot, when one is shown


def render_live(d: LiveData, width: int = 1280) -> np.ndarray:
    """Camera view with landmarks on the left, a screen-shaped canvas with the gaze dot on
    the right, the oracle's last snapshot as a picture-in-picture in the camera view's
    corner, and the status along the bottom, on as many lines as it takes: cut at the right
    edge, it lost what came last (the drift offset, the labels stored)."""
    cam_w = width // 2
    cam, s = _fit(d.image, cam_w)
    if d.landmarks is not None:
        pts = d.landmarks[:, :2] * s
        if d.mirror_display:
            pts = np.column_stack([cam_w - 1 - pts[:, 0], pts[:, 1]])
    if d.mirror_display:
        cam = np.ascontiguousarray(cam[:, ::-1])
    if d.landmarks is not None:
        mesh = pts[: min(len(pts), 468) : 3].astype(int)  # a light mesh: every third point
        mesh[:, 0] = np.clip(mesh[:, 0], 0, cam_w - 1)
        mesh[:, 1] = np.clip(mesh[:, 1], 0, cam.shape[0] - 1)
        cam[mesh[:, 1], mesh[:, 0]] = (0, 220, 0)
        for i in (468, 473):
            if i < len(pts):
                cv2.circle(cam, _pt(pts[i]), 3, BLUE, -1, cv2.LINE_AA)
    if d.pip is not None:
        ph, pw = d.pip.shape[:2]
        ph, pw = min(ph, cam.shape[0]), min(pw, cam_w)
        cam[:ph, cam_w - pw :] = d.pip[:ph, :pw]
    h = cam.shape[0]
    # Measured with the dark outline `_text` draws around each letter; 10 px margins.
    lines = wrap(d.status, width - 20, STATUS_SCALE, 3, sep="  ")
    strip = 16 + STATUS_LINE_H * max(STATUS_LINES, len(lines))
    out = np.full((h + strip, width, 3), 20, np.uint8)
    out[:h, :cam_w] = cam
    # The screen canvas.
    sw = width - cam_w - 20
    sh = int(min(h - 20, sw / d.screen_aspect))
    sw = int(sh * d.screen_aspect)
    x0, y0 = cam_w + 10, (h - sh) // 2
    cv2.rectangle(out, (x0, y0), (x0 + sw, y0 + sh), (70, 70, 70), -1)
    if d.target_xy is not None:
        c = (x0 + d.target_xy[0] * sw, y0 + d.target_xy[1] * sh)
        cv2.circle(out, _pt(c), 9, WHITE, 2, cv2.LINE_AA)
    if d.screen_xy is not None:
        c = (x0 + d.screen_xy[0] * sw, y0 + d.screen_xy[1] * sh)
        colour = RED if d.usable else GREY
        cv2.circle(out, _pt(c), 10, colour, -1, cv2.LINE_AA)
        cv2.circle(out, _pt(c), 10, WHITE, 1, cv2.LINE_AA)
    for k, line in enumerate(lines):
        _text(out, line, (10, h + 24 + k * STATUS_LINE_H), STATUS_SCALE, WHITE)
    if d.alarm:
        _text(out, d.alarm, (x0, y0 + 22), 0.55, (60, 60, 255), 1)
    return out
