"""TFRecord files of tf.train.Example, read without TensorFlow, and the jspsych eye-tracking
dataset stored in them.

TFRecord framing, per record (little-endian):

    uint64 length | uint32 masked_crc32c(length bytes) | data[length] | uint32 masked_crc32c(data)

masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2³²), c = CRC-32C (Castagnoli).

tf.train.Example in protobuf wire format (only what is read here):

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }   # entries: { key = 1; value = 2; }
    Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                       Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed]; }  # packed or not, both are read
    Int64List { repeated int64 value = 1 [packed]; }

`tf.io.serialize_tensor` writes a TensorProto: dtype = 1 (enum), tensor_shape = 2
({ dim = 2 { size = 1 } }), tensor_content = 4 (raw little-endian bytes), or the typed
repeated fields float_val = 5, double_val = 6, int_val = 7, int64_val = 10.

The jspsych layout (one file per subject, `<subject>.tfrecords`), features used:

    subject_id  int64   int(<subject id>, 36)
    x, y        float   the target in percent of the screen, 0-100 (x right, y down)
    eye_img     bytes   serialize_tensor(uint8 36×144): both eyes in one grayscale strip
                        (CLAHE-equalised), or the 5184 raw bytes
    landmarks   bytes   serialize_tensor(float32 478×3): MediaPipe face mesh of the frame,
                        x, y normalised to the frame, z in x's scale (or a FloatList of 1434)
    img_width, img_height  int64 (checked when present: 144, 36);  phase: not used

The strip was cut from the frame from landmark 226 to 446 in x and from min(y27, y257) to
max(y23, y253) in y, each widened by 0.01 of the frame, then resized to 144×36. Knowing
that, the landmarks are mapped into the strip (resampled so its pixels are square again,
given the frame's aspect ratio, 4:3 unless told) and the fast path's own `extract` cuts the
eye crops and `HeadPoseEstimator` gives the head pose from the landmarks, as at run time.
The square crop (1.8 eye widths) is taller than the strip: the rows beyond the strip are
edge-padded, as the fast path does at a frame border. These crops are grey and equalised,
so they are a different appearance domain from webcam crops; weight them accordingly.
Person id: `jspsych:<subject id>`; screen size unknown (px errors NaN, % of the diagonal from
the aspect).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gazeloop.fastpath.blink import BlinkDetector
from gazeloop.fastpath.features import extract
from gazeloop.fastpath.protowire import ProtoError, iter_fields, varint
from gazeloop.fastpath.types import FaceLandmarks
from gazeloop.trainer.readers.common import (
    LazyFastPath,
    Samples,
    Skip,
    Skipped,
    Unit,
    features_to_inputs,
    gather,
    gaze_frame,
    kept,
    none_usable,
    sample_fields,
    target_ids,
)

# --- CRC-32C and framing --------------------------------------------------------------------


def _crc_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()
_MASK_DELTA = 0xA282EAD8


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (pure Python: about 10 MB/s, enough for eye strips)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class TFRecordError(ValueError):
    """Damaged TFRecord framing. `fatal`: the length itself is unreliable, so nothing after
    this point can be found; otherwise only this record's data is bad."""

    def __init__(self, message: str, offset: int, index: int, fatal: bool) -> None:
        super().__init__(message)
        self.offset, self.index, self.fatal = offset, index, fatal


def read_records(path: str | Path, *, verify: bool = True) -> Iterator[bytes | TFRecordError]:
    """Each record's data in order; a record whose data CRC fails is yielded as a
    (non-fatal) `TFRecordError` and reading goes on; a bad length, its CRC or a truncated
    file ends the iteration with a fatal `TFRecordError` as the last item."""
    with open(path, "rb") as f:
        index = 0
        while True:
            offset = f.tell()
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                yield TFRecordError("truncated record header", offset, index, True)
                return
            (length,) = struct.unpack("<Q", head[:8])
            (len_crc,) = struct.unpack("<I", head[8:])
            if masked_crc32c(head[:8]) != len_crc:
                yield TFRecordError("length CRC mismatch (not a TFRecord?)", offset, index, True)
                return
            data = f.read(length)
            tail = f.read(4)
            if len(data) < length or len(tail) < 4:
                yield TFRecordError("truncated record (partial file)", offset, index, True)
                return
            if verify and masked_crc32c(data) != struct.unpack("<I", tail)[0]:
                yield TFRecordError("data CRC mismatch (corrupt record)", offset, index, False)
            else:
                yield data
            index += 1


def write_records(path: str | Path, records: Iterable[bytes]) -> None:
    """Write TFRecord framing around each record (for tests and exporters)."""
    with open(path, "wb") as f:
        for data in records:
            n = struct.pack("<Q", len(data))
            f.write(n + struct.pack("<I", masked_crc32c(n)))
            f.write(data + struct.pack("<I", masked_crc32c(data)))


# --- protobuf wire format (fastpath.protowire reads the framing) ----------------------------


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_varints(buf: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        v, pos = varint(buf, pos)
        out.append(v)
    return out


def _floats(value: Any, wire: int) -> np.ndarray:
    if wire == 2:
        if len(value) % 4:
            raise ProtoError("packed floats are not a multiple of 4 bytes")
        return np.frombuffer(value, "<f4")
    if wire == 5:
        return np.frombuffer(value, "<f4")
    raise ProtoError(f"float field with wire type {wire}")


FeatureValue = list[bytes] | np.ndarray


def parse_feature(buf: bytes) -> FeatureValue:
    kind, values = None, []
    for field, wire, value in iter_fields(buf):
        if field not in (1, 2, 3) or wire != 2:
            continue
        kind = field
        for f2, w2, v2 in iter_fields(value):
            if f2 != 1:
                continue
            if field == 1:
                if w2 != 2:
                    raise ProtoError("BytesList value is not length-delimited")
                values.append(bytes(v2))
            elif field == 2:
                values.append(_floats(v2, w2))
            elif w2 == 2:
                values.extend(_signed64(v) for v in _packed_varints(v2))
            elif w2 == 0:
                values.append(_signed64(v2))
            else:
                raise ProtoError(f"Int64List value with wire type {w2}")
    if kind == 2:
        return np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32)
    if kind == 3:
        return np.array(values, np.int64)
    return values  # bytes (or an empty Feature)


def parse_example(buf: bytes) -> dict[str, FeatureValue]:
    """A serialized tf.train.Example → {name: list of bytes | float32 array | int64 array}."""
    out: dict[str, FeatureValue] = {}
    for field, wire, features in iter_fields(buf):
        if field != 1 or wire != 2:
            continue
        for f2, w2, entry in iter_fields(features):
            if f2 != 1 or w2 != 2:
                continue
            key, value = None, b""
            for f3, w3, v3 in iter_fields(entry):
                if f3 == 1 and w3 == 2:
                    key = bytes(v3).decode("utf-8", errors="replace")
                elif f3 == 2 and w3 == 2:
                    value = v3
            if key is None:
                raise ProtoError("feature map entry without a key")
            out[key] = parse_feature(value)
    return out


# TensorFlow DataType enum → numpy dtype (the types serialize_tensor gives eye data).
_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 17: "<u2"}


def parse_tensor(buf: bytes) -> np.ndarray:
    """A serialized TensorProto (`tf.io.serialize_tensor`) → numpy array."""
    dtype_code, dims, content = None, [], None
    typed: list[Any] = []
    for field, wire, value in iter_fields(buf):
        if field == 1 and wire == 0:
            dtype_code = value
        elif field == 2 and wire == 2:
            for f2, w2, v2 in iter_fields(value):
                if f2 == 2 and w2 == 2:
                    size = 0
                    for f3, w3, v3 in iter_fields(v2):
                        if f3 == 1 and w3 == 0:
                            size = _signed64(v3)
                    dims.append(size)
        elif field == 4 and wire == 2:
            content = bytes(value)
        elif field in (5, 6) and wire in (1, 2, 5):
            typed.append(np.frombuffer(value, "<f4" if field == 5 else "<f8"))
        elif field in (7, 10) and wire == 2:
            typed.append(np.array([_signed64(v) for v in _packed_varints(value)], np.int64))
        elif field in (7, 10) and wire == 0:
            typed.append(np.array([_signed64(value)], np.int64))
    if dtype_code not in _DTYPES:
        raise ProtoError(f"tensor dtype {dtype_code} is not supported")
    if any(d < 0 for d in dims):
        raise ProtoError(f"tensor shape {dims} has unknown dimensions")
    dtype = np.dtype(_DTYPES[dtype_code])
    count = int(np.prod(dims)) if dims else 1
    if content is not None:
        if len(content) != count * dtype.itemsize:
            raise ProtoError(f"tensor_content has {len(content)} bytes for shape {dims}")
        return np.frombuffer(content, dtype).reshape(dims).copy()
    vals = np.concatenate(typed) if typed else np.zeros(0)
    if len(vals) == count:
        return vals.astype(dtype).reshape(dims)
    if len(vals) == 1:  # TensorFlow stores a constant fill as one value
        return np.full(dims, vals[0], dtype)
    raise ProtoError(f"tensor has {len(vals)} values for shape {dims}")


# --- encoders (tests and exporters) -----------------------------------------------------------


def _encvarint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_len(field: int, payload: bytes) -> bytes:
    return _encvarint(field << 3 | 2) + _encvarint(len(payload)) + payload


def encode_feature(value: Any) -> bytes:
    """bytes / list of bytes → BytesList; float array → FloatList; int array → Int64List."""
    if isinstance(value, bytes):
        value = [value]
    if isinstance(value, list | tuple) and value and all(isinstance(v, bytes) for v in value):
        return _enc_len(1, b"".join(_enc_len(1, v) for v in value))
    arr = np.asarray(value).reshape(-1)
    if arr.dtype.kind == "f":
        return _enc_len(2, _enc_len(1, arr.astype("<f4").tobytes()))
    if arr.dtype.kind in "iub":
        return _enc_len(3, _enc_len(1, b"".join(_encvarint(int(v)) for v in arr)))
    raise TypeError(f"cannot encode a feature of dtype {arr.dtype}")


def encode_example(features: Mapping[str, Any]) -> bytes:
    entries = b"".join(
        _enc_len(1, _enc_len(1, k.encode()) + _enc_len(2, encode_feature(v)))
        for k, v in features.items()
    )
    return _enc_len(1, entries)


def encode_tensor(arr: np.ndarray) -> bytes:
    """The TensorProto `tf.io.serialize_tensor` writes for a numpy array."""
    arr = np.ascontiguousarray(arr)
    code = next((c for c, d in _DTYPES.items() if np.dtype(d) == arr.dtype.newbyteorder("<")), None)
    if code is None:
        raise TypeError(f"dtype {arr.dtype} has no TensorFlow code here")
    shape = b"".join(_enc_len(2, _encvarint(1 << 3 | 0) + _encvarint(d)) for d in arr.shape)
    return (
        _encvarint(1 << 3 | 0)
        + _encvarint(code)
        + _enc_len(2, shape)
        + _enc_len(4, arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    )


# --- the jspsych eye-strip dataset ----------------------------------------------------------

STRIP_H, STRIP_W = 36, 144
N_LANDMARKS = 478
STRIP_PAD = 0.01  # of the frame, on every side
# Landmarks that bound the strip: x from 226 to 446; y from min(27, 257) to max(23, 253).
_X0, _X1, _TOPS, _BOTTOMS = 226, 446, (27, 257), (23, 253)
_NOMINAL_H = 480  # head pose only needs the frame's aspect; 480 rows is a typical webcam

HeadPoseFn = Callable[[np.ndarray, tuple[int, int]], np.ndarray]
# (person, screen target, eye strip, landmarks) of one usable record
_Record = tuple[str, tuple[float, float], np.ndarray, np.ndarray]


def base36(n: int) -> str:
    if n < 0:
        return "-" + base36(-n)
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _bytes_feature(ex: dict[str, FeatureValue], key: str) -> bytes:
    v = ex.get(key)
    if not isinstance(v, list) or len(v) != 1:
        raise ValueError(f"no single bytes feature {key!r}")
    return v[0]


def _number(ex: dict[str, FeatureValue], key: str) -> float:
    v = ex.get(key)
    if not isinstance(v, np.ndarray) or v.size != 1:
        raise ValueError(f"no single number feature {key!r}")
    return float(v[0])


def decode_strip(ex: dict[str, FeatureValue]) -> np.ndarray:
    raw = _bytes_feature(ex, "eye_img")
    if len(raw) == STRIP_H * STRIP_W:
        strip = np.frombuffer(raw, np.uint8).reshape(STRIP_H, STRIP_W)
    else:
        strip = parse_tensor(raw)
    if strip.ndim == 3 and strip.shape[2] == 1:
        strip = strip[..., 0]
    if strip.shape != (STRIP_H, STRIP_W) or strip.dtype != np.uint8:
        raise ValueError(f"eye_img is {strip.dtype}{strip.shape}, not uint8 {STRIP_H}x{STRIP_W}")
    return strip


def decode_landmarks(ex: dict[str, FeatureValue]) -> np.ndarray:
    v = ex.get("landmarks")
    if isinstance(v, np.ndarray):
        lm = v.astype(np.float64)
    elif isinstance(v, list) and len(v) == 1:
        lm = parse_tensor(v[0]).astype(np.float64)
    else:
        raise ValueError("no landmarks feature")
    if lm.size != N_LANDMARKS * 3:
        n = f"{lm.size // 3} points" if lm.size % 3 == 0 else f"{lm.size} values"
        raise ValueError(f"landmarks have {n}, expected {N_LANDMARKS} (the mesh with iris)")
    lm = lm.reshape(N_LANDMARKS, 3)
    if not np.all(np.isfinite(lm)):
        raise ValueError("landmarks are not finite")
    return lm


def strip_face(
    strip: np.ndarray, lm: np.ndarray, aspect: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(strip as square-pixel BGR image, landmarks in its pixels, landmarks in nominal frame
    pixels for the head pose). `lm` is normalised to the frame; `aspect` = frame w/h."""
    x0 = lm[_X0, 0] - STRIP_PAD
    x1 = lm[_X1, 0] + STRIP_PAD
    y0 = min(lm[i, 1] for i in _TOPS) - STRIP_PAD
    y1 = max(lm[i, 1] for i in _BOTTOMS) + STRIP_PAD
    if not (x1 > x0 and y1 > y0):
        raise ValueError("landmarks give an empty eye strip")
    frame_w, frame_h = aspect * _NOMINAL_H, float(_NOMINAL_H)
    # Strip pixels per frame pixel along x; y is resampled to the same scale.
    k = STRIP_W / ((x1 - x0) * frame_w)
    height = int(np.clip(round((y1 - y0) * frame_h * k), 4, 4 * STRIP_W))
    image = cv2.resize(strip, (STRIP_W, height), interpolation=cv2.INTER_LINEAR)
    image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    pts = np.empty((N_LANDMARKS, 3), np.float32)
    pts[:, 0] = (lm[:, 0] - x0) / (x1 - x0) * STRIP_W
    pts[:, 1] = (lm[:, 1] - y0) / (y1 - y0) * height
    pts[:, 2] = lm[:, 2] * frame_w * k
    frame_pts = np.stack([lm[:, 0] * frame_w, lm[:, 1] * frame_h, lm[:, 2] * frame_w], axis=1)
    return image, pts, frame_pts


def _default_head_pose() -> HeadPoseFn:
    from gazeloop.fastpath import models
    from gazeloop.fastpath.headpose import HeadPoseEstimator, load_canonical_face

    est = HeadPoseEstimator(load_canonical_face(models.resolve(models.FACE_LANDMARKER)))
    est.reset()
    return est.estimate


class JsPsychTFRecordReader:
    kind = "jspsych"

    def __init__(
        self,
        path: str | Path,
        *,
        aspect: float = 4 / 3,
        verify_crc: bool = True,
        head_pose: HeadPoseFn | None = None,
    ) -> None:
        if not aspect > 0:
            raise ValueError(f"aspect must be > 0, got {aspect}")
        self.path = Path(path)
        self.aspect = float(aspect)
        self.verify_crc = verify_crc
        self._head_pose = head_pose

    def units(self) -> tuple[list[Unit], list[Skipped]]:
        p = self.path
        if p.is_file():
            files = [p]
        elif p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and ".tfrecord" in f.name)
        else:
            return [], [Skipped(str(p), "", "does not exist")]
        if not files:
            return [], [Skipped(str(p), "", "no .tfrecord(s) files found")]
        params = json.dumps({"aspect": self.aspect})
        return [Unit(id=str(f), path=f, files=(f,), params=params) for f in files], []

    def read(self, unit: Unit, pre: LazyFastPath) -> tuple[Samples, list[Skipped]]:
        head_pose = self._head_pose or _default_head_pose()
        skipped: list[Skipped] = []
        framed = read_records(unit.path, verify=self.verify_crc)
        records = ((f"record {i}", r) for i, r in enumerate(framed))
        rows = list(kept(unit.id, records, _decode_record, skipped))
        if not rows:
            return none_usable(unit.id, skipped, "records")

        # The fast path's blink rule, each person judged against their own open eyes.
        blinks: dict[str, BlinkDetector] = {}

        def to_sample(item: tuple[_Record, int]) -> dict[str, Any]:
            (person, xy, strip, lm), tid = item
            image, pts, frame_pts = strip_face(strip, lm, self.aspect)
            size = (round(self.aspect * _NOMINAL_H), _NOMINAL_H)
            ypr = np.asarray(head_pose(frame_pts, size), np.float64)
            if not np.all(np.isfinite(ypr)):
                raise Skip("head pose is not finite")
            face = FaceLandmarks(
                points=pts, head_ypr=ypr, image_size=(image.shape[1], image.shape[0])
            )
            try:
                feats = extract(
                    face, image, crop_scale=pre.crop_scale, blink_aperture=pre.blink_aperture
                )
            except ValueError as e:
                raise Skip(f"fast path: {e}") from None
            blink = blinks.setdefault(person, pre.blink_detector())
            if blink.closed(feats.left.aperture, feats.right.aperture):
                raise Skip("eyes closed (blink)")
            inputs = features_to_inputs(feats, gaze_frame(pre.config))
            return sample_fields(inputs, person=person, target=tid, screen=xy)

        tids = target_ids([row[1] for _, row in rows])
        items = ((name, (row, tid)) for (name, row), tid in zip(rows, tids, strict=True))
        return gather(unit.id, items, to_sample, skipped)


def _decode_record(rec: bytes | TFRecordError) -> _Record:
    """One record's example, checked; `Skip` with the reason for a damaged or unusable one
    (a framing error is named by its place in the file)."""
    if isinstance(rec, TFRecordError):
        where = f"record {rec.index} at byte {rec.offset}"
        rest = "; the rest of the file is unreadable" if rec.fatal else ""
        raise Skip(f"{rec}{rest}", item=where)
    try:
        ex = parse_example(rec)
        person = f"jspsych:{base36(int(_number(ex, 'subject_id')))}"
        xy = (_number(ex, "x") / 100.0, _number(ex, "y") / 100.0)
        if not all(0.0 <= c <= 1.0 for c in xy):
            raise ValueError(f"target ({xy[0] * 100:g}, {xy[1] * 100:g}) not in 0-100")
        for key, want in (("img_width", STRIP_W), ("img_height", STRIP_H)):
            if key in ex and int(_number(ex, key)) != want:
                raise ValueError(f"{key} is {int(_number(ex, key))}, expected {want}")
        return person, xy, decode_strip(ex), decode_landmarks(ex)
    except (ProtoError, ValueError) as e:
        raise Skip(str(e)) from None
