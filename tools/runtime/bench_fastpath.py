"""The fast path's speed: per-frame latency of each stage on one thread (`gazeloop bench
fastpath`), optionally next to an oracle worker kept busy on a CPU-heavy backend.

Percentiles only, never a timed assertion: absolute times move with the host. Frames are
resized to 640x480 and a short source is looped; the reopening of a looped file is a cost of
this benchmark, not of the fast path, and its frames are left out.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gazeloop.fastpath.pipeline import STAGES, FastPath
from gazeloop.fastpath.sources import IMAGE_SUFFIXES, is_camera, open_source
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.progress import Progress
from gazeloop.tools.runtime.provenance import measured_on

BENCH_SIZE = (640, 480)
WARMUP = 10


def single_thread() -> None:
    """One intra-op thread everywhere: on a 2-core machine a second thread next to any
    other busy process turns milliseconds into seconds."""
    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50_ms": round(p50, 3),
        "p95_ms": round(p95, 3),
        "p99_ms": round(p99, 3),
        "n": int(a.size),
    }


def _busy_oracle(onnx_path: str, where: str):
    from gazeloop.oracle.cpuload import CpuLoadOracle

    if where == "thread":
        return CpuLoadOracle(onnx_path, seconds=0.5)
    from gazeloop.oracle.process import OracleSpec, ProcessOracle

    spec = OracleSpec(
        "gazeloop.oracle.cpuload:CpuLoadOracle", {"onnx_path": onnx_path, "seconds": 0.5}
    )
    return ProcessOracle(spec)


@dataclass(slots=True)
class _Measured:
    """What the timed loop leaves: per-stage and total milliseconds of the frames kept, and
    what was left out of them."""

    times: dict[str, list[float]]
    total: list[float]
    cpu: list[float]  # process CPU time of the fast path per frame (decode excluded)
    faces: int
    restarts: int
    frame: Any  # the last frame read, for its size


def _oracle_worker(cfg, oracle: str | None, oracle_in: str):
    """(backend, worker) beside the fast path, or (None, None) without an oracle. The
    oracle modules are imported only then: the plain benchmark does not pay for them."""
    if oracle is None:
        return None, None
    from gazeloop.fastpath.models import resolve_gaze_onnx
    from gazeloop.oracle.worker import OracleWorker

    busy = _busy_oracle(str(resolve_gaze_onnx(cfg.gaze_model)), oracle_in)
    try:
        return busy, OracleWorker(busy, timeout_s=None, max_age_s=None)
    except BaseException:
        busy.close()  # its child would otherwise outlive the failed start
        raise


def _stream_options(source: str) -> dict:
    """How to open the source: a file is looped when short; a camera never ends (and takes
    no `loop`). A still has no stream to time, which the tracking stages depend on."""
    extra = {} if is_camera(source) else {"loop": True}
    if not is_camera(source) and Path(source).suffix.lower() in IMAGE_SUFFIXES:
        raise UserError(
            f"{source}: a still image; the fast path's timing needs a stream (a video, a "
            "session folder or a camera), which the tracking stages depend on"
        )
    return extra


def _measure(src, fp: FastPath, busy_worker, frames: int, progress: Progress) -> _Measured:
    """Time `frames` frames after the warm-up; `busy_worker` (None: none) is handed every
    frame, so a busy oracle's backend never idles beside the fast path."""
    if busy_worker is not None:
        from gazeloop.calibration.labels import Snapshot
    m = _Measured({k: [] for k in ("decode", *STAGES)}, [], [], 0, 0, None)
    it = iter(src)
    i = -1
    while len(m.total) < frames:
        i += 1
        progress.note(f"frame {len(m.total)} of {frames}")
        passes = getattr(src, "passes", 0)
        t0 = time.perf_counter_ns()
        m.frame = frame = next(it)
        decode = (time.perf_counter_ns() - t0) / 1e6
        c0 = time.process_time_ns()
        s = fp.process(frame)
        c1 = time.process_time_ns()
        if busy_worker is not None:  # latest-only: the backend never idles
            busy_worker.submit(Snapshot(t_ns=frame.t_ns, image=frame.image, snapshot_id=str(i)))
        if i < WARMUP:
            continue
        if getattr(src, "passes", 0) != passes:
            # Looping a short file reopens it (8-10 ms): a cost of this benchmark, not of
            # the fast path, and at 4 restarts in 300 frames it would be the p99.
            m.restarts += 1
            continue
        m.faces += s.quality.face
        m.times["decode"].append(decode)
        for k, v in s.stage_ms.items():
            m.times[k].append(v)
        m.total.append(decode + sum(s.stage_ms.values()))
        m.cpu.append((c1 - c0) / 1e6)
    return m


def _networks(fp: FastPath, cfg) -> tuple[dict, dict]:
    """What the ONNX networks ran on ("landmarks" is None for the MediaPipe backends, which
    run their own runtime), and the `onnx` backend's network calls over the whole run,
    warm-up included: the detector should run once per loss of tracking (here: the first
    frame and each loop restart)."""
    providers = {
        "requested": cfg.ep,
        "gaze_model": fp.gaze.providers,
        "landmarks": getattr(fp.landmarks, "providers", None),
    }
    runs = {k: getattr(fp.landmarks, f"{k}_runs", None) for k in ("detector", "landmark")}
    return providers, runs


def _oracle_report(worker, busy, oracle: str | None, oracle_in: str) -> dict | None:
    """The oracle worker's side of the run, read before it is closed (None: no oracle)."""
    if worker is None:
        return None
    m = worker.metrics()
    cpus = getattr(busy, "cpus", None)
    return {
        "state": oracle,
        "backend": busy.name,
        "in": oracle_in,
        # Handed a snapshot at all: without one a "busy" phase measures an idle oracle.
        "submitted": m.submitted,
        "calls": m.done,
        "cpus": None if cpus is None else {"fastpath": cpus[0], "oracle": cpus[1]},
    }


def bench_fastpath(
    source: str,
    frames: int,
    cfg,
    *,
    oracle: str | None = None,
    oracle_in: str = "process",
    raw: bool = False,
) -> dict:
    single_thread()  # OpenCV's and torch's; onnxruntime's is cfg.threads (default 1)
    extra = _stream_options(source)  # a still is refused before anything loads
    fp = FastPath(cfg)
    worker = None
    # Closed however the run ends: the busy oracle's child must not outlive a failed run.
    try:
        busy, worker = _oracle_worker(cfg, oracle, oracle_in)
        what = "fast path" + ("" if oracle is None else f", oracle {oracle}")
        with (
            Progress(f"bench {what}, {frames} frames") as progress,
            open_source(source, resize=BENCH_SIZE, **extra) as src,
        ):
            m = _measure(src, fp, worker if oracle == "busy" else None, frames, progress)
        providers, runs = _networks(fp, cfg)
        about_oracle = _oracle_report(worker, busy, oracle, oracle_in)
    finally:
        fp.close()
        if worker is not None:
            worker.close()
    h, w = m.frame.image.shape[:2]
    return {
        **({"raw": {"stages": m.times, "total": m.total, "cpu": m.cpu}} if raw else {}),
        "oracle_worker": about_oracle,
        "frames": len(m.total),
        "warmup_frames": WARMUP,
        "loop_restarts_excluded": m.restarts,
        "width": w,
        "height": h,
        "face_found": m.faces,
        "landmarks_backend": cfg.landmarks,
        "execution_providers": providers,
        "network_runs": runs if runs["landmark"] is not None else None,
        "threads": cfg.threads,
        "source": str(source),
        "measured_on": measured_on(),
        "settings": cfg.model_dump(mode="json"),  # the fast path's, resolved
        "stages": {k: percentiles(v) for k, v in m.times.items() if v},
        "total": percentiles(m.total),
        # Wall time above is what a user waits; on a shared machine it also measures the
        # scheduler. CPU time (all threads of this process) measures the work alone.
        "cpu_per_frame": percentiles(m.cpu),
    }


def pool_runs(runs: list[dict]) -> dict:
    """One summary over several runs of `bench_fastpath(raw=True)`."""
    out = {k: v for k, v in runs[0].items() if k != "raw"}
    for k in ("frames", "face_found", "loop_restarts_excluded"):
        out[k] = sum(r[k] for r in runs)
    stages = {k: [x for r in runs for x in r["raw"]["stages"][k]] for k in runs[0]["raw"]["stages"]}
    out["stages"] = {k: percentiles(v) for k, v in stages.items() if v}
    out["total"] = percentiles([x for r in runs for x in r["raw"]["total"]])
    out["cpu_per_frame"] = percentiles([x for r in runs for x in r["raw"]["cpu"]])
    if out["oracle_worker"] is not None:
        for k in ("submitted", "calls"):
            out["oracle_worker"][k] = sum(r["oracle_worker"][k] for r in runs)
    return out
