"""Per-eye geometry and aligned eye crops from face-mesh landmarks.

MediaPipe's indices: the person's right eye (image left in an un-mirrored frame) has corners
33/133, lids 159-145, 158-153, 160-144 and iris centre 468; the left eye has corners 263/362,
lids 386-374, 385-380, 387-373 and iris centre 473.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from gazeloop.fastpath.blink import BLINK_APERTURE
from gazeloop.fastpath.eye_geometry import eye_position_mm
from gazeloop.fastpath.types import EyeFeatures, FaceLandmarks, Features


@dataclass(frozen=True, slots=True)
class EyeIndex:
    corners: tuple[int, int]  # (image-left corner, image-right corner) for a frontal face
    lids: tuple[tuple[int, int], ...]  # (upper, lower) pairs
    iris: int


RIGHT_EYE = EyeIndex(corners=(33, 133), lids=((159, 145), (158, 153), (160, 144)), iris=468)
LEFT_EYE = EyeIndex(corners=(362, 263), lids=((386, 374), (385, 380), (387, 373)), iris=473)

# Bump when anything that changes the pixels or numbers a model sees changes (crop framing,
# size, alignment, head-pose convention): trained models record it, and a mismatch means a
# model was trained on other inputs than the fast path now makes.
PREPROCESSING_VERSION = "fastpath.features/1"

CROP = 60
# Intel's gaze demo crops a square of 1.8x the corner distance around the corner midpoint;
# the pretrained model expects that framing.
CROP_SCALE = 1.8


def eye_features(
    pts: np.ndarray,
    idx: EyeIndex,
    roll: float,
    image: np.ndarray,
    *,
    crop_scale: float = CROP_SCALE,
    blink_aperture: float = BLINK_APERTURE,
) -> EyeFeatures:
    a = pts[idx.corners[0], :2].astype(np.float64)
    b = pts[idx.corners[1], :2].astype(np.float64)
    mid = 0.5 * (a + b)
    d = b - a
    width = float(np.hypot(d[0], d[1]))
    if width < 1e-6:
        raise ValueError("degenerate eye: corners coincide")
    ex = d / width  # along the eye, toward image right
    ey = np.array([-ex[1], ex[0]])  # perpendicular, toward image down
    rel = pts[idx.iris, :2] - mid
    iris = np.array([rel @ ex, rel @ ey]) / width
    gaps = [np.linalg.norm(pts[u, :2] - pts[lo, :2]) for u, lo in idx.lids]
    aperture = float(np.mean(gaps)) / width
    crop, clipped = aligned_crop(image, mid, width * crop_scale, roll)
    return EyeFeatures(
        iris_offset=iris,
        aperture=aperture,
        blink=aperture < blink_aperture,
        crop=crop,
        crop_clipped=clipped,
        centre_px=mid,
        width_px=width,
    )


def aligned_crop(
    image: np.ndarray, centre: np.ndarray, side: float, roll: float, out: int = CROP
) -> tuple[np.ndarray, bool]:
    """A `side`-pixel square around `centre`, rotated by `roll` (so a rolled head's eye line
    comes out horizontal), resampled to out×out. Outside the frame is edge-padded; the flag
    says so."""
    c, s = np.cos(roll), np.sin(roll)
    k = side / out
    # Output pixel (u, v) samples the source at centre + R(roll) @ k*(u - h, v - h).
    h = (out - 1) / 2
    m = np.array(
        [
            [k * c, -k * s, centre[0] - k * (c * h - s * h)],
            [k * s, k * c, centre[1] - k * (s * h + c * h)],
        ]
    )
    crop = cv2.warpAffine(
        image,
        m,
        (out, out),
        flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    corners = m @ np.array([[0, 0, 1], [out - 1, 0, 1], [0, out - 1, 1], [out - 1, out - 1, 1]]).T
    hgt, wid = image.shape[:2]
    clipped = bool(
        corners[0].min() < 0
        or corners[1].min() < 0
        or corners[0].max() > wid - 1
        or corners[1].max() > hgt - 1
    )
    return crop, clipped


def extract(
    face: FaceLandmarks,
    image: np.ndarray,
    *,
    crop_scale: float = CROP_SCALE,
    blink_aperture: float = BLINK_APERTURE,
    focal_px: float | None = None,
) -> Features:
    """Both eyes' features, the head pose, and where the eyes are in mm (`eye_geometry`;
    `focal_px` None: the image width)."""
    roll = float(face.head_ypr[2]) if np.isfinite(face.head_ypr[2]) else 0.0
    kw = dict(crop_scale=crop_scale, blink_aperture=blink_aperture)
    return Features(
        left=eye_features(face.points, LEFT_EYE, roll, image, **kw),
        right=eye_features(face.points, RIGHT_EYE, roll, image, **kw),
        head_ypr=face.head_ypr,
        eye_mm=eye_position_mm(face.points, face.image_size, focal_px),
        head_rotation=face.head_rotation,
    )
