"""Read an OpenVINO IR (v10/v11 `.xml` + `.bin`) into a small typed graph, without OpenVINO.

Parsing is kept apart from emission so that the ONNX builder (`fastpath.ir_onnx`) and a later
PyTorch rebuild in the trainer walk the same structure. Const values are decoded from the
`.bin` as numpy arrays in their stored dtype (f16 stays f16); folding precision is the
emitter's choice.

IR port ids number a layer's inputs and outputs together (a Convolution has inputs 0, 1 and
output 2), so edges are kept as (layer id, port id) pairs and never as list positions.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# IR element types that map to a numpy dtype one element per item. Packed types (u1, i4,
# u4, nf4) would need unpacking; no model we use stores them, so they are refused loudly.
ELEMENT_TYPES: dict[str, np.dtype] = {
    "f16": np.dtype("<f2"),
    "f32": np.dtype("<f4"),
    "f64": np.dtype("<f8"),
    "bf16": np.dtype("<u2"),  # raw bits; decode_bf16() widens them
    "i8": np.dtype("i1"),
    "i16": np.dtype("<i2"),
    "i32": np.dtype("<i4"),
    "i64": np.dtype("<i8"),
    "u8": np.dtype("u1"),
    "u16": np.dtype("<u2"),
    "u32": np.dtype("<u4"),
    "u64": np.dtype("<u8"),
    "boolean": np.dtype("?"),
}


class IRFormatError(ValueError):
    """The IR files are missing, truncated or not what this reader understands."""


@dataclass(frozen=True, slots=True)
class Port:
    id: int
    shape: tuple[int, ...]  # -1 for a dynamic dimension
    precision: str | None = None
    names: tuple[str, ...] = ()  # tensor names (the `names` attribute), first is canonical


@dataclass(slots=True)
class Layer:
    id: int
    name: str
    type: str
    version: str
    data: dict[str, str]
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    value: np.ndarray | None = None  # decoded payload, Const layers only

    def output_port(self, port_id: int) -> Port:
        for p in self.outputs:
            if p.id == port_id:
                return p
        raise KeyError(f"layer {self.id} ({self.name}) has no output port {port_id}")

    def attr_ints(self, key: str, default: tuple[int, ...] = ()) -> tuple[int, ...]:
        """A comma-separated integer attribute ("1, 1" and "" both occur in real files)."""
        raw = self.data.get(key)
        if raw is None:
            return default
        return tuple(int(s) for s in raw.replace(" ", "").split(",") if s != "")


@dataclass(frozen=True, slots=True)
class Edge:
    from_layer: int
    from_port: int
    to_layer: int
    to_port: int


@dataclass(slots=True)
class IRGraph:
    name: str
    ir_version: int
    layers: dict[int, Layer]
    edges: tuple[Edge, ...]
    xml_path: Path
    bin_path: Path
    # (to_layer, to_port) -> (from_layer, from_port); filled in __post_init__
    _producer: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for e in self.edges:
            key = (e.to_layer, e.to_port)
            if key in self._producer:
                raise IRFormatError(f"{self.xml_path}: input port {key} has two producers")
            self._producer[key] = (e.from_layer, e.from_port)

    def producer(self, layer_id: int, port_id: int) -> tuple[int, int]:
        """The (layer, output port) feeding input `port_id` of `layer_id`."""
        try:
            return self._producer[(layer_id, port_id)]
        except KeyError:
            layer = self.layers[layer_id]
            raise IRFormatError(
                f"{self.xml_path}: input port {port_id} of layer {layer_id} ({layer.name}) "
                "is not connected"
            ) from None

    def input_sources(self, layer: Layer) -> list[tuple[int, int]]:
        """Producers of `layer`'s inputs in port order (port order is operand order)."""
        return [self.producer(layer.id, p.id) for p in sorted(layer.inputs, key=lambda p: p.id)]

    def consumers(self, layer_id: int, port_id: int) -> list[tuple[int, int]]:
        return [
            (e.to_layer, e.to_port)
            for e in self.edges
            if e.from_layer == layer_id and e.from_port == port_id
        ]

    def by_type(self, type_: str) -> list[Layer]:
        return [layer for layer in self.layers.values() if layer.type == type_]

    @property
    def parameters(self) -> list[Layer]:
        return self.by_type("Parameter")

    @property
    def results(self) -> list[Layer]:
        return self.by_type("Result")

    def topological_order(self) -> list[Layer]:
        """Layers so that every producer precedes its consumers; ties by layer id so the
        order (and anything emitted from it) is deterministic."""
        indegree = {lid: 0 for lid in self.layers}
        succ: dict[int, list[int]] = {lid: [] for lid in self.layers}
        for (to_l, _), (from_l, _) in self._producer.items():
            indegree[to_l] += 1
            succ[from_l].append(to_l)
        ready = sorted(lid for lid, d in indegree.items() if d == 0)
        order: list[Layer] = []
        while ready:
            lid = ready.pop(0)
            order.append(self.layers[lid])
            for nxt in sorted(succ[lid]):
                indegree[nxt] -= 1
                if indegree[nxt] == 0:
                    ready.append(nxt)
            ready.sort()
        if len(order) != len(self.layers):
            raise IRFormatError(f"{self.xml_path}: the graph has a cycle")
        return order


def decode_bf16(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (stored as u16) to float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _parse_shape(text: str | None) -> tuple[int, ...]:
    if text is None or text.strip() == "":
        return ()
    dims = []
    for s in text.replace(" ", "").split(","):
        dims.append(-1 if s in ("?", "-1") else int(s))
    return tuple(dims)


def _parse_ports(elem: ET.Element | None) -> tuple[Port, ...]:
    if elem is None:
        return ()
    ports = []
    for p in elem.findall("port"):
        dims = []
        for d in p.findall("dim"):
            text = (d.text or "").strip()
            dims.append(-1 if text in ("?", "-1", "") else int(text))
        names = tuple(n for n in (p.get("names") or "").split(",") if n)
        ports.append(Port(int(p.get("id", "0")), tuple(dims), p.get("precision"), names))
    return tuple(ports)


def _decode_const(layer_elem: ET.Element, data: dict[str, str], blob: bytes, bin_path: Path):
    name = layer_elem.get("name")
    et = data.get("element_type")
    if et not in ELEMENT_TYPES:
        raise IRFormatError(f"{bin_path}: Const {name!r} has unsupported element type {et!r}")
    dtype = ELEMENT_TYPES[et]
    try:
        offset = int(data["offset"])
        size = int(data["size"])
    except (KeyError, ValueError) as exc:
        raise IRFormatError(f"{bin_path}: Const {name!r} lacks a valid offset/size") from exc
    shape = _parse_shape(data.get("shape"))
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if size != count * dtype.itemsize:
        raise IRFormatError(
            f"{bin_path}: Const {name!r} declares {size} bytes but shape {shape} of {et} "
            f"needs {count * dtype.itemsize}"
        )
    if offset < 0 or offset + size > len(blob):
        raise IRFormatError(
            f"{bin_path}: truncated or wrong weights file: Const {name!r} needs bytes "
            f"[{offset}, {offset + size}) but the file has {len(blob)} bytes"
        )
    # copy() so the array owns writable memory and the file's bytes can be freed
    arr = np.frombuffer(blob, dtype=dtype, count=count, offset=offset).reshape(shape).copy()
    return decode_bf16(arr) if et == "bf16" else arr


def _parse_net(xml_path: Path) -> tuple[ET.Element, int]:
    """The <net> root and its IR version, one we read: another version fails here, before
    any layer is looked at, since its attributes may mean something else."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise IRFormatError(f"{xml_path}: not valid XML: {exc}") from exc
    if root.tag != "net":
        raise IRFormatError(f"{xml_path}: root element is <{root.tag}>, expected <net>")
    ir_version = int(root.get("version", "0"))
    if ir_version not in (10, 11):
        raise IRFormatError(f"{xml_path}: IR version {ir_version} is not supported (10/11)")
    return root, ir_version


def _read_layers(root: ET.Element, blob: bytes, xml_path: Path, bin_path: Path) -> dict[int, Layer]:
    """Layers by id, each Const decoded from `blob` as it is met: a bad Const fails naming
    its layer, and ids must be unique since edges refer to layers by id."""
    layers: dict[int, Layer] = {}
    layers_elem = root.find("layers")
    if layers_elem is None:
        raise IRFormatError(f"{xml_path}: no <layers>")
    for le in layers_elem.findall("layer"):
        data_elem = le.find("data")
        data = dict(data_elem.attrib) if data_elem is not None else {}
        layer = Layer(
            id=int(le.get("id", "-1")),
            name=le.get("name", ""),
            type=le.get("type", ""),
            version=le.get("version", ""),
            data=data,
            inputs=_parse_ports(le.find("input")),
            outputs=_parse_ports(le.find("output")),
        )
        if layer.type == "Const":
            layer.value = _decode_const(le, data, blob, bin_path)
        if layer.id in layers:
            raise IRFormatError(f"{xml_path}: duplicate layer id {layer.id}")
        layers[layer.id] = layer
    return layers


def _read_edges(root: ET.Element, layers: dict[int, Layer], xml_path: Path) -> list[Edge]:
    """The <edges>, each checked to join known layers so a dangling edge names itself here
    instead of failing later as a KeyError in whoever walks the graph."""
    edges = []
    edges_elem = root.find("edges")
    for ee in edges_elem.findall("edge") if edges_elem is not None else []:
        e = Edge(
            int(ee.get("from-layer", "-1")),
            int(ee.get("from-port", "-1")),
            int(ee.get("to-layer", "-1")),
            int(ee.get("to-port", "-1")),
        )
        for lid in (e.from_layer, e.to_layer):
            if lid not in layers:
                raise IRFormatError(f"{xml_path}: edge {e} refers to unknown layer {lid}")
        edges.append(e)
    return edges


def read_ir(xml_path: str | Path, bin_path: str | Path | None = None) -> IRGraph:
    """Parse `xml_path` and decode every Const from `bin_path` (default: same stem, `.bin`).

    Raises FileNotFoundError naming a missing file and IRFormatError naming the file that is
    malformed or too short.
    """
    xml_path = Path(xml_path)
    bin_path = Path(bin_path) if bin_path is not None else xml_path.with_suffix(".bin")
    for p, what in ((xml_path, "IR graph (.xml)"), (bin_path, "IR weights (.bin)")):
        if not p.is_file():
            raise FileNotFoundError(f"{what} not found: {p}")

    root, ir_version = _parse_net(xml_path)
    blob = bin_path.read_bytes()
    layers = _read_layers(root, blob, xml_path, bin_path)
    edges = _read_edges(root, layers, xml_path)
    return IRGraph(
        name=root.get("name", xml_path.stem),
        ir_version=ir_version,
        layers=layers,
        edges=tuple(edges),
        xml_path=xml_path,
        bin_path=bin_path,
    )


INT64_MAX = int(np.iinfo(np.int64).max)


def strided_slice_axes(
    layer: Layer, begin: np.ndarray, end: np.ndarray, stride: np.ndarray | None
) -> list[tuple[int, int, int, int]]:
    """An OpenVINO StridedSlice as (axis, start, end, step) for each axis it really slices,
    for both rebuilds of the IR (ONNX here, PyTorch in the trainer). A mask bit of 1 means
    "ignore this begin/end and take the whole extent" (not "use it"); axes that keep their
    whole extent are dropped (both slices in the gaze model are such no-ops). ValueError for
    the masks neither rebuild supports (new axis, shrink, ellipsis)."""
    for m in ("new_axis_mask", "shrink_axis_mask", "ellipsis_mask"):
        if any(layer.attr_ints(m)):
            raise ValueError(f"StridedSlice {layer.name!r} uses {m}")
    begin, end = begin.astype(np.int64).reshape(-1), end.astype(np.int64).reshape(-1)
    n = len(begin)
    steps = np.ones(n, np.int64) if stride is None else stride.astype(np.int64).reshape(-1)
    bmask = (list(layer.attr_ints("begin_mask")) + [0] * n)[:n]
    emask = (list(layer.attr_ints("end_mask")) + [0] * n)[:n]
    shape = layer.inputs[0].shape
    out = []
    for i in range(n):
        s, e, st = int(begin[i]), int(end[i]), int(steps[i])
        if bmask[i]:
            s = 0 if st > 0 else INT64_MAX
        if emask[i]:
            e = INT64_MAX if st > 0 else -INT64_MAX
        dim = shape[i] if i < len(shape) else -1
        if st == 1 and s == 0 and (e == INT64_MAX or (dim > 0 and e >= dim)):
            continue
        out.append((i, s, e, st))
    return out


def constant_value(graph: IRGraph, source: tuple[int, int]) -> np.ndarray | None:
    """The value flowing out of `source` if it is a Const, or a chain of Converts of one
    (the f16-stored-weights pattern); None when it depends on a Parameter."""
    layer = graph.layers[source[0]]
    if layer.type == "Const":
        return layer.value
    if layer.type == "Convert":
        inner = constant_value(graph, graph.producer(layer.id, layer.inputs[0].id))
        if inner is None:
            return None
        dst = layer.data.get("destination_type", "")
        if dst not in ELEMENT_TYPES or dst == "bf16":
            raise IRFormatError(f"{graph.xml_path}: Convert {layer.name!r} to {dst!r}")
        return inner.astype(ELEMENT_TYPES[dst])
    return None


def find_head_input(graph: IRGraph) -> tuple[Layer, tuple[int, int]]:
    """The gaze head layer (last Convolution/MatMul before the single Result) and the
    (layer, port) feeding its data input, walking back through shape-only ops and bias /
    scale operations with a constant operand."""
    results = graph.results
    if len(results) != 1:
        raise IRFormatError(f"{graph.xml_path}: expected one Result, found {len(results)}")
    src = graph.producer(results[0].id, results[0].inputs[0].id)
    passthrough = {"Squeeze", "Unsqueeze", "Reshape", "StridedSlice", "Convert"}
    while True:
        layer = graph.layers[src[0]]
        if layer.type in ("Convolution", "MatMul"):
            return layer, graph.producer(layer.id, layer.inputs[0].id)
        sources = graph.input_sources(layer)
        if layer.type in passthrough:
            src = sources[0]
        elif layer.type in ("Add", "Multiply", "Subtract", "Divide"):
            dynamic = [s for s in sources if constant_value(graph, s) is None]
            if len(dynamic) != 1:
                break
            src = dynamic[0]
        else:
            break
    raise IRFormatError(
        f"{graph.xml_path}: no Convolution/MatMul head found before the result "
        f"(stopped at {layer.type} {layer.name!r})"
    )
