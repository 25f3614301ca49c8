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
"""

from __future__ import annotations

from pathlib import Path

from gazeloop.fastpath.providers import CPU


class SessionOpenError(RuntimeError):
    """onnxruntime could not open a model; the message is the first line of its complaint
    (the caller names the file and what the model is for)."""


def open_session(model: Path | bytes, *, threads: int = 1, providers: list[str] | None = None):
    """An `onnxruntime.InferenceSession` of the model at a path, or of its bytes when the
    caller has read them already, on `providers` (CPU when None). onnxruntime raises several
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
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=providers or [CPU])
    except Exception as e:  # onnxruntime's errors are not typed
        text = str(e).strip()
        raise SessionOpenError(text.splitlines()[0] if text else type(e).__name__) from e
