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

import hashlib
import logging
from pathlib import Path

import numpy as np

from gazeloop.fastpath.providers import CPU, AutoChoice, short_name

log = logging.getLogger(__name__)

# An accelerator's answer to the probe may differ from the CPU's by this much of the CPU
# answer's largest magnitude (or of AGREE_FLOOR, for outputs near zero): a gross-error check
# (NaN, a wrong operator, OpenVINO's bf16 moving the gaze by 20 degrees, about a third of a
# gaze vector), not a parity measure. float16 weights moved the landmark network's outputs
# by ~1 % on a probe (0.025 px on real faces, a review's simulation; CoreML itself is not
# measured here): the parity harness in tests/fastpath/test_providers.py measures that on a Mac.
AGREE_RTOL = 0.05
AGREE_FLOOR = 1e-2

# Verdicts already reached in this process, by (model, providers, onnxruntime version): a hot
# reload opens the same networks again, and the answer is the same every time.
_VERDICTS: dict[tuple, str | None] = {}


class SessionOpenError(RuntimeError):
    """onnxruntime could not open a model; the message is the first line of its complaint
    (the caller names the file and what the model is for)."""


def open_session(
    model: Path | bytes,
    *,
    threads: int = 1,
    providers: list[str] | None = None,
    name: str | None = None,
    sha256: str | None = None,
):
    """An `onnxruntime.InferenceSession` of the model at a path, or of its bytes when the
    caller has read them already, on `providers` (CPU when None; an accelerator that "auto"
    chose is checked against the CPU, above; `name` is the network a warning names,
    `sha256` its bytes' hash when the caller has it already).
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
    key = _verdict_key(model, providers, ort.__version__, sha256)
    if key in _VERDICTS:  # judged already: open only the side it chose
        return _open(source, opts, [CPU] if _VERDICTS[key] else providers)
    cpu = _open(source, opts, [CPU])  # a network the CPU cannot open is an error as before
    ep = short_name(providers[0])
    name = name or (str(model) if isinstance(model, Path) else "a network")
    try:
        fast = _open(source, opts, providers)
    except SessionOpenError as e:
        why = f"{ep} cannot run it ({e})"
    else:
        why = disagreement(fast, cpu)
        why = why and f"{ep} answers it differently from the CPU ({why})"
    _VERDICTS[key] = why
    if why:
        log.warning("%s: %s; it runs on the CPU", name, why)
        return cpu
    return fast


def known_verdicts() -> list[list]:
    """The verdicts reached in this process, as JSON: a child that opens the same networks
    (the hot reload's refit) takes them with `adopt_verdicts` instead of probing again."""
    return [[list(key), why] for key, why in _VERDICTS.items()]


def adopt_verdicts(rows: list[list]) -> None:
    """Take verdicts `known_verdicts` gave (another process's: the same files, providers
    and onnxruntime, so the same answers)."""
    for key, why in rows:
        *what, providers, version = key
        _VERDICTS[(*what, tuple(providers), version)] = why


def _verdict_key(
    model: Path | bytes, providers: list[str], version: str, sha256: str | None = None
) -> tuple:
    """What a verdict holds for: the model's bytes (a path by its size and time), the
    providers and the onnxruntime that ran them."""
    if sha256 is not None or isinstance(model, bytes):
        what: tuple = ("sha256", sha256 or hashlib.sha256(model).hexdigest())
    else:
        st = Path(model).stat()
        what = (str(Path(model).resolve()), st.st_size, st.st_mtime_ns)
    return (*what, tuple(providers), version)


def _open(source: str | bytes, opts, providers: list[str]):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(source, sess_options=opts, providers=list(providers))
    except Exception as e:  # onnxruntime's errors are not typed
        text = str(e).strip()
        raise SessionOpenError(text.splitlines()[0] if text else type(e).__name__) from e


def probe_inputs(session) -> dict[str, np.ndarray]:
    """A fixed input for every input of the network: seeded values in [0, 1) for float
    inputs (a normalised picture's range), zeros otherwise; a dimension without a size is 1."""
    rng = np.random.default_rng(0)
    feed = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        if "float" in inp.type:
            dtype = np.float16 if "float16" in inp.type else np.float32
            feed[inp.name] = rng.random(shape).astype(dtype)
        else:
            feed[inp.name] = np.zeros(shape, dtype=np.int64 if "int64" in inp.type else np.int32)
    return feed


def disagreement(fast, cpu, rtol: float = AGREE_RTOL) -> str | None:
    """Why `fast` and `cpu` (sessions of one network) disagree on the probe input, or None.
    A probe that either cannot run counts as a disagreement: the CPU is then the safe side."""
    try:
        feed = probe_inputs(cpu)
        want = cpu.run(None, feed)
        got = fast.run(None, feed)
    except Exception as e:  # onnxruntime's errors are not typed
        text = str(e).strip()
        return f"a probe input failed: {text.splitlines()[0] if text else type(e).__name__}"
    for out, a, b in zip(cpu.get_outputs(), got, want, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return f"output {out.name} is {a.shape}, not {b.shape}, on a probe input"
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        off = float(np.max(np.abs(a - b))) if b.size else 0.0
        if not np.isfinite(a).all() or off > rtol * max(scale, AGREE_FLOOR):
            return f"output {out.name} off by {off:.3g} of {scale:.3g} on a probe input"
    return None
