"""Rebuild a float TFLite model as ONNX with the `onnx` package alone (no TensorFlow/LiteRT).

Made for the two networks inside MediaPipe's `face_landmarker.task`: `face_detector.tflite`
(BlazeFace short range: CONV_2D, DEPTHWISE_CONV_2D, RELU, ADD, PAD, MAX_POOL_2D, RESHAPE,
CONCATENATION) and `face_landmarks_detector.tflite` (the 478-point mesh with iris: CONV_2D,
DEPTHWISE_CONV_2D, PRELU, ADD, MAX_POOL_2D, PAD, LOGISTIC, RESHAPE); both store weights as
float16 behind DEQUANTIZE. Anything else fails loudly, naming the operator, rather than
emitting a wrong graph.

Choices:
- The ONNX model keeps the TFLite interface exactly: same input and output names, shapes
  and layout (NHWC float32, the input range the model's metadata states), so a parity check
  feeds both the same array. The range is written into the ONNX metadata
  (`gazeloop.input_mean`, `gazeloop.input_std`) for the caller to apply.
- Inside, 4-D activations are kept NCHW (what ONNX's Conv/MaxPool take) and converted back
  only where NHWC order is observable (RESHAPE, outputs); constants that broadcast against
  them are permuted at build time.
- DEQUANTIZE of float16 constants is folded into float32 initializers: compute is float32,
  as in TFLite's own float kernels, so outputs match LiteRT to float rounding.
- SAME padding is written as explicit pads computed from the static shapes (TFLite puts the
  odd pixel at the end, as ONNX's SAME_UPPER does; explicit pads make that visible).
- PRELU with per-channel slopes is written as alpha*y + (1-alpha)*relu(y) with 1x1 depthwise
  convolutions (`prelu="decompose"`, the default): onnxruntime's own PRelu kernel made the
  mesh network 1.4-2.5x slower (see `_Emitter._prelu`); `prelu="op"` emits ONNX PRelu.
  Both match LiteRT: max 2.6e-4 of the 256 px input scale on 99 real face crops.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gazeloop.calibration.store.atomic import atomic_write_bytes
from gazeloop.fastpath.tflite_reader import (
    TFLiteFormatError,
    TFLiteGraph,
    input_normalization,
    parse_tflite,
)

BUILDER_VERSION = "gazeloop.fastpath.tflite_onnx/1"

# How PRELU is written: "decompose" (fast in onnxruntime, see _Emitter._prelu) or "op"
# (ONNX PRelu, the literal translation; kept to check the decomposition against).
PRELU_FORMS = ("decompose", "op")

_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)
_ONNX_DTYPE = {
    np.dtype("float32"): TensorProto.FLOAT,
    np.dtype("int32"): TensorProto.INT32,
    np.dtype("int64"): TensorProto.INT64,
}


class UnsupportedTFLiteError(TFLiteFormatError):
    """The model uses something this builder does not translate."""


class _Emitter:
    def __init__(self, g: TFLiteGraph, prelu: str = "decompose"):
        if prelu not in PRELU_FORMS:
            raise ValueError(f"prelu must be one of {PRELU_FORMS}, not {prelu!r}")
        self.g = g
        self.prelu = prelu
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.consts: dict[int, np.ndarray] = {}  # tensor index -> folded constant (float32)
        self.values: dict[int, tuple[str, str]] = {}  # tensor index -> (name, "nchw"|"plain")
        self._converted: dict[tuple[int, str], str] = {}
        self._used: set[str] = set()
        for t in g.tensors:
            if t.value is not None:
                if t.quantized:
                    raise UnsupportedTFLiteError(
                        f"{g.path}: tensor {t.name!r} is quantized; only float models are supported"
                    )
                self.consts[t.index] = t.value
        # float16 weights behind DEQUANTIZE become float32 constants up front.
        for o in g.operators:
            if o.op == "DEQUANTIZE" and o.inputs[0] in self.consts:
                self.consts[o.outputs[0]] = self.consts[o.inputs[0]].astype(np.float32)

    # -- names --------------------------------------------------------------------------
    def unique(self, base: str) -> str:
        base = base or "t"
        name, i = base, 1
        while name in self._used:
            name, i = f"{base}_{i}", i + 1
        self._used.add(name)
        return name

    def reserve(self, name: str) -> str:
        if name in self._used:
            raise UnsupportedTFLiteError(f"{self.g.path}: duplicate tensor name {name!r}")
        self._used.add(name)
        return name

    def init(self, base: str, arr: np.ndarray) -> str:
        name = self.unique(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], **attrs) -> None:
        self.nodes.append(
            helper.make_node(op, list(inputs), list(outputs), name=self.unique(op), **attrs)
        )

    # -- values and layouts ---------------------------------------------------------------
    def rank(self, t: int) -> int:
        return len(self.g.tensors[t].shape)

    def const(self, t: int) -> np.ndarray | None:
        return self.consts.get(t)

    def need_const(self, op, i: int, what: str) -> np.ndarray:
        t = op.inputs[i]
        v = self.const(t) if t >= 0 else None
        if v is None:
            raise UnsupportedTFLiteError(
                f"{self.g.path}: operator {op.index} {op.op}: {what} must be constant"
            )
        return v

    def _const_value(self, t: int, layout: str) -> str:
        key = (t, layout)
        if key in self._converted:
            return self._converted[key]
        v = self.consts[t]
        if v.dtype == np.float16:
            v = v.astype(np.float32)
        if layout == "nchw":
            v4 = v.reshape((1,) * (4 - v.ndim) + v.shape)
            v = v4.transpose(_NHWC_TO_NCHW)
        name = self.init(self.g.tensors[t].name.split(";")[0] + f"/{layout}", v)
        self._converted[key] = name
        return name

    def value(self, t: int, layout: str) -> str:
        """ONNX name of tensor `t` in `layout` ("nchw" for a 4-D tensor, "plain" = as in
        TFLite), inserting a Transpose (once) when it exists in the other layout."""
        if t in self.consts:
            return self._const_value(t, layout)
        if t not in self.values:
            raise UnsupportedTFLiteError(
                f"{self.g.path}: tensor {t} ({self.g.tensors[t].name!r}) is used before it "
                "is produced"
            )
        name, have = self.values[t]
        if have == layout:
            return name
        if self.rank(t) != 4:
            raise UnsupportedTFLiteError(f"{self.g.path}: layout change of a non-4-D tensor")
        key = (t, layout)
        if key not in self._converted:
            out = self.unique(f"{name}/{layout}")
            perm = _NHWC_TO_NCHW if layout == "nchw" else _NCHW_TO_NHWC
            self.node("Transpose", [name], [out], perm=list(perm))
            self._converted[key] = out
        return self._converted[key]

    def define(self, t: int, layout: str) -> str:
        """A fresh ONNX name for the output tensor `t`, produced in `layout`."""
        tensor = self.g.tensors[t]
        name = self.unique(tensor.name.split(";")[-1] or f"t{t}")
        self.values[t] = (name, layout)
        return name

    def out_layout(self, t: int) -> str:
        return "nchw" if self.rank(t) == 4 else "plain"

    # -- emission -------------------------------------------------------------------------
    def activation(self, op, name: str, layout: str) -> None:
        """Apply a fused activation in place of the output tensor's name."""
        act = op.options.get("fused_activation_function", "NONE")
        if act == "NONE":
            return
        t = op.outputs[0]
        pre = self.unique(name + "/pre_act")
        # rename the producing node's output to `pre`
        last = self.nodes[-1]
        last.output[0] = pre
        if act == "RELU":
            self.node("Relu", [pre], [name])
        elif act in ("RELU6", "RELU_N1_TO_1"):
            lo, hi = (0.0, 6.0) if act == "RELU6" else (-1.0, 1.0)
            a = self.init(f"{name}/min", np.array(lo, np.float32))
            b = self.init(f"{name}/max", np.array(hi, np.float32))
            self.node("Clip", [pre, a, b], [name])
        elif act == "TANH":
            self.node("Tanh", [pre], [name])
        else:
            raise UnsupportedTFLiteError(
                f"{self.g.path}: operator {op.index} {op.op}: fused activation {act}"
            )
        self.values[t] = (name, layout)

    def _pads(self, op, in_hw, out_hw, k_hw, s_hw, d_hw) -> list[int]:
        if op.options.get("padding") == "VALID":
            return [0, 0, 0, 0]
        if op.options.get("padding") != "SAME":
            raise UnsupportedTFLiteError(f"{self.g.path}: operator {op.index}: padding")
        begin, end = [], []
        for n_in, n_out, k, s, d in zip(in_hw, out_hw, k_hw, s_hw, d_hw, strict=True):
            total = max((n_out - 1) * s + (k - 1) * d + 1 - n_in, 0)
            begin.append(total // 2)
            end.append(total - total // 2)
        return begin + end

    def emit(self, op) -> None:
        g = self.g
        kind = op.op
        if kind == "DEQUANTIZE":
            src = op.inputs[0]
            if src in self.consts:
                return  # folded in __init__
            x = self.value(src, self.out_layout(src))
            self.node(
                "Cast",
                [x],
                [self.define(op.outputs[0], self.out_layout(src))],
                to=TensorProto.FLOAT,
            )
            return
        if all(t in self.consts for t in op.inputs if t >= 0):
            raise UnsupportedTFLiteError(
                f"{g.path}: operator {op.index} {kind} has only constant inputs (not folded)"
            )
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            self._conv(op)
        elif kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            self._pool(op)
        elif kind in ("ADD", "MUL", "SUB"):
            layout = self.out_layout(op.outputs[0])
            a, b = (self.value(t, layout) for t in op.inputs[:2])
            out = self.define(op.outputs[0], layout)
            self.node({"ADD": "Add", "MUL": "Mul", "SUB": "Sub"}[kind], [a, b], [out])
            self.activation(op, out, layout)
        elif kind in ("RELU", "RELU6", "LOGISTIC", "TANH"):
            src = op.inputs[0]
            layout = self.values[src][1] if src in self.values else self.out_layout(src)
            x = self.value(src, layout)
            out = self.define(op.outputs[0], layout)
            if kind == "RELU6":
                a = self.init(f"{out}/min", np.array(0.0, np.float32))
                b = self.init(f"{out}/max", np.array(6.0, np.float32))
                self.node("Clip", [x, a, b], [out])
            else:
                self.node({"RELU": "Relu", "LOGISTIC": "Sigmoid", "TANH": "Tanh"}[kind], [x], [out])
        elif kind == "PRELU":
            self._prelu(op)
        elif kind == "PAD":
            self._pad(op)
        elif kind == "RESHAPE":
            x = self.value(op.inputs[0], "plain")
            shape = np.array(g.tensors[op.outputs[0]].shape, np.int64)
            s = self.init(f"{g.tensors[op.outputs[0]].name}/shape", shape)
            self.node("Reshape", [x, s], [self.define(op.outputs[0], "plain")])
        elif kind == "CONCATENATION":
            t_out = op.outputs[0]
            rank = self.rank(t_out)
            axis = op.options.get("axis", 0) % rank
            layout = self.out_layout(t_out)
            if layout == "nchw":
                axis = _NHWC_TO_NCHW.index(axis)
            xs = [self.value(t, layout) for t in op.inputs]
            out = self.define(t_out, layout)
            self.node("Concat", xs, [out], axis=axis)
            self.activation(op, out, layout)
        else:
            raise UnsupportedTFLiteError(
                f"{g.path}: operator {op.index} {kind} is not supported by the ONNX rebuild"
            )

    def _conv(self, op) -> None:
        g = self.g
        x_t = op.inputs[0]
        w_onnx, bias, attrs = self._conv_parts(op)
        w_t = op.inputs[1]
        inputs = [self.value(x_t, "nchw"), self.init(g.tensors[w_t].name.split(";")[0], w_onnx)]
        if bias is not None:
            inputs.append(self.init(g.tensors[op.inputs[2]].name.split(";")[0] + "/bias", bias))
        out = self.define(op.outputs[0], "nchw")
        self.node("Conv", inputs, [out], **attrs)
        self.activation(op, out, "nchw")

    def _conv_parts(self, op) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """ONNX weights (OIHW), bias (or None) and Conv attributes of a TFLite conv."""
        g = self.g
        x_t = op.inputs[0]
        b_t = op.inputs[2] if len(op.inputs) > 2 else -1
        x_shape = g.tensors[x_t].shape  # NHWC
        out_shape = g.tensors[op.outputs[0]].shape
        w = self.need_const(op, 1, "the filter").astype(np.float32)
        o = op.options
        if op.op == "CONV_2D":
            # TFLite OHWI -> ONNX OIHW
            if w.shape[3] != x_shape[3]:
                raise UnsupportedTFLiteError(f"{g.path}: operator {op.index}: grouped CONV_2D")
            w_onnx = w.transpose(0, 3, 1, 2)
            group = 1
        else:
            # TFLite [1, kh, kw, C*m] -> ONNX [C*m, 1, kh, kw], group = C
            cin = x_shape[3]
            if w.shape[0] != 1 or w.shape[3] % cin:
                raise UnsupportedTFLiteError(f"{g.path}: operator {op.index}: filter shape")
            w_onnx = w.transpose(3, 0, 1, 2)
            group = cin
        k_hw = w_onnx.shape[2:]
        s_hw = (o["stride_h"], o["stride_w"])
        d_hw = (o["dilation_h_factor"], o["dilation_w_factor"])
        pads = self._pads(op, x_shape[1:3], out_shape[1:3], k_hw, s_hw, d_hw)
        bias = self.need_const(op, 2, "the bias").astype(np.float32) if b_t >= 0 else None
        attrs = dict(
            kernel_shape=list(k_hw),
            strides=list(s_hw),
            dilations=list(d_hw),
            pads=pads,
            group=group,
        )
        return w_onnx, bias, attrs

    def _pool(self, op) -> None:
        g = self.g
        o = op.options
        x_shape = g.tensors[op.inputs[0]].shape
        out_shape = g.tensors[op.outputs[0]].shape
        k_hw = (o["filter_height"], o["filter_width"])
        s_hw = (o["stride_h"], o["stride_w"])
        pads = self._pads(op, x_shape[1:3], out_shape[1:3], k_hw, s_hw, (1, 1))
        x = self.value(op.inputs[0], "nchw")
        out = self.define(op.outputs[0], "nchw")
        # TFLite's SAME average pool divides by the number of real pixels: ONNX's default
        # count_include_pad=0 does the same; max pool ignores padding in both.
        onnx_op = "MaxPool" if op.op == "MAX_POOL_2D" else "AveragePool"
        self.node(onnx_op, [x], [out], kernel_shape=list(k_hw), strides=list(s_hw), pads=pads)
        self.activation(op, out, "nchw")

    def _prelu(self, op) -> None:
        layout = self.out_layout(op.outputs[0])
        x = self.value(op.inputs[0], layout)
        alpha = self.const(op.inputs[1])
        channels = self.g.tensors[op.outputs[0]].shape[-1]
        per_channel = (
            alpha is not None
            and layout == "nchw"
            and alpha.size == channels
            and alpha.shape[-1] == channels
        )
        if self.prelu == "op" or not per_channel:
            a = self.value(op.inputs[1], layout)
            self.node("PRelu", [x, a], [self.define(op.outputs[0], layout)])
            return
        # onnxruntime's PRelu is a generic broadcast kernel, and every tensor around it is
        # reordered out of and back into the blocked (NCHWc) layout its convolutions use: in
        # the mesh network that was ~70 % of the run time (profiled, one thread). The same
        # function written as
        #   alpha * y + (1 - alpha) * relu(y)
        # with the two per-channel scales as 1x1 depthwise convolutions stays blocked (the
        # network runs 1.4-2.5x faster depending on the onnxruntime release, within 10 % of
        # LiteRT/XNNPACK on the same host and input) and equals PRelu up to float rounding.
        # Folding the scales into a following depthwise conv, or y + (1 - alpha) * relu(-y),
        # measured no faster.
        a = alpha.astype(np.float32).reshape(channels, 1, 1, 1)
        base = self.g.tensors[op.outputs[0]].name.split(";")[-1]
        zero = self.init(f"{base}/zero_bias", np.zeros(channels, np.float32))
        relu = self.unique(f"{base}/relu")
        self.node("Relu", [x], [relu])
        lin = self.unique(f"{base}/alpha_y")
        w_lin = self.init(f"{base}/alpha", a)
        self.node("Conv", [x, w_lin, zero], [lin], group=channels, kernel_shape=[1, 1])
        pos = self.unique(f"{base}/relu_scaled")
        w_pos = self.init(f"{base}/one_minus_alpha", (1.0 - a).astype(np.float32))
        self.node("Conv", [relu, w_pos, zero], [pos], group=channels, kernel_shape=[1, 1])
        self.node("Add", [pos, lin], [self.define(op.outputs[0], layout)])

    def _pad(self, op) -> None:
        g = self.g
        pads = self.need_const(op, 1, "the paddings").astype(np.int64).reshape(-1, 2)
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            raise UnsupportedTFLiteError(f"{g.path}: operator {op.index}: PAD with a value")
        layout = self.out_layout(op.outputs[0])
        if layout == "nchw":
            pads = pads[list(_NHWC_TO_NCHW)]
        x = self.value(op.inputs[0], layout)
        p = self.init(
            f"{g.tensors[op.outputs[0]].name.split(';')[-1]}/pads",
            np.concatenate([pads[:, 0], pads[:, 1]]),
        )
        self.node("Pad", [x, p], [self.define(op.outputs[0], layout)], mode="constant")


def _value_info(g: TFLiteGraph, t: int, name: str) -> onnx.ValueInfoProto:
    tensor = g.tensors[t]
    if tensor.dtype not in _ONNX_DTYPE:
        raise UnsupportedTFLiteError(f"{g.path}: graph input/output {tensor.name!r} dtype")
    return helper.make_tensor_value_info(name, _ONNX_DTYPE[tensor.dtype], list(tensor.shape))


def tflite_to_onnx(
    g: TFLiteGraph,
    *,
    opset: int = 17,
    prelu: str = "decompose",
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """Translate a parsed TFLite graph to an in-memory, checked ONNX model."""
    em = _Emitter(g, prelu)
    inputs = []
    for t in g.inputs:
        name = em.reserve(g.tensors[t].name)
        em.values[t] = (name, "plain")
        inputs.append(_value_info(g, t, name))
    out_names = {t: em.reserve(g.tensors[t].name) for t in g.outputs}

    for op in g.operators:
        em.emit(op)

    outputs = []
    for t, name in out_names.items():
        src = em.value(t, "plain")
        em.node("Identity", [src], [name])
        outputs.append(_value_info(g, t, name))

    graph = helper.make_graph(
        em.nodes, Path(g.path).stem, inputs, outputs, initializer=em.initializers
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="gazeloop",
        producer_version=BUILDER_VERSION,
    )
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    helper.set_model_props(model, dict(metadata or {}))
    onnx.checker.check_model(model, full_check=True)
    _check_shapes(g, model)
    return model


def _check_shapes(g: TFLiteGraph, model: onnx.ModelProto) -> None:
    """ONNX shape inference must agree with the shapes the TFLite file declares."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    got = {
        o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in inferred.graph.output
    }
    for t in g.outputs:
        name = g.tensors[t].name
        if tuple(got.get(name, ())) != g.tensors[t].shape:
            raise UnsupportedTFLiteError(
                f"{g.path}: output {name!r} has shape {got.get(name)} in the rebuild, "
                f"{g.tensors[t].shape} in the TFLite file"
            )


def tflite_bytes_to_onnx(
    data: bytes,
    source: str | Path,
    *,
    prelu: str = "decompose",
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """Parse and translate; the input normalization from the TFLite metadata is recorded."""
    import hashlib

    g = parse_tflite(data, source)
    meta = {
        "gazeloop.builder": BUILDER_VERSION,
        "gazeloop.source.tflite": Path(source).name,
        "gazeloop.source.tflite_sha256": hashlib.sha256(data).hexdigest(),
        "gazeloop.input_layout": "NHWC RGB",
        "gazeloop.prelu": prelu,
    }
    norm = input_normalization(g)
    if norm is not None:
        meta["gazeloop.input_mean"] = ",".join(repr(v) for v in norm.mean)
        meta["gazeloop.input_std"] = ",".join(repr(v) for v in norm.std)
    meta.update(metadata or {})
    return tflite_to_onnx(g, prelu=prelu, metadata=meta)


def build_onnx(tflite_path: str | Path, out_path: str | Path, *, prelu: str = "decompose") -> Path:
    """Rebuild the TFLite file at `tflite_path` as ONNX at `out_path` (written atomically)."""
    tflite_path, out_path = Path(tflite_path), Path(out_path)
    if not tflite_path.is_file():
        raise FileNotFoundError(f"TFLite model not found: {tflite_path}")
    model = tflite_bytes_to_onnx(tflite_path.read_bytes(), tflite_path, prelu=prelu)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_path, model.SerializeToString())
    return out_path


def read_bundle_member(bundle: str | Path, member: str) -> bytes:
    """One file out of a MediaPipe `.task` bundle (a zip), with errors naming the bundle."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise FileNotFoundError(f"model bundle not found: {bundle}")
    try:
        with zipfile.ZipFile(bundle) as z:
            return z.read(member)
    except KeyError:
        raise TFLiteFormatError(f"{bundle}: the bundle has no {member}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise TFLiteFormatError(f"{bundle}: not a readable .task bundle ({e})") from e


def build_from_bundle(
    bundle: str | Path,
    members: dict[str, Path],
    *,
    prelu: str = "decompose",
    metadata: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Rebuild each `member` of a `.task` bundle as ONNX at the given path (atomically)."""
    bundle = Path(bundle)
    out = {}
    for member, path in members.items():
        data = read_bundle_member(bundle, member)
        meta = {"gazeloop.source.bundle": bundle.name, **(metadata or {})}
        model = tflite_bytes_to_onnx(data, f"{bundle}:{member}", prelu=prelu, metadata=meta)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, model.SerializeToString())
        out[member] = path
    return out
