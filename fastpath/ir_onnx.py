"""Rebuild an OpenVINO IR as ONNX with the `onnx` package alone (no OpenVINO at build time).

Made for Open Model Zoo's `gaze-estimation-adas-0002`, whose graph uses only Parameter,
Const, Convert, Convolution, Add, Multiply, ReLU, Concat, Reshape, Squeeze, Unsqueeze,
StridedSlice and Result; a few more element-wise types are mapped because they cost one line.
Anything else fails loudly, naming the layer, rather than emitting a wrong graph.

Choices:
- f16 Consts followed by Convert are folded into float32 initializers: compute is float32,
  as in OpenVINO with an f32 precision hint, so the rebuild matches it to ~1e-6.
- The batch dimension is made dynamic ("N"): the two Reshapes target [0, -1] (copy batch,
  flatten the rest) so they already work for any N; a Reshape with a literal batch would be
  rewritten to 0 and anything that touches axis 0 otherwise is refused.
- A second output `embedding` exposes the activation entering the gaze head (the last 1x1
  convolution / matmul before the result), flattened to N x D, for fine-tuning on features.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gazeloop.calibration.store.atomic import atomic_write_bytes
from gazeloop.fastpath.ir_reader import (
    ELEMENT_TYPES,
    IRFormatError,
    IRGraph,
    Layer,
    constant_value,
    find_head_input,
    read_ir,
    strided_slice_axes,
)
from gazeloop.fastpath.models import sha256_file

BUILDER_VERSION = "gazeloop.fastpath.ir_onnx/1"
DEFAULT_MODEL_NAME = "gaze-estimation-adas-0002"
EMBEDDING_OUTPUT = "embedding"
# Inputs/outputs keep OMZ's names and meanings (BGR 0-255 crops, head pose in OMZ degrees,
# gaze vector in OMZ axes); GazeModel converts to the project's conventions and checks this
# tag so a model with other semantics is never read with these conversions.
OMZ_IO_CONVENTION = "omz-gaze-estimation-adas-0002"
OMZ_INPUTS = ("left_eye_image", "right_eye_image", "head_pose_angles")
OMZ_OUTPUT = "gaze_vector"

_ELEMENTWISE = {
    "Add": "Add",
    "Subtract": "Sub",
    "Multiply": "Mul",
    "Divide": "Div",
    "Maximum": "Max",
    "Minimum": "Min",
}
_UNARY = {"ReLU": "Relu", "Sigmoid": "Sigmoid", "Tanh": "Tanh", "Exp": "Exp", "Abs": "Abs"}
_ONNX_DTYPE = {
    np.dtype("float32"): TensorProto.FLOAT,
    np.dtype("float16"): TensorProto.FLOAT16,
    np.dtype("float64"): TensorProto.DOUBLE,
    np.dtype("int64"): TensorProto.INT64,
    np.dtype("int32"): TensorProto.INT32,
    np.dtype("uint8"): TensorProto.UINT8,
    np.dtype("int8"): TensorProto.INT8,
    np.dtype("bool"): TensorProto.BOOL,
}


class UnsupportedIRError(IRFormatError):
    """The IR uses something this builder does not translate."""


class _Emitter:
    def __init__(self, graph: IRGraph, dynamic_batch: bool) -> None:
        self.g = graph
        self.dynamic_batch = dynamic_batch
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: dict[tuple[int, int], str] = {}
        self._used: set[str] = set()

    # -- naming -----------------------------------------------------------------------
    def _unique(self, base: str) -> str:
        name, i = base, 1
        while name in self._used:
            name, i = f"{base}_{i}", i + 1
        self._used.add(name)
        return name

    def value(self, source: tuple[int, int]) -> str:
        """ONNX value name for an IR output port; constants become initializers on first use."""
        if source in self._names:
            return self._names[source]
        layer = self.g.layers[source[0]]
        const = constant_value(self.g, source)
        if const is not None:
            arr = const.astype(np.float32) if const.dtype == np.float16 else const
            if arr.dtype == np.uint64:  # ONNX ops want int64 indices/axes
                arr = arr.astype(np.int64)
            name = self._unique(layer.name or f"const_{layer.id}")
            self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        else:
            port = layer.output_port(source[1])
            name = self._unique(port.names[0] if port.names else f"{layer.name}:{source[1]}")
        self._names[source] = name
        return name

    def name_output(self, source: tuple[int, int], name: str) -> None:
        """Give the value produced at `source` a fixed graph-output name (before emission)."""
        if name in self._used:
            raise UnsupportedIRError(f"{self.g.xml_path}: output name {name!r} clashes")
        self._used.add(name)
        self._names[source] = name

    def const_input(self, layer: Layer, index: int, what: str) -> np.ndarray:
        src = self.g.input_sources(layer)[index]
        val = constant_value(self.g, src)
        if val is None:
            raise UnsupportedIRError(
                f"{self.g.xml_path}: {layer.type} {layer.name!r}: {what} must be constant"
            )
        return val.astype(np.int64)

    # -- emission ---------------------------------------------------------------------
    def node(self, op: str, layer: Layer, inputs: Sequence[str], **attrs) -> None:
        out = self.value((layer.id, layer.outputs[0].id))
        self.nodes.append(
            helper.make_node(
                op, list(inputs), [out], name=self._unique(f"{op}_{layer.name}"), **attrs
            )
        )

    def emit(self, layer: Layer) -> None:
        t = layer.type
        if t in ("Parameter", "Result", "Const"):
            return
        if constant_value(self.g, (layer.id, layer.outputs[0].id)) is not None:
            return  # folded (Const -> Convert chains)
        srcs = self.g.input_sources(layer)
        # Shape-like operands (Reshape target, axes, slice bounds) are read as numpy and
        # re-emitted by their handler, so only data operands are named here.
        shape_op = t in ("Reshape", "Squeeze", "Unsqueeze", "StridedSlice")
        ins = [self.value(s) for s in (srcs[:1] if shape_op else srcs)]
        if t in _ELEMENTWISE:
            bcast = layer.data.get("auto_broadcast", "numpy")
            if bcast not in ("numpy", "none"):
                raise UnsupportedIRError(f"{t} {layer.name!r}: auto_broadcast={bcast}")
            self.node(_ELEMENTWISE[t], layer, ins)
        elif t in _UNARY:
            self.node(_UNARY[t], layer, ins)
        elif t == "Convert":
            dst = ELEMENT_TYPES.get(layer.data.get("destination_type", ""))
            if dst is None or dst not in _ONNX_DTYPE:
                raise UnsupportedIRError(f"Convert {layer.name!r} to {layer.data}")
            self.node("Cast", layer, ins, to=_ONNX_DTYPE[dst])
        elif t == "Convolution":
            self._conv(layer, ins)
        elif t == "MatMul":
            if layer.data.get("transpose_a", "false") == "true" or (
                layer.data.get("transpose_b", "false") == "true"
            ):
                raise UnsupportedIRError(f"MatMul {layer.name!r} with transpose flags")
            self.node("MatMul", layer, ins)
        elif t == "Concat":
            axis = int(layer.data.get("axis", "0"))
            self._require_not_batch(layer, axis, "concatenates along")
            self.node("Concat", layer, ins, axis=axis)
        elif t == "Reshape":
            self._reshape(layer, ins)
        elif t in ("Squeeze", "Unsqueeze"):
            axes = self.const_input(layer, 1, "axes").reshape(-1)
            if t == "Squeeze":
                rank = len(layer.inputs[0].shape)
                for a in axes:
                    self._require_not_batch(layer, int(a) % rank, "squeezes")
            self.node(t, layer, [ins[0], self._init(layer, "axes", axes)])
        elif t == "StridedSlice":
            self._strided_slice(layer, ins)
        else:
            raise UnsupportedIRError(
                f"{self.g.xml_path}: layer type {t!r} ({layer.name!r}) is not supported"
            )

    def _init(self, layer: Layer, suffix: str, arr: np.ndarray) -> str:
        name = self._unique(f"{layer.name}/{suffix}")
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def _require_not_batch(self, layer: Layer, axis: int, verb: str) -> None:
        if self.dynamic_batch and axis == 0:
            raise UnsupportedIRError(
                f"{self.g.xml_path}: {layer.type} {layer.name!r} {verb} the batch axis; "
                "build with dynamic_batch=False"
            )

    def _conv(self, layer: Layer, ins: list[str]) -> None:
        w_shape = layer.inputs[1].shape
        attrs: dict[str, object] = {
            "kernel_shape": list(w_shape[2:]),
            "strides": list(layer.attr_ints("strides")),
            "dilations": list(layer.attr_ints("dilations")),
        }
        auto_pad = layer.data.get("auto_pad", "explicit").lower()
        if auto_pad in ("explicit", "notset", ""):
            attrs["pads"] = list(layer.attr_ints("pads_begin")) + list(layer.attr_ints("pads_end"))
        elif auto_pad in ("same_upper", "same_lower", "valid"):
            attrs["auto_pad"] = auto_pad.upper()
        else:
            raise UnsupportedIRError(f"Convolution {layer.name!r}: auto_pad={auto_pad}")
        self.node("Conv", layer, ins, **attrs)

    def _reshape(self, layer: Layer, ins: list[str]) -> None:
        target = self.const_input(layer, 1, "target shape").reshape(-1).copy()
        # special_zero=true: a 0 copies the input dim (ONNX allowzero=0); false: a 0 is a
        # literal zero-size dim (ONNX allowzero=1).
        special_zero = layer.data.get("special_zero", "false").lower() == "true"
        has_literal_zero = not special_zero and bool((target == 0).any())
        if self.dynamic_batch and target.size and target[0] > 0:
            # A literal batch (e.g. [1, 512]) would pin N; rewrite it to "copy dim 0" when
            # input and output agree that axis 0 is that batch.
            in_shape, out_shape = layer.inputs[0].shape, layer.outputs[0].shape
            if has_literal_zero or not (in_shape[:1] == out_shape[:1] == (int(target[0]),)):
                raise UnsupportedIRError(
                    f"{self.g.xml_path}: Reshape {layer.name!r} target {target.tolist()} "
                    "fixes the batch; build with dynamic_batch=False"
                )
            target[0] = 0
        attrs = {"allowzero": 1} if has_literal_zero else {}
        self.node("Reshape", layer, [ins[0], self._init(layer, "shape", target)], **attrs)

    def _strided_slice(self, layer: Layer, ins: list[str]) -> None:
        stride = self.const_input(layer, 3, "stride") if len(layer.inputs) > 3 else None
        try:
            begin, end = self.const_input(layer, 1, "begin"), self.const_input(layer, 2, "end")
            sliced = strided_slice_axes(layer, begin, end, stride)
        except ValueError as e:
            raise UnsupportedIRError(str(e)) from None
        for axis, *_ in sliced:
            self._require_not_batch(layer, axis, "slices")
        if not sliced:
            self.node("Identity", layer, [ins[0]])
            return
        axes, starts, ends, steps = (np.array(v, np.int64) for v in zip(*sliced, strict=True))
        given = {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
        names = [self._init(layer, k, a) for k, a in given.items()]
        self.node("Slice", layer, [ins[0], *names])


def _value_info(name: str, shape: Sequence[int], dynamic_batch: bool) -> onnx.ValueInfoProto:
    dims: list[int | str | None] = [d if d >= 0 else None for d in shape]
    if dynamic_batch and dims:
        dims[0] = "N"
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _graph_inputs(graph: IRGraph, em: _Emitter, dynamic_batch: bool) -> list[onnx.ValueInfoProto]:
    """The Parameters as graph inputs under their tensor names, so a caller feeds the ONNX
    model by the names it fed the IR."""
    inputs = []
    for p in graph.parameters:  # file order, which is the IR's declared input order
        if p.data.get("element_type", "f32") != "f32":
            raise UnsupportedIRError(f"Parameter {p.name!r} is not f32")
        port = p.outputs[0]
        name = port.names[0] if port.names else p.name
        em.name_output((p.id, port.id), name)
        inputs.append(_value_info(name, port.shape, dynamic_batch))
    return inputs


def _graph_outputs(graph: IRGraph, em: _Emitter, dynamic_batch: bool) -> list[onnx.ValueInfoProto]:
    """The Results as graph outputs, named after the tensor they read (a Result's own name
    carries OpenVINO's `/sink_port` suffix, which no caller asks for)."""
    outputs = []
    for r in graph.results:
        src = graph.producer(r.id, r.inputs[0].id)
        port = graph.layers[src[0]].output_port(src[1])
        name = port.names[0] if port.names else r.name.split("/sink_port")[0]
        em.name_output(src, name)
        outputs.append(_value_info(name, port.shape, dynamic_batch))
    return outputs


def _embedding_output(
    em: _Emitter, head_src: tuple[int, int], feat_shape: Sequence[int], dynamic_batch: bool
) -> onnx.ValueInfoProto:
    """The gaze head's input flattened to N x D as the extra `embedding` output; appended
    after the emitted graph, since ONNX wants every node after the producers it reads."""
    dim = int(np.prod(feat_shape[1:]))
    em.nodes.append(
        helper.make_node(
            "Flatten",
            [em.value(head_src)],
            [EMBEDDING_OUTPUT],
            name="embedding_flatten",
            axis=1,
        )
    )
    return _value_info(EMBEDDING_OUTPUT, (feat_shape[0], dim), dynamic_batch)


def ir_to_onnx(
    graph: IRGraph,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    embedding: bool = True,
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """Translate a parsed IR to an in-memory, checked ONNX model."""
    if opset < 14:
        raise ValueError("opset >= 14 is needed (Squeeze axes as input, Reshape allowzero)")
    em = _Emitter(graph, dynamic_batch)
    inputs = _graph_inputs(graph, em, dynamic_batch)
    outputs = _graph_outputs(graph, em, dynamic_batch)

    head_src: tuple[int, int] | None = None
    if embedding:
        head, head_src = find_head_input(graph)
        feat_shape = head.inputs[0].shape

    for layer in graph.topological_order():
        em.emit(layer)

    if head_src is not None:
        outputs.append(_embedding_output(em, head_src, feat_shape, dynamic_batch))

    g = helper.make_graph(em.nodes, graph.name, inputs, outputs, initializer=em.initializers)
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="gazeloop",
        producer_version=BUILDER_VERSION,
    )
    # The oldest IR version the opset allows, so older onnxruntime releases (>= 1.17 is
    # supported by the project) load the file; onnx would otherwise stamp its newest.
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    helper.set_model_props(model, dict(metadata or {}))
    onnx.checker.check_model(model, full_check=True)
    return model


def build_onnx(
    xml_path: str | Path,
    bin_path: str | Path,
    out_path: str | Path,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    model_id: str | None = None,
) -> Path:
    """Rebuild the IR at `xml_path` + `bin_path` as ONNX at `out_path` (written atomically).

    Inputs and outputs keep the IR's names; an extra output `embedding` (N x D float32) is
    the input of the final gaze head layer. Raises FileNotFoundError / IRFormatError naming
    the missing or malformed file.
    """
    xml_path, bin_path, out_path = Path(xml_path), Path(bin_path), Path(out_path)
    graph = read_ir(xml_path, bin_path)
    meta = {
        "gazeloop.model_id": model_id or f"{xml_path.stem}-onnx",
        "gazeloop.builder": BUILDER_VERSION,
        "gazeloop.source.xml": xml_path.name,
        "gazeloop.source.xml_sha256": sha256_file(xml_path),
        "gazeloop.source.bin": bin_path.name,
        "gazeloop.source.bin_sha256": sha256_file(bin_path),
    }
    names_in = {p.outputs[0].names[0] if p.outputs[0].names else p.name for p in graph.parameters}
    if names_in == set(OMZ_INPUTS):
        meta["gazeloop.io_convention"] = OMZ_IO_CONVENTION
    model = ir_to_onnx(graph, opset=opset, dynamic_batch=dynamic_batch, metadata=meta)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_path, model.SerializeToString())
    return out_path


def build_default(models_dir: Path, out_dir: Path) -> Path:
    """Build `out_dir/gaze-estimation-adas-0002.onnx` from
    `models_dir/gaze-estimation-adas-0002/gaze-estimation-adas-0002.{xml,bin}`."""
    src_dir = Path(models_dir) / DEFAULT_MODEL_NAME
    xml_path = src_dir / f"{DEFAULT_MODEL_NAME}.xml"
    bin_path = src_dir / f"{DEFAULT_MODEL_NAME}.bin"
    if not src_dir.is_dir():
        raise FileNotFoundError(
            f"model folder not found: {src_dir} (expected the OMZ {DEFAULT_MODEL_NAME} IR there)"
        )
    for p in (xml_path, bin_path):
        if not p.is_file():
            raise FileNotFoundError(f"missing {p.name}: {p}")
    return build_onnx(xml_path, bin_path, Path(out_dir) / f"{DEFAULT_MODEL_NAME}.onnx")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Rebuild gaze-estimation-adas-0002 IR as ONNX")
    ap.add_argument("models_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    args = ap.parse_args(argv)
    print(build_default(args.models_dir, args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
