"""Moondream's answers about one snapshot → one screen observation (pure: no torch, no model).

The answers come from four calls on one encoded image (see `oracle.moondream`):

    answers = {
        "pupils":      point(enc, "pupil")    → {"points": [{"x", "y"}, ...]}
        "faces":       detect(enc, "face")    → {"objects": [{"x_min", "y_min",
                                                              "x_max", "y_max"}, ...]}
        "eye":         (x, y), the point the gaze calls were asked about
        "gaze":        detect_gaze(enc, eye)  → {"gaze": {"x", "y"}} or {"gaze": None}
        "gaze_forced": detect_gaze(enc, eye, unstable_settings={"force_detect": True})
                                              → the same shapes
    }

All coordinates are normalised to the image, 0..1 per axis, x right, y down.

What they mean for a webcam at a screen (DESIGN.md, "The oracle, honestly"): the plain gaze
call answers "where in this picture does the person look"; None means "outside the frame",
which is where a screen behind the camera is. A point inside the frame means the person looks
at something the camera sees, not at the screen: no observation. The forced call always names
a target; only the *direction* from the eye to it means something, and with the camera in the
screen plane that direction is parallel to (gaze point on screen − camera position). So the
observation is a ray from the camera position, `LineObservation`.

Garbage in (wrong types, NaN, coordinates off the image, empty lists) never raises: the
result is "no observation" with the reason in `details["reason"]`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.labels import LineObservation, Snapshot

ParseResult = tuple[LineObservation | None, bool | None, float, dict[str, Any]]

NO_CAMERA = "oracle needs its calibration: camera position"

# Moondream's boxes are centre ± size/2, so a face at the image edge legitimately pokes out
# of [0,1] a little; a box further out than this is not a box about this image.
BOX_SLACK = 0.25
# Eye→target length in face widths below which the direction is noise (a target on the
# face itself); below FULL_TRUST_FACE_WIDTHS the confidence falls linearly.
MIN_TARGET_FACE_WIDTHS = 0.1
FULL_TRUST_FACE_WIDTHS = 0.5
# Pupil agreement, as mean distance / inter-pupil distance: within GOOD is agreement,
# beyond BAD Moondream is looking at another face (or the fast path is lost).
PUPIL_GOOD, PUPIL_BAD, PUPIL_BAD_FACTOR = 0.25, 1.0, 0.25
NO_PUPILS_FACTOR = 0.7  # Moondream found no pupil: closed or hidden eyes
EYE_OUTSIDE_FACE_FACTOR = 0.5  # the eye we asked about is in no face Moondream found
IN_FRAME_UNKNOWN_FACTOR = 0.5  # the plain gaze call gave garbage: cannot rule out "in frame"


@dataclass(frozen=True, slots=True)
class Box:
    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def contains(self, p: tuple[float, float]) -> bool:
        return self.x_min <= p[0] <= self.x_max and self.y_min <= p[1] <= self.y_max

    @property
    def area(self) -> float:
        return (self.x_max - self.x_min) * (self.y_max - self.y_min)


def _num(v: Any) -> float | None:
    """A finite real number, else None (bool is an int in Python, but never a coordinate)."""
    if isinstance(v, bool | np.bool_) or not isinstance(v, int | float | np.integer | np.floating):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _in_image(x: float | None, y: float | None) -> tuple[float, float] | None:
    """(x, y) when both are numbers in [0,1], else None: the one test of "a point inside the
    image" that both answer shapes (a mapping, a pair) go through."""
    if x is None or y is None or not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        return None
    return (x, y)


def _unit_point(v: Any) -> tuple[float, float] | None:
    """{"x", "y"} with both in [0,1], else None."""
    if not isinstance(v, Mapping):
        return None
    return _in_image(_num(v.get("x")), _num(v.get("y")))


def _unit_pair(v: Any) -> tuple[float, float] | None:
    """(x, y) as a 2-sequence with both in [0,1], else None."""
    xy = _px_pair(v)
    return None if xy is None else _in_image(*xy)


def _px_pair(v: Any) -> tuple[float, float] | None:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence) or len(v) != 2:
        return None
    x, y = _num(v[0]), _num(v[1])
    return None if x is None or y is None else (x, y)


def parse_gaze(raw: Any) -> tuple[tuple[float, float] | None, str | None]:
    """`detect_gaze`'s return → (point or None, error). (None, None) is a valid "no gaze in
    the frame"; an error means the answer was not one of the two documented shapes."""
    if not isinstance(raw, Mapping) or "gaze" not in raw:
        return None, f"not a detect_gaze answer: {_short(raw)}"
    g = raw["gaze"]
    if g is None:
        return None, None
    p = _unit_point(g)
    if p is None:
        return None, f"gaze is not a point inside the image: {_short(g)}"
    return p, None


def parse_points(raw: Any) -> tuple[list[tuple[float, float]], int, str | None]:
    """`point`'s return → (valid points, how many entries were dropped, error)."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("points"), list):
        return [], 0, f"not a point answer: {_short(raw)}"
    good = [p for p in (_unit_point(q) for q in raw["points"]) if p is not None]
    return good, len(raw["points"]) - len(good), None


def _box(v: Any) -> Box | None:
    if not isinstance(v, Mapping):
        return None
    c = [_num(v.get(k)) for k in ("x_min", "y_min", "x_max", "y_max")]
    if any(x is None for x in c):
        return None
    x0, y0, x1, y1 = c  # type: ignore[misc]
    lo, hi = -BOX_SLACK, 1.0 + BOX_SLACK
    if not all(lo <= x <= hi for x in c) or x1 <= x0 or y1 <= y0:
        return None
    # Clip the legitimate overshoot so areas and widths are those of the visible face.
    b = Box(max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0))
    return b if b.x_max > b.x_min and b.y_max > b.y_min else None


def parse_boxes(raw: Any) -> tuple[list[Box], int, str | None]:
    """`detect`'s return → (valid boxes clipped to the image, dropped count, error)."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("objects"), list):
        return [], 0, f"not a detect answer: {_short(raw)}"
    good = [b for b in (_box(o) for o in raw["objects"]) if b is not None]
    return good, len(raw["objects"]) - len(good), None


def image_size(snap: Snapshot) -> tuple[int, int] | None:
    """(width, height) of the snapshot's image, or None if it is not an image."""
    shape = getattr(getattr(snap, "image", None), "shape", None)
    if not isinstance(shape, tuple) or len(shape) < 2:
        return None
    h, w = shape[0], shape[1]
    if not isinstance(h, int) or not isinstance(w, int) or h <= 0 or w <= 0:
        return None
    return (w, h)


def query_eye(snap: Snapshot, pupils_raw: Any, faces_raw: Any) -> tuple[float, float] | None:
    """Where to ask `detect_gaze` from, normalised to the image: the snapshot's eye midpoint;
    else the midpoint of its pupils; else the two pupils Moondream found; else a point 40%
    down the largest face box (where the eyes sit on an upright face); else None."""
    size = image_size(snap)
    if size is not None:
        w, h = size
        eye = _px_pair(snap.eye_px)
        if eye is not None:
            p = _unit_pair((eye[0] / w, eye[1] / h))
            if p is not None:
                return p
        pupils = snap.pupils_px
        if isinstance(pupils, Sequence) and len(pupils) == 2:
            a, b = _px_pair(pupils[0]), _px_pair(pupils[1])
            if a is not None and b is not None:
                p = _unit_pair(((a[0] + b[0]) / 2 / w, (a[1] + b[1]) / 2 / h))
                if p is not None:
                    return p
    points, _, _ = parse_points(pupils_raw)
    if len(points) >= 2:
        (ax, ay), (bx, by) = points[0], points[1]
        return ((ax + bx) / 2, (ay + by) / 2)
    boxes, _, _ = parse_boxes(faces_raw)
    if boxes:
        b = max(boxes, key=lambda b: b.area)
        return ((b.x_min + b.x_max) / 2, b.y_min + 0.4 * (b.y_max - b.y_min))
    return None


def _pupil_factor(
    snap: Snapshot, points: list[tuple[float, float]], size: tuple[int, int]
) -> tuple[float, str]:
    pupils = snap.pupils_px
    if not (isinstance(pupils, Sequence) and len(pupils) == 2):
        return 1.0, "not checked (snapshot has no pupils)"
    a, b = _px_pair(pupils[0]), _px_pair(pupils[1])
    if a is None or b is None:
        return 1.0, "not checked (snapshot pupils unusable)"
    ipd = math.dist(a, b)
    if ipd <= 0.0:
        return 1.0, "not checked (snapshot pupils coincide)"
    if not points:
        return NO_PUPILS_FACTOR, "Moondream found no pupil"
    w, h = size
    md = [(x * w, y * h) for x, y in points]
    err = (min(math.dist(a, q) for q in md) + min(math.dist(b, q) for q in md)) / 2 / ipd
    if err <= PUPIL_GOOD:
        return 1.0, f"agree ({err:.2f} IPD)"
    t = min(1.0, (err - PUPIL_GOOD) / (PUPIL_BAD - PUPIL_GOOD))
    return 1.0 - t * (1.0 - PUPIL_BAD_FACTOR), f"disagree ({err:.2f} IPD)"


def observation_from_answers(
    answers: Any,
    snap: Snapshot,
    screen: ScreenGeometry,
    camera_norm: tuple[float, float] | None,
) -> ParseResult:
    """(observation, in_frame, confidence, details) from Moondream's answers about `snap`.

    `in_frame` is True when the plain gaze call put the target inside the image (the person
    looks at something in the room, not at the screen), False when it said "outside", None
    when its answer was unusable. Confidence is a product of factors in [0,1], each recorded
    in `details["factors"]`:
    - the plain gaze answer unusable (cannot rule out "in frame"): × 0.5;
    - the eye we asked about lies in no face box: × 0.5 (another face, or a wrong eye point);
    - Moondream's pupils vs the snapshot's: 1 within 0.25 inter-pupil distances, falling
      linearly to 0.25 at 1 IPD; × 0.7 when Moondream found no pupil at all;
    - eye→target length in face widths: ≥ 0.5 → 1, falling linearly below; under 0.1 the
      direction is noise and there is no observation.
    No face at all, no camera position, or no forced target → no observation, confidence 0.
    """
    try:
        return _observe(answers, snap, screen, camera_norm)
    except Exception as exc:  # the contract is "never raise for garbage"; keep the why
        return None, None, 0.0, {"reason": f"unparseable answers: {type(exc).__name__}: {exc}"}


def _observe(
    answers: Any,
    snap: Snapshot,
    screen: ScreenGeometry,
    camera_norm: tuple[float, float] | None,
) -> ParseResult:
    details: dict[str, Any] = {"answers": jsonable(answers)}

    def none(reason: str, in_frame: bool | None = None) -> ParseResult:
        details["reason"] = reason
        return None, in_frame, 0.0, details

    if not isinstance(answers, Mapping):
        return none(f"answers are not a mapping: {type(answers).__name__}")
    size = image_size(snap)
    if size is None:
        return none("snapshot has no image to measure")

    # 1. Is the person looking at something in the frame? Then not at the screen.
    plain, plain_err = parse_gaze(answers.get("gaze"))
    in_frame: bool | None = None if plain_err else plain is not None
    if plain is not None:
        details["gaze_in_frame"] = plain
        return none("looking at something in the frame, not at the screen", True)

    factors: dict[str, float] = {}
    if plain_err:
        details["gaze_error"] = plain_err
        factors["in_frame_unknown"] = IN_FRAME_UNKNOWN_FACTOR

    # 2. A face must be there: the gaze answer is about an eye of a face.
    eye, face, why = _eye_in_face(answers, snap, details, factors)
    if why is not None:
        return none(why, in_frame)
    _weigh_pupils(answers.get("pupils"), snap, size, details, factors)

    # 3. The forced target: its direction from the eye is the measurement.
    v, why = _gaze_vector(answers.get("gaze_forced"), eye, face, size, details, factors)
    if why is not None:
        return none(why, in_frame)
    obs, why = _screen_line(v, screen, camera_norm)
    if why is not None:
        return none(why, in_frame)

    confidence = 1.0
    for f in factors.values():
        confidence *= f
    details["factors"] = factors
    return obs, in_frame, min(1.0, max(0.0, confidence)), details


def _eye_in_face(
    answers: Mapping, snap: Snapshot, details: dict[str, Any], factors: dict[str, float]
) -> tuple[tuple[float, float] | None, Box | None, str | None]:
    """The eye the gaze calls were asked about and the face it belongs to, or why there is
    none: the face's width is the yardstick of the forced target's reach, and an eye in no
    face Moondream found may be another person's."""
    boxes, dropped, err = parse_boxes(answers.get("faces"))
    if dropped:
        details["faces_dropped"] = dropped
    if err:
        return None, None, f"no face: {err}"
    if not boxes:
        return None, None, "no face found"

    eye = _unit_pair(answers.get("eye"))
    if eye is None:
        eye = query_eye(snap, None, None)
    if eye is None:
        return None, None, "no eye position to ask about"
    details["eye"] = eye
    holding = [b for b in boxes if b.contains(eye)]
    face = max(holding or boxes, key=lambda b: b.area)
    if not holding:
        factors["eye_outside_face"] = EYE_OUTSIDE_FACE_FACTOR
    return eye, face, None


def _weigh_pupils(
    pupils_raw: Any,
    snap: Snapshot,
    size: tuple[int, int],
    details: dict[str, Any],
    factors: dict[str, float],
) -> None:
    """Moondream's pupils against the snapshot's, as a confidence factor: where they
    disagree, Moondream is looking at another face (or the fast path is lost)."""
    points, dropped, err = parse_points(pupils_raw)
    if dropped:
        details["pupils_dropped"] = dropped
    if err:
        details["pupils_error"] = err
    f, note = _pupil_factor(snap, points, size)
    details["pupils"] = note
    if f < 1.0:
        factors["pupils"] = f


def _gaze_vector(
    forced_raw: Any,
    eye: tuple[float, float],
    face: Box,
    size: tuple[int, int],
    details: dict[str, Any],
    factors: dict[str, float],
) -> tuple[tuple[float, float] | None, str | None]:
    """Eye → forced target in image pixels, or why it says nothing: a target on the face
    itself is too close for its direction to be more than noise."""
    w, h = size
    target, err = parse_gaze(forced_raw)
    if err:
        return None, f"forced gaze unusable: {err}"
    if target is None:
        return None, "forced gaze gave no target (this revision may ignore force_detect)"
    details["target"] = target

    # Image pixels are square; normalised image units are not (a 16:9 frame).
    vx, vy = (target[0] - eye[0]) * w, (target[1] - eye[1]) * h
    face_w = (face.x_max - face.x_min) * w
    reach = math.hypot(vx, vy) / face_w
    details["target_face_widths"] = reach
    if reach < MIN_TARGET_FACE_WIDTHS:
        return None, "forced target too close to the eye: direction unreliable"
    if reach < FULL_TRUST_FACE_WIDTHS:
        factors["target_near_eye"] = reach / FULL_TRUST_FACE_WIDTHS
    return (vx, vy), None


def _screen_line(
    v: tuple[float, float], screen: ScreenGeometry, camera_norm: tuple[float, float] | None
) -> tuple[LineObservation | None, str | None]:
    """The image direction `v` (pixels) as a ray on the screen from the camera, or why
    there is none (no camera position: the ray has nowhere to start)."""
    if camera_norm is None:
        return None, NO_CAMERA
    origin = _px_pair(camera_norm)
    if origin is None:
        return None, f"camera position is not two finite numbers: {camera_norm!r}"

    # Image → screen axes. The frame is un-mirrored: the camera faces the user, so the
    # user's left is the image's right, and a person looking toward the screen's left (their
    # left) looks toward image right: screen dx = −image dx. With the camera above (or in)
    # the screen plane, image y down is world down is screen y down: screen dy = +image dy.
    # For a pinhole camera at the screen plane the image direction from the eye along the
    # gaze ray is exactly parallel to (screen point − camera), whatever the eye's position.
    # Direction is in physical units (mm, or px as square pixels when mm are unknown);
    # normalised screen units stretch x and y differently, so divide each by the screen size.
    vx, vy = v
    sw, sh = screen.mm if screen.mm is not None else screen.px
    direction = (-vx / sw, vy / sh)
    try:
        return LineObservation(origin=origin, direction=direction), None
    except ValidationError as exc:
        return None, f"no valid line: {exc.errors()[0].get('msg', exc)}"


def _short(v: Any, limit: int = 120) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def jsonable(v: Any, depth: int = 0) -> Any:
    """The raw answers in a form the label store can write: dicts, lists, finite numbers,
    strings; NaN/inf as their names, anything else as a short repr."""
    if depth > 6:
        return _short(v)
    if v is None or isinstance(v, bool | str):
        return v
    n = _num(v)
    if n is not None:
        return int(v) if isinstance(v, int) else n
    if isinstance(v, float):
        return repr(v)  # nan, inf, -inf
    if isinstance(v, Mapping):
        return {str(k): jsonable(x, depth + 1) for k, x in list(v.items())[:64]}
    if isinstance(v, list | tuple):
        return [jsonable(x, depth + 1) for x in v[:64]]
    return _short(v)
