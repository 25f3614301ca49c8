"""The pretrained gaze network as a trainable PyTorch module, built from the OpenVINO IR.

One source of truth: `GazeNet.from_ir` walks the same parsed graph as the ONNX rebuild
(`fastpath.ir_reader.read_ir`) and turns it into a small program of ops plus modules:
- Convolution with constant weights -> `nn.Conv2d`; a following Add of a per-channel
  constant becomes its bias (the IR stores bias as a separate Add). The fully connected
  layers are 1x1 convolutions in the IR and stay so here, which keeps the parameter names
  and shapes one-to-one with the IR.
- Multiply/Add with a constant operand (folded batch norms) -> one learnable tensor each.
  Those on the raw inputs, before any convolution, are the graph's input normalisation and
  are buffers, not parameters: training must not change what the inputs mean.
- ReLU, Concat, Reshape, Squeeze, Unsqueeze and StridedSlice are plain tensor ops.

The program (`spec`) is JSON, so a checkpoint (safetensors weights + JSON sidecar holding the
spec) rebuilds the network without the IR files, and without pickle.

Inputs keep the IR's semantics: N x 3 x 60 x 60 float BGR 0-255 unnormalised crops (OMZ
`left_eye_image` is the image-left eye), N x 3 head pose in OMZ degrees; outputs the raw
OMZ gaze vector (N x 3, not unit) and the `embedding` entering the final gaze head (N x 80),
the same two tensors as the ONNX rebuild.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from gazeloop.calibration.store.atomic import WriteError, atomic_path, atomic_write_bytes
from gazeloop.fastpath.ir_onnx import OMZ_INPUTS
from gazeloop.fastpath.ir_reader import (
    INT64_MAX,
    IRFormatError,
    IRGraph,
    Layer,
    constant_value,
    find_head_input,
    read_ir,
    strided_slice_axes,
)
from gazeloop.fastpath.models import sha256_file
from gazeloop.trainer.card import MODEL_VERSION  # beside the card, which needs no torch

CHECKPOINT_FORMAT = "gazeloop.trainer.checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

_BINARY = {"Add": "add", "Multiply": "mul", "Subtract": "sub", "Divide": "div"}
_UNARY = {"ReLU": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}


class UnsupportedGraphError(IRFormatError):
    """The IR uses something this builder does not translate."""


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or from another model version."""


def _key(source: tuple[int, int]) -> str:
    return f"{source[0]}:{source[1]}"


class _SpecBuilder:
    """IR graph -> (spec dict, initial tensors by module name)."""

    def __init__(self, graph: IRGraph) -> None:
        self.g = graph
        self.nodes: list[dict[str, Any]] = []
        self.modules: dict[str, dict[str, Any]] = {}
        self.tensors: dict[str, np.ndarray] = {}
        self.learned: dict[str, bool] = {}  # value key -> downstream of a learned layer
        self.absorbed: set[int] = set()  # bias Adds folded into their convolution
        self._count: dict[str, int] = {}

    def _name(self, kind: str) -> str:
        i = self._count.get(kind, 0)
        self._count[kind] = i + 1
        return f"{kind}{i}"

    def _const(self, layer: Layer, index: int, what: str) -> np.ndarray:
        val = constant_value(self.g, self.g.input_sources(layer)[index])
        if val is None:
            raise UnsupportedGraphError(f"{layer.type} {layer.name!r}: {what} must be constant")
        return val

    def _out(self, layer: Layer) -> str:
        return _key((layer.id, layer.outputs[0].id))

    def build(self) -> dict[str, Any]:
        g = self.g
        params = g.parameters
        names = [p.outputs[0].names[0] if p.outputs[0].names else p.name for p in params]
        if sorted(names) != sorted(OMZ_INPUTS):
            raise UnsupportedGraphError(
                f"{g.xml_path}: inputs {names} are not the OMZ gaze inputs {list(OMZ_INPUTS)}"
            )
        inputs = {}
        for p, n in zip(params, names, strict=True):
            k = _key((p.id, p.outputs[0].id))
            inputs[n] = k
            self.learned[k] = False
        result = g.results[0] if len(g.results) == 1 else None
        if result is None:
            raise UnsupportedGraphError(f"{g.xml_path}: expected exactly one Result")
        out_src = g.producer(result.id, result.inputs[0].id)
        head, head_src = find_head_input(g)
        for layer in g.topological_order():
            self._emit(layer)
        produced = set(inputs.values()) | {n["output"] for n in self.nodes}
        for what, src in (("gaze output", out_src), ("embedding", head_src)):
            if _key(src) not in produced:
                raise UnsupportedGraphError(f"{g.xml_path}: the {what} {src} is never computed")
        return {
            "model_version": MODEL_VERSION,
            "source": {"name": g.name, "xml": g.xml_path.name},
            "inputs": inputs,
            "nodes": self.nodes,
            "modules": self.modules,
            "gaze_output": _key(out_src),
            "embedding_output": _key(head_src),
            "head_module": self._head_name(head),
        }

    def _head_name(self, head: Layer) -> str:
        for node in self.nodes:
            if node["ir_layer"] == head.name and node["op"] == "conv":
                return node["module"]
        raise UnsupportedGraphError(f"head layer {head.name!r} was not emitted as a conv")

    def _emit(self, layer: Layer) -> None:
        t = layer.type
        if t in ("Parameter", "Result", "Const") or layer.id in self.absorbed:
            return
        if constant_value(self.g, (layer.id, layer.outputs[0].id)) is not None:
            return  # Const -> Convert chains are folded into the tensors that use them
        srcs = self.g.input_sources(layer)
        node: dict[str, Any] = {"ir_layer": layer.name, "output": self._out(layer)}
        if t == "Convolution":
            node.update(self._conv(layer, srcs))
        elif t in _BINARY:
            node.update(self._binary(layer, srcs))
        elif t in _UNARY:
            node.update(op=_UNARY[t], inputs=[_key(srcs[0])])
        elif t == "Concat":
            node.update(op="concat", inputs=[_key(s) for s in srcs], axis=int(layer.data["axis"]))
        elif t == "Reshape":
            target = self._const(layer, 1, "target shape").astype(np.int64).reshape(-1)
            special_zero = layer.data.get("special_zero", "false").lower() == "true"
            if not special_zero and (target == 0).any():
                raise UnsupportedGraphError(f"Reshape {layer.name!r} to a zero-size dim")
            # With special_zero a 0 copies the input dim (this is how the batch stays free).
            node.update(op="reshape", inputs=[_key(srcs[0])], shape=target.tolist())
        elif t in ("Squeeze", "Unsqueeze"):
            axes = self._const(layer, 1, "axes").astype(np.int64).reshape(-1)
            node.update(op=t.lower(), inputs=[_key(srcs[0])], axes=sorted(axes.tolist()))
        elif t == "StridedSlice":
            node.update(op="slice", inputs=[_key(srcs[0])], slices=self._slices(layer))
        else:
            raise UnsupportedGraphError(
                f"{self.g.xml_path}: layer type {t!r} ({layer.name!r}) is not supported"
            )
        self.learned[node["output"]] = node.pop("_learned", None) or any(
            self.learned[k] for k in node["inputs"]
        )
        self.nodes.append(node)

    def _conv(self, layer: Layer, srcs: list[tuple[int, int]]) -> dict[str, Any]:
        weight = self._const(layer, 1, "weights").astype(np.float32)
        if layer.data.get("auto_pad", "explicit").lower() not in ("explicit", "notset", ""):
            raise UnsupportedGraphError(f"Convolution {layer.name!r}: auto_pad")
        pb, pe = layer.attr_ints("pads_begin"), layer.attr_ints("pads_end")
        if pb != pe:
            raise UnsupportedGraphError(f"Convolution {layer.name!r}: asymmetric pads")
        name = self._name("conv")
        out_ch, in_ch, *kernel = weight.shape
        cfg: dict[str, Any] = {
            "type": "conv2d",
            "in_channels": in_ch,
            "out_channels": out_ch,
            "kernel_size": list(kernel),
            "stride": list(layer.attr_ints("strides")),
            "padding": list(pb),
            "dilation": list(layer.attr_ints("dilations")),
            "bias": False,
        }
        self.tensors[f"{name}.weight"] = weight
        output = self._out(layer)
        bias = self._bias_add(layer, out_ch)
        if bias is not None:
            add, value = bias
            cfg["bias"] = True
            self.tensors[f"{name}.bias"] = value
            self.absorbed.add(add.id)
            output = self._out(add)
        self.modules[name] = cfg
        return {
            "op": "conv",
            "module": name,
            "inputs": [_key(srcs[0])],
            "output": output,
            "_learned": True,
        }

    def _bias_add(self, conv: Layer, channels: int) -> tuple[Layer, np.ndarray] | None:
        """The Add of a per-channel constant that is the conv's only consumer, if any."""
        consumers = self.g.consumers(conv.id, conv.outputs[0].id)
        if len(consumers) != 1:
            return None
        add = self.g.layers[consumers[0][0]]
        if add.type != "Add":
            return None
        srcs = self.g.input_sources(add)
        consts = [constant_value(self.g, s) for s in srcs]
        if sum(c is not None for c in consts) != 1:
            return None
        value = next(c for c in consts if c is not None)
        if value.size != channels or value.shape not in ((channels,), (1, channels, 1, 1)):
            return None
        return add, value.astype(np.float32).reshape(channels)

    def _binary(self, layer: Layer, srcs: list[tuple[int, int]]) -> dict[str, Any]:
        op = _BINARY[layer.type]
        bcast = layer.data.get("auto_broadcast", "numpy")
        if bcast not in ("numpy", "none"):
            raise UnsupportedGraphError(f"{layer.type} {layer.name!r}: auto_broadcast={bcast}")
        consts = [constant_value(self.g, s) for s in srcs]
        if all(c is None for c in consts):
            return {"op": op, "inputs": [_key(s) for s in srcs]}
        if all(c is not None for c in consts):
            raise UnsupportedGraphError(f"{layer.type} {layer.name!r} of two constants")
        const_first = consts[0] is not None
        value = consts[0] if const_first else consts[1]
        dynamic = srcs[1] if const_first else srcs[0]
        # Before any convolution a constant is input normalisation: part of what the inputs
        # mean, so it is kept but not trained.
        trainable = self.learned[_key(dynamic)]
        name = self._name("scale" if op in ("mul", "div") else "shift")
        self.modules[name] = {
            "type": "parameter" if trainable else "buffer",
            "shape": list(value.shape),
        }
        self.tensors[name] = value.astype(np.float32)
        return {"op": op, "inputs": [_key(dynamic)], "const": name, "const_first": const_first}

    def _slices(self, layer: Layer) -> list[list[int]]:
        """[axis, start, end, step] for each axis actually sliced (no-op axes dropped)."""
        stride = self._const(layer, 3, "stride") if len(layer.inputs) > 3 else None
        try:
            sliced = strided_slice_axes(
                layer, self._const(layer, 1, "begin"), self._const(layer, 2, "end"), stride
            )
        except ValueError as e:
            raise UnsupportedGraphError(str(e)) from None
        for axis, _, _, step in sliced:
            if step <= 0:
                raise UnsupportedGraphError(f"StridedSlice {layer.name!r}: stride {step}")
            if axis == 0:
                raise UnsupportedGraphError(f"StridedSlice {layer.name!r} slices the batch")
        return [list(x) for x in sliced]


def ir_spec(graph: IRGraph) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON program of a gaze IR and its float32 initial tensors by state-dict key."""
    b = _SpecBuilder(graph)
    spec = b.build()
    return spec, b.tensors


class GazeNet(nn.Module):
    """gaze-estimation-adas-0002 as a PyTorch module (see the module docstring)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        if spec.get("model_version") != MODEL_VERSION:
            raise CheckpointError(
                f"architecture is for model version {spec.get('model_version')!r}, "
                f"this code builds {MODEL_VERSION!r}"
            )
        self.spec = json.loads(json.dumps(spec))  # a private, JSON-clean copy
        self.layers = nn.Module()
        for name, cfg in self.spec["modules"].items():
            kind = cfg["type"]
            if kind == "conv2d":
                mod = nn.Conv2d(
                    cfg["in_channels"],
                    cfg["out_channels"],
                    tuple(cfg["kernel_size"]),
                    stride=tuple(cfg["stride"]),
                    padding=tuple(cfg["padding"]),
                    dilation=tuple(cfg["dilation"]),
                    bias=cfg["bias"],
                )
                self.layers.add_module(name, mod)
            elif kind == "parameter":
                self.layers.register_parameter(name, nn.Parameter(torch.zeros(cfg["shape"])))
            elif kind == "buffer":
                self.layers.register_buffer(name, torch.zeros(cfg["shape"]))
            else:
                raise CheckpointError(f"unknown module type {kind!r} in the architecture")
        self._nodes: list[dict[str, Any]] = self.spec["nodes"]
        self._inputs: dict[str, str] = self.spec["inputs"]

    @classmethod
    def from_ir(cls, xml_path: str | Path, bin_path: str | Path | None = None) -> GazeNet:
        """The pretrained network, weights decoded from the IR (f16 -> f32)."""
        graph = read_ir(xml_path, bin_path)
        spec, tensors = ir_spec(graph)
        spec["source"]["xml_sha256"] = sha256_file(graph.xml_path)
        spec["source"]["bin_sha256"] = sha256_file(graph.bin_path)
        net = cls(spec)
        state = {
            f"layers.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()
        }
        net.load_state_dict(state, strict=True)
        return net

    @property
    def head(self) -> nn.Conv2d:
        """The final gaze head (embedding -> 3-vector), a 1x1 convolution."""
        return getattr(self.layers, self.spec["head_module"])

    @property
    def embedding_dim(self) -> int:
        return int(self.head.in_channels)

    def forward(
        self, left_eye: torch.Tensor, right_eye: torch.Tensor, head_pose: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        by_name = {
            "left_eye_image": left_eye,
            "right_eye_image": right_eye,
            "head_pose_angles": head_pose,
        }
        values = {key: by_name[name] for name, key in self._inputs.items()}
        for node in self._nodes:
            values[node["output"]] = self._run(node, [values[k] for k in node["inputs"]])
        gaze = values[self.spec["gaze_output"]]
        embedding = torch.flatten(values[self.spec["embedding_output"]], 1)
        return gaze, embedding

    def _run(self, node: dict[str, Any], xs: list[torch.Tensor]) -> torch.Tensor:
        op = node["op"]
        if op == "conv":
            return getattr(self.layers, node["module"])(xs[0])
        if op in ("add", "mul", "sub", "div"):
            b = xs[1] if "const" not in node else getattr(self.layers, node["const"])
            a = xs[0]
            if node.get("const_first"):
                a, b = b, a
            return _ELEMENTWISE[op](a, b)
        if op == "relu":
            return F.relu(xs[0])
        if op == "sigmoid":
            return torch.sigmoid(xs[0])
        if op == "tanh":
            return torch.tanh(xs[0])
        if op == "concat":
            return torch.cat(xs, dim=node["axis"])
        if op == "reshape":
            x = xs[0]
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(node["shape"])]
            return x.reshape(shape)
        if op == "unsqueeze":
            x = xs[0]
            for a in node["axes"]:
                x = x.unsqueeze(a)
            return x
        if op == "squeeze":
            x = xs[0]
            for a in sorted((a % x.dim() for a in node["axes"]), reverse=True):
                x = x.squeeze(a)
            return x
        if op == "slice":
            x = xs[0]
            for axis, start, end, step in node["slices"]:
                idx = [slice(None)] * x.dim()
                idx[axis] = slice(start, None if end == INT64_MAX else end, step)
                x = x[tuple(idx)]
            return x
        raise CheckpointError(f"unknown op {op!r} in the architecture")


_ELEMENTWISE = {
    "add": torch.add,
    "mul": torch.mul,
    "sub": torch.sub,
    "div": torch.div,
}


# -- checkpoints: safetensors weights + JSON sidecar, never pickle --------------------------


def sidecar_path(weights_path: str | Path) -> Path:
    p = Path(weights_path)
    return p.with_name(p.name + ".json")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """`path` (safetensors) written atomically. safetensors reports a full disk or a file
    size limit as its own SafetensorError, not an OSError: here it becomes the WriteError
    every other writer raises, naming `path` (not the temp file) and the system's cause."""
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as e:
            raise _write_error(e, path) from e


def _write_error(e: SafetensorError, path: Path) -> WriteError:
    # The message carries the OS error: "... I/O error: File too large (os error 27)".
    text = " ".join(str(e).split())
    found = re.search(r"os error (\d+)", text)
    code = int(found.group(1)) if found else errno.EIO
    return WriteError(code, os.strerror(code) if found else text, str(path))


def save_checkpoint(
    model: GazeNet, path: str | Path, *, extra: dict[str, Any] | None = None
) -> Path:
    """Write `path` (safetensors) and `path.json` (model version, architecture, weights
    hash, `extra` such as step or metrics), each atomically; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    save_tensors(state, path, {"model_version": MODEL_VERSION})
    doc = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_version": MODEL_VERSION,
        "weights": path.name,
        "weights_sha256": sha256_file(path),
        "architecture": model.spec,
        "extra": dict(extra or {}),
    }
    atomic_write_bytes(sidecar_path(path), json.dumps(doc, indent=1, sort_keys=True).encode())
    return path


def read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The validated sidecar of a checkpoint (raises CheckpointError with the reason)."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint weights not found: {path}")
    if not side.is_file():
        raise CheckpointError(f"checkpoint sidecar not found: {side}")
    try:
        doc = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{side}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{side}: not a gazeloop trainer checkpoint sidecar")
    if doc.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{side}: checkpoint format {doc.get('format_version')!r} is not "
            f"{CHECKPOINT_FORMAT_VERSION}"
        )
    if doc.get("model_version") != MODEL_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint is for model version {doc.get('model_version')!r}, but this "
            f"trainer builds {MODEL_VERSION!r}; convert or retrain it"
        )
    if doc.get("weights_sha256") != sha256_file(path):
        raise CheckpointError(f"{path}: weights do not match the hash in {side.name}")
    return doc


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> GazeNet:
    """Rebuild a GazeNet from a checkpoint written by `save_checkpoint`."""
    doc = read_checkpoint_info(path)
    model = GazeNet(doc["architecture"])
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as exc:
        # The hash only vouches for the file it was taken of: a sidecar rewritten after the
        # file was cut short (a copy by hand) matches it and still cannot be read.
        raise CheckpointError(f"{path}: unreadable weights ({_one_line(exc)})") from exc
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: weights do not fit the architecture: {_one_line(exc)}"
        ) from exc
    return model.to(device)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def spec_digest(spec: dict[str, Any]) -> str:
    """A short hash of an architecture, for model cards and logs."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


__all__ = [
    "MODEL_VERSION",
    "CheckpointError",
    "GazeNet",
    "UnsupportedGraphError",
    "ir_spec",
    "load_checkpoint",
    "read_checkpoint_info",
    "save_checkpoint",
    "sidecar_path",
    "spec_digest",
]
