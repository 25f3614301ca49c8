"""A CPU-heavy oracle for load benchmarks: it labels nothing and keeps a core busy the way a
VLM on a CPU does (`gazeloop bench fastpath --oracle-load`)."""

from __future__ import annotations

import threading
import time

import numpy as np

from gazeloop.calibration.labels import OracleLabel, Snapshot


class CpuLoadOracle:
    """A CPU-heavy oracle backend for the load benchmark: a real network (the gaze model on a
    batch of 64, one thread) run back to back for `seconds` per call, like a VLM on a CPU.
    onnxruntime releases the GIL, as torch does, so this loads a core the way Moondream
    would rather than the interpreter."""

    name = "cpu-load"
    version = "bench"

    def __init__(self, onnx_path: str, seconds: float = 2.0, batch: int = 64):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        self.feeds = {
            "left_eye_image": rng.uniform(0, 255, (batch, 3, 60, 60)).astype(np.float32),
            "right_eye_image": rng.uniform(0, 255, (batch, 3, 60, 60)).astype(np.float32),
            "head_pose_angles": np.zeros((batch, 3), np.float32),
        }
        self.seconds = seconds
        self.calls = 0

    def label(self, snap: Snapshot, cancel: threading.Event) -> OracleLabel:
        end = time.monotonic() + self.seconds
        while time.monotonic() < end and not cancel.is_set():
            self.sess.run(["gaze_vector"], self.feeds)
            self.calls += 1
        return OracleLabel(
            t_ns=snap.t_ns, snapshot_id=snap.snapshot_id, oracle=self.name, confidence=0.0
        )

    def close(self) -> None:
        pass
