"""Clicks at a recording's targets with human timing, judged by the real click rules.

For `gazeloop bench loop --oracle clicks`. A recorded session has frames of fixation on each
target but no clicks and no 60 Hz timeline between targets, so both are simulated around its
real fast-path points: the person looks at one target, makes a 40 ms saccade to the next,
fixates it, and clicks it 150-600 ms after the fixation starts (the hand follows the eye).
Each fixation sample is one of that target's real frames (its fast-path point through the
mapping, drift added), so the fast path's own noise is what the click rules see. Some clicks
come without a fixation (the hand is quicker than the eye: the press lands mid-saccade), and
some are double clicks; `oracle.clicks.judge` decides, exactly as in `gazeloop run`.

An accepted click becomes a point label at the click, i.e. on the target, about the frame
at the fixation's last sample. What is simplified: the click is exactly on the target, and
the rules see the drift but not the loop's own offset (the labels are drawn up front, so the
loop and the estimator told the onset get the same ones; with `max_distance_px` more than twice
the drift this changes few verdicts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gazeloop.oracle.clicks import Click, ClickRules, judge

_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class HumanTiming:
    click_after_ms: tuple[float, float] = (150.0, 600.0)  # from the fixation's start
    saccade_ms: float = 40.0
    before_ms: float = 800.0  # the fixation on the previous target
    no_fixation_rate: float = 0.1  # pressed mid-saccade
    double_rate: float = 0.1
    double_gap_ms: tuple[float, float] = (80.0, 250.0)
    hz: float = 60.0


@dataclass(slots=True)
class ClickDraws:
    """Accepted clicks as labels (frame index and click point, normalised) and every
    click's verdict."""

    frames: list[int] = field(default_factory=list)
    xy: list[tuple[float, float]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    def count(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def _fixation_samples(rng, frames_of, g, t0_ms, t1_ms, hz, shift_px, pred_px):
    t = np.arange(t0_ms, t1_ms, 1000.0 / hz)
    idx = rng.choice(frames_of[g], size=len(t))
    return t, pred_px[idx] + shift_px, idx


def one_look(rng, frames_of, prev, g, pred_px, truth_px, shift_px, timing: HumanTiming):
    """One look from target `prev` to `g` and its presses: (sample times ms, samples px,
    frame of each sample, [press times ms], click point px)."""
    t_sac = timing.before_ms
    t_fix = t_sac + timing.saccade_ms
    early = rng.random() < timing.no_fixation_rate
    if early:
        t_click = t_sac + rng.uniform(0.0, timing.saccade_ms)
    else:
        t_click = t_fix + rng.uniform(*timing.click_after_ms)
    presses = [t_click]
    if rng.random() < timing.double_rate:
        presses.append(t_click + rng.uniform(*timing.double_gap_ms))
    ta, xa, fa = _fixation_samples(rng, frames_of, prev, 0.0, t_sac, timing.hz, shift_px, pred_px)
    tb, xb, fb = _fixation_samples(
        rng, frames_of, g, t_fix, presses[-1] + 200.0, timing.hz, shift_px, pred_px
    )
    ts = np.arange(t_sac, t_fix, 1000.0 / timing.hz)
    w = ((ts - t_sac) / timing.saccade_ms)[:, None]
    xs = (1 - w) * xa[-1] + w * xb[0]
    t = np.concatenate([ta, ts, tb])
    xy = np.concatenate([xa, xs, xb])
    frame = np.concatenate([fa, np.full(len(ts), -1), fb])
    return t, xy, frame, presses, truth_px[frames_of[g][0]]


def draw_clicks(
    pred_px: np.ndarray,
    truth_px: np.ndarray,
    groups: np.ndarray,
    n_labels: int,
    drift_px_at,
    seed: int,
    timing: HumanTiming | None = None,
    rules: ClickRules | None = None,
    max_clicks: int | None = None,
) -> ClickDraws:
    """Looks and clicks until `n_labels` clicks are accepted (or `max_clicks` were made).
    `drift_px_at(k)`: the drift (px) in force when the k-th label is being collected."""
    timing, rules = timing or HumanTiming(), rules or ClickRules()
    rng = np.random.default_rng(seed)
    ids = sorted(set(groups.tolist()))
    frames_of = {g: np.flatnonzero(groups == g) for g in ids}
    out = ClickDraws()
    prev = ids[int(rng.integers(len(ids)))]
    limit = max_clicks or 20 * n_labels
    made = 0
    while len(out.frames) < n_labels and made < limit:
        g = ids[int(rng.integers(len(ids)))]
        if len(ids) > 1:
            while g == prev:
                g = ids[int(rng.integers(len(ids)))]
        shift = np.asarray(drift_px_at(len(out.frames)), dtype=np.float64)
        t, xy, frame, presses, target = one_look(
            rng, frames_of, prev, g, pred_px, truth_px, shift, timing
        )
        clicks = [Click(round(p * _MS), (float(target[0]), float(target[1]))) for p in presses]
        t_ns = np.round(t * _MS).astype(np.int64)
        for v in judge(clicks, t_ns, xy, rules):
            made += 1
            out.count(v.reason)
            if v.accepted and len(out.frames) < n_labels:
                # The fixation's last sample; one mid-saccade (a click that was taken for
                # a look at the previous target) stands for that target's last frame.
                i = int(np.searchsorted(t_ns, v.fixation.t1_ns))
                real = np.flatnonzero(frame[: i + 1] >= 0)
                out.frames.append(int(frame[real[-1]]))
                out.xy.append((float(target[0]), float(target[1])))
        prev = g
    return out
