"""Rebuild a float TFLite model as ONNX with the `onnx` package alone (no TensorFlow/LiteRT).

Made for the two networks inside MediaPipe's `face_landmarker.task`: `face_detector.tflite`
(BlazeFace short range: CONV_2D, DEPTHWISE_CONV_2D, RELU, ADD, PAD, MAX_POOL_2D, RESHAPE,
CONCATENATION) and `face_landmarks_detector.tflite` (the 478-point mesh with iris: CONV_2D,
DEPTHWISE_CONV_2D, PRELU, ADD, MAX_POOL_2D, PAD, LOGISTIC, RESHAPE); both store weights as
float16 behind DEQUANTIZE. Anything else fails loudly, naming the operator, rather than
emitting a wrong graph.

Choices:
- The ONNX model keeps the TFLite interface: same input and output names, shapes and layout
  (NHWC float32, the input range the model's metadata states), so a parity check feeds both
  the same array. The range is written into the ONNX metadata (`gazeloop.input_mean`,
  `gazeloop.input_std`) for the caller to apply. The one exception is asked for:
  `fold_image_input` makes the input NCHW BGR pixels (`gazeloop.input_layout`).
- Inside, 4-D activations are kept NCHW (what ONNX's Conv/MaxPool take) and converted back
  only where NHWC order is observable (RESHAPE, outputs); constants that broadcast against
  them are permuted at build time.
- DEQUANTIZE of float16 constants is folded into float32 initializers: compute is float32,
  as in TFLite's own float kernels, so outputs match LiteRT to float rounding.
- SAME padding is written as explicit pads computed from the static shapes (TFLite puts the
  odd pixel at the end, as ONNX's SAME_UPPER does; explicit pads make that visible).
- PRELU with per-channel slopes is written as alpha*y + (1-alpha)*relu(y) with 1x1 depthwise
  convolutions (`prelu="decompose"`, the default): onnxruntime's own PRelu kernel made the
  mesh network 1.4-2.5x slower (see `_Emitter._prelu_decomposed`); `prelu="op"` emits ONNX
  PRelu and Pad, the literal translation kept as the reference. Both match LiteRT: max
  2.6e-4 of the 256 px input scale on 99 real face crops.
- The default form is built for onnxruntime's blocked (NCHWc) convolutions on one thread,
  where every extra pass over a tensor and every node costs: the Relu of a PReLU fuses into
  its scaling conv (values stored negated on a channel where that needs it, the sign moved
  into the readers' weights), the 8-channel PReLUs of the 128x128 stage fold into the convs
  around them (`find_crelu_chains`), channel padding is a 1x1 conv, and the landmark
  network can take BGR pixels with its [0, 1] normalisation folded into the first conv
  (`fold_image_input`). Each is exact algebra (float rounding aside: 5e-5 of the input
  scale against the literal translation); together they cut the network's CPU time per run
  by 20 % here (5.1 against 6.3 ms, interleaved, one thread, onnxruntime 1.32, AVX-512).
"""

from __future__ import annotations

import zipfile
from collections.abc import Collection, Sequence
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

BUILDER_VERSION = "gazeloop.fastpath.tflite_onnx/5"

# How PRELU is written: "decompose" (fast in onnxruntime, see _Emitter._prelu_decomposed) or
# "op" (ONNX PRelu, the literal translation; kept to check the decomposition against).
PRELU_FORMS = ("decompose", "op")
# PReLUs with at most this many channels, between a conv and a depthwise conv, are folded
# into those convs (`find_crelu_chains`). 8: the mesh network's 128x128 stage, where the
# doubled tensor still fits one 16-channel block of onnxruntime's NCHWc layout (AVX-512), so
# the fold saves three nodes per block at no extra arithmetic: the network ran 12-14 % faster
# here. Folding the wider PReLUs too (16-64 channels) was slower (doubled arithmetic).
FOLD_CHANNELS = 8

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
        self.crelu: dict[int, tuple[str, int]] = {}  # op index -> role in a folded PReLU chain
        # (graph input tensor, scale) when the input is NCHW BGR pixels and its
        # normalisation is folded into the convolutions that read it (`fold_image_input`)
        self.image_input: tuple[int, float] | None = None
        # channel-only PAD as a 1x1 conv (`_pad_channels`); not in the literal "op" form,
        # which is kept as the reference the fast form is checked against
        self.pad_as_conv = prelu == "decompose"
        # tensor index -> per-channel sign (+-1) it is stored with (`_prelu`); convolutions
        # reading it multiply their input channels by it
        self.sign: dict[int, np.ndarray] = {}
        self.scaled: dict[int, np.ndarray] = {}  # conv outputs scaled to match a signed sum
        self.producer = {t: o for o in g.operators for t in o.outputs}
        self.readers: dict[int, list] = {}
        for o in g.operators:
            for t in o.inputs:
                if t >= 0:
                    self.readers.setdefault(t, []).append(o)
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
            self._dequantize(op)
            return
        if all(t in self.consts for t in op.inputs if t >= 0):
            raise UnsupportedTFLiteError(
                f"{g.path}: operator {op.index} {kind} has only constant inputs (not folded)"
            )
        if op.index in self.crelu:
            self._crelu(op)
        elif kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            self._conv(op)
        elif kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            self._pool(op)
        elif kind in ("ADD", "MUL", "SUB"):
            self._binary(op)
        elif kind in ("RELU", "RELU6", "LOGISTIC", "TANH"):
            self._unary(op)
        elif kind == "PRELU":
            self._prelu(op)
        elif kind == "PAD":
            self._pad(op)
        elif kind == "RESHAPE":
            self._reshape(op)
        elif kind == "CONCATENATION":
            self._concat(op)
        else:
            raise UnsupportedTFLiteError(
                f"{g.path}: operator {op.index} {kind} is not supported by the ONNX rebuild"
            )

    def _dequantize(self, op) -> None:
        """Stored float16 weights were already folded to float32 constants (`__init__`);
        only a DEQUANTIZE of an activation is left, a Cast in the layout it already has."""
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

    def _binary(self, op) -> None:
        """ADD, MUL, SUB take both operands in the output's layout (a constant operand is
        permuted at build time, not by a Transpose); an ADD of a PReLU's signed output
        passes the sign on (`_carry_sign`)."""
        kind = op.op
        layout = self.out_layout(op.outputs[0])
        a, b = (self.value(t, layout) for t in op.inputs[:2])
        out = self.define(op.outputs[0], layout)
        self.node({"ADD": "Add", "MUL": "Mul", "SUB": "Sub"}[kind], [a, b], [out])
        self.activation(op, out, layout)
        self._carry_sign(op)

    def _unary(self, op) -> None:
        """RELU, RELU6, LOGISTIC and TANH work element by element, so they run in whatever
        layout their input already has: no Transpose is ever added for them."""
        kind = op.op
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

    def _reshape(self, op) -> None:
        """RESHAPE flattens in TFLite's (NHWC) element order, so it reads the plain layout;
        the target is the output shape the file declares (static in these models)."""
        g = self.g
        x = self.value(op.inputs[0], "plain")
        shape = np.array(g.tensors[op.outputs[0]].shape, np.int64)
        s = self.init(f"{g.tensors[op.outputs[0]].name}/shape", shape)
        self.node("Reshape", [x, s], [self.define(op.outputs[0], "plain")])

    def _concat(self, op) -> None:
        """CONCATENATION's axis counts in NHWC; a 4-D output is kept NCHW, so the axis is
        renumbered rather than the operands transposed."""
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

    def _crelu(self, op) -> None:
        """One operator of a chain conv -> PRELU -> depthwise conv -> conv, emitted with the
        PReLU folded into its neighbours (see `find_crelu_chains`): the first conv also
        computes -y and applies Relu, giving [relu(y), relu(-y)] = [y+, y-] on twice the
        channels; PReLU(y) = y+ - alpha * y-, and the depthwise conv is linear, so it runs
        on both halves with weights [w, -alpha * w]; the last conv adds the halves by taking
        its input-channel weights twice."""
        role, alpha_t = self.crelu[op.index]
        if role == "prelu":  # already applied by its neighbours: an alias of the input
            self.values[op.outputs[0]] = self.values[op.inputs[0]]
            return
        g = self.g
        w, bias, attrs = self._conv_parts(op)
        out_c = w.shape[0]
        if bias is None:
            bias = np.zeros(out_c, np.float32)
        if role == "c1":
            w = np.concatenate([w, -w])
            bias = np.concatenate([bias, -bias])
        elif role == "dw":
            a = self.consts[alpha_t].astype(np.float32).reshape(-1)
            w = np.concatenate([w, -a[:, None, None, None] * w])
            bias = np.concatenate([bias, np.zeros_like(bias)])
            attrs["group"] = 2 * attrs["group"]
        else:  # "c2"
            w = np.concatenate([w, w], axis=1)
        base = g.tensors[op.inputs[1]].name.split(";")[0] + "/crelu"
        inputs = [
            self.value(op.inputs[0], "nchw"),
            self.init(base, w),
            self.init(base + "/b", bias),
        ]
        out = self.define(op.outputs[0], "nchw")
        self.node("Conv", inputs, [out], **attrs)
        if role == "c1":
            self.activation_relu(out)
        else:
            self.activation(op, out, "nchw")

    def activation_relu(self, name: str) -> None:
        pre = self.unique(name + "/pre_act")
        self.nodes[-1].output[0] = pre
        self.node("Relu", [pre], [name])

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
        if x_t in self.sign:  # the input is stored negated on some channels (`_prelu`)
            sign = self.sign[x_t]
            w_onnx = w_onnx * (
                sign[:, None, None, None] if group > 1 else sign[None, :, None, None]
            )
        out_sign = self._output_sign(op) if op.op == "CONV_2D" else None
        if out_sign is not None:
            w_onnx = w_onnx * out_sign[:, None, None, None]
            self.scaled[op.outputs[0]] = out_sign
        if self.image_input is not None and x_t == self.image_input[0]:
            # BGR pixels in, RGB in [0, 1] (or whatever std) expected: reverse the input
            # channels of the filter and scale it; exact because the mean is zero, so the
            # conv's zero padding stays zero too.
            w_onnx = w_onnx[:, ::-1] * np.float32(self.image_input[1])
        k_hw = w_onnx.shape[2:]
        s_hw = (o["stride_h"], o["stride_w"])
        d_hw = (o["dilation_h_factor"], o["dilation_w_factor"])
        pads = self._pads(op, x_shape[1:3], out_shape[1:3], k_hw, s_hw, d_hw)
        bias = self.need_const(op, 2, "the bias").astype(np.float32) if b_t >= 0 else None
        if out_sign is not None and bias is not None:
            bias = bias * out_sign
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
        """ONNX PRelu for the literal form and for shared or non-4-D slopes; per-channel
        slopes in the default form are decomposed (`_prelu_decomposed`)."""
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
        self._prelu_decomposed(op, x, alpha, channels)

    def _prelu_decomposed(self, op, x: str, alpha: np.ndarray, channels: int) -> None:
        """PReLU of the NCHW value `x` with per-channel slopes, as two 1x1 depthwise convs.

        onnxruntime's PRelu is a generic broadcast kernel, and every tensor around it is
        reordered out of and back into the blocked (NCHWc) layout its convolutions use: in
        the mesh network that was ~70 % of the run time (profiled, one thread). The same
        function written as
          alpha * y + (1 - alpha) * relu(y)
        with the two per-channel scales as 1x1 depthwise convolutions stays blocked (the
        network runs 1.4-2.5x faster depending on the onnxruntime release) and equals PRelu
        up to float rounding. With b = 1 - alpha >= 0, b * relu(y) = relu(b * y) exactly,
        so the Relu fuses into the scaling conv: two passes over y instead of three. With
        b < 0 on some channel that holds only up to a sign there (b * relu(y) =
        b * y - relu(b * y)), so the output is written negated on those channels when
        every reader is a convolution that can take the sign into its weights
        (`self.sign`); otherwise the Relu stays a node of its own."""
        a = alpha.astype(np.float32).reshape(-1)
        b = (1.0 - a).astype(np.float32)
        # The input may itself be stored negated on some channels (y = sign_in * y'):
        # there PReLU(y) = -y' + b * relu(y'), i.e. the linear coefficient is -1.
        sign_in = self.sign.get(op.inputs[0])
        c = a if sign_in is None else np.where(sign_in > 0, a, -1.0).astype(np.float32)
        base = self.g.tensors[op.outputs[0]].name.split(";")[-1]
        zero = self.init(f"{base}/zero_bias", np.zeros(channels, np.float32))
        sign = np.where(b >= 0, 1.0, -1.0).astype(np.float32)
        fuse = bool(np.all(b >= 0)) or self._sign_absorbed(op.outputs[0])
        # c * y' + b * relu(y') = c * y' + relu(b * y') where b >= 0, and
        # -((c + b) * y' - relu(b * y')) where b < 0 (stored negated).
        lin_w = np.where(b >= 0, c, -(c + b)).astype(np.float32) if fuse else c
        lin = self.unique(f"{base}/alpha_y")
        w_lin = self.init(f"{base}/alpha", lin_w.reshape(channels, 1, 1, 1))
        self.node("Conv", [x, w_lin, zero], [lin], group=channels, kernel_shape=[1, 1])
        pos = self.unique(f"{base}/relu_scaled")
        w_pos = self.init(f"{base}/one_minus_alpha", b.reshape(channels, 1, 1, 1))
        if fuse:
            scaled = self.unique(f"{base}/one_minus_alpha_y")
            self.node("Conv", [x, w_pos, zero], [scaled], group=channels, kernel_shape=[1, 1])
            self.node("Relu", [scaled], [pos])
            if np.any(sign < 0):
                self.sign[op.outputs[0]] = sign
        else:
            relu = self.unique(f"{base}/relu")
            self.node("Relu", [x], [relu])
            self.node("Conv", [relu, w_pos, zero], [pos], group=channels, kernel_shape=[1, 1])
        self.node("Add", [pos, lin], [self.define(op.outputs[0], "nchw")])

    def _carry_sign(self, op) -> None:
        """A residual ADD of a signed tensor and a convolution scaled to match carries the
        sign on; any other mix of signs would be a bug in `_sign_absorbed`."""
        signs = [self.sign.get(t) for t in op.inputs[:2]]
        if all(s is None for s in signs):
            return
        k = 0 if signs[0] is not None else 1
        other = op.inputs[1 - k]
        if op.op != "ADD" or not np.array_equal(self.scaled.get(other), signs[k]):
            raise UnsupportedTFLiteError(
                f"{self.g.path}: operator {op.index} {op.op}: operands of different signs"
            )
        self.sign[op.outputs[0]] = signs[k]

    def _sign_absorbed(self, t: int) -> bool:
        """Whether a per-channel sign on tensor `t` can be undone by its readers: each is a
        convolution taking `t` as its data input (the sign moves into its weights), or a
        residual ADD whose other operand is a convolution's output read by nothing else
        (that convolution's outputs take the same sign, the sum carries it) and whose sum
        only PReLUs read (`_prelu` takes a signed input)."""
        readers = self.readers.get(t, [])
        return (
            bool(readers)
            and t not in self.g.outputs
            and all(self._conv_reader(o, t) or self._signed_add(o, t) for o in readers)
        )

    def _conv_reader(self, o, t: int) -> bool:
        return (
            o.op in ("CONV_2D", "DEPTHWISE_CONV_2D")
            and o.inputs[0] == t
            and t not in o.inputs[1:]
            and self.crelu.get(o.index, ("c1",))[0] == "c1"
            and o.options.get("depth_multiplier", 1) in (0, 1)
        )

    def _signed_add(self, o, t: int) -> bool:
        if o.op != "ADD" or list(o.inputs).count(t) != 1 or _act(o) != "NONE":
            return False
        other = o.inputs[1] if o.inputs[0] == t else o.inputs[0]
        p = self.producer.get(other)
        out = o.outputs[0]
        return (
            p is not None
            and p.op == "CONV_2D"
            and _act(p) == "NONE"
            and self.crelu.get(p.index, ("c2",))[0] == "c2"
            and len(self.readers.get(other, [])) == 1
            and out not in self.g.outputs
            and all(r.op == "PRELU" and r.inputs[0] == out for r in self.readers.get(out, []))
        )

    def _output_sign(self, op) -> np.ndarray | None:
        """The sign a convolution's outputs are scaled by: that of the residual it is added
        to (`_signed_add`), so the sum carries one sign."""
        readers = self.readers.get(op.outputs[0], [])
        if len(readers) != 1 or readers[0].op != "ADD":
            return None
        add = readers[0]
        other = add.inputs[1] if add.inputs[0] == op.outputs[0] else add.inputs[0]
        return self.sign.get(other)

    def _pad(self, op) -> None:
        g = self.g
        pads = self.need_const(op, 1, "the paddings").astype(np.int64).reshape(-1, 2)
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            raise UnsupportedTFLiteError(f"{g.path}: operator {op.index}: PAD with a value")
        layout = self.out_layout(op.outputs[0])
        if layout == "nchw" and self.pad_as_conv and not pads[:3].any() and pads[3, 0] == 0:
            self._pad_channels(op, int(pads[3, 1]))
            return
        if layout == "nchw":
            pads = pads[list(_NHWC_TO_NCHW)]
        x = self.value(op.inputs[0], layout)
        p = self.init(
            f"{g.tensors[op.outputs[0]].name.split(';')[-1]}/pads",
            np.concatenate([pads[:, 0], pads[:, 1]]),
        )
        self.node("Pad", [x, p], [self.define(op.outputs[0], layout)], mode="constant")

    def _pad_channels(self, op, extra: int) -> None:
        """Zero channels appended (the mesh network's skip connections at each stage's
        start) as a 1x1 convolution with weights [I; 0]: exact, and unlike Pad it stays in
        onnxruntime's blocked NCHWc layout, so the Add after it fuses into the convolution
        it follows instead of costing two reorders out and two back in."""
        channels = self.g.tensors[op.inputs[0]].shape[3]
        w = np.zeros((channels + extra, channels, 1, 1), np.float32)
        w[np.arange(channels), np.arange(channels)] = 1.0
        base = self.g.tensors[op.outputs[0]].name.split(";")[-1]
        x = self.value(op.inputs[0], "nchw")
        self.node(
            "Conv",
            [x, self.init(f"{base}/pad_identity", w)],
            [self.define(op.outputs[0], "nchw")],
            kernel_shape=[1, 1],
        )


def _act(op) -> str:
    return op.options.get("fused_activation_function", "NONE")


def find_crelu_chains(
    g: TFLiteGraph, consts: dict[int, np.ndarray], max_channels: int
) -> dict[int, tuple[str, int]]:
    """Chains CONV_2D -> PRELU -> DEPTHWISE_CONV_2D -> CONV_2D, each output used once, no
    activation fused into the first two convs, and at most `max_channels` PReLU channels:
    operator index -> (role, alpha tensor). Their PReLU is folded into the neighbours
    (`_Emitter._crelu`): three fewer nodes for twice the channels in the middle."""
    consumers: dict[int, list] = {}
    for o in g.operators:
        for t in o.inputs:
            if t >= 0:
                consumers.setdefault(t, []).append(o)
    producer = {t: o for o in g.operators for t in o.outputs}
    outputs = set(g.outputs)

    def only(t: int, op: str):
        """The one consumer of `t` if it is an `op` taking `t` as its data input."""
        c = consumers.get(t, [])
        if len(c) != 1 or t in outputs or c[0].op != op or c[0].inputs[0] != t:
            return None
        return c[0]

    roles: dict[int, tuple[str, int]] = {}
    for p in g.operators:
        if p.op != "PRELU" or p.inputs[1] not in consts:
            continue
        shape = g.tensors[p.outputs[0]].shape
        c1 = producer.get(p.inputs[0])
        if (
            c1 is None
            or c1.op != "CONV_2D"
            or c1.options.get("fused_activation_function", "NONE") != "NONE"
            or len(consumers.get(c1.outputs[0], [])) != 1
            or consts[p.inputs[1]].size != shape[-1]
            or len(shape) != 4
            or shape[-1] > max_channels
        ):
            continue
        dw = only(p.outputs[0], "DEPTHWISE_CONV_2D")
        # The depthwise conv's output is summed over halves later: no activation on it.
        if (
            dw is None
            or dw.options.get("depth_multiplier", 1) not in (0, 1)
            or dw.options.get("fused_activation_function", "NONE") != "NONE"
        ):
            continue
        c2 = only(dw.outputs[0], "CONV_2D")
        if c2 is None:
            continue
        a = p.inputs[1]
        roles.update({c1.index: ("c1", a), p.index: ("prelu", a), dw.index: ("dw", a)})
        roles[c2.index] = ("c2", a)
    return roles


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
    fold_channels: int = FOLD_CHANNELS,
    image_scale: float | None = None,
) -> onnx.ModelProto:
    """Translate a parsed TFLite graph to an in-memory, checked ONNX model.

    `image_scale`: take the (single) input as NCHW BGR pixels and fold `x * image_scale` and
    the BGR -> RGB swap into the convolutions that read it (`fold_image_input`)."""
    em = _Emitter(g, prelu)
    if fold_channels > 0:
        em.crelu = find_crelu_chains(g, em.consts, fold_channels)
    inputs = []
    for t in g.inputs:
        name = em.reserve(g.tensors[t].name)
        if image_scale is not None:
            _check_image_input(g, t)
            em.image_input = (t, float(image_scale))
            em.values[t] = (name, "nchw")
            n, h, w, c = g.tensors[t].shape
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, c, h, w]))
            continue
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


def _check_image_input(g: TFLiteGraph, t: int) -> None:
    """The input folded into its readers must be one 3-channel float image read by plain
    convolutions only (a fold anywhere else would change the function)."""
    shape = g.tensors[t].shape
    readers = [o for o in g.operators if t in o.inputs]
    if (
        len(g.inputs) != 1
        or len(shape) != 4
        or shape[3] != 3
        or not readers
        or any(o.op != "CONV_2D" or list(o.inputs).index(t) != 0 for o in readers)
    ):
        raise UnsupportedTFLiteError(
            f"{g.path}: input {g.tensors[t].name!r} cannot take BGR pixels folded into its "
            "readers (not one RGB image read only by CONV_2D)"
        )


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
    fold_channels: int = FOLD_CHANNELS,
    fold_image_input: bool = False,
) -> onnx.ModelProto:
    """Parse and translate; the input normalization from the TFLite metadata is recorded.

    `fold_image_input`: the ONNX input becomes NCHW BGR pixels (0..255 as float32), the
    normalization and the channel swap folded into the first convolution, which saves the
    caller a colour conversion and the graph an NHWC -> NCHW transpose. Only for a
    zero-mean normalization (the landmark network's [0, 1]); the recorded mean and std are
    then 0 and 1 (nothing left for the caller to apply)."""
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
    image_scale = None
    if fold_image_input:
        if norm is None or any(m != 0.0 for m in norm.mean) or len(set(norm.std)) != 1:
            raise UnsupportedTFLiteError(
                f"{source}: input normalization {norm} is not zero-mean with one std; "
                "it cannot be folded into the first convolution"
            )
        image_scale = 1.0 / norm.std[0]
        meta["gazeloop.input_layout"] = "NCHW BGR"
        meta["gazeloop.input_mean"] = "0.0"
        meta["gazeloop.input_std"] = "1.0"
        meta["gazeloop.input_folded_std"] = repr(norm.std[0])
    meta.update(metadata or {})
    if fold_channels > 0:
        meta["gazeloop.prelu_folded_up_to_channels"] = str(fold_channels)
    return tflite_to_onnx(
        g, prelu=prelu, metadata=meta, fold_channels=fold_channels, image_scale=image_scale
    )


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
    image_input_members: Collection[str] = (),
) -> dict[str, Path]:
    """Rebuild each `member` of a `.task` bundle as ONNX at the given path (atomically);
    those in `image_input_members` take BGR pixels (`tflite_bytes_to_onnx`'s
    `fold_image_input`)."""
    bundle = Path(bundle)
    out = {}
    for member, path in members.items():
        data = read_bundle_member(bundle, member)
        meta = {"gazeloop.source.bundle": bundle.name, **(metadata or {})}
        model = tflite_bytes_to_onnx(
            data,
            f"{bundle}:{member}",
            prelu=prelu,
            metadata=meta,
            fold_image_input=member in image_input_members,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, model.SerializeToString())
        out[member] = path
    return out
