"""`gazeloop bench loop-update`: what one label costs the thread that hands it to the drift
loop, by how many labels the loop holds, and what a click costs the frame thread.

The validation glance is judged on the frame thread (`tools.runtime.live`), so a label
update longer than the frame's slack makes that frame late; the oracle's labels are judged
on its worker's thread and clicks on the label judge's, so the frame thread pays the click
rules (`click_poll`: `ClickLabeller.poll` for a click decided at a fixation) and a queue's
append (`Live.post_label`, not timed here), and shares the interpreter with the judge.
The loop's work grows with the labels it holds: its fit
and its change scan look back up to two windows of `window_labels`, and labels leave it
after `window_s` or beyond two windows and the scale's `gate_labels`. So the time is
reported by labels held, on *simulated* point labels (σ 100 px per axis, the loop's own
simulation) arriving every `interval_s`: a stream with no drift, the common case, and one
with a 150 px step halfway, which makes the loop split its runs.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from gazeloop.calibration.drift.history import History
from gazeloop.calibration.drift.loop import LoopConfig
from gazeloop.calibration.drift.simulation import (
    DriftSchedule,
    LabelStream,
    simulate_drift,
    synthetic_session,
)
from gazeloop.tools.runtime.bench_fastpath import percentiles, single_thread
from gazeloop.tools.runtime.clicks import ClickLabeller
from gazeloop.tools.runtime.provenance import measured_on

SCREEN_PX = (1728, 1080)
SEED = 70000  # apart from every other benchmark's streams
# Labels held, in bins: the first window, the second, and beyond (two windows and σ's).
BINS = ((1, 60), (61, 120), (121, 240), (241, 10**9))


def bench_loop_update(labels: int, streams: int, interval_s: float) -> dict[str, Any]:
    """Every `DriftLoop.update` of `streams` pairs of label streams (no drift; a step at
    half way), timed on this thread, as percentiles by the labels the loop held."""
    single_thread()
    pred, truth, _ = synthetic_session(SCREEN_PX, seed=1)
    cfg = LoopConfig(aspect=SCREEN_PX[0] / SCREEN_PX[1])
    took, held = [], []
    for k in range(streams):
        stream = LabelStream(n_labels=labels, interval_s=interval_s, seed=SEED + k)
        for drift in (
            DriftSchedule(kind="none"),
            DriftSchedule(kind="step", at_label=labels // 2),
        ):
            r = simulate_drift(pred, truth, SCREEN_PX, drift, stream, cfg)
            took.append(r.update_ms)
            held.append(r.held)
    ms, n = np.concatenate(took), np.concatenate(held)
    bins = [(lo, hi, (n >= lo) & (n <= hi)) for lo, hi in BINS]
    rows = [_row(ms[inside], lo, hi) for lo, hi, inside in bins if inside.any()]
    return {
        "what": "one DriftLoop.update on this thread (ms), by the labels the loop held after "
        "it; simulated point labels (σ 100 px per axis) on a synthetic 5×5 session",
        "labels_per_stream": labels,
        "streams": 2 * streams,
        "interval_s": interval_s,
        "window_labels": cfg.window_labels,
        "window_s": cfg.window_s,
        "most_labels_held": int(n.max()),
        "updates": int(len(ms)),
        "measured_on": measured_on(),
        "all": _stats(ms),
        "by_labels_held": rows,
        "click_poll": bench_click_poll(streams * labels),
    }


def bench_click_poll(clicks: int, hz: float = 60.0) -> dict[str, Any]:
    """`ClickLabeller.poll` at the frame that decides each of `clicks` clicks, timed on this
    thread: the click rules over the History's last 600 ms, and the label posted (a list's
    append here, as `Live.post_label` is a queue's). Each click comes half a second into a
    one-second fixation (*simulated*: 0.005 screen widths of jitter), so every one is
    judged by the whole rule set and accepted."""
    history = History(max_age_s=120.0, max_len=20_000)
    posted: list = []
    labeller = ClickLabeller(history, SCREEN_PX, posted.append, clock=lambda: 0)
    rng = np.random.default_rng(SEED)
    frame_ns, t, took = round(1e9 / hz), 0, []
    for _ in range(clicks):
        target = rng.uniform(0.1, 0.9, 2)
        at = target * SCREEN_PX
        for i in range(round(hz)):
            t += frame_ns
            history.append(t, target + rng.normal(0.0, 0.005, 2))
            labeller.frame(t)
            if i == round(hz) // 2:
                labeller.press(*at)
                labeller.release(*at)
            t0 = time.perf_counter()
            decided = labeller.poll()
            if decided:
                took.append((time.perf_counter() - t0) * 1e3)
    return {
        "what": "ClickLabeller.poll at the frame that decides a click (ms): the frame "
        "thread's share of a click; simulated one-second fixations at 60 Hz",
        "clicks": clicks,
        "accepted": len(posted),
        **_stats(np.asarray(took)),
    }


def _row(ms: np.ndarray, lo: int, hi: int) -> dict[str, Any]:
    return {"labels_held": f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}", **_stats(ms)}


def _stats(ms: np.ndarray) -> dict[str, Any]:
    return {**percentiles(ms.tolist()), "max_ms": round(float(ms.max()), 3)}
