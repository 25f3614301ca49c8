"""One place that opens a network of the fast path in onnxruntime, with one set of options.

The face networks and the gaze model run one frame at a time on the fast path's thread, so
each session runs its graph sequentially on `threads` intra-op threads (default 1) with all
graph optimisations. Other CPU runtimes were measured for the same ONNX files here and
rejected: OpenVINO in f32 is slower than onnxruntime (landmark network 6.6 against 5.8 ms CPU
time per call, gaze model 2.9 against 2.6), and its default bf16 on this CPU, though faster
(4.8 and 2.2 ms), moves the gaze model's output by some 20 degrees. Nor is int8 a way out
for the landmark network: onnxruntime's static quantisation (QDQ, per-channel weights,
calibrated on 96 face crops of other sittings) made it slower here (7.2 ms with uint8
activations, 14.8 with int8, against 4.4 in f32) and moved the mesh by 4-8 px of its 256
(the iris by up to 40): its depthwise convolutions and the quantise/dequantise pairs around
each residual add cost more than int8 saves.

An accelerator that "auto" chose (CoreML on a Mac, CUDA) is checked once per network when
it opens: if it cannot open the network, or answers a fixed probe input differently from
the CPU (CoreML may run a network in float16 on the Neural Engine; OpenVINO's bf16 above
moved the gaze by 20 degrees), the network runs on the CPU and a warning says why. A
provider forced with `--ep` is used as asked.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from gazeloop.fastpath.providers import CPU, AutoChoice, short_name

log = logging.getLogger(__name__)

# An accelerator's answer to the probe may differ from the CPU's by this much of the CPU
# answer's largest magnitude: float16 arithmetic is good to about 1e-3 of it, a gaze
# vector's 1e-2 is about half a degree.
AGREE_RTOL = 1e-2


class SessionOpenError(RuntimeError):
    """onnxruntime could not open a model; the message is the first line of its complaint
    (the caller names the file and what the model is for)."""


def open_session(
    model: Path | bytes,
    *,
    threads: int = 1,
    providers: list[str] | None = None,
    name: str | None = None,
):
    """An `onnxruntime.InferenceSession` of the model at a path, or of its bytes when the
    caller has read them already, on `providers` (CPU when None; an accelerator that "auto"
    chose is checked against the CPU, above; `name` is the network a warning names).
    onnxruntime raises several
    unrelated types here, often with pages of detail: any of them becomes a
    `SessionOpenError` with its first line."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads > 1:
        # Spinning workers burn the core that the camera thread and the oracle need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    providers = providers or [CPU]
    if not isinstance(providers, AutoChoice) or providers[0] == CPU:
        return _open(source, opts, providers)
    cpu = _open(source, opts, [CPU])  # a network the CPU cannot open is an error as before
    ep, name = (
        short_name(providers[0]),
        name or (str(model) if isinstance(model, Path) else "a network"),
    )
    try:
        fast = _open(source, opts, providers)
    except SessionOpenError as e:
        log.warning("%s: %s cannot run it (%s); it runs on the CPU", name, ep, e)
        return cpu
    why = disagreement(fast, cpu)
    if why:
        log.warning(
            "%s: %s answers it differently from the CPU (%s); it runs on the CPU", name, ep, why
        )
        return cpu
    return fast


def _open(source: str | bytes, opts, providers: list[str]):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(source, sess_options=opts, providers=list(providers))
    except Exception as e:  # onnxruntime's errors are not typed
        text = str(e).strip()
        raise SessionOpenError(text.splitlines()[0] if text else type(e).__name__) from e


def probe_inputs(session) -> dict[str, np.ndarray]:
    """A fixed input for every input of the network: seeded normal values for float
    inputs, zeros otherwise; a dimension without a size is 1."""
    rng = np.random.default_rng(0)
    feed = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        if "float" in inp.type:
            dtype = np.float16 if "float16" in inp.type else np.float32
            feed[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[inp.name] = np.zeros(shape, dtype=np.int64 if "int64" in inp.type else np.int32)
    return feed


def disagreement(fast, cpu, rtol: float = AGREE_RTOL) -> str | None:
    """Why `fast` and `cpu` (sessions of one network) disagree on the probe input, or None.
    An accelerator that fails to run the probe disagrees."""
    feed = probe_inputs(cpu)
    want = cpu.run(None, feed)
    try:
        got = fast.run(None, feed)
    except Exception as e:  # onnxruntime's errors are not typed
        text = str(e).strip()
        return f"it failed on a probe input: {text.splitlines()[0] if text else type(e).__name__}"
    for out, a, b in zip(cpu.get_outputs(), got, want, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        off = float(np.max(np.abs(a - b))) if b.size else 0.0
        if a.shape != b.shape or not np.isfinite(a).all() or off > rtol * max(scale, 1e-6):
            return f"output {out.name} off by {off:.3g} of {scale:.3g} on a probe input"
    return None
