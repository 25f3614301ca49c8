"""Landmark backend `onnx`: the `face_landmarker.task` networks run in onnxruntime, tracked.

The bundle's own TFLite networks (`face_detector.tflite`, BlazeFace short range 128x128, and
`face_landmarks_detector.tflite`, the 478-point mesh with iris at 256x256) are rebuilt as
ONNX once (`tflite_onnx`, into the model cache; `gazeloop models build` or first use) and run
here with the same pre- and post-processing MediaPipe's FaceLandmarker graph does:

- detector: the whole frame letterboxed to 128x128 (zero border, [-1, 1]), 896 SSD anchors,
  sigmoid scores >= 0.5, weighted non-maximum suppression (IoU 0.3), projected back to the
  frame; the face ROI is the box scaled 1.5x, rotated so the eyes (keypoints 0, 1) are level.
- landmarks: the ROI warped to 256x256 (bilinear, replicated border, [0, 1]; the rebuilt
  network takes the BGR pixels as NCHW planes with that scaling folded in); the 478 points
  projected back through the ROI; the face-presence score (sigmoid of the second output)
  below 0.5 means the face is lost. The next frame's ROI comes from these landmarks: their
  bounding box, rotated so points 33 -> 263 are level, squared on the long side, scaled 1.5x.
- tracking: the detector runs only when no face is tracked (first frame, after `reset()`,
  after a loss) or fewer faces are tracked than `max_faces`. Unlike MediaPipe, a face lost
  while tracking is looked for again with the detector in the same frame, so a fast head
  movement costs one detector run instead of one dropped frame.

Both networks run on the execution providers given (`fastpath.providers`: CoreML on a Mac,
CUDA when offered, CPU otherwise). Per frame, while tracking, the time goes to the landmark
network (~85 %), the perspective warp of the ROI (~0.45 ms; `cv2.warpAffine` would save
~0.15 ms but moves landmarks by up to 0.03 px against MediaPipe) and head pose (~0.12 ms).

No temporal smoothing is applied (MediaPipe's Tasks API smooths landmarks in VIDEO mode; the
legacy FaceMesh did not; the fast path has its own filter after the gaze model). Nothing here
imports mediapipe: the canonical face for head pose is read from the bundle's geometry
metadata by a few lines of protobuf wire-format decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gazeloop.fastpath.headpose import (
    CanonicalFace,
    CanonicalFaceError,
    HeadPoseEstimator,
    load_canonical_face,
)
from gazeloop.fastpath.landmarks import LandmarkError
from gazeloop.fastpath.providers import resolve_providers
from gazeloop.fastpath.sessions import SessionOpenError, open_session
from gazeloop.fastpath.types import FaceLandmarks

N_POINTS = 478

# FaceLandmarker graph constants (MediaPipe tasks/cc/vision/face_detector and
# face_landmarker graphs); they are not in the models' metadata.
_DET_SIZE = 128
_LM_SIZE = 256
_DET_STRIDES = (8, 16, 16, 16)
_DET_SCALE = 128.0
_DET_NUM_KEYPOINTS = 6
_NMS_IOU = 0.3
_ROI_SCALE = 1.5
# A fresh detection (a still, the first frame, after reset()) is refined by averaging the
# mesh over the landmark ROI nudged by 3 % of its size each way and scaled by +-6 %: with no
# earlier frames to smooth over, one crop's landmark noise (1-2 % of the eye distance, and
# head-pose jumps of +-2 deg between two equally good crops) goes straight into the gaze.
_FRESH_JITTER = (
    (0.0, 0.0, 1.0),
    (0.03, 0.0, 1.0),
    (-0.03, 0.0, 1.0),
    (0.0, 0.03, 1.0),
    (0.0, -0.03, 1.0),
    (0.0, 0.0, 1.06),
    (0.0, 0.0, 0.94),
)
_EYE_OUTER = (33, 263)  # landmark ids that level the ROI (left side of left eye, right side)


class FaceOnnxError(LandmarkError):
    """A model file of the `onnx` landmark backend is missing, corrupt or not the expected
    network. The message is one line and names the file."""


# -- the canonical face (headpose reads it without mediapipe) --------------------------------


def load_canonical_face_bundle(task_path: str | Path) -> CanonicalFace:
    try:
        return load_canonical_face(task_path)
    except CanonicalFaceError as e:
        raise FaceOnnxError(str(e)) from e


# -- rectangles (MediaPipe NormalizedRect semantics) ----------------------------------------


@dataclass(slots=True)
class Rect:
    """A rotated rectangle in normalised image coordinates (x by width, y by height)."""

    cx: float
    cy: float
    w: float
    h: float
    rotation: float  # radians


def _normalize_radians(a: float) -> float:
    return a - 2 * math.pi * math.floor((a + math.pi) / (2 * math.pi))


def _rotation(p0: np.ndarray, p1: np.ndarray, size: tuple[int, int]) -> float:
    """DetectionsToRectsCalculator: angle that makes p0 -> p1 horizontal (target 0)."""
    w, h = size
    x0, y0 = p0[0] * w, p0[1] * h
    x1, y1 = p1[0] * w, p1[1] * h
    return _normalize_radians(-math.atan2(-(y1 - y0), x1 - x0))


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """IoU of two axis-aligned boxes given as (xmin, ymin, xmax, ymax)."""
    ix0, iy0 = max(a[0], b[0]), max(a[1], b[1])
    ix1, iy1 = min(a[2], b[2]), min(a[3], b[3])
    if ix1 <= ix0 or iy1 <= iy0:
        return 0.0
    inter = (ix1 - ix0) * (iy1 - iy0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _rect_box(r: Rect) -> tuple[float, float, float, float]:
    return (r.cx - r.w / 2, r.cy - r.h / 2, r.cx + r.w / 2, r.cy + r.h / 2)


def rect_from_landmarks(norm: np.ndarray, size: tuple[int, int]) -> Rect:
    """Next frame's ROI from normalised landmarks: LandmarksToDetection (bounding box of all
    points) -> DetectionsToRects (level 33 -> 263) -> RectTransformation (square long side,
    scale 1.5)."""
    w_img, h_img = size
    x0, y0 = float(norm[:, 0].min()), float(norm[:, 1].min())
    x1, y1 = float(norm[:, 0].max()), float(norm[:, 1].max())
    rot = _rotation(norm[_EYE_OUTER[0]], norm[_EYE_OUTER[1]], size)
    long_side = max((x1 - x0) * w_img, (y1 - y0) * h_img)
    return Rect(
        (x0 + x1) / 2,
        (y0 + y1) / 2,
        long_side / w_img * _ROI_SCALE,
        long_side / h_img * _ROI_SCALE,
        rot,
    )


def _warp_matrix(r: Rect, size: tuple[int, int], out: int, pad_to_square: bool = False):
    """The matrix ImageToTensorCalculator (OpenCV path) uses: the ROI's corners (cv::boxPoints
    order) onto the output square, and the padded ROI it actually used. It is applied with
    cv2.warpPerspective as MediaPipe does: the map is affine, but cv2.warpAffine rounds the
    sample positions differently (0.15 ms faster per crop, and landmarks move by up to
    0.03 px in x/y and 0.16 px in iris z on the shared stills, against 0.002 px this way)."""
    w_img, h_img = size
    cx, cy, w, h = r.cx * w_img, r.cy * h_img, r.w * w_img, r.h * h_img
    if pad_to_square:  # keep_aspect_ratio: pad the ROI to the tensor's (square) aspect
        if h < w:
            h = w
        else:
            w = h
    box = cv2.boxPoints(((cx, cy), (w, h), r.rotation * 180.0 / math.pi)).astype(np.float32)
    dst = np.array([[0, out], [0, 0], [out, 0], [out, out]], np.float32)
    return cv2.getPerspectiveTransform(box, dst), (cx, cy, w, h)


# -- SSD anchors and detection decoding ------------------------------------------------------


def ssd_anchor_centres() -> np.ndarray:
    """(896, 2) anchor centres of the face detector (SsdAnchorsCalculator with the options
    FaceDetectorGraph sets: 4 layers, strides 8/16/16/16, one aspect ratio plus the
    interpolated one, fixed anchor size, so only centres matter)."""
    out = []
    i = 0
    while i < len(_DET_STRIDES):
        stride = _DET_STRIDES[i]
        j = i
        while j < len(_DET_STRIDES) and _DET_STRIDES[j] == stride:
            j += 1
        per_cell = 2 * (j - i)  # aspect 1.0 + interpolated scale, per layer of this stride
        fm = math.ceil(_DET_SIZE / stride)
        ys, xs = np.meshgrid(np.arange(fm), np.arange(fm), indexing="ij")
        c = np.stack([(xs + 0.5) / fm, (ys + 0.5) / fm], axis=-1).reshape(-1, 1, 2)
        out.append(np.repeat(c, per_cell, axis=1).reshape(-1, 2))
        i = j
    return np.concatenate(out).astype(np.float32)


@dataclass(slots=True)
class Detection:
    score: float
    box: np.ndarray  # (4,) xmin, ymin, xmax, ymax, normalised to the detector input
    keypoints: np.ndarray  # (6, 2)


def decode_detections(
    raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, min_score: float
) -> list[Detection]:
    """TensorsToDetectionsCalculator (reverse output order, scale 128, sigmoid scores
    clipped at +-100) followed by weighted non-maximum suppression (IoU > 0.3)."""
    raw = np.clip(raw_scores.reshape(-1).astype(np.float64), -100.0, 100.0)
    scores = 1.0 / (1.0 + np.exp(-raw))
    keep = np.flatnonzero(scores >= min_score)
    if keep.size == 0:
        return []
    r = raw_boxes.reshape(-1, 16)[keep] / _DET_SCALE
    a = anchors[keep]
    xc, yc = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
    w, h = r[:, 2], r[:, 3]
    boxes = np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)
    kps = r[:, 4 : 4 + 2 * _DET_NUM_KEYPOINTS].reshape(-1, _DET_NUM_KEYPOINTS, 2) + a[:, None]
    s = scores[keep]
    order = sorted(range(len(keep)), key=lambda i: -s[i])
    out: list[Detection] = []
    remaining = order
    while remaining:
        top = remaining[0]
        tb = tuple(boxes[top])
        cand, rest = [], []
        for i in remaining:
            (cand if _iou(tuple(boxes[i]), tb) > _NMS_IOU else rest).append(i)
        if cand:
            wts = s[cand][:, None]
            total = float(wts.sum())
            box = (boxes[cand] * wts).sum(axis=0) / total
            kp = (kps[cand] * wts[:, :, None]).sum(axis=0) / total
        else:
            box, kp = boxes[top], kps[top]
        out.append(Detection(float(s[top]), box.astype(np.float64), kp.astype(np.float64)))
        if len(rest) == len(remaining):
            break
        remaining = rest
    return out


# -- the onnxruntime sessions ---------------------------------------------------------------


class _Net:
    """One onnxruntime session of a rebuilt network plus its input normalisation."""

    def __init__(self, path: Path, what: str, threads: int, providers: list[str] | None):
        self.path = path
        if not path.is_file():
            raise FaceOnnxError(f"{what} model not found: {path}")
        try:
            self.session = open_session(
                path,
                threads=threads,
                providers=providers or resolve_providers("auto"),
                name=f"{what} model {path}",
            )
        except SessionOpenError as e:
            raise FaceOnnxError(f"{path}: cannot load the {what} model ({e})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            mean = float(meta["gazeloop.input_mean"].split(",")[0])
            std = float(meta["gazeloop.input_std"].split(",")[0])
        except (KeyError, ValueError):
            raise FaceOnnxError(
                f"{path}: no input normalisation in the model metadata; not a model built "
                "by `gazeloop models build`"
            ) from None
        self.scale = np.float32(1.0 / std)
        self.offset = np.float32(-mean / std)
        layout = meta.get("gazeloop.input_layout", "NHWC RGB")
        if layout not in ("NHWC RGB", "NCHW BGR"):
            raise FaceOnnxError(f"{path}: unknown input layout {layout!r} in the model metadata")
        # "NCHW BGR": BGR pixels as they are, normalisation folded into the network
        # (tflite_onnx.fold_image_input), used for the landmark network on every frame.
        self.planar = layout == "NCHW BGR"
        inp = self.session.get_inputs()[0]
        self.input = inp.name
        self.size = int(inp.shape[2] if self.planar else inp.shape[1])
        self.outputs = [o.name for o in self.session.get_outputs()]
        shape = (1, 3, self.size, self.size) if self.planar else (1, self.size, self.size, 3)
        self._buf = np.empty(shape, np.float32)
        self._feed = {self.input: self._buf}

    def run(self, crop_bgr: np.ndarray) -> list[np.ndarray]:
        """`crop_bgr`: size x size x 3 uint8 BGR."""
        if self.planar:
            # Planes straight into the input buffer: 32 us, against 45 us for a colour
            # conversion and scaling plus ~100 us for the graph's own NHWC -> NCHW transpose.
            for dst, plane in zip(self._buf[0], cv2.split(crop_bgr), strict=True):
                np.copyto(dst, plane, casting="unsafe")
            return self.session.run(self.outputs, self._feed)
        x = self._buf[0]
        rgb = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB)  # 10x faster than a reversed view
        np.multiply(rgb, self.scale, out=x, casting="unsafe")
        if self.offset:
            x += self.offset
        return self.session.run(self.outputs, self._feed)


# -- the backend ----------------------------------------------------------------------------


class OnnxFaceLandmarker:
    """Backend `onnx`: face mesh with iris from the `.task` networks in onnxruntime.

    Same contract as the MediaPipe backends: `detect()` returns FaceLandmarks with 478
    points in pixels (z in x's scale), iris points 468-477, head pose from
    `headpose.HeadPoseEstimator`, or None without a face; `reset()` forgets the track.
    `detector_runs` / `landmark_runs` count network calls (for tests and benchmarks).
    """

    name = "onnx"

    def __init__(
        self,
        task_path: str | Path,
        *,
        max_faces: int = 1,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        min_tracking_iou: float = 0.5,
        camera_matrix: np.ndarray | None = None,
        detector_onnx: str | Path | None = None,
        landmarks_onnx: str | Path | None = None,
        threads: int = 1,
        providers: list[str] | None = None,
        refine_fresh: bool = True,
    ):
        from gazeloop.fastpath import models

        task_path = Path(task_path)
        if not task_path.is_file():
            raise FaceOnnxError(f"face landmarker bundle not found: {task_path}")
        if detector_onnx is None or landmarks_onnx is None:
            try:
                det, lm = models.resolve_face_onnx(task_path)
            except (models.ModelFileError, OSError, ValueError) as e:
                raise FaceOnnxError(_one_line(e)) from None
            detector_onnx = detector_onnx or det
            landmarks_onnx = landmarks_onnx or lm
        self.pose = HeadPoseEstimator(load_canonical_face_bundle(task_path), camera_matrix)
        self.detector = _Net(Path(detector_onnx), "face detector", threads, providers)
        self.mesh = _Net(Path(landmarks_onnx), "face landmarks", threads, providers)
        if self.detector.size != _DET_SIZE or self.mesh.size != _LM_SIZE:
            raise FaceOnnxError(
                f"{detector_onnx}, {landmarks_onnx}: input sizes {self.detector.size}, "
                f"{self.mesh.size} are not the face landmarker's {_DET_SIZE}, {_LM_SIZE}"
            )
        self.max_faces = int(max_faces)
        self.min_detection_confidence = float(min_detection_confidence)
        self.min_presence_confidence = float(min_presence_confidence)
        self.min_tracking_iou = float(min_tracking_iou)
        self._anchors = ssd_anchor_centres()
        self._crop = np.empty((_LM_SIZE, _LM_SIZE, 3), np.uint8)  # reused every frame
        self._rois: list[Rect] = []
        self.refine_fresh = bool(refine_fresh)
        self._fresh = True  # nothing seen since construction or reset()
        self.detector_runs = 0
        self.landmark_runs = 0
        self.last_presence: list[float] = []

    # -- public --------------------------------------------------------------------------
    @property
    def providers(self) -> list[str]:
        """The providers the landmark network runs on, in priority order."""
        return list(self.mesh.session.get_providers())

    def reset(self) -> None:
        self._rois = []
        self._fresh = True
        self.pose.reset()

    def close(self) -> None:
        self._rois = []
        self.detector = self.mesh = None  # type: ignore[assignment]

    def detect(self, image_bgr: np.ndarray, t_ns: int) -> FaceLandmarks | None:
        h, w = image_bgr.shape[:2]
        size = (w, h)
        faces, rois, scores = [], [], []
        tracked = self._rois
        for roi in tracked:
            self._try(image_bgr, size, roi, faces, rois, scores)
        if len(faces) < self.max_faces:
            # Nothing (or not enough) tracked: the detector, on this frame.
            for roi in self.detect_rois(image_bgr):
                if len(faces) >= self.max_faces:
                    break
                box = _rect_box(roi)
                if any(_iou(box, _rect_box(r)) > self.min_tracking_iou for r in rois):
                    continue  # already tracked
                self._try(image_bgr, size, roi, faces, rois, scores)
        if faces and self._fresh and self.refine_fresh:
            for i, roi in enumerate(rois):
                faces[i], rois[i] = self._refined(image_bgr, roi, faces[i])
        self._rois = rois
        self.last_presence = scores
        if not faces:
            self.pose.reset()
            return None
        self._fresh = False
        pts = faces[0] if len(faces) == 1 else _largest(faces)
        ypr = self.pose.estimate(pts, size)
        return FaceLandmarks(
            points=pts,
            head_ypr=ypr,
            image_size=size,
            blendshapes=None,
            faces_seen=len(faces),
            head_rotation=self.pose.rotation,
        )

    # -- stages (public for parity checks) -------------------------------------------------
    def detect_rois(self, image_bgr: np.ndarray) -> list[Rect]:
        """Face detector on the whole frame -> landmark ROIs (at most max_faces)."""
        h, w = image_bgr.shape[:2]
        size = (w, h)
        full = Rect(0.5, 0.5, 1.0, 1.0, 0.0)
        m, (cx, cy, pw, ph) = _warp_matrix(full, size, _DET_SIZE, pad_to_square=True)
        crop = cv2.warpPerspective(
            image_bgr,
            m,
            (_DET_SIZE, _DET_SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        self.detector_runs += 1
        boxes, scores = self.detector.run(crop)
        dets = decode_detections(boxes, scores, self._anchors, self.min_detection_confidence)
        # DetectionProjection: letterboxed tensor space -> normalised image space.
        scale = np.array([pw / w, ph / h])
        shift = np.array([(cx - 0.5 * pw) / w, (cy - 0.5 * ph) / h])
        rois = []
        for d in dets[: self.max_faces]:
            (x0, y0), (x1, y1) = d.box.reshape(2, 2) * scale + shift
            kp = d.keypoints * scale + shift
            rot = _rotation(kp[0], kp[1], size)
            rois.append(
                Rect(
                    (x0 + x1) / 2,
                    (y0 + y1) / 2,
                    (x1 - x0) * _ROI_SCALE,
                    (y1 - y0) * _ROI_SCALE,
                    rot,
                )
            )
        return rois

    def landmarks_in(self, image_bgr: np.ndarray, roi: Rect) -> tuple[np.ndarray, float]:
        """(478, 3) normalised landmarks (x, y by image size, z by image width, as
        MediaPipe's NormalizedLandmark) and the face-presence score for one ROI."""
        h, w = image_bgr.shape[:2]
        m, _ = _warp_matrix(roi, (w, h), _LM_SIZE)
        crop = cv2.warpPerspective(
            image_bgr,
            m,
            (_LM_SIZE, _LM_SIZE),
            dst=self._crop,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        self.landmark_runs += 1
        raw, flag, *_ = self.mesh.run(crop)
        logit = min(max(float(flag.reshape(-1)[0]), -100.0), 100.0)
        presence = 1.0 / (1.0 + math.exp(-logit))
        p = raw.reshape(N_POINTS, 3).astype(np.float64) / _LM_SIZE
        # LandmarkProjectionCalculator with IMAGE_DIMENSIONS (what the FaceLandmarker graph
        # connects): the ROI's rotated-rect matrix in pixels, and z scaled by the length of
        # the projected unit x segment in normalised coordinates (so z's scale depends on the
        # ROI's rotation when the image is not square; MediaPipe's own quirk, kept).
        a, b = roi.w * w, roi.h * h
        c, s = math.cos(roi.rotation), math.sin(roi.rotation)
        x, y = p[:, 0] - 0.5, p[:, 1] - 0.5
        out = np.empty((N_POINTS, 3), np.float64)
        out[:, 0] = (a * c * x - b * s * y + roi.cx * w) / w
        out[:, 1] = (a * s * x + b * c * y + roi.cy * h) / h
        out[:, 2] = p[:, 2] * math.hypot(a * c / w, a * s / h)
        return out, presence

    def _refined(self, image: np.ndarray, roi: Rect, pts: np.ndarray) -> tuple[np.ndarray, Rect]:
        """The mesh averaged over `_FRESH_JITTER` crops around `roi` (the ROI the first
        pass's landmarks `pts` give), in pixels, and the ROI the average gives; the first
        pass unchanged when no crop keeps the face."""
        h, w = image.shape[:2]
        runs = []
        for dx, dy, scale in _FRESH_JITTER:
            r = Rect(roi.cx + dx * roi.w, roi.cy + dy * roi.h, roi.w * scale, roi.h * scale,
                     roi.rotation)  # fmt: skip
            norm, presence = self.landmarks_in(image, r)
            if presence >= self.min_presence_confidence and np.all(np.isfinite(norm)):
                runs.append(norm)
        if not runs:
            return pts, roi
        norm = np.mean(runs, axis=0)
        pts = (norm * (w, h, w)).astype(np.float32)
        return pts, rect_from_landmarks(norm, (w, h))

    def _try(self, image, size, roi, faces, rois, scores) -> None:
        norm, presence = self.landmarks_in(image, roi)
        scores.append(presence)
        if presence < self.min_presence_confidence or not np.all(np.isfinite(norm)):
            return
        w, h = size
        pts = np.empty((N_POINTS, 3), np.float32)
        pts[:, 0] = norm[:, 0] * w
        pts[:, 1] = norm[:, 1] * h
        pts[:, 2] = norm[:, 2] * w  # MediaPipe's z uses the x scale, as the other backends
        faces.append(pts)
        rois.append(rect_from_landmarks(norm, size))


def _largest(faces: list[np.ndarray]) -> np.ndarray:
    spans = [np.linalg.norm(f[33, :2] - f[263, :2]) for f in faces]
    return faces[int(np.argmax(spans))]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__
