"""Read a TFLite flatbuffer (and its TFLITE_METADATA) into a small typed graph, no TensorFlow.

Why parse the flatbuffer here instead of using the `flatbuffers` package or the generated
`tflite` schema classes: the part of the format we need is ~60 lines (a root offset, tables
with vtables, vectors, strings, unions) and the schema fields we read are fixed by the
format's compatibility rules (fields are only ever appended). Doing it ourselves keeps the
product free of a build-time dependency whose generated code drifts from release to release,
and every malformed-file case becomes one clear error naming the file. The field indices
below follow `tensorflow/lite/schema/schema.fbs` and `metadata_schema.fbs`; the
`tflite` package (generated classes) was used only to cross-check this reader.

Parsing is kept apart from emission, like `ir_reader` / `ir_onnx`: `tflite_onnx` walks the
`TFLiteGraph` built here. Constant tensors are decoded as numpy arrays in their stored dtype
(float16 stays float16); folding precision is the emitter's choice.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class TFLiteFormatError(ValueError):
    """The file is not a TFLite flatbuffer this reader understands (or is truncated)."""


# TensorType (schema.fbs) -> numpy dtype, for the types a float model may carry.
TENSOR_TYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),  # FLOAT32
    1: np.dtype("<f2"),  # FLOAT16
    2: np.dtype("<i4"),  # INT32
    3: np.dtype("u1"),  # UINT8
    4: np.dtype("<i8"),  # INT64
    6: np.dtype("?"),  # BOOL
    7: np.dtype("<i2"),  # INT16
    9: np.dtype("i1"),  # INT8
    10: np.dtype("<f8"),  # FLOAT64
}

# BuiltinOperator codes (schema.fbs) for the operators we know by name. Unknown codes keep
# their number in the name, so an unsupported model fails naming what it uses.
BUILTIN_OPS: dict[int, str] = {
    0: "ADD",
    1: "AVERAGE_POOL_2D",
    2: "CONCATENATION",
    3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE",
    9: "FULLY_CONNECTED",
    14: "LOGISTIC",
    17: "MAX_POOL_2D",
    18: "MUL",
    19: "RELU",
    21: "RELU6",
    22: "RESHAPE",
    25: "SOFTMAX",
    28: "TANH",
    32: "CUSTOM",
    34: "PAD",
    39: "TRANSPOSE",
    41: "SUB",
    54: "PRELU",
}

# BuiltinOptions union member -> (name, {field name: (slot, struct format, default)}).
# Only the option tables of the operators above that carry settings.
_I = "<i"
_B = "<b"
_OPTIONS: dict[int, tuple[str, dict[str, tuple[int, str, int]]]] = {
    1: (
        "Conv2DOptions",
        {
            "padding": (0, _B, 0),
            "stride_w": (1, _I, 0),
            "stride_h": (2, _I, 0),
            "fused_activation_function": (3, _B, 0),
            "dilation_w_factor": (4, _I, 1),
            "dilation_h_factor": (5, _I, 1),
        },
    ),
    2: (
        "DepthwiseConv2DOptions",
        {
            "padding": (0, _B, 0),
            "stride_w": (1, _I, 0),
            "stride_h": (2, _I, 0),
            "depth_multiplier": (3, _I, 0),
            "fused_activation_function": (4, _B, 0),
            "dilation_w_factor": (5, _I, 1),
            "dilation_h_factor": (6, _I, 1),
        },
    ),
    5: (
        "Pool2DOptions",
        {
            "padding": (0, _B, 0),
            "stride_w": (1, _I, 0),
            "stride_h": (2, _I, 0),
            "filter_width": (3, _I, 0),
            "filter_height": (4, _I, 0),
            "fused_activation_function": (5, _B, 0),
        },
    ),
    10: ("ConcatenationOptions", {"axis": (0, _I, 0), "fused_activation_function": (1, _B, 0)}),
    11: ("AddOptions", {"fused_activation_function": (0, _B, 0)}),
    21: ("MulOptions", {"fused_activation_function": (0, _B, 0)}),
    28: ("SubOptions", {"fused_activation_function": (0, _B, 0)}),
}
_RESHAPE_OPTIONS = 17  # ReshapeOptions { new_shape: [int] }

PADDING = {0: "SAME", 1: "VALID"}
ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}


# -- flatbuffer primitives ------------------------------------------------------------------


class _Buf:
    """Bounds-checked reads of flatbuffer tables, vectors and strings from one byte buffer."""

    def __init__(self, data: bytes, path: Path):
        self.data = data
        self.path = path

    def _need(self, pos: int, size: int) -> None:
        if pos < 0 or pos + size > len(self.data):
            raise TFLiteFormatError(
                f"{self.path}: truncated or not a TFLite file (read of {size} bytes at {pos}, "
                f"file has {len(self.data)})"
            )

    def u32(self, pos: int) -> int:
        self._need(pos, 4)
        return struct.unpack_from("<I", self.data, pos)[0]

    def scalar(self, fmt: str, pos: int):
        self._need(pos, struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.data, pos)[0]

    def root(self) -> int:
        return self.u32(0)

    def field(self, table: int, slot: int) -> int:
        """Absolute position of field `slot` in the table at `table`, or 0 when absent."""
        vtable = table - self.scalar("<i", table)
        vsize = self.scalar("<H", vtable)
        entry = 4 + 2 * slot
        if entry >= vsize:
            return 0
        off = self.scalar("<H", vtable + entry)
        return table + off if off else 0

    def get(self, table: int, slot: int, fmt: str, default=0):
        pos = self.field(table, slot)
        return self.scalar(fmt, pos) if pos else default

    def indirect(self, pos: int) -> int:
        return pos + self.u32(pos)

    def table(self, table: int, slot: int) -> int | None:
        pos = self.field(table, slot)
        return self.indirect(pos) if pos else None

    def vector(self, table: int, slot: int) -> tuple[int, int]:
        """(start of elements, length) of a vector field; (0, 0) when absent."""
        pos = self.field(table, slot)
        if not pos:
            return 0, 0
        vec = self.indirect(pos)
        n = self.u32(vec)
        return vec + 4, n

    def tables(self, table: int, slot: int) -> list[int]:
        start, n = self.vector(table, slot)
        return [self.indirect(start + 4 * i) for i in range(n)]

    def array(self, table: int, slot: int, dtype: str) -> np.ndarray:
        start, n = self.vector(table, slot)
        dt = np.dtype(dtype)
        if n == 0:
            return np.zeros(0, dt)
        self._need(start, n * dt.itemsize)
        return np.frombuffer(self.data, dt, count=n, offset=start).copy()

    def string(self, table: int, slot: int) -> str:
        start, n = self.vector(table, slot)
        if not n:
            return ""
        self._need(start, n)
        return self.data[start : start + n].decode("utf-8", "replace")

    def bytes_vector(self, table: int, slot: int) -> tuple[int, int]:
        start, n = self.vector(table, slot)
        self._need(start, n)
        return start, n


# -- the model ------------------------------------------------------------------------------


@dataclass(slots=True)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    buffer: int
    value: np.ndarray | None = None  # constant payload (stored dtype), None for activations
    quantized: bool = False


@dataclass(slots=True)
class Operator:
    index: int
    op: str  # BUILTIN_OPS name, or "BUILTIN_<code>" / "CUSTOM:<name>"
    inputs: tuple[int, ...]  # tensor indices, -1 for an omitted optional input
    outputs: tuple[int, ...]
    options: dict[str, int | str | tuple[int, ...]] = field(default_factory=dict)


@dataclass(slots=True)
class TFLiteGraph:
    path: Path
    description: str
    version: int
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    metadata: dict[str, bytes]  # name -> raw buffer (e.g. TFLITE_METADATA)

    def tensor(self, i: int) -> Tensor:
        return self.tensors[i]

    @property
    def op_types(self) -> set[str]:
        return {o.op for o in self.operators}


def _tensor_value(buf: _Buf, buffers: list[int], t: Tensor, n_bytes_expected: int):
    if t.buffer <= 0 or t.buffer >= len(buffers):
        return None
    b = buffers[t.buffer]
    start, n = buf.bytes_vector(b, 0)
    if n == 0:
        # Models over 2 GB keep data after the flatbuffer (Buffer.offset/size, slots 1 and 2).
        off = buf.get(b, 1, "<Q", 0)
        size = buf.get(b, 2, "<Q", 0)
        if off > 1 and size:
            start, n = off, size
            buf._need(start, n)
        else:
            return None
    if n != n_bytes_expected:
        raise TFLiteFormatError(
            f"{buf.path}: tensor {t.name!r} has {n} bytes of data but shape {t.shape} of "
            f"{t.dtype} needs {n_bytes_expected}"
        )
    return (
        np.frombuffer(buf.data, t.dtype, count=int(np.prod(t.shape, dtype=np.int64)), offset=start)
        .reshape(t.shape)
        .copy()
    )


def _options(buf: _Buf, op_table: int, op: str) -> dict:
    kind = buf.get(op_table, 3, "<B", 0)  # builtin_options_type
    opts_table = buf.table(op_table, 4)  # builtin_options
    if opts_table is None or kind == 0:
        return {}
    if kind == _RESHAPE_OPTIONS:
        return {"new_shape": tuple(int(v) for v in buf.array(opts_table, 0, "<i4"))}
    spec = _OPTIONS.get(kind)
    if spec is None:
        return {"_options_type": kind}
    _, fields = spec
    out: dict = {}
    for name, (slot, fmt, default) in fields.items():
        out[name] = buf.get(opts_table, slot, fmt, default)
    if "padding" in out:
        out["padding"] = PADDING.get(out["padding"], str(out["padding"]))
    if "fused_activation_function" in out:
        a = out["fused_activation_function"]
        out["fused_activation_function"] = ACTIVATIONS.get(a, str(a))
    return out


def _opcodes(buf: _Buf, model: int) -> list[str]:
    """Operator names by opcode index. The larger of the two code fields counts: old files
    keep the code in the deprecated byte, new ones past 127 only in the int."""
    codes = []
    for oc in buf.tables(model, 1):
        dep = buf.get(oc, 0, "<b", 0)
        code = max(int(dep), int(buf.get(oc, 3, "<i", 0)))
        if code == 32:
            codes.append("CUSTOM:" + buf.string(oc, 1))
        else:
            codes.append(BUILTIN_OPS.get(code, f"BUILTIN_{code}"))
    return codes


def _metadata(buf: _Buf, model: int, buffers: list[int]) -> dict[str, bytes]:
    """Named metadata buffers: TFLITE_METADATA holds the input normalisation
    (`input_normalization`). A name pointing at no buffer is left out."""
    metadata = {}
    for md in buf.tables(model, 6):
        name = buf.string(md, 0)
        bi = buf.get(md, 1, "<I", 0)
        if 0 < bi < len(buffers):
            start, n = buf.bytes_vector(buffers[bi], 0)
            metadata[name] = bytes(buf.data[start : start + n])
    return metadata


def _tensors(buf: _Buf, sg: int, buffers: list[int]) -> list[Tensor]:
    """The subgraph's tensors with their constant payloads decoded; a type we cannot map to
    numpy fails here, naming the tensor, rather than later as a wrong value."""
    tensors = []
    for i, tt in enumerate(buf.tables(sg, 0)):
        type_code = buf.get(tt, 1, "<b", 0)
        if type_code not in TENSOR_TYPES:
            raise TFLiteFormatError(f"{buf.path}: tensor {i} has unsupported type {type_code}")
        quant = buf.table(tt, 4)
        quantized = bool(quant is not None and buf.vector(quant, 2)[1])  # scale present
        t = Tensor(
            index=i,
            name=buf.string(tt, 3),
            shape=tuple(int(v) for v in buf.array(tt, 0, "<i4")),
            dtype=TENSOR_TYPES[type_code],
            buffer=int(buf.get(tt, 2, "<I", 0)),
            quantized=quantized,
        )
        need = int(np.prod(t.shape, dtype=np.int64)) * t.dtype.itemsize
        t.value = _tensor_value(buf, buffers, t, need)
        tensors.append(t)
    return tensors


def _operators(buf: _Buf, sg: int, codes: list[str]) -> list[Operator]:
    """The subgraph's operators in execution order, named through the opcode table."""
    operators = []
    for i, ot in enumerate(buf.tables(sg, 3)):
        ci = buf.get(ot, 0, "<I", 0)
        if ci >= len(codes):
            raise TFLiteFormatError(f"{buf.path}: operator {i} has opcode index {ci}")
        op = codes[ci]
        operators.append(
            Operator(
                index=i,
                op=op,
                inputs=tuple(int(v) for v in buf.array(ot, 1, "<i4")),
                outputs=tuple(int(v) for v in buf.array(ot, 2, "<i4")),
                options=_options(buf, ot, op),
            )
        )
    return operators


def _check_tensor_refs(path: Path, tensors: list[Tensor], operators: list[Operator]) -> None:
    """An operator naming a tensor past the end would otherwise surface as an IndexError
    deep in the emitter, far from the file that caused it."""
    n = len(tensors)
    for o in operators:
        for t in (*o.inputs, *o.outputs):
            if t >= n:
                raise TFLiteFormatError(f"{path}: operator {o.index} refers to tensor {t}")


def parse_tflite(data: bytes, path: str | Path = "<bytes>") -> TFLiteGraph:
    """Parse a TFLite model held in memory (subgraph 0; the only one our models have)."""
    path = Path(path)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TFLiteFormatError(f"{path}: not a TFLite model (no 'TFL3' file identifier)")
    buf = _Buf(data, path)
    try:
        model = buf.root()
        version = buf.get(model, 0, "<I", 0)
        codes = _opcodes(buf, model)
        subgraphs = buf.tables(model, 2)
        if not subgraphs:
            raise TFLiteFormatError(f"{path}: the model has no subgraph")
        description = buf.string(model, 3)
        buffers = buf.tables(model, 4)
        metadata = _metadata(buf, model, buffers)
        sg = subgraphs[0]
        tensors = _tensors(buf, sg, buffers)
        operators = _operators(buf, sg, codes)
        inputs = tuple(int(v) for v in buf.array(sg, 1, "<i4"))
        outputs = tuple(int(v) for v in buf.array(sg, 2, "<i4"))
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise TFLiteFormatError(f"{path}: malformed TFLite flatbuffer ({e})") from e
    _check_tensor_refs(path, tensors, operators)
    return TFLiteGraph(path, description, version, tensors, operators, inputs, outputs, metadata)


# -- TFLite model metadata (metadata_schema.fbs) --------------------------------------------


@dataclass(frozen=True, slots=True)
class InputNormalization:
    """`(pixel - mean) / std` for the model input, from its NormalizationOptions."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def range(self) -> tuple[float, float]:
        """The float range a 0..255 pixel maps to (what MediaPipe's ImageToTensor uses)."""
        m, s = self.mean[0], self.std[0]
        return (0.0 - m) / s, (255.0 - m) / s


def input_normalization(graph: TFLiteGraph) -> InputNormalization | None:
    """The first input's NormalizationOptions from TFLITE_METADATA, or None if absent.

    ModelMetadata.subgraph_metadata (slot 3) → SubGraphMetadata.input_tensor_metadata
    (slot 2) → TensorMetadata.process_units (slot 4) → ProcessUnit {options_type (slot 0),
    options (slot 1)}; NormalizationOptions is union member 1 with mean (slot 0) and std
    (slot 1) as float vectors.
    """
    raw = graph.metadata.get("TFLITE_METADATA")
    if not raw:
        return None
    buf = _Buf(raw, graph.path)
    try:
        root = buf.root()
        subgraphs = buf.tables(root, 3)
        if not subgraphs:
            return None
        inputs = buf.tables(subgraphs[0], 2)
        if not inputs:
            return None
        for pu in buf.tables(inputs[0], 4):
            if buf.get(pu, 0, "<B", 0) != 1:
                continue
            opts = buf.table(pu, 1)
            if opts is None:
                continue
            mean = tuple(float(v) for v in buf.array(opts, 0, "<f4"))
            std = tuple(float(v) for v in buf.array(opts, 1, "<f4"))
            if mean and std:
                return InputNormalization(mean, std)
    except (struct.error, IndexError) as e:
        raise TFLiteFormatError(f"{graph.path}: malformed TFLITE_METADATA ({e})") from e
    return None
