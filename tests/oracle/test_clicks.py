"""The click oracle's rules, on hand-built fast-path traces (60 Hz, pixels)."""

from __future__ import annotations

import numpy as np
import pytest

from gazeloop.oracle.clicks import (
    Click,
    ClickRules,
    burst_mask,
    fixation_before,
    is_drag,
    judge,
    stable_run_start,
)

MS = 1_000_000
RULES = ClickRules()
HZ = 1000 / 60


def trace(*segments: tuple[float, float, tuple[float, float], tuple[float, float]]):
    """Samples every 1/60 s: each segment (t0_ms, t1_ms, from_xy, to_xy) moves linearly."""
    ts, xys = [], []
    for t0, t1, a, b in segments:
        for t in np.arange(t0, t1, HZ):
            w = (t - t0) / max(t1 - t0, 1e-9)
            ts.append(round(t * MS))
            xys.append(np.add(a, w * np.subtract(b, a)))
    return np.array(ts, dtype=np.int64), np.array(xys)


def noisy(t, xy, sigma, seed=0):
    return t, xy + np.random.default_rng(seed).normal(0, sigma, xy.shape)


TARGET = (1200.0, 700.0)
# Looking at (300, 300) until 1000 ms, a 40 ms saccade, then fixating the target.
T, XY = trace(
    (0, 1000, (300, 300), (300, 300)),
    (1000, 1040, (300, 300), TARGET),
    (1040, 3000, TARGET, TARGET),
)


def test_a_click_300_ms_into_a_fixation_is_a_label_timed_at_the_fixation_end():
    t, xy = noisy(T, XY, 40.0)
    (v,) = judge([Click(1340 * MS, TARGET)], t, xy, RULES)
    assert v.accepted and v.reason == "ok"
    fix = v.fixation
    assert (
        1000 * MS <= fix.t0_ns <= 1100 * MS
    )  # the saccade's tail may count and 1320 * MS <= fix.t1_ns <= 1340 * MS
    assert np.hypot(*np.subtract(fix.centre_px, TARGET)) < 30


@pytest.mark.parametrize(
    ("click_ms", "reason"),
    [
        (1100, "no_fixation"),  # 60 ms after landing: not yet a fixation, nothing stable before
        (1020, "saccade"),  # mid-saccade, after a fixation elsewhere
        (1180, "ok"),  # 140 ms in: a fixation of at least 100 ms
    ],
)
def test_clicks_before_the_eye_has_settled(click_ms, reason):
    t, xy = T, XY
    if reason == "no_fixation":  # before it landed the estimate was all over the screen
        rng = np.random.default_rng(1)
        xy = np.where((t < 1040 * MS)[:, None], rng.uniform(0, 2000, XY.shape), XY)
    (v,) = judge([Click(click_ms * MS, TARGET)], t, xy, RULES)
    assert v.reason == reason


def test_a_click_far_from_the_fixation_is_refused_and_a_drift_sized_offset_is_not():
    (far,) = judge([Click(1400 * MS, (TARGET[0] + 600, TARGET[1]))], T, XY, RULES)
    assert far.reason == "far"
    # A 150 px calibration drift puts the fixation 150 px off the click: that is the label.
    (drifted,) = judge([Click(1400 * MS, (TARGET[0] - 150, TARGET[1]))], T, XY, RULES)
    assert drifted.accepted


def test_no_samples_near_the_click_means_no_label():
    (v,) = judge([Click(5000 * MS, TARGET)], T, XY, RULES)
    assert v.reason == "no_samples"
    assert fixation_before(T[:0], XY[:0], 1400 * MS, RULES) == (None, "no_samples")


def test_a_fixation_never_spans_a_hole_in_the_samples():
    """The face lost for 480 ms: two samples either side of the hole were a 'fixation' of
    whatever the eye did meanwhile. The stretch after the hole is judged alone."""
    t, _ = trace((0, 3000, TARGET, TARGET))
    t = t[(t < 900 * MS) | (t > 1380 * MS)]
    xy = np.tile(TARGET, (len(t), 1))
    (short,) = judge([Click(1420 * MS, TARGET)], t, xy, RULES)
    assert short.reason == "no_fixation"  # 40 ms since the face came back
    (later,) = judge([Click(1520 * MS, TARGET)], t, xy, RULES)
    assert later.accepted and later.fixation.t0_ns > 1380 * MS
    # A few lost frames are no hole.
    gaps = (T < 1200 * MS) | (T > 1300 * MS)
    (v,) = judge([Click(1340 * MS, TARGET)], T[gaps], XY[gaps], RULES)
    assert v.accepted and v.fixation.t0_ns < 1200 * MS


def test_double_clicks_and_drags_are_refused():
    double = [Click(1400 * MS, TARGET), Click(1550 * MS, TARGET)]
    single = Click(2500 * MS, TARGET)
    v = judge([*double, single], T, XY, RULES)
    assert [x.reason for x in v] == ["burst", "burst", "ok"]
    held = Click(1400 * MS, TARGET, release_t_ns=2200 * MS, release_xy_px=TARGET)
    moved = Click(1400 * MS, TARGET, release_t_ns=1500 * MS, release_xy_px=(1300.0, 700.0))
    tap = Click(1400 * MS, TARGET, release_t_ns=1480 * MS, release_xy_px=(1203.0, 701.0))
    assert [is_drag(c, RULES) for c in (held, moved, tap)] == [True, True, False]
    assert judge([moved], T, XY, RULES)[0].reason == "drag"


def test_burst_mask_keeps_the_callers_order():
    m = burst_mask([5000 * MS, 1000 * MS, 1300 * MS, 9000 * MS], RULES)
    assert m.tolist() == [False, True, True, False]


def test_rules_must_be_positive():
    with pytest.raises(ValueError, match="radius_px"):
        ClickRules(radius_px=0)


def _grown_one_sample_at_a_time(xy, end, radius_px, floor):
    """stable_run_start's definition: grow the stretch back from `end` while the samples
    stay within `radius_px` of its median (a NaN median fails no test)."""
    start = end
    while start > floor:
        part = xy[start - 1 : end + 1]
        if np.max(np.hypot(*(part - np.median(part, axis=0)).T)) > radius_px:
            break
        start -= 1
    return start


def test_stretches_judged_at_once_are_the_stretches_grown_one_sample_at_a_time():
    # Random walks of every scale, with ties (whole pixels), lost samples or lost axes (NaN;
    # near the end, where the short stretches are), stretches cut short by a floor,
    # and radii on both sides of the walk's steps.
    rng = np.random.default_rng(7)
    outcomes = set()
    for _ in range(3000):
        n = int(rng.integers(1, 70))
        xy = np.cumsum(rng.normal(0, rng.choice([2.0, 10.0, 40.0]), (n, 2)), axis=0)
        if rng.random() < 0.3:
            xy = np.round(xy)
        end = int(rng.integers(0, n))
        floor = int(rng.integers(0, end + 1))
        if rng.random() < 0.1:
            xy[rng.integers(0, n)] = np.nan
        for axis in (0, 1):  # x of one sample, y of another: each axis's median lost
            if rng.random() < 0.2:
                xy[max(0, end - int(rng.integers(0, 3))), axis] = np.nan
        radius = float(rng.choice([5.0, 20.0, 50.0, 100.0]))
        got = stable_run_start(xy, end, radius, floor)
        assert got == _grown_one_sample_at_a_time(xy, end, radius, floor), (n, end, floor)
        outcomes.add("floor" if got == floor else "end" if got == end else "between")
    assert outcomes == {"floor", "end", "between"}
