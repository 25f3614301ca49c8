"""Run the gaze network (ONNX, onnxruntime) and express its answer in the project's axes.

Conventions (the project's, see DESIGN.md; angles in radians inside):
- Camera axes of a gaze vector: x to image right, y image up, z from the face toward the
  camera, for an un-mirrored frame.
- Gaze yaw = atan2(x, z) > 0 looking toward image right; pitch = asin(y) > 0 looking up.
- Head pose (yaw, pitch, roll): yaw > 0 when the face turns toward image right; pitch > 0
  when the face tilts up; roll > 0 when the face appears rotated clockwise in the displayed
  image (its top moves toward image right).
- Eyes are the person's: `left_crop` is the person's left eye (`Features.left`, which is on
  the image right in an un-mirrored frame).

The network (OMZ gaze-estimation-adas-0002, rebuilt by `fastpath.ir_onnx`) uses other
conventions; every conversion lives in the small pure functions below, with its evidence:
- Eye names: OMZ names eyes from the viewer's side (its face_recognition_demo aligns
  landmarks-regression output to a template whose "left eye" is at x = 30/96, image left;
  the gaze demo takes "left eye" from WFLW points 60/64, the image-left eye). So OMZ's
  `left_eye_image` is the image-left eye = the person's right eye.
- Head pose: OMZ yaw has our sign (the gaze demo draws the head's forward axis at
  dx = +sin(yaw)); OMZ pitch is positive DOWN (forward axis drawn at dy = +sin(pitch) in a
  y-down image, and the head-pose model's rotation matrix gives the face a -sin(pitch) up
  component), so it is negated; OMZ roll has our sign (the demo draws the face's "right"
  axis at (cos r, sin r) in y-down pixels, i.e. clockwise, and undoes it by rotating the eye
  crops counter-clockwise by roll). The network itself agrees: +20 deg yaw moves its output
  toward image right, +20 deg pitch moves it down.
- Gaze vector: the demo draws the gaze arrow at (x, -y) in y-down pixels, so x is image
  right and y is up, as ours. Its z is NEGATIVE when the eyes look at the camera (about
  -0.97 on the grid9 frames, where the person looks at a screen just below the camera),
  although the model card says z points to the camera: so z is flipped. (The demo's own
  angle formula, 90 deg + atan2(z, x), also reads 0 deg for z = -1.)
- Checked on real eyes (grid9, un-mirrored): with this eye assignment, mirroring a frame
  leaves pitch unchanged to ~1 deg; with the eyes swapped it moves by up to 8 deg, which
  supports the assignment. Yaw is not mirror-equivariant: yaw(frame) + yaw(mirror) is
  +4..+14 deg, a network bias toward image right that a per-user calibration absorbs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gazeloop.calibration.profile import read_name
from gazeloop.fastpath.features import CROP_SCALE
from gazeloop.fastpath.providers import resolve_providers
from gazeloop.fastpath.sessions import SessionOpenError, open_session

OMZ_IO_CONVENTION = "omz-gaze-estimation-adas-0002"  # same tag as fastpath.ir_onnx writes
CROP_SHAPE = (60, 60, 3)
_INPUTS = ("left_eye_image", "right_eye_image", "head_pose_angles")
_GAZE = "gaze_vector"
_EMBEDDING = "embedding"


class ModelLoadError(RuntimeError):
    """The gaze model file is missing, unreadable or not a gaze model we can run."""


@dataclass(slots=True)
class GazeOutput:
    vector: np.ndarray  # (3,) unit, camera axes: x image right, y up, z toward the camera
    yaw_pitch: np.ndarray  # (2,) radians
    embedding: np.ndarray | None  # (D,) activation entering the gaze head
    raw: np.ndarray  # (3,) the network's output as is (OMZ axes, roll-aligned, not unit)


@dataclass(slots=True)
class GazeBatch:
    vectors: np.ndarray  # (N, 3)
    yaw_pitch: np.ndarray  # (N, 2)
    embeddings: np.ndarray | None  # (N, D)
    raw: np.ndarray  # (N, 3)


# -- conventions as pure functions --------------------------------------------------------


def head_pose_to_omz_degrees(head_ypr: np.ndarray) -> np.ndarray:
    """Our (yaw, pitch, roll) radians -> OMZ head_pose_angles degrees; only pitch flips."""
    h = np.degrees(np.asarray(head_ypr, dtype=np.float64))
    return np.stack([h[..., 0], -h[..., 1], h[..., 2]], axis=-1)


def omz_gaze_to_camera(raw: np.ndarray) -> np.ndarray:
    """OMZ gaze axes (x right, y up, z away from the camera) -> ours (z toward the camera)."""
    v = np.array(raw, dtype=np.float64, copy=True)
    v[..., 2] *= -1.0
    return v


def rotate_vector_roll(v: np.ndarray, roll: np.ndarray | float) -> np.ndarray:
    """Bring a gaze vector from the roll-aligned eye frame back to camera axes.

    The caller rotated each crop counter-clockwise by `roll` (our sign: face rotated
    clockwise in the image) to make the eye corners horizontal, so the answer is rotated
    clockwise by `roll` about the camera's z axis: in y-up axes (x, y) -> (x cos r + y sin r,
    -x sin r + y cos r). This is the OMZ demo's back-rotation; z is untouched.
    """
    v = np.asarray(v, dtype=np.float64)
    r = np.asarray(roll, dtype=np.float64)
    c, s = np.cos(r), np.sin(r)
    out = np.empty(np.broadcast_shapes(v.shape, r.shape + (3,)), dtype=np.float64)
    out[..., 0] = v[..., 0] * c + v[..., 1] * s
    out[..., 1] = -v[..., 0] * s + v[..., 1] * c
    out[..., 2] = v[..., 2]
    return out


def vector_to_yaw_pitch(v: np.ndarray) -> np.ndarray:
    """Unit-or-not vectors (..., 3) in our axes -> (..., 2) gaze yaw, pitch in radians."""
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        yaw = np.arctan2(v[..., 0], v[..., 2])
        pitch = np.arcsin(np.clip(v[..., 1] / n, -1.0, 1.0))
    return np.stack([yaw, pitch], axis=-1)


def postprocess(raw: np.ndarray, roll: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Network output (..., 3) and the roll the crops were aligned by -> (unit vectors in our
    axes, yaw/pitch). A zero or non-finite output gives NaNs for the caller to flag."""
    v = rotate_vector_roll(omz_gaze_to_camera(raw), roll)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where((n > 0) & np.isfinite(n), v / n, np.nan)
    return v, vector_to_yaw_pitch(v)


def mirror_averaged(raw: np.ndarray, raw_mirrored: np.ndarray) -> np.ndarray:
    """The network's answer for a face averaged with its answer for the same face mirrored
    (crops flipped, eyes swapped, head yaw negated), both in the roll-aligned OMZ axes
    (..., 3): the mirrored answer's x is negated back and the two unit vectors averaged.

    Why: the network is not mirror-symmetric (yaw(face) + yaw(mirror) is +4..+14 deg on
    grid9, and it varies with the face), so one read carries an asymmetric error that no
    per-user mapping can remove. On the evit stills (28 sittings, 2 people, 448 stills) the
    average lowered the within-sitting error in 22 of 28 sittings and the next-sitting error
    in 21 of 25 pairs, for every mapping candidate (2026-12). Costs a second network run.
    """
    a = np.asarray(raw, dtype=np.float64)
    b = np.array(raw_mirrored, dtype=np.float64, copy=True)
    b[..., 0] *= -1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        a = a / np.linalg.norm(a, axis=-1, keepdims=True)
        b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return 0.5 * (a + b)


def _postprocess_one(raw: np.ndarray, roll: float) -> tuple[np.ndarray, np.ndarray]:
    """`postprocess` for one sample in scalar maths: numpy's per-call overhead on 3-vectors
    is a sizeable share of a ~1 ms frame budget. The batch path and tests use `postprocess`."""
    x, y, z = float(raw[0]), float(raw[1]), -float(raw[2])  # OMZ z -> ours
    c, s = math.cos(roll), math.sin(roll)
    x, y = x * c + y * s, -x * s + y * c
    n = math.sqrt(x * x + y * y + z * z)
    if not (n > 0.0 and math.isfinite(n)):
        return np.full(3, np.nan), np.full(2, np.nan)
    x, y, z = x / n, y / n, z / n
    return np.array([x, y, z]), np.array([math.atan2(x, z), math.asin(max(-1.0, min(1.0, y)))])


# -- the runtime wrapper ------------------------------------------------------------------


def default_providers() -> list[str]:
    """The automatic choice (`providers.resolve_providers("auto")`): CoreML on a Mac, CUDA
    when offered, CPU otherwise."""
    return resolve_providers("auto")


class GazeModel:
    """One onnxruntime session and its preallocated input buffers. Not thread-safe: use one
    instance per thread (the fast path runs on one thread)."""

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int = 1,
        providers: list[str] | None = None,
        mirror_average: bool = False,
        head_frame: str = "camera",
        crop_scale: float = CROP_SCALE,
    ) -> None:
        self.path = Path(path)
        # How this model is read: `mirror_average` is what `predict` does by default;
        # `head_frame` is the frame of the head pose its caller tells it (the caller's job,
        # `Features.network_head_ypr`), and `crop_scale` the size of the eye squares it is
        # shown (`fastpath.features`), both kept here only to name the read (`read_name`).
        self.mirror_average = mirror_average
        self.read = read_name(mirror_average, head_frame, crop_scale)
        data = self._read_file()
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.session = self._load_session(data, threads, providers)  # after the hash
        self._check_io()
        self._left = np.zeros((1, 3, 60, 60), np.float32)
        self._right = np.zeros((1, 3, 60, 60), np.float32)
        self._head = np.zeros((1, 3), np.float32)
        self._feed = {_INPUTS[0]: self._left, _INPUTS[1]: self._right, _INPUTS[2]: self._head}
        self.embedding_dim: int | None = self._first_run()

    def _read_file(self) -> bytes:
        """The model's bytes, read once: they are both hashed and loaded."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            raise ModelLoadError(f"gaze model file not found: {self.path}") from None
        except OSError as exc:
            raise ModelLoadError(f"cannot read gaze model file {self.path}: {exc}") from exc

    def _load_session(self, data: bytes, threads: int, providers: list[str] | None) -> Any:
        """An onnxruntime session on the bytes just hashed; its first line of complaint
        becomes the error."""
        try:
            return open_session(
                data,
                threads=threads,
                providers=providers or default_providers(),
                name=f"gaze model {self.path}",
                sha256=self.sha256,
            )
        except SessionOpenError as exc:
            raise ModelLoadError(f"cannot load gaze model {self.path}: {exc}") from None

    def _check_io(self) -> None:
        """Refuse a model whose inputs and outputs are not the ones this wrapper feeds and
        reads: it would load and run, and answer nonsense."""
        meta = self.session.get_modelmeta().custom_metadata_map
        self.model_id: str = meta.get("gazeloop.model_id", self.path.stem)
        convention = meta.get("gazeloop.io_convention", OMZ_IO_CONVENTION)
        if convention != OMZ_IO_CONVENTION:
            raise ModelLoadError(
                f"{self.path}: io convention {convention!r} is not {OMZ_IO_CONVENTION!r}; "
                "this wrapper would misread its inputs/outputs"
            )
        in_names = {i.name for i in self.session.get_inputs()}
        out_names = [o.name for o in self.session.get_outputs()]
        missing = [n for n in _INPUTS if n not in in_names] + (
            [] if _GAZE in out_names else [_GAZE]
        )
        if missing:
            raise ModelLoadError(f"{self.path}: not a gaze model, missing {missing}")
        self._outputs = [_GAZE] + ([_EMBEDDING] if _EMBEDDING in out_names else [])
        batch_dim = self.session.get_inputs()[0].shape[0]
        self._dynamic_batch = not isinstance(batch_dim, int)

    def _first_run(self) -> int | None:
        """One run now so a model that loads but cannot execute fails here, not on frame 1,
        and the first frame does not pay for lazy initialisation; returns the embedding's
        size (None: the model has no embedding output)."""
        try:
            outs = self.session.run(self._outputs, self._feed)
        except Exception as exc:
            raise ModelLoadError(f"gaze model {self.path} fails to run: {exc}") from exc
        # A model that runs but answers in another shape, or NaN, failed on every frame
        # afterwards (read as "eyes closed" by a run without a profile to refit).
        gaze = np.asarray(outs[0])
        if gaze.shape != (1, 3):
            raise ModelLoadError(f"{self.path}: {_GAZE} is {list(gaze.shape)}, not [1, 3]")
        if not np.all(np.isfinite(gaze)):
            raise ModelLoadError(f"{self.path}: {_GAZE} is not finite ({gaze[0].tolist()})")
        return int(outs[1].shape[1]) if len(outs) > 1 else None

    @property
    def providers(self) -> list[str]:
        """The providers the session runs on, in priority order (as onnxruntime reports)."""
        return list(self.session.get_providers())

    def __repr__(self) -> str:
        return (
            f"GazeModel({self.model_id!r}, sha256={self.sha256[:12]}, "
            f"embedding_dim={self.embedding_dim}, providers={self.session.get_providers()})"
        )

    @staticmethod
    def _check_crop(crop: np.ndarray, what: str) -> None:
        if crop.shape != CROP_SHAPE:
            raise ValueError(f"{what} must be {CROP_SHAPE} BGR, got {crop.shape}")

    def predict(
        self,
        left_crop: np.ndarray,
        right_crop: np.ndarray,
        head_ypr: np.ndarray,
        *,
        mirror_average: bool | None = None,
    ) -> GazeOutput:
        """Gaze for one face. Crops are 60x60x3 uint8 BGR, centred between the eye corners and
        already rotated by the head roll so the corners are horizontal; `left_crop` is the
        person's left eye. `head_ypr` is (yaw, pitch, roll) in radians, our convention.

        `mirror_average`: also ask the network about the mirrored face and average the two
        answers (`mirror_averaged`); None: this model's default. `raw` is then that average;
        the embedding stays the face's own (a mirrored face's is not the same features
        mirrored)."""
        self._check_crop(left_crop, "left_crop")
        self._check_crop(right_crop, "right_crop")
        # OMZ's left_eye_image is the image-left eye, i.e. the person's right eye.
        np.copyto(self._left[0], right_crop.transpose(2, 0, 1), casting="unsafe")
        np.copyto(self._right[0], left_crop.transpose(2, 0, 1), casting="unsafe")
        yaw, pitch, roll = (float(a) for a in head_ypr)
        # Roll is fed as 0 because the crops are roll-aligned (as the OMZ demo does).
        self._head[0, 0] = np.degrees(yaw)
        self._head[0, 1] = -np.degrees(pitch)
        self._head[0, 2] = 0.0
        outs = self.session.run(self._outputs, self._feed)
        raw = outs[0][0]
        if self.mirror_average if mirror_average is None else mirror_average:
            # The mirrored face: each crop flipped left-right and the eyes swapped (so the
            # person's left eye is now the image-left one), head yaw negated.
            np.copyto(self._left[0], left_crop.transpose(2, 0, 1)[:, :, ::-1], casting="unsafe")
            np.copyto(self._right[0], right_crop.transpose(2, 0, 1)[:, :, ::-1], casting="unsafe")
            self._head[0, 0] = -np.degrees(yaw)
            raw = mirror_averaged(raw, self.session.run(self._outputs[:1], self._feed)[0][0])
        vector, yp = _postprocess_one(raw, roll)
        emb = outs[1][0] if len(outs) > 1 else None
        return GazeOutput(vector=vector, yaw_pitch=yp, embedding=emb, raw=raw)

    def predict_batch(
        self,
        left: np.ndarray,
        right: np.ndarray,
        head: np.ndarray,
        *,
        chunk: int = 256,
        mirror_average: bool | None = None,
    ) -> GazeBatch:
        """`predict` for N samples: left/right (N, 60, 60, 3) crops, head (N, 3) radians."""
        left, right, head = np.asarray(left), np.asarray(right), np.asarray(head, np.float64)
        n = len(left)
        if left.shape[1:] != CROP_SHAPE or right.shape != left.shape or head.shape != (n, 3):
            raise ValueError(
                f"expected (N,60,60,3), (N,60,60,3), (N,3); got {left.shape}, "
                f"{right.shape}, {head.shape}"
            )
        omz_head = head_pose_to_omz_degrees(head).astype(np.float32)
        omz_head[:, 2] = 0.0
        # OMZ's left_eye_image is the image-left eye, i.e. the person's right eye.
        raw, emb = self._run_batch(right, left, omz_head, chunk)
        if self.mirror_average if mirror_average is None else mirror_average:
            omz_head[:, 0] *= -1.0
            flipped, _ = self._run_batch(left[:, :, ::-1], right[:, :, ::-1], omz_head, chunk)
            raw = mirror_averaged(raw, flipped)
        vectors, yp = postprocess(raw, head[:, 2])
        return GazeBatch(vectors=vectors, yaw_pitch=yp, embeddings=emb, raw=raw)

    def _run_batch(
        self, omz_left: np.ndarray, omz_right: np.ndarray, omz_head: np.ndarray, chunk: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        step = chunk if self._dynamic_batch else 1
        raws, embs = [], []
        for i in range(0, len(omz_left), step):
            sl = slice(i, i + step)
            feed = {
                _INPUTS[0]: omz_left[sl].transpose(0, 3, 1, 2).astype(np.float32),
                _INPUTS[1]: omz_right[sl].transpose(0, 3, 1, 2).astype(np.float32),
                _INPUTS[2]: omz_head[sl],
            }
            outs = self.session.run(self._outputs, feed)
            raws.append(outs[0])
            if len(outs) > 1:
                embs.append(outs[1])
        raw = np.concatenate(raws) if raws else np.zeros((0, 3), np.float32)
        emb = None
        if self.embedding_dim is not None:
            emb = np.concatenate(embs) if embs else np.zeros((0, self.embedding_dim), np.float32)
        return raw, emb
