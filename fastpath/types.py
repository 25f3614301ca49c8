"""The data that flows through the fast path.

One frame in, one `GazeSample` out. Arrays are numpy; angles are radians, yaw then pitch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Frame:
    """One image from a source. `t_ns` is the source's own capture time (monotonic
    nanoseconds for a camera, media time for a video, the recorded timestamp for a
    session), never the wall clock at processing time."""

    t_ns: int
    image: np.ndarray  # HxWx3 uint8 BGR, un-mirrored
    index: int
    # A session frame's label in screen pixels, when the source has one.
    label_px: tuple[float, float] | None = None
    name: str | None = None  # file name for session frames, for error messages


@dataclass(slots=True)
class FaceLandmarks:
    """MediaPipe face mesh in image pixels plus the head pose derived from it."""

    points: np.ndarray  # (478, 3) float32: x, y in pixels, z in the same scale as x
    head_ypr: np.ndarray  # (3,) float64 radians: yaw, pitch, roll
    image_size: tuple[int, int]  # (width, height)
    blendshapes: dict[str, float] | None = None
    faces_seen: int = 1
    # The head's rotation, canonical face -> OpenCV camera axes (solvePnP); None where no
    # pose was solved (a reader that only has angles).
    head_rotation: np.ndarray | None = None


@dataclass(slots=True)
class EyeFeatures:
    iris_offset: np.ndarray  # (2,) iris centre in the eye's corner frame / eye width
    aperture: float  # eyelid gap / eye width
    blink: bool
    crop: np.ndarray  # 60x60x3 uint8 BGR, aligned and roll-corrected
    crop_clipped: bool  # the crop box reached outside the frame (padded)
    centre_px: np.ndarray  # (2,) midpoint between the corners, image pixels
    width_px: float


@dataclass(slots=True)
class Features:
    left: EyeFeatures  # the person's left eye (image right in an un-mirrored frame)
    right: EyeFeatures
    head_ypr: np.ndarray  # (3,) radians
    # Midpoint of the eye corners in camera axes (x image right, y up, z toward the camera,
    # so z < 0), mm: `fastpath.eye_geometry`. None when not computed.
    eye_mm: np.ndarray | None = None
    # The head's rotation from solvePnP (canonical face -> OpenCV camera axes), None where no
    # pose was solved; with `eye_mm` it gives the pose in the eyes' ray frame on demand.
    head_rotation: np.ndarray | None = None

    @property
    def head_ypr_eye(self) -> np.ndarray | None:
        """The head pose in the eyes' ray frame (`headpose.ypr_in_eye_frame`), what the gaze
        network is told with `FastPathConfig.gaze_frame = "ray"`; None without a solved pose
        or eye position. Computed when asked, so the camera frame pays nothing."""
        from gazeloop.fastpath.headpose import ypr_in_eye_frame

        e = self.eye_mm
        if self.head_rotation is None or e is None or not np.all(np.isfinite(e)):
            return None
        return ypr_in_eye_frame(self.head_rotation, e)

    def network_head_ypr(self, frame: str = "camera") -> np.ndarray:
        """The head pose the gaze network is told in `frame` ("ray" or "camera"): yaw and
        pitch of that frame, and the image roll the crops were aligned by. "ray" without an
        eye-frame pose falls back to the camera's axes."""
        return self.network_head(frame)[0]

    def network_head(self, frame: str = "camera") -> tuple[np.ndarray, str]:
        """`network_head_ypr` and the frame it is really in ("camera" after a fallback)."""
        eye = self.head_ypr_eye if frame == "ray" else None
        if eye is not None:
            return np.array([eye[0], eye[1], self.head_ypr[2]]), "ray"
        return self.head_ypr, "camera"

    def vector(self) -> np.ndarray:
        """Flat geometric features for mappings: iris offsets, apertures, head pose."""
        return np.array(
            [
                *self.left.iris_offset,
                *self.right.iris_offset,
                self.left.aperture,
                self.right.aperture,
                *self.head_ypr,
            ],
            dtype=np.float64,
        )


@dataclass(slots=True)
class Quality:
    face: bool = False
    blink: bool = False
    crop_clipped: bool = False
    confidence: float = 0.0  # 0..1; 0 when there is no usable estimate
    faces_seen: int = 0
    error: str | None = None  # why a stage failed on this frame (NaN, bad image, ...)

    @property
    def usable(self) -> bool:
        return self.face and not self.blink and self.error is None


@dataclass(slots=True)
class GazeSample:
    """What the fast path says about one frame."""

    t_ns: int
    index: int
    quality: Quality
    gaze_yp: np.ndarray | None = None  # (2,) radians, filtered
    gaze_yp_raw: np.ndarray | None = None  # (2,) radians, before the filter
    gaze_vector: np.ndarray | None = None  # (3,) unit, camera axes (x right, y up, z to camera)
    embedding: np.ndarray | None = None  # model features before its gaze head, if any
    features: Features | None = None
    landmarks: FaceLandmarks | None = None
    screen_xy: np.ndarray | None = None  # (2,) normalised [0,1]^2, once a profile exists
    # mapped + offset, before the filter and not clipped: this frame's own estimate, what
    # the History keeps for the drift loop and the click rules (a point past the screen's
    # edge is judged where it is; the filtered one trails a gaze shift)
    screen_xy_raw: np.ndarray | None = None
    screen_xy_unclipped: np.ndarray | None = None  # screen_xy before it was clipped
    screen_px: np.ndarray | None = None  # screen_xy in pixels of the current screen
    stage_ms: dict[str, float] = field(default_factory=dict)
    # The frame of the head pose the gaze network was told (`Features.network_head`): with
    # "ray" its answer is already in the eyes' ray frame.
    head_frame: str = "camera"

    def feature_dict(self) -> dict[str, float]:
        """Every scalar feature by name (what calibration feature specs refer to); empty
        when the frame gave no gaze. Uses the unfiltered gaze: mappings are fitted and
        applied before the filter."""
        if self.gaze_yp_raw is None or self.features is None:
            return {}
        f = self.features
        d = {
            "gaze_yaw": float(self.gaze_yp_raw[0]),
            "gaze_pitch": float(self.gaze_yp_raw[1]),
            "head_yaw": float(f.head_ypr[0]),
            "head_pitch": float(f.head_ypr[1]),
            "head_roll": float(f.head_ypr[2]),
            "iris_lx": float(f.left.iris_offset[0]),
            "iris_ly": float(f.left.iris_offset[1]),
            "iris_rx": float(f.right.iris_offset[0]),
            "iris_ry": float(f.right.iris_offset[1]),
            "aperture_l": f.left.aperture,
            "aperture_r": f.right.aperture,
        }
        if f.eye_mm is not None:
            d["eye_x_mm"], d["eye_y_mm"], d["eye_z_mm"] = (float(v) for v in f.eye_mm)
            # Told the ray-frame pose, the network already answered in that frame: turning
            # its answer by the eyes' line again would count the head's place twice.
            told_ray = self.head_frame == "ray"
            ray = self.gaze_yp_raw if told_ray else gaze_in_eye_frame(self.gaze_vector, f.eye_mm)
            if ray is not None:
                d["gaze_ray_yaw"], d["gaze_ray_pitch"] = (float(v) for v in ray)
        if self.embedding is not None:
            d.update({f"emb_{i}": float(v) for i, v in enumerate(self.embedding)})
        return d


def gaze_in_eye_frame(vector: np.ndarray | None, eye_mm: np.ndarray) -> np.ndarray | None:
    """The gaze vector's (yaw, pitch) in the eyes' ray frame (`headpose.eye_ray_frame`):
    the angles the gaze makes with the line from the eyes to the camera. Where the face is
    in the image turns the camera-axes angles by as much as it turns that line, so a head
    moved between sittings moves these less. None without a finite vector or position.

    Scalar maths on two 3-vectors, as `eye_geometry` does: every mapped frame asks for it
    (`feature_dict`), and numpy's per-call overhead made it 50 us; a test holds it equal to
    `eye_ray_frame` @ vector."""
    if vector is None:
        return None
    vx, vy, vz = (float(v) for v in vector)
    ex, ey, ez = (float(v) for v in eye_mm)
    n = math.sqrt(ex * ex + ey * ey + ez * ez)
    if not (n > 0 and math.isfinite(n) and math.isfinite(vx + vy + vz)):
        return None
    zx, zy, zz = -ex / n, -ey / n, -ez / n  # z: from the eyes to the camera
    yx, yy, yz = -zy * zx, 1.0 - zy * zy, -zy * zz  # the camera's up, made orthogonal to z
    m = math.sqrt(yx * yx + yy * yy + yz * yz)
    yx, yy, yz = yx / m, yy / m, yz / m
    xx, xy, xz = yy * zz - yz * zy, yz * zx - yx * zz, yx * zy - yy * zx  # x = y × z
    a, b, c = xx * vx + xy * vy + xz * vz, yx * vx + yy * vy + yz * vz, zx * vx + zy * vy + zz * vz
    norm = math.sqrt(a * a + b * b + c * c)
    return np.array([math.atan2(a, c), math.asin(max(-1.0, min(1.0, b / norm)))])
