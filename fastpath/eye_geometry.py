"""Where the eyes are, in millimetres, from one face mesh: the input of the geometric mapping.

Axes are the gaze vector's (`fastpath.gaze_model`): x to image right, y up, z from the face
toward the camera, origin at the camera's centre of projection, so the face is at z < 0.
Pure numpy/scalar maths on four landmarks; a few microseconds per frame.

The point is the midpoint of the four eye corners (MediaPipe 33, 133, 362, 263): it does not
move when the eyes turn, as iris centres do.

Depth: focal · `EYE_SPAN_MM` / the distance between the outer eye corners (33, 263) in the
mesh (x, y in pixels and MediaPipe's z in the same scale, so turning the head does not
shorten it). The millimetre scale comes from the iris: a human iris is 11.7 mm across, and
11.7 mm × outer-corner span / iris diameter (469–471, 474–476) is 88–93 mm on all 28 evit
sittings (two people, 640×480), 79–82 mm on the two higher-resolution recordings; 90 mm is
used. Why not the iris itself: per frame its diameter is noisy (3.1 % sd of log size within
a sitting, median of 28) where the outer-corner span is steady (1.1 %), and on the evit
sittings that noise cost the geometric mapping 7 px within a sitting and 8 px across sittings
(median, p1).

The focal length is the camera's when known, else the image width (about a 53° horizontal
field of view), as `headpose.HeadPoseEstimator` assumes. What a wrong focal length or span
does: x and y in mm do not depend on the focal length (pixel offsets × span mm / span pixels)
but scale with the assumed span; the depth scales with both. The geometric mapping fits a
gain on the gaze angles that absorbs a constant depth scale, so these errors only rescale how
far a head movement shifts its prediction.
"""

from __future__ import annotations

import math

import numpy as np

EYE_SPAN_MM = 90.0
CORNERS = (33, 133, 362, 263)  # right eye outer, inner; left eye inner, outer


def eye_position_mm(
    points: np.ndarray,
    image_size: tuple[int, int],
    focal_px: float | None = None,
    principal_px: tuple[float, float] | None = None,
) -> np.ndarray:
    """The midpoint of the eye corners in camera axes, mm: (x, y, z) with z < 0.

    `points` is the (478, 3) mesh (x, y in image pixels, z in the scale of x); `image_size`
    is (width, height); the principal point defaults to the image centre. NaNs for a
    degenerate mesh (coinciding outer corners)."""
    w, h = float(image_size[0]), float(image_size[1])
    f = w if focal_px is None else float(focal_px)
    cx, cy = (w / 2, h / 2) if principal_px is None else principal_px
    a, b, c, d = (points[i] for i in CORNERS)
    # Scalar maths: numpy's per-call overhead dominates on a few 3-vectors.
    span = math.sqrt(
        (float(a[0]) - float(d[0])) ** 2
        + (float(a[1]) - float(d[1])) ** 2
        + (float(a[2]) - float(d[2])) ** 2
    )
    if not (span > 1e-6 and math.isfinite(span) and f > 0):
        return np.full(3, np.nan)
    z = f * EYE_SPAN_MM / span
    u = 0.25 * (float(a[0]) + float(b[0]) + float(c[0]) + float(d[0]))
    v = 0.25 * (float(a[1]) + float(b[1]) + float(c[1]) + float(d[1]))
    return np.array([(u - cx) * z / f, -(v - cy) * z / f, -z])
