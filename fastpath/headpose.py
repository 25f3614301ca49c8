"""Head pose from face-mesh landmarks, the same way for every landmark backend.

The 3D reference is MediaPipe's own canonical face mesh, read from the geometry metadata in
`face_landmarker.task` (so nothing derived from it is copied into this repository). Only the
33 landmarks MediaPipe itself uses for its Procrustes fit are used: they sit on rigid parts
of the face (nose bridge, cheekbones, eye corners) and do not move with expressions.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gazeloop.fastpath.protowire import iter_fields

_METADATA = "geometry_pipeline_metadata_landmarks.binarypb"


@dataclass(frozen=True, slots=True)
class CanonicalFace:
    ids: np.ndarray  # (K,) landmark indices
    points: np.ndarray  # (K, 3) canonical positions: x image-right, y up, z toward the camera


class CanonicalFaceError(RuntimeError):
    """The bundle's geometry metadata is missing or not what MediaPipe writes."""


def parse_canonical_face(raw: bytes) -> CanonicalFace:
    """The Procrustes landmark basis and its canonical-mesh positions from a serialized
    `GeometryPipelineMetadata` (canonical_mesh = 1, procrustes_landmark_basis = 2;
    Mesh3d.vertex_buffer = 3, five floats per vertex x, y, z, u, v;
    WeightedLandmarkRef.landmark_id = 1).

    A few lines of protobuf wire format instead of mediapipe's generated classes: maintained
    MediaPipe (1.x) no longer ships them, and no landmark backend should need mediapipe to
    know the face's shape. Checked against mediapipe 0.10.21's own parse in the tests."""
    ids: list[int] = []
    verts: list[np.ndarray] = []
    for field, wire, value in iter_fields(raw):
        if field == 1 and wire == 2:
            for f2, w2, v2 in iter_fields(value):
                if f2 == 3 and w2 in (2, 5):  # packed floats, or one unpacked float
                    verts.append(np.frombuffer(v2, "<f4"))
        elif field == 2 and wire == 2:
            for f2, w2, v2 in iter_fields(value):
                if f2 == 1 and w2 == 0:
                    ids.append(int(v2))
    buf = np.concatenate(verts).astype(np.float64) if verts else np.zeros(0)
    if not ids or buf.size == 0 or buf.size % 5:
        raise ValueError("no canonical mesh / landmark basis in the geometry metadata")
    verts3 = buf.reshape(-1, 5)[:, :3]
    ids_a = np.array(ids, dtype=np.int64)
    if ids_a.max() >= len(verts3):
        raise ValueError("landmark basis refers past the canonical mesh")
    return CanonicalFace(ids=ids_a, points=verts3[ids_a].copy())


def load_canonical_face(task_path: str | Path) -> CanonicalFace:
    try:
        with zipfile.ZipFile(task_path) as z:
            raw = z.read(_METADATA)
        return parse_canonical_face(raw)
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as e:
        raise CanonicalFaceError(f"{task_path}: cannot read {_METADATA}: {e}") from e


# OpenCV's camera frame has y down and z away from the camera; the canonical face has y up
# and z toward the viewer. A face looking straight at the camera is this rotation.
_FLIP = np.diag([1.0, -1.0, -1.0])


class HeadPoseEstimator:
    """solvePnP of the canonical face against 2D landmarks, warm-started from the last pose.

    The focal length defaults to the image width (about a 53° horizontal field of view, typical
    of laptop webcams); pass real intrinsics when known. Yaw and pitch only need to be
    consistent for one user and camera: the calibration mapping absorbs a scale error.
    """

    def __init__(self, canonical: CanonicalFace, camera_matrix: np.ndarray | None = None):
        self.canonical = canonical
        self.camera_matrix = camera_matrix
        self._rvec: np.ndarray | None = None
        self._tvec: np.ndarray | None = None
        self.rotation: np.ndarray | None = None  # of the last estimate (3x3)

    def reset(self) -> None:
        self._rvec = self._tvec = None
        self.rotation = None

    def _k(self, w: int, h: int) -> np.ndarray:
        if self.camera_matrix is not None:
            return self.camera_matrix
        f = float(w)
        return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], dtype=np.float64)

    def estimate(self, points_px: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """(yaw, pitch, roll) in radians; yaw > 0 face turned to image right, pitch > 0 face
        up, roll > 0 face rotated clockwise in the image."""
        img = np.ascontiguousarray(points_px[self.canonical.ids, :2], dtype=np.float64)
        k = self._k(*image_size)
        if self._rvec is None:
            ok, rvec, tvec = cv2.solvePnP(
                self.canonical.points, img, k, None, flags=cv2.SOLVEPNP_SQPNP
            )
        else:
            ok, rvec, tvec = cv2.solvePnP(
                self.canonical.points,
                img,
                k,
                None,
                self._rvec.copy(),
                self._tvec.copy(),
                useExtrinsicGuess=True,
                flags=cv2.SOLVEPNP_ITERATIVE,
            )
        if not ok or not np.all(np.isfinite(rvec)):
            self.reset()
            return np.full(3, np.nan)
        self._rvec, self._tvec = rvec, tvec
        r, _ = cv2.Rodrigues(rvec)
        self.rotation = r
        return rotation_to_ypr(r)


def rotation_to_ypr(r_model_to_cam: np.ndarray) -> np.ndarray:
    """Yaw, pitch, roll of the face from its model→OpenCV-camera rotation."""
    rel = r_model_to_cam @ _FLIP  # identity for a frontal face
    fwd = rel @ np.array([0.0, 0.0, -1.0])  # face normal in camera axes (toward the camera)
    # The normal points at the camera (-z); it swings to +x when the face turns to image right.
    yaw = np.arctan2(fwd[0], -fwd[2])
    pitch = np.arctan2(-fwd[1], np.hypot(fwd[0], fwd[2]))
    right = rel @ np.array([1.0, 0.0, 0.0])  # the face's x axis in the image (y down)
    roll = np.arctan2(right[1], right[0])
    return np.array([yaw, pitch, roll], dtype=np.float64)


def eye_ray_frame(eye_mm: np.ndarray) -> np.ndarray:
    """(3, 3): rows are the x, y, z axes of the eyes' ray frame in camera axes (ours: x image
    right, y up, z toward the camera): z from the eyes to the camera, y the camera's up made
    orthogonal to z, x = y × z. The same frame as `calibration.mapping.geometric.ray_frames`
    (a test holds them equal): the frame of a camera turned to look straight at the eyes,
    which is the "normalised camera" of appearance-based gaze estimation (Zhang et al.,
    ETRA 2018), and so the frame in which an eye crop tells head and gaze angles."""
    z = -np.asarray(eye_mm, dtype=np.float64)
    z = z / np.linalg.norm(z)
    y = np.array([-z[1] * z[0], 1.0 - z[1] * z[1], -z[1] * z[2]])
    y /= np.linalg.norm(y)
    # x = y × z written out: np.cross costs ~15 us, and the ray-frame read (the default)
    # asks for this frame on every frame.
    x = np.array([y[1] * z[2] - y[2] * z[1], y[2] * z[0] - y[0] * z[2], y[0] * z[1] - y[1] * z[0]])
    return np.stack([x, y, z])


def ypr_in_eye_frame(r_model_to_cam: np.ndarray, eye_mm: np.ndarray) -> np.ndarray:
    """Head (yaw, pitch, roll) as measured in the eyes' ray frame (`eye_ray_frame`): zero
    when the face looks back along the ray from the camera, wherever it is in the image.
    `r_model_to_cam`: the solvePnP rotation (OpenCV camera axes)."""
    frame_cv = _FLIP @ eye_ray_frame(eye_mm) @ _FLIP  # the same frame, OpenCV axes
    return rotation_to_ypr(frame_cv @ r_model_to_cam)
