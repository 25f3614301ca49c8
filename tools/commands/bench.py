"""`gazeloop bench ...`: speed measurements with JSON output (never timed assertions)."""

from __future__ import annotations

import argparse
import json
import sys
import time

import cv2
import numpy as np

from gazeloop.fastpath.pipeline import STAGES, FastPath
from gazeloop.fastpath.sources import open_source
from gazeloop.tools.commands._args import add_fastpath_args, fastpath_config

BENCH_SIZE = (640, 480)
WARMUP = 10


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (JSON output)")
    bsub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    f = bsub.add_parser(
        "fastpath",
        help="per-stage latency of the fast path",
        description="Per-frame latency percentiles of each fast-path stage on one thread, "
        "frames resized to 640x480, looping the source if it is short.",
    )
    f.add_argument("--source", required=True, help="video file, session folder or camera index")
    f.add_argument("--frames", type=int, default=300, help="frames measured (default 300)")
    f.add_argument("--json", action="store_true", help="print only the JSON object")
    f.add_argument(
        "--oracle-load",
        action="store_true",
        help="oracle worker idle (present, nothing submitted) vs busy on a CPU-heavy backend, "
        "alternating; report both",
    )
    f.add_argument(
        "--oracle-in",
        choices=("process", "thread"),
        default="process",
        help="where the busy oracle runs: a child process (what `gazeloop run` does) or a "
        "thread of this process (default: process)",
    )
    f.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="with --oracle-load: idle/busy alternations, each of --frames (default 3)",
    )
    add_fastpath_args(f)
    f.set_defaults(func=run_fastpath)
    m = bsub.add_parser(
        "mapping",
        help="time of fitting a calibration mapping (nested leave-one-target-out included)",
    )
    m.add_argument("--targets", type=int, default=25)
    m.add_argument("--frames", type=int, default=30, help="frames per target")
    m.add_argument("--features", type=int, default=11, help="feature count")
    m.add_argument("--repeats", type=int, default=20)
    m.add_argument("--mapping", action="append", help="mapping(s) to time (default: all)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=run_mapping)
    from gazeloop.tools.commands import mqtt
    from gazeloop.tools.runtime import bench_loop

    mqtt.add_bench_parser(bsub)
    bench_loop.add_parser(bsub)


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


def bench_fastpath(
    source: str,
    frames: int,
    cfg,
    *,
    oracle: str | None = None,
    oracle_in: str = "process",
    raw: bool = False,
) -> dict:
    single_thread()
    cfg = cfg.model_copy(update={"threads": 1})
    fp = FastPath(cfg)
    worker = None
    busy_worker = oracle == "busy"
    if oracle is not None:
        from gazeloop.calibration.labels import Snapshot
        from gazeloop.fastpath.models import resolve_gaze_onnx
        from gazeloop.oracle.worker import OracleWorker

        busy = _busy_oracle(str(resolve_gaze_onnx(cfg.gaze_model)), oracle_in)
        worker = OracleWorker(busy, timeout_s=None, max_age_s=None)
    times: dict[str, list[float]] = {k: [] for k in ("decode", *STAGES)}
    total: list[float] = []
    faces = 0
    restarts = 0
    with open_source(source, loop=True, resize=BENCH_SIZE) as src:
        it = iter(src)
        i = -1
        while len(total) < frames:
            i += 1
            passes = getattr(src, "passes", 0)
            t0 = time.perf_counter_ns()
            frame = next(it)
            decode = (time.perf_counter_ns() - t0) / 1e6
            s = fp.process(frame)
            if busy_worker:  # latest-only: the backend never idles
                worker.submit(Snapshot(t_ns=frame.t_ns, image=frame.image, snapshot_id=str(i)))
            if i < WARMUP:
                continue
            if getattr(src, "passes", 0) != passes:
                # Looping a short file reopens it (8-10 ms): a cost of this benchmark, not of
                # the fast path, and at 4 restarts in 300 frames it would be the p99.
                restarts += 1
                continue
            faces += s.quality.face
            times["decode"].append(decode)
            for k, v in s.stage_ms.items():
                times[k].append(v)
            total.append(decode + sum(s.stage_ms.values()))
    fp.close()
    about_oracle = None
    if worker is not None:
        m = worker.metrics()
        cpus = getattr(busy, "cpus", None)
        worker.close()
        about_oracle = {
            "state": oracle,
            "backend": busy.name,
            "in": oracle_in,
            "calls": m.done,
            "cpus": None if cpus is None else {"fastpath": cpus[0], "oracle": cpus[1]},
        }
    h, w = frame.image.shape[:2]
    return {
        **({"raw": {"stages": times, "total": total}} if raw else {}),
        "oracle_worker": about_oracle,
        "frames": len(total),
        "warmup_frames": WARMUP,
        "loop_restarts_excluded": restarts,
        "width": w,
        "height": h,
        "face_found": faces,
        "landmarks_backend": cfg.landmarks,
        "threads": 1,
        "stages": {k: percentiles(v) for k, v in times.items() if v},
        "total": percentiles(total),
    }


def _pool(runs: list[dict]) -> dict:
    """One summary over several runs of `bench_fastpath(raw=True)`."""
    out = {k: v for k, v in runs[0].items() if k != "raw"}
    for k in ("frames", "face_found", "loop_restarts_excluded"):
        out[k] = sum(r[k] for r in runs)
    stages = {k: [x for r in runs for x in r["raw"]["stages"][k]] for k in runs[0]["raw"]["stages"]}
    out["stages"] = {k: percentiles(v) for k, v in stages.items() if v}
    out["total"] = percentiles([x for r in runs for x in r["raw"]["total"]])
    if out["oracle_worker"] is not None:
        out["oracle_worker"]["calls"] = sum(r["oracle_worker"]["calls"] for r in runs)
    return out


def run_mapping(args: argparse.Namespace) -> int:
    from gazeloop.calibration.mapping import MAPPINGS, benchmark_fit

    single_thread()
    out = {
        "targets": args.targets,
        "frames_per_target": args.frames,
        "features": args.features,
        "fits": {},
    }
    for name in args.mapping or sorted(MAPPINGS):
        r = benchmark_fit(
            n_targets=args.targets,
            frames=args.frames,
            d=args.features,
            name=name,
            repeats=args.repeats if name != "rbf" else max(3, args.repeats // 5),
        )
        out["fits"][name] = {k: round(r[k], 3) for k in ("p50_ms", "p95_ms") if k in r}
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


def run_fastpath(args: argparse.Namespace) -> int:
    if args.frames < 1:
        from gazeloop.tools.errors import UserError

        raise UserError("--frames must be at least 1")
    cfg = fastpath_config(args)
    if args.oracle_load:
        if args.rounds < 1:
            from gazeloop.tools.errors import UserError

            raise UserError("--rounds must be at least 1")
        # Idle and busy alternate so that whatever else the machine does in the meantime
        # falls on both sides, not on one.
        runs: dict[str, list[dict]] = {"idle": [], "busy": []}
        for _ in range(args.rounds):
            for mode in ("idle", "busy"):
                runs[mode].append(
                    bench_fastpath(
                        args.source,
                        args.frames,
                        cfg,
                        oracle=mode,
                        oracle_in=args.oracle_in,
                        raw=True,
                    )
                )
        idle, busy = _pool(runs["idle"]), _pool(runs["busy"])
        out = {
            "rounds": args.rounds,
            "idle": idle,
            "busy": busy,
            "p99_ratio": round(busy["total"]["p99_ms"] / idle["total"]["p99_ms"], 3),
            "p50_ratio": round(busy["total"]["p50_ms"] / idle["total"]["p50_ms"], 3),
        }
    else:
        out = bench_fastpath(args.source, args.frames, cfg)
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))
    return 0
