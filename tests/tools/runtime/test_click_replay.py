"""Clicks replayed with human timing, judged by the real click rules."""

from __future__ import annotations

import numpy as np

from gazeloop.tools.runtime.click_replay import HumanTiming, draw_clicks

# Four targets, 20 frames each, fast-path points scattered 40 px around them.
TARGETS = np.array([[200.0, 150.0], [1700.0, 150.0], [200.0, 900.0], [1700.0, 900.0]])
GROUPS = np.repeat(np.arange(4), 20)
TRUTH = TARGETS[GROUPS]
PRED = TRUTH + np.random.default_rng(0).normal(0, 40.0, TRUTH.shape)


def no_drift(k):
    return (0.0, 0.0)


def test_clean_looks_give_one_label_per_click_on_the_clicked_target():
    timing = HumanTiming(no_fixation_rate=0.0, double_rate=0.0)
    c = draw_clicks(PRED, TRUTH, GROUPS, 25, no_drift, seed=3, timing=timing)
    assert c.reasons == {"ok": 25} and len(c.frames) == 25
    for f, xy in zip(c.frames, c.xy, strict=True):
        assert tuple(TRUTH[f]) == xy  # the label's frame is a frame of the clicked target


def test_mid_saccade_presses_and_double_clicks_are_refused():
    timing = HumanTiming(no_fixation_rate=0.3, double_rate=0.3)
    c = draw_clicks(PRED, TRUTH, GROUPS, 40, no_drift, seed=5, timing=timing)
    assert len(c.frames) == 40
    assert c.reasons["burst"] % 2 == 0 and c.reasons["burst"] > 0
    assert c.reasons.get("saccade", 0) + c.reasons.get("far", 0) > 0
    # Targets far apart: a refused press is never turned into a label about another target.
    for f, xy in zip(c.frames, c.xy, strict=True):
        assert tuple(TRUTH[f]) == xy


def test_the_same_seed_gives_the_same_clicks():
    a = draw_clicks(PRED, TRUTH, GROUPS, 10, no_drift, seed=9)
    b = draw_clicks(PRED, TRUTH, GROUPS, 10, no_drift, seed=9)
    assert (a.frames, a.xy, a.reasons) == (b.frames, b.xy, b.reasons)
