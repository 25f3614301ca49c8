"""MediaPipe face landmarks (478 points with iris) in tracking mode, behind one interface.

Two backends:
- `legacy`: the FaceMesh solution (mediapipe 0.10.21, models inside the wheel).
- `tasks`: the Tasks FaceLandmarker (needs `face_landmarker.task`; adds blendshapes).

The default is `legacy` because it is the faster of the two, measured on this project's
4-corner video resized to 640x480, one process, 2-core x86 machine: FaceMesh 2.7 ms p50 per
frame against 7.5 ms for the Tasks FaceLandmarker (7.2 ms without blendshapes), and the fast
path's whole budget is 8 ms. The Tasks backend is there for its blendshapes (eyeLook*).

Face choice when several faces are present: the backends track one face (`max_faces=1`), the
one MediaPipe's detector scores highest, and stay on it until it is lost. With `max_faces>1`
the face with the largest eye-corner span (the nearest person) is chosen, every frame.
Head pose comes from `headpose.HeadPoseEstimator` for both backends, so they agree.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from fastpath.headpose import HeadPoseEstimator, load_canonical_face
from fastpath.types import FaceLandmarks

log = logging.getLogger(__name__)

BACKENDS = ("legacy", "tasks")
N_POINTS = 478


class LandmarkError(RuntimeError):
    pass


class LandmarkBackend(Protocol):
    name: str

    def detect(self, image_bgr: np.ndarray, t_ns: int) -> FaceLandmarks | None: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


def _pick_face(faces: list[np.ndarray]) -> np.ndarray:
    if len(faces) == 1:
        return faces[0]
    spans = [np.linalg.norm(f[33, :2] - f[263, :2]) for f in faces]
    return faces[int(np.argmax(spans))]


class _Base:
    name = "base"

    def __init__(self, task_path: Path, camera_matrix: np.ndarray | None):
        self.pose = HeadPoseEstimator(load_canonical_face(task_path), camera_matrix)

    def _finish(
        self, faces: list[np.ndarray], size: tuple[int, int], blend: dict[str, float] | None
    ) -> FaceLandmarks | None:
        if not faces:
            self.pose.reset()
            return None
        pts = _pick_face(faces)
        if not np.all(np.isfinite(pts)):
            self.pose.reset()
            return None
        ypr = self.pose.estimate(pts, size)
        return FaceLandmarks(
            points=pts, head_ypr=ypr, image_size=size, blendshapes=blend, faces_seen=len(faces)
        )


def _to_pixels(landmarks, w: int, h: int) -> np.ndarray:
    a = np.array([(p.x, p.y, p.z) for p in landmarks], dtype=np.float32)
    a[:, 0] *= w
    a[:, 1] *= h
    a[:, 2] *= w  # MediaPipe's z uses roughly the x scale
    return a


class LegacyFaceMesh(_Base):
    name = "legacy"

    def __init__(
        self,
        task_path: Path,
        *,
        max_faces: int = 1,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        camera_matrix: np.ndarray | None = None,
    ):
        super().__init__(task_path, camera_matrix)
        try:
            from mediapipe.python.solutions import face_mesh
        except ImportError as e:  # mediapipe >= 0.10.30 removed the legacy solutions
            raise LandmarkError(
                "the 'legacy' landmark backend needs mediapipe 0.10.21 (FaceMesh solution); "
                "install it or use --landmarks tasks"
            ) from e
        self._args = dict(
            static_image_mode=False,
            max_num_faces=max_faces,
            refine_landmarks=True,  # adds the 10 iris points (468..477)
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        self._mod = face_mesh
        self._mesh = face_mesh.FaceMesh(**self._args)

    def reset(self) -> None:
        # A new graph forgets the tracked face (used when a source jumps, e.g. a loop).
        self._mesh.close()
        self._mesh = self._mod.FaceMesh(**self._args)
        self.pose.reset()

    def detect(self, image_bgr: np.ndarray, t_ns: int) -> FaceLandmarks | None:
        h, w = image_bgr.shape[:2]
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        res = self._mesh.process(rgb)
        faces = [_to_pixels(f.landmark, w, h) for f in (res.multi_face_landmarks or [])]
        return self._finish(faces, (w, h), None)

    def close(self) -> None:
        self._mesh.close()


class TasksFaceLandmarker(_Base):
    name = "tasks"

    def __init__(
        self,
        task_path: Path,
        *,
        max_faces: int = 1,
        blendshapes: bool = True,
        camera_matrix: np.ndarray | None = None,
    ):
        super().__init__(task_path, camera_matrix)
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self._mp = mp
        self._opts = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(task_path)),
            running_mode=vision.RunningMode.VIDEO,
            num_faces=max_faces,
            output_face_blendshapes=blendshapes,
        )
        self._vision = vision
        self._lm = vision.FaceLandmarker.create_from_options(self._opts)
        self._last_ms = -1

    def reset(self) -> None:
        self._lm.close()
        self._lm = self._vision.FaceLandmarker.create_from_options(self._opts)
        self._last_ms = -1
        self.pose.reset()

    def detect(self, image_bgr: np.ndarray, t_ns: int) -> FaceLandmarks | None:
        h, w = image_bgr.shape[:2]
        t_ms = t_ns // 1_000_000
        if t_ms < self._last_ms:  # the graph refuses time going backwards
            self.reset()
        t_ms = max(t_ms, self._last_ms + 1)
        self._last_ms = t_ms
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        img = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb)
        res = self._lm.detect_for_video(img, t_ms)
        faces = [_to_pixels(f, w, h) for f in res.face_landmarks]
        blend = None
        if res.face_blendshapes and faces:
            i = 0 if len(faces) == 1 else faces.index(_pick_face(faces))
            blend = {c.category_name: float(c.score) for c in res.face_blendshapes[i]}
        return self._finish(faces, (w, h), blend)

    def close(self) -> None:
        self._lm.close()


def make_backend(
    name: str, task_path: Path, *, max_faces: int = 1, camera_matrix: np.ndarray | None = None
) -> LandmarkBackend:
    if name == "legacy":
        return LegacyFaceMesh(task_path, max_faces=max_faces, camera_matrix=camera_matrix)
    if name == "tasks":
        return TasksFaceLandmarker(task_path, max_faces=max_faces, camera_matrix=camera_matrix)
    raise ValueError(f"unknown landmark backend {name!r}; choose one of {', '.join(BACKENDS)}")
