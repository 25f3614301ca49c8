"""`gazeloop bench clicks`: what clicks cost the frame thread of `gazeloop run`, with the
drift loop's update on the frame thread (as before 2026-12-07) and on the label judge's
thread (`Live.post_label`, as `run` does now), side by side on the same frames.

The real fast path and profile on a recording's frames, paced at `hz` as a camera gives
them: frame i is due at i/hz, and is ready when `Live.process` (and, on a click's frame,
handing the label on) has finished. Its time is counted from when it was due, so a frame
that waited for the interpreter (the judge still busy with the last click) or for the
frame before it is counted with that wait; a frame is late when it is ready more than one
period after it was due. Every `every`-th frame brings a click label near the frame's own
estimate (*synthetic load*: a person clicks once a second or so, here six a second at
60 Hz, so that the loop fills to a few hundred labels and the p99 sees many). Per mode: the
frames' times over every frame, over the clicks' frames and over the frame after each,
and the late frames. The modes alternate `rounds` times, each going first in turn, so
that whatever else the machine does falls on both.
"""

from __future__ import annotations

import itertools
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


def _frames(source: str | Path, most: int) -> list[np.ndarray]:
    with open_source(str(source)) as src:
        return [f.image for f in itertools.islice(src, most)]


def _click(t_ns: int, i: int, xy_raw, rng) -> OracleLabel:
    xy = np.clip(np.asarray(xy_raw) + rng.normal(0.0, _NOISE, 2), 0.0, 1.0)
    obs = PointObservation(xy=(float(xy[0]), float(xy[1])))
    return OracleLabel(t_ns=t_ns, snapshot_id=f"c{i}", oracle="clicks", observation=obs)


def _one_mode(mode: str, images, cfg: FastPathConfig, load_mapper, frames, every, hz, seed):
    """One run: per frame, ms from due to ready and whether it brought a click; and the
    decisions made and labels held at the end."""
    from gazeloop.tools.runtime.live import Live

    fp = FastPath(cfg)
    live = Live(fp, mapper=load_mapper(fp))
    hand_on = live.external_label if mode == "frame_thread" else live.post_label
    rng = np.random.default_rng(seed)
    took, clicked = np.zeros(frames), np.zeros(frames, dtype=bool)
    start = time.perf_counter()
    try:
        for i in range(frames):
            due = start + i / hz
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            t_ns = (i + 1) * round(1e9 / hz)
            s = live.process(Frame(t_ns, images[i % len(images)], i))
            if i % every == every - 1 and s.screen_xy_raw is not None:
                hand_on(_click(t_ns, i, s.screen_xy_raw, rng))
                clicked[i] = True
            took[i] = (time.perf_counter() - due) * 1e3
        live.flush(60.0)
        judged = (len(live.decisions), live.loop.n_labels)
    finally:
        live.close()
    after = np.zeros(frames, dtype=bool)
    after[1:] = clicked[:-1]
    return took, clicked, after, judged


def _report(got: list, hz: float) -> dict[str, Any]:
    ms, clicked, after = (np.concatenate([g[k] for g in got]) for k in range(3))
    return {
        "all": percentiles(ms.tolist()),
        "click_frames": percentiles(ms[clicked].tolist()),
        "frames_after_a_click": percentiles(ms[after].tolist()),
        "late_frames": int((ms > 1e3 / hz).sum()),
        "clicks": int(clicked.sum()),
        "judged": sum(g[3][0] for g in got),
        "labels_held_at_end": [g[3][1] for g in got],
    }


def bench_clicks(
    source: str | Path, cfg: FastPathConfig, load_mapper, *, frames: int, every: int,
    hz: float, rounds: int,
) -> dict[str, Any]:  # fmt: skip
    """Both modes, `rounds` times each, alternating (module doc); `load_mapper(fp)` gives
    the profile's mapper for a fresh fast path."""
    single_thread()
    images = _frames(source, frames)
    runs: dict[str, list] = {m: [] for m in MODES}
    with Progress(f"bench clicks, {rounds} rounds of {len(MODES)} × {frames} frames"):
        for r in range(rounds):
            for mode in MODES[:: 1 if r % 2 == 0 else -1]:
                runs[mode].append(_one_mode(mode, images, cfg, load_mapper, frames, every, hz, r))
    return {
        "what": "ms from each frame's due time (paced at hz) to its end in `gazeloop run`, "
        "with click labels judged on the frame thread (frame_thread) or posted to the label "
        "judge (judge_thread); synthetic load: a click near the estimate every `every` frames",
        "source": str(source),
        "frames": frames,
        "recorded_frames_used": len(images),
        "every": every,
        "hz": hz,
        "rounds": rounds,
        "measured_on": measured_on(),
        **{mode: _report(got, hz) for mode, got in runs.items()},
    }
