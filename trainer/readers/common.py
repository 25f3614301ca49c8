"""What every reader shares: the sample columns, the fast-path preprocessing, the cache.

One sample is what the model sees plus what it is trained against:

- `left`, `right`: 60×60×3 uint8 BGR eye crops in the MODEL's input convention. The network
  (OMZ gaze-estimation-adas-0002, `trainer.model.GazeNet`) names eyes from the viewer's side:
  its `left_eye_image` is the image-left eye, which is the PERSON's right eye
  (`Features.right`). So `left` = `features.right.crop` and `right` = `features.left.crop`,
  exactly as `fastpath.gaze_model.GazeModel.predict` feeds it.
- `head`: (3,) float32 head pose in OMZ degrees (`head_pose_to_omz_degrees`: pitch negated)
  with roll set to 0, because the crops are already roll-aligned (the fast path feeds 0 too).
- `roll`: the roll (radians, our sign) the crops were aligned by; it turns the model's
  roll-aligned output back into camera axes (`fastpath.gaze_model.postprocess`).
- `person`: a string id, unique across datasets (prefixed by the reader kind).
- `target`: an int id grouping frames of one screen target within the person (-1: none).
- `screen`: (2,) normalised screen point [0,1]² (x right, y down), NaN when unknown.
- `screen_px`: (2,) the size of that screen in pixels, NaN when unknown (for px errors).
- `gaze`: (3,) unit gaze vector in the model's OUTPUT axes (OMZ: x image right, y up, z
  away from the camera, roll-aligned), NaN when unknown — see `camera_to_model_gaze`.
- `weight`: float32 ≥ 0.
- `name`: where the sample came from (file, line or record), for reports.

Preprocessing of images is the fast path itself (`fastpath.pipeline.FastPath.process`, the
frame rejection rules of `fastpath.collect`), never a copy of it, so training sees the pixels
the product sees. Preprocessed arrays are cached as `.npz` (no pickle) under a key made of
the source files' paths, sizes and modification times, the reader's parameters and the
preprocessing tag (fast-path settings + `PREPROCESS_VERSION`).

Every reader runs its items (lines, frames, records) through one loop, `kept`/`gather`: a
step reads an item, preprocesses it and labels it, or raises `Skip` with the reason, which
lands in the unit's skip list in order; what passes is added as a sample.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np

from gazeloop.calibration.store.atomic import atomic_writer
from gazeloop.calibration.store.session import ImageDecodeError, load_image
from gazeloop.fastpath.blink import BLINK_APERTURE, BLINK_RELATIVE, BlinkDetector
from gazeloop.fastpath.collect import _unusable  # the fast path's own rule for a usable frame
from gazeloop.fastpath.features import CROP_SCALE
from gazeloop.fastpath.gaze_model import head_pose_to_omz_degrees
from gazeloop.fastpath.headpose import eye_ray_frame
from gazeloop.fastpath.types import Features, Frame, GazeSample

log = logging.getLogger(__name__)

# Bump when what a reader stores for the same source changes (crop convention, label maths).
# 2: the fast path's gaze_frame decides the head pose input; 3: for session folders and
# TFRecords too (they fed the camera-frame pose while the fast path serves the ray frame).
PREPROCESS_VERSION = 3
CROP = 60
# Frames of one unit are fed to the fast path as a 30 Hz stream (tracking mode needs time).
FRAME_STEP_NS = 33_333_333


class Preprocessor(Protocol):
    """What readers need from the fast path: `FastPath` itself satisfies it."""

    def process(self, frame: Frame) -> GazeSample: ...

    def reset(self) -> None: ...


class ModelInputs(NamedTuple):
    """What the network gets for one sample (see the module docstring)."""

    left: np.ndarray  # the image-left eye: the person's right
    right: np.ndarray
    head: np.ndarray  # OMZ degrees, roll 0
    roll: float  # radians, what the crops were aligned by
    # Camera axes -> the frame the head pose is in (the eyes' ray frame, or None for the
    # camera's own): a gaze label in camera axes goes through it before `camera_to_model_gaze`.
    to_network: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file, line, record or person that did not become a sample, and why."""

    source: str  # the reader unit (session folder, pXX, h5 file, ...)
    item: str  # the file / line / record inside it ("" for the whole unit)
    why: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.item}" if self.item else self.source
        return f"{where}: {self.why}"


# --- the sample columns ---------------------------------------------------------------------

_COLUMNS: dict[str, tuple[tuple[int, ...], Any, Any]] = {
    # name: (trailing shape, dtype, fill for "unknown")
    "left": ((CROP, CROP, 3), np.uint8, 0),
    "right": ((CROP, CROP, 3), np.uint8, 0),
    "head": ((3,), np.float32, np.nan),
    "roll": ((), np.float32, 0.0),
    "target": ((), np.int64, -1),
    "screen": ((2,), np.float32, np.nan),
    "screen_px": ((2,), np.float32, np.nan),
    "gaze": ((3,), np.float32, np.nan),
    "weight": ((), np.float32, 1.0),
}
_STRINGS = ("person", "name")


@dataclass(slots=True)
class Samples:
    """Columns of N samples (see the module docstring for each column's convention)."""

    left: np.ndarray
    right: np.ndarray
    head: np.ndarray
    roll: np.ndarray
    person: np.ndarray  # (N,) str
    target: np.ndarray
    screen: np.ndarray
    screen_px: np.ndarray
    gaze: np.ndarray
    weight: np.ndarray
    name: np.ndarray  # (N,) str

    def __len__(self) -> int:
        return len(self.weight)

    @classmethod
    def empty(cls) -> Samples:
        cols = {k: np.zeros((0, *s), d) for k, (s, d, _) in _COLUMNS.items()}
        return cls(**cols, person=np.zeros(0, "<U1"), name=np.zeros(0, "<U1"))

    @classmethod
    def concat(cls, parts: Sequence[Samples]) -> Samples:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        )

    def subset(self, idx: np.ndarray) -> Samples:
        return type(self)(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def check(self) -> None:
        """Shapes and dtypes agree (a cache file from elsewhere must not smuggle in junk)."""
        n = len(self)
        for k, (shape, dtype, _) in _COLUMNS.items():
            a = getattr(self, k)
            if a.shape != (n, *shape) or a.dtype != np.dtype(dtype):
                raise ValueError(f"column {k}: {a.dtype}{a.shape}, expected {dtype}{(n, *shape)}")
        for k in _STRINGS:
            a = getattr(self, k)
            if a.shape != (n,) or a.dtype.kind != "U":
                raise ValueError(f"column {k}: {a.dtype}{a.shape}, expected str ({n},)")

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class SampleBuilder:
    """Collects samples one by one (readers), then `build()` makes the columns."""

    rows: dict[str, list[Any]] = field(
        default_factory=lambda: {k: [] for k in (*_COLUMNS, *_STRINGS)}
    )

    def add(
        self,
        *,
        left: np.ndarray,
        right: np.ndarray,
        head: np.ndarray,
        roll: float,
        person: str,
        name: str,
        target: int = -1,
        screen: Any = None,
        screen_px: Any = None,
        gaze: Any = None,
        weight: float = 1.0,
    ) -> None:
        if left.shape != (CROP, CROP, 3) or right.shape != (CROP, CROP, 3):
            raise ValueError(f"crops must be {CROP}x{CROP}x3, got {left.shape}, {right.shape}")
        r = self.rows
        r["left"].append(np.asarray(left, np.uint8))
        r["right"].append(np.asarray(right, np.uint8))
        r["head"].append(np.asarray(head, np.float32))
        r["roll"].append(float(roll))
        r["person"].append(person)
        r["name"].append(name)
        r["target"].append(int(target))
        r["screen"].append(np.full(2, np.nan) if screen is None else np.asarray(screen, float))
        r["screen_px"].append(
            np.full(2, np.nan) if screen_px is None else np.asarray(screen_px, float)
        )
        r["gaze"].append(np.full(3, np.nan) if gaze is None else np.asarray(gaze, float))
        r["weight"].append(float(weight))

    def __len__(self) -> int:
        return len(self.rows["weight"])

    def build(self) -> Samples:
        if not len(self):
            return Samples.empty()
        cols: dict[str, np.ndarray] = {}
        for k, (shape, dtype, _) in _COLUMNS.items():
            cols[k] = np.asarray(self.rows[k], dtype=dtype).reshape(-1, *shape)
        for k in _STRINGS:
            cols[k] = np.asarray(self.rows[k], dtype=str)
        s = Samples(**cols)
        s.check()
        return s


# --- conventions ----------------------------------------------------------------------------


def gaze_frame(config: Any | None) -> str:
    """The frame of the head pose the fast path tells the network (`FastPathConfig.gaze_frame`,
    "ray" by default): training feeds the network what it is served. "camera" for a stand-in
    without a config."""
    return getattr(config, "gaze_frame", "camera")


def model_inputs(s: GazeSample, frame: str = "camera") -> ModelInputs:
    """A usable fast-path sample → (left, right, head OMZ deg with roll 0, roll rad) in the
    network's input convention (see the module docstring), the head pose in `frame` as the
    fast path's `gaze_frame` tells the network."""
    if s.features is None:
        raise ValueError("sample has no features")
    return features_to_inputs(s.features, frame)


def features_to_inputs(f: Features, frame: str = "camera") -> ModelInputs:
    """`model_inputs` from the fast path's `Features` (readers that run `extract` directly)."""
    told = f.network_head_ypr(frame)
    head = head_pose_to_omz_degrees(told).astype(np.float32)
    head[2] = 0.0  # crops are roll-aligned, as GazeModel feeds them
    roll = float(f.head_ypr[2]) if np.isfinite(f.head_ypr[2]) else 0.0
    # Told the camera-axes pose (the default, or "ray" without one): labels stay as they are.
    to_network = None if told is f.head_ypr else eye_ray_frame(f.eye_mm)
    return ModelInputs(f.right.crop, f.left.crop, head, roll, to_network)


def label_to_model_gaze(v_camera: Any, inputs: ModelInputs) -> np.ndarray:
    """A gaze label in our camera axes → the network's output axes for these inputs: into
    the frame their head pose is in, then `camera_to_model_gaze`."""
    v = np.asarray(v_camera, np.float64)
    if inputs.to_network is not None:
        v = inputs.to_network @ v
    return camera_to_model_gaze(v, inputs.roll)


def camera_to_model_gaze(v_camera: Any, roll: Any) -> np.ndarray:
    """Gaze vectors in our camera axes (x image right, y up, z from the face toward the
    camera) → unit vectors in the network's output axes: rotated into the roll-aligned eye
    frame (the inverse of `rotate_vector_roll`) and with z flipped (OMZ's z points away from
    the camera). `fastpath.gaze_model.postprocess(result, roll)` gives `v_camera` back."""
    v = np.asarray(v_camera, np.float64)
    r = np.asarray(roll, np.float64)
    c, s = np.cos(r), np.sin(r)
    out = np.empty(np.broadcast_shapes(v.shape, r.shape + (3,)))
    # rotate_vector_roll(v, roll) maps x,y -> (x c + y s, -x s + y c); its inverse is -roll.
    out[..., 0] = v[..., 0] * c - v[..., 1] * s
    out[..., 1] = v[..., 0] * s + v[..., 1] * c
    out[..., 2] = -v[..., 2]
    n = np.linalg.norm(out, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, out / n, np.nan)


def opencv_to_camera(v_cv: Any) -> np.ndarray:
    """A direction in OpenCV camera axes (x right, y down, z away from the camera, as
    MPIIFaceGaze and ETH-XGaze store them) → our camera axes (y up, z toward the camera)."""
    v = np.array(v_cv, np.float64, copy=True)
    v[..., 1:] *= -1.0
    return v


# --- running the fast path on stills ---------------------------------------------------------


def preprocess_image(
    fp: Preprocessor, image: np.ndarray, index: int
) -> tuple[ModelInputs | None, str | None]:
    """One decoded image through the fast path → (model inputs, None) or (None, reason).

    Images of one unit are fed as a stream (tracking mode, `index` gives the time) because
    they come from one camera set-up; readers call `fp.reset()` at each unit."""
    s = fp.process(Frame(t_ns=(index + 1) * FRAME_STEP_NS, image=image, index=index))
    why = _unusable(s)
    if why is not None:
        return None, why
    return model_inputs(s, gaze_frame(getattr(fp, "cfg", None))), None


# --- the loop every reader shares: read → preprocess → skip with a reason → add ---------------

T = TypeVar("T")
R = TypeVar("R")


class Skip(Exception):
    """Raised by a reader's step for one item: it becomes no sample, for this reason.
    `item` names it when the name it was listed under is not the one to report."""

    def __init__(self, why: str, item: str | None = None) -> None:
        super().__init__(why)
        self.item = item


def kept(
    unit_id: str,
    items: Iterable[tuple[str, T]],
    step: Callable[[T], R],
    skipped: list[Skipped],
) -> Iterator[tuple[str, R]]:
    """Each (name, item) through `step` (read, preprocess, label); an item it refuses with
    `Skip` goes to `skipped` under the unit, with the reason and in order, and the others
    come out as (name, what `step` made of them). Anything but `Skip` propagates: it is the
    whole unit that cannot be read, and the loader records that."""
    for name, item in items:
        try:
            result = step(item)
        except Skip as e:
            skipped.append(Skipped(unit_id, name if e.item is None else e.item, str(e)))
            continue
        yield name, result


def gather(
    unit_id: str,
    items: Iterable[tuple[str, T]],
    to_sample: Callable[[T], dict[str, Any]],
    skipped: list[Skipped],
) -> tuple[Samples, list[Skipped]]:
    """`kept` into samples: `to_sample` gives the `SampleBuilder.add` fields but the name,
    which is the item's."""
    out = SampleBuilder()
    for name, fields_ in kept(unit_id, items, to_sample, skipped):
        out.add(name=name, **fields_)
    return out.build(), skipped


def none_usable(unit_id: str, skipped: list[Skipped], what: str) -> tuple[Samples, list[Skipped]]:
    """A unit in which nothing passed the first reading: the per-item reasons are kept,
    since they say what is wrong, and the unit's own reason is added."""
    return Samples.empty(), [*skipped, Skipped(unit_id, "", f"no usable {what}")]


def sample_fields(inputs: ModelInputs, **labels: Any) -> dict[str, Any]:
    """`SampleBuilder.add` fields from the model inputs and the item's labels (the frame
    rotation served the labels' conversion; samples do not keep it)."""
    fields = inputs._asdict()
    del fields["to_network"]
    return {**fields, **labels}


def read_image(path: Path) -> np.ndarray:
    """A decoded image, or `Skip` with the reason it cannot be decoded."""
    try:
        return load_image(path)
    except ImageDecodeError as e:
        raise Skip(str(e)) from None


def fast_path_inputs(fp: Preprocessor, image: np.ndarray, index: int) -> ModelInputs:
    """`preprocess_image`, refusing a frame the fast path cannot use with its reason."""
    inputs, why = preprocess_image(fp, image, index)
    if inputs is None:
        raise Skip(why or "unusable")
    return inputs


def preprocess_tag(fp_config: Any | None, extra: str = "") -> str:
    """What decides the preprocessed pixels: the trainer's version and the fast-path
    settings that shape crops and reject frames (not the gaze model file)."""
    from gazeloop.fastpath import features

    parts: dict[str, Any] = {
        "version": PREPROCESS_VERSION,
        # The fast path's own stamp for crop framing and conventions (when it has one).
        "fastpath": getattr(features, "PREPROCESSING_VERSION", None),
    }
    if fp_config is not None:
        keys = (
            "landmarks",
            "face_model",
            "crop_scale",
            "blink_aperture",
            "blink_relative",
            "focal_px",
            "gaze_frame",
        )
        for k in keys:
            v = getattr(fp_config, k, None)
            parts[k] = str(v) if isinstance(v, Path) else v
    if extra:
        parts["extra"] = extra
    return json.dumps(parts, sort_keys=True)


class LazyFastPath:
    """Creates the fast path on first use: a run whose every unit is cached never loads
    MediaPipe or onnxruntime. `config` (a `FastPathConfig`, or None for a stand-in) gives
    the cache tag and the crop settings for readers that crop without a full frame."""

    def __init__(
        self,
        factory: Callable[[], Preprocessor],
        config: Any | None,
        *,
        tag_extra: str = "",
        owned: bool = True,
    ) -> None:
        self._factory = factory
        self._fp: Preprocessor | None = None
        self._owned = owned  # close only what this object created
        self.config = config
        self.tag = preprocess_tag(config, tag_extra)
        self.crop_scale = float(getattr(config, "crop_scale", CROP_SCALE))
        self.blink_aperture = float(getattr(config, "blink_aperture", BLINK_APERTURE))
        self.blink_relative = float(getattr(config, "blink_relative", BLINK_RELATIVE))

    def blink_detector(self) -> BlinkDetector:
        """The fast path's blink rule for readers that crop without it (one per person)."""
        return BlinkDetector(self.blink_aperture, self.blink_relative)

    @property
    def fp(self) -> Preprocessor:
        if self._fp is None:
            self._fp = self._factory()
        return self._fp

    def close(self) -> None:
        if not self._owned:
            return
        close = getattr(self._fp, "close", None)
        if close is not None:
            close()


# --- the cache ------------------------------------------------------------------------------


def source_key(files: Iterable[Path], *parts: str) -> str:
    """A hash of the files' paths, sizes and modification times plus `parts`.

    Content hashing would read a whole dataset just to find its cache; a changed, added or
    removed file changes size, time or the list, which is what invalidation needs."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    for f in sorted(Path(f) for f in files):
        try:
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}\0missing\n".encode())
    return h.hexdigest()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-80:]


def cache_path(cache_dir: Path, kind: str, unit: str, key: str) -> Path:
    return Path(cache_dir) / f"{kind}-{_safe(unit)}-{key[:20]}.npz"


def save_cache(path: Path, samples: Samples, skipped: list[Skipped]) -> None:
    """np.savez of the columns plus the skip list as JSON text; written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = samples.arrays()
    arrays["skipped_json"] = np.array(json.dumps([[s.source, s.item, s.why] for s in skipped]))
    with atomic_writer(path) as f:
        np.savez(f, **arrays)


def load_cache(path: Path) -> tuple[Samples, list[Skipped]]:
    """The inverse of `save_cache`; raises ValueError/OSError on a damaged file."""
    with np.load(path, allow_pickle=False) as z:
        cols = {f.name: z[f.name] for f in fields(Samples)}
        skipped = [Skipped(*row) for row in json.loads(str(z["skipped_json"]))]
    s = Samples(**cols)
    if len(s) == 0:
        s = Samples.empty()  # empty string columns come back as <U1 of shape (0,)
    s.check()
    return s, skipped


def unit_files(folder: Path, patterns: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for pat in patterns:
        out.extend(p for p in folder.glob(pat) if p.is_file())
    return sorted(set(out))


# --- readers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unit:
    """One cacheable piece of a dataset: a session folder, a person, a file."""

    id: str  # unique within the reader kind, used in reports and cache names
    path: Path  # the folder or file it reads
    files: tuple[Path, ...]  # every file whose change must invalidate the cache
    params: str = ""  # reader parameters that change the output (JSON)


class Reader(Protocol):
    kind: str

    def units(self) -> tuple[list[Unit], list[Skipped]]:
        """The units found (and what could not even be listed)."""
        ...

    def read(self, unit: Unit, pre: LazyFastPath) -> tuple[Samples, list[Skipped]]:
        """Samples of one unit; per-item problems go to the skip list, a unit that cannot
        be used at all raises (the loader records the reason and goes on)."""
        ...


def target_ids(points: Sequence[tuple[float, ...]]) -> list[int]:
    """One id per distinct point (rounded keys), in order of first appearance."""
    seen: dict[tuple[float, ...], int] = {}
    return [seen.setdefault(tuple(round(float(c), 3) for c in p), len(seen)) for p in points]
