"""gazeloop's fast path beside EyeTrax's feature extraction, on the same frames, interleaved
(`gazeloop bench eyetrax`).

EyeTrax (a popular webcam tracker) turns each frame into features with MediaPipe's Tasks
FaceLandmarker and a little numpy, then a ridge regression; it runs no gaze network. The
fair question for gazeloop is whether its whole fast path (landmarks, head pose, eye crops,
the CNN, the mapping and the filter; decoding excluded on both sides) costs less per frame
than EyeTrax's `GazeEstimator.extract_features` on the same machine. Both run in this
process on the same decoded 640x480 frame, one after the other, the order alternating per
frame so that neither always gets the warmer cache; the host's drift then moves both alike.

EyeTrax is not a gazeloop dependency (it pins numpy<2): this needs `pip install eyetrax` in a
separate environment, and says so when it is missing. It is given the same
`face_landmarker.task` file, so nothing is downloaded.
"""

from __future__ import annotations

import time

import numpy as np

from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
from gazeloop.fastpath.sources import open_source
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.bench_fastpath import BENCH_SIZE, WARMUP, percentiles, single_thread
from gazeloop.tools.runtime.provenance import measured_on


def eyetrax_estimator(face_task: str):
    """EyeTrax's own estimator on our model file; a clear error when it is not installed."""
    try:
        from eyetrax.gaze import GazeEstimator
    except ImportError as e:
        raise UserError(
            f"bench eyetrax needs the eyetrax package ({e}); it pins numpy<2, so install it "
            "in a separate environment: pip install eyetrax '.[mqtt]'"
        ) from e
    return GazeEstimator(face_landmarker_model=face_task)


def _ratio(ours: dict, theirs: dict, key: str) -> float | None:
    if not ours.get(key) or not theirs.get(key):
        return None
    return round(ours[key] / theirs[key], 3)


def bench_eyetrax(source: str, frames: int, cfg: FastPathConfig, estimator) -> dict:
    """Per-frame milliseconds of both, decode excluded, and our p50/p99 over theirs."""
    single_thread()
    cfg = cfg.model_copy(update={"threads": 1})
    fp = FastPath(cfg)
    ours: list[float] = []
    theirs: list[float] = []
    found = {"gazeloop": 0, "eyetrax": 0}
    with open_source(source, resize=BENCH_SIZE, loop=True) as src:
        for i, frame in enumerate(src):
            if len(ours) >= frames:
                break
            order = (0, 1) if i % 2 == 0 else (1, 0)
            took = [0.0, 0.0]
            for who in order:
                t0 = time.perf_counter_ns()
                if who == 0:
                    s = fp.process(frame)
                else:
                    feats, blink = estimator.extract_features(frame.image)
                took[who] = (time.perf_counter_ns() - t0) / 1e6
            if i < WARMUP:
                continue
            ours.append(took[0])
            theirs.append(took[1])
            found["gazeloop"] += bool(s.quality.face)
            found["eyetrax"] += feats is not None
    fp.close()
    # MediaPipe's landmarker must be closed while the interpreter is still whole: left to
    # __del__ at exit, it prints a traceback.
    estimator._face_landmarker.close()
    a, b = percentiles(ours), percentiles(theirs)
    return {
        "frames": len(ours),
        "warmup_frames": WARMUP,
        "width": BENCH_SIZE[0],
        "height": BENCH_SIZE[1],
        "landmarks_backend": cfg.landmarks,
        "source": str(source),
        "measured_on": measured_on(("eyetrax",)),
        "settings": cfg.model_dump(mode="json"),
        "face_found": found,
        "gazeloop_fastpath": a,
        "eyetrax_extract_features": b,
        "ratio": {"p50": _ratio(a, b, "p50_ms"), "p99": _ratio(a, b, "p99_ms")},
        "per_frame_ratio_median": round(float(np.median(np.divide(ours, theirs))), 3)
        if ours
        else None,
    }
