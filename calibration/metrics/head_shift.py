"""Where a gaze point should move when the head moves, for the head-shift check.

The check re-renders a session's frames as if the head had moved and compares each mapping's
change of prediction with the change the geometry demands. Both re-renderings are exact for
a pinhole camera (the eye crops the gaze network sees are unchanged, only where the face is):

- scaling the image by s about the principal point (taken as the image centre) is the same
  picture as the whole scene shrunk toward the camera by 1/s: the eyes at E/s, the gaze
  direction unchanged, so the gaze point on the screen (which holds the camera) moves from P
  to P/s, relative to the camera. A head that leans in by a seventh moves the point a
  seventh of the way toward the camera;
- translating the image by (du, dv) px is the same picture as the scene turned about the
  camera's centre by du/f (about its vertical axis) and dv/f (about its horizontal one): the
  head moved sideways along a circle round the camera, turning with it so that the camera
  sees it from the same side. The gaze ray turns with it, so the point it meets on the
  screen moves only by the second-order amount computed here — close to nothing for targets
  near the camera. A mapping that moves its prediction a lot under a translation mistakes
  where the face is in the image for where the eyes look.

Axes: camera axes as `fastpath.eye_geometry` (x image right, y up, z toward the camera, the
face at z < 0); the screen's are x right and y down as the user sees it, so an un-mirrored
image's right is the screen's left: screen (x, y) = (−camera x, −camera y) on the plane.

All in millimetres on the screen, then px through the screen's mm per px.
"""

from __future__ import annotations

import numpy as np


def _turn(p: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """Points (n, 3) in (x, y, depth w = −z) turned about the camera centre so that their
    image moves right by `yaw`·f and down by `pitch`·f (small angles, radians)."""
    x, y, w = p[:, 0], p[:, 1], p[:, 2]
    x, w = x * np.cos(yaw) + w * np.sin(yaw), -x * np.sin(yaw) + w * np.cos(yaw)
    y, w = y * np.cos(pitch) - w * np.sin(pitch), y * np.sin(pitch) + w * np.cos(pitch)
    return np.column_stack([x, y, w])


def expected_shift_mm(
    eye_mm: np.ndarray,
    target_mm: np.ndarray,
    focal_px: float,
    *,
    du: float = 0.0,
    dv: float = 0.0,
    scale: float = 1.0,
) -> np.ndarray:
    """Screen displacement (mm, screen axes, (n, 2)) of the true gaze point for frames with
    eye positions `eye_mm` (n, 3; camera axes) looking at `target_mm` (n, 2; screen axes,
    relative to the camera's foot on the screen plane), after the image was scaled by
    `scale` about its centre and then translated by (du, dv) px (v down)."""
    eye_mm = np.asarray(eye_mm, dtype=np.float64)
    target_mm = np.asarray(target_mm, dtype=np.float64)
    if focal_px <= 0 or scale <= 0:
        raise ValueError(f"focal_px and scale must be > 0, got {focal_px}, {scale}")
    # (x, y, depth) with the screen plane at depth 0; the target on it
    eye = np.column_stack([eye_mm[:, 0], eye_mm[:, 1], -eye_mm[:, 2]]) / scale
    tgt = np.column_stack([-target_mm[:, 0], -target_mm[:, 1], np.zeros(len(target_mm))])
    tgt = tgt / scale
    e2, t2 = _turn(eye, du / focal_px, dv / focal_px), _turn(tgt, du / focal_px, dv / focal_px)
    d = t2 - e2
    hit = e2 + d * (-e2[:, 2] / d[:, 2])[:, None]
    return np.column_stack([-hit[:, 0], -hit[:, 1]]) - target_mm


# Below this expected shift (px) a fraction of it says nothing: only the px are reported.
MIN_SHIFT_PX = 20.0


def follow_stats(pred_shift: np.ndarray, expected: np.ndarray) -> dict:
    """How a mapping's predictions moved against how the gaze point moved (both (n, 2), px):
    the mean displacements, the miss |predicted − expected| in px, and, when the expected
    shift is large enough to divide by, the fraction followed (projection on the expected
    shift: 1 all of it, 0 none) and the miss as a fraction of the shift (≤ 1/3 follows)."""
    p = np.nanmean(np.asarray(pred_shift, dtype=np.float64), axis=0)
    e = np.mean(np.asarray(expected, dtype=np.float64), axis=0)
    size = float(np.linalg.norm(e))
    miss = float(np.linalg.norm(p - e))
    big = size >= MIN_SHIFT_PX
    return {
        "expected_px": [round(float(v), 1) for v in e],
        "predicted_px": [round(float(v), 1) for v in p],
        "miss_px": round(miss, 1),
        "followed": round(float(p @ e) / size**2, 3) if big else None,
        "miss_fraction": round(miss / size, 3) if big else None,
    }
