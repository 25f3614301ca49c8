"""`gazeloop bench clicks`: what clicks cost the frame thread of `gazeloop run`, with the
drift loop's update on the frame thread (as before 2026-12-07) and on the label judge's
thread (`Live.post_label`, as `run` does now), side by side on the same frames.

The real fast path and profile on a recording's frames, paced at `hz` (a camera gives a
frame, then nothing until the next: the judge runs in that slack, or beside the networks,
which release the interpreter); every `every`-th frame brings a click label near the
frame's own estimate (*synthetic load*: a person clicks once a second or so, here six a
second at 60 Hz, so that the loop fills to a few hundred labels and the p99 sees many). Per
mode: the frame's time (`Live.process` and, on a click's frame, handing the label on), over
every frame, over the clicks' frames and over the frame after each (where a judge still
busy competes), and the frames later than one period. The modes alternate `rounds` times,
so that whatever else the machine does falls on both.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from gazeloop.calibration.labels import OracleLabel, PointObservation
from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
from gazeloop.fastpath.sources import open_source
from gazeloop.fastpath.types import Frame
from gazeloop.tools.runtime.bench_fastpath import percentiles, single_thread
from gazeloop.tools.runtime.progress import Progress
from gazeloop.tools.runtime.provenance import measured_on

MODES = ("frame_thread", "judge_thread")
_NOISE = 0.03  # the click's distance from the estimate, screen widths per axis (accepted)


def _frames(source: str | Path) -> list[np.ndarray]:
    with open_source(str(source)) as src:
        return [f.image for f in src]


def _one_mode(mode: str, images, cfg: FastPathConfig, load_mapper, frames, every, hz, seed):
    from gazeloop.tools.runtime.live import Live

    fp = FastPath(cfg)
    live = Live(fp, mapper=load_mapper(fp))
    hand_on = live.external_label if mode == "frame_thread" else live.post_label
    rng = np.random.default_rng(seed)
    period, took, clicked = 1.0 / hz, [], []
    due = time.perf_counter()
    try:
        for i in range(frames):
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            due += period
            t_ns = (i + 1) * round(1e9 / hz)
            t0 = time.perf_counter()
            s = live.process(Frame(t_ns, images[i % len(images)], i))
            click = i % every == every - 1 and s.screen_xy_raw is not None
            if click:
                xy = np.clip(np.asarray(s.screen_xy_raw) + rng.normal(0.0, _NOISE, 2), 0, 1)
                obs = PointObservation(xy=(float(xy[0]), float(xy[1])))
                hand_on(
                    OracleLabel(t_ns=t_ns, snapshot_id=f"c{i}", oracle="clicks", observation=obs)
                )
            took.append((time.perf_counter() - t0) * 1e3)
            clicked.append(click)
        live.flush(60.0)
        judged = (len(live.decisions), live.loop.n_labels)
    finally:
        live.close()
    return np.asarray(took), np.asarray(clicked), judged


def _report(ms: np.ndarray, clicked: np.ndarray, hz: float) -> dict[str, Any]:
    after = np.roll(clicked, 1)
    after[0] = False
    return {
        "all": percentiles(ms.tolist()),
        "click_frames": percentiles(ms[clicked].tolist()),
        "frames_after_a_click": percentiles(ms[after].tolist()),
        "late_frames": int((ms > 1e3 / hz).sum()),
    }


def bench_clicks(
    source: str | Path, cfg: FastPathConfig, load_mapper, *, frames: int, every: int,
    hz: float, rounds: int,
) -> dict[str, Any]:  # fmt: skip
    """Both modes, `rounds` times each, alternating (module doc); `load_mapper(fp)` gives
    the profile's mapper for a fresh fast path."""
    single_thread()
    images = _frames(source)
    runs: dict[str, list] = {m: [] for m in MODES}
    with Progress(f"bench clicks, {rounds} rounds of {len(MODES)} × {frames} frames"):
        for r in range(rounds):
            for mode in MODES:
                runs[mode].append(_one_mode(mode, images, cfg, load_mapper, frames, every, hz, r))
    out: dict[str, Any] = {
        "what": "the frame thread's time per frame (ms) in `gazeloop run` with click labels "
        "judged on it (frame_thread) or posted to the label judge (judge_thread); synthetic "
        "load: a click near the estimate every `every` frames",
        "source": str(source),
        "frames": frames,
        "recorded_frames": len(images),
        "every": every,
        "hz": hz,
        "rounds": rounds,
        "measured_on": measured_on(),
    }
    for mode, got in runs.items():
        ms = np.concatenate([g[0] for g in got])
        clicked = np.concatenate([g[1] for g in got])
        out[mode] = {
            **_report(ms, clicked, hz),
            "clicks": int(clicked.sum()),
            "judged": sum(g[2][0] for g in got),
            "labels_held_at_end": [g[2][1] for g in got],
        }
    return out
