"""MediaPipe face landmarks (478 points with iris) in tracking mode, behind one interface.

Three backends:
- `onnx` (the default): the `face_landmarker.task` bundle's detector and mesh networks,
  rebuilt as ONNX and tracked by us (`face_onnx`); needs no mediapipe, so it installs on every
  platform and Python the README lists, with numpy 2; no blendshapes.
- `tasks`: MediaPipe's Tasks FaceLandmarker on the same bundle (the `mediapipe` extra; adds
  blendshapes).
- `legacy`: the FaceMesh solution of mediapipe 0.10.21 (the `legacy` extra), whose wheels
  exist only for CPython <= 3.12 on x86_64 Linux and macOS and pin numpy<2.

Why `onnx` is the default although `legacy` is faster (landmarks p50 5.2 against 7.0 ms,
interleaved in one process on the 4-corner video, 2-core x86 VM, 2026-12-04): the legacy
mesh is a smaller network (192x192, attention) than the bundle's (256x256), whose graph
costs about 5 ms in onnxruntime and 5.5 ms in LiteRT alike here; and a default that cannot be
installed on a current Mac or on the aarch64 training box is no default.

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

from gazeloop.fastpath.headpose import HeadPoseEstimator, load_canonical_face
from gazeloop.fastpath.types import FaceLandmarks

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "tasks", "legacy")
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
            points=pts,
            head_ypr=ypr,
            image_size=size,
            blendshapes=blend,
            faces_seen=len(faces),
            head_rotation=self.pose.rotation,
        )


def _to_pixels(landmarks, w: int, h: int) -> np.ndarray:
    a = np.array([(p.x, p.y, p.z) for p in landmarks], dtype=np.float32)
    return _scale(a, w, h)


def _scale(a: np.ndarray, w: int, h: int) -> np.ndarray:
    a[:, 0] *= w
    a[:, 1] *= h
    a[:, 2] *= w  # MediaPipe's z uses roughly the x scale
    return a


# A serialized NormalizedLandmarkList whose landmarks all carry exactly x, y and z is a run of
# 17-byte records: 0x0a 0x0f (field 1, 15 bytes), then 0x0d x, 0x15 y, 0x1d z as little-endian
# float32. Reading that with numpy took 0.03 ms against 0.16 ms for walking 478 protobuf
# objects (2-core x86 VM, 2026-11-22); anything else (visibility, presence, a missing field)
# goes through protobuf.
_RECORD = 17
_TAGS = {0: 0x0A, 1: 0x0F, 2: 0x0D, 7: 0x15, 12: 0x1D}
_FLOAT_BYTES = np.r_[3:7, 8:12, 13:17]


def parse_landmark_list(data: bytes) -> np.ndarray:
    """(n, 3) float32 normalised x, y, z from a serialized NormalizedLandmarkList."""
    b = np.frombuffer(data, dtype=np.uint8)
    if b.size and b.size % _RECORD == 0:
        rec = b.reshape(-1, _RECORD)
        if all(np.all(rec[:, col] == tag) for col, tag in _TAGS.items()):
            return rec[:, _FLOAT_BYTES].copy().view("<f4").reshape(-1, 3)
    from mediapipe.framework.formats import landmark_pb2

    msg = landmark_pb2.NormalizedLandmarkList.FromString(data)
    return np.array([(p.x, p.y, p.z) for p in msg.landmark], dtype=np.float32).reshape(-1, 3)


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
                "the 'legacy' landmark backend needs mediapipe 0.10.21 (its FaceMesh solution; "
                "CPython <= 3.12 on x86_64 Linux or macOS only): pip install 'gazeloop[legacy]', "
                "or use the default --landmarks onnx"
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
        self._lean = _LeanGraph.attach(self._mesh)

    def reset(self) -> None:
        # A new graph forgets the tracked face (used when a source jumps, e.g. a loop).
        self._mesh.close()
        self._mesh = self._mod.FaceMesh(**self._args)
        self._lean = _LeanGraph.attach(self._mesh)
        self.pose.reset()

    def detect(self, image_bgr: np.ndarray, t_ns: int) -> FaceLandmarks | None:
        h, w = image_bgr.shape[:2]
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        if self._lean is not None:
            faces = [_scale(parse_landmark_list(b), w, h) for b in self._lean.run(rgb)]
        else:
            res = self._mesh.process(rgb)
            faces = [_to_pixels(f.landmark, w, h) for f in (res.multi_face_landmarks or [])]
        return self._finish(faces, (w, h), None)

    def close(self) -> None:
        self._mesh.close()


class _LeanGraph:
    """FaceMesh.process() without its per-call overhead.

    `SolutionBase.process` builds a new namedtuple class on every call and parses the output
    into protobuf objects: 0.35 ms of Python per frame on a 2.7 ms call (cProfile, 2-core x86
    VM, 2026-11-22). This does the same three graph steps (one image packet at the solution's
    simulated 30 fps clock, wait until idle, read the output stream) and hands back the
    serialized landmark lists. It relies on SolutionBase internals of mediapipe 0.10.21, the
    last release with the legacy solutions; if they are missing, `attach` returns None and the
    public `process` is used. A test checks both paths give identical landmarks.
    """

    OUTPUT = "multi_face_landmarks"

    def __init__(self, mesh, stream: str, create, get_list, fmt):
        self.mesh, self.stream = mesh, stream
        self._create, self._get_list, self._fmt = create, get_list, fmt

    @classmethod
    def attach(cls, mesh) -> _LeanGraph | None:
        try:
            from mediapipe.python import packet_creator
            from mediapipe.python._framework_bindings import _packet_getter, image_frame

            streams = list(mesh._input_stream_type_info)
            if len(streams) != 1 or cls.OUTPUT not in mesh._output_stream_type_info:
                return None
            for name in ("_graph", "_graph_outputs", "_simulated_timestamp"):
                getattr(mesh, name)
            return cls(
                mesh,
                streams[0],
                packet_creator.create_image_frame,
                _packet_getter._get_serialized_proto_list,
                image_frame.ImageFormat.SRGB,
            )
        except (ImportError, AttributeError, TypeError):
            log.info("mediapipe internals changed; using FaceMesh.process")
            return None

    def run(self, rgb: np.ndarray) -> list[bytes]:
        m = self.mesh
        m._graph_outputs.clear()
        m._simulated_timestamp += 33333
        packet = self._create(rgb, image_format=self._fmt).at(m._simulated_timestamp)
        m._graph.add_packet_to_input_stream(stream=self.stream, packet=packet)
        m._graph.wait_until_idle()
        out = m._graph_outputs.get(self.OUTPUT)
        if out is None or out.is_empty():
            return []
        return self._get_list(out)


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
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as e:
            raise LandmarkError(
                f"the 'tasks' landmark backend needs MediaPipe ({e}): pip install "
                "'gazeloop[mediapipe]', or use the default --landmarks onnx"
            ) from e

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
    name: str,
    task_path: Path,
    *,
    max_faces: int = 1,
    camera_matrix: np.ndarray | None = None,
    providers: list[str] | None = None,
) -> LandmarkBackend:
    """`providers`: onnxruntime execution providers, for the `onnx` backend (the MediaPipe
    backends run their own runtime)."""
    if name == "legacy":
        return LegacyFaceMesh(task_path, max_faces=max_faces, camera_matrix=camera_matrix)
    if name == "tasks":
        return TasksFaceLandmarker(task_path, max_faces=max_faces, camera_matrix=camera_matrix)
    if name == "onnx":  # the .task's own networks in onnxruntime, no mediapipe (face_onnx)
        from gazeloop.fastpath.face_onnx import OnnxFaceLandmarker

        return OnnxFaceLandmarker(
            task_path, max_faces=max_faces, camera_matrix=camera_matrix, providers=providers
        )
    raise ValueError(f"unknown landmark backend {name!r}; choose one of {', '.join(BACKENDS)}")
