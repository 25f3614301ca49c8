"""The validation glance's fixation picker on synthetic sample streams (60 Hz, pixels)."""

from __future__ import annotations

import numpy as np
import pytest

from gazeloop.oracle.clicks import GlanceRules, fixation_on_dot

MS = 1_000_000
DOT = (1400.0, 300.0)
RULES = GlanceRules()


def stream(pieces, rng=None, noise=8.0, t0_ms=0.0):
    """[(duration_ms, xy or callable(u) -> xy)] at 60 Hz, with per-frame noise."""
    rng = rng or np.random.default_rng(0)
    t, xy, start = [], [], t0_ms
    for dur, where in pieces:
        for s in np.arange(start, start + dur, 1000 / 60):
            u = (s - start) / dur
            p = np.asarray(where(u) if callable(where) else where, dtype=float)
            t.append(round(s * MS))
            xy.append(p + rng.normal(0, noise, 2))
        start += dur
    return np.array(t, dtype=np.int64), np.array(xy)


def test_the_fixation_after_the_saccade_to_the_dot_is_the_label():
    # Looking elsewhere, the dot appears at 1000 ms, 200 ms later a saccade, then the dot
    # (80 px off: the drift the label measures).
    seen = (DOT[0] - 80, DOT[1] + 20)
    t, xy = stream(
        [(1200, (400, 800)), (50, lambda u: np.add((400, 800), u * np.subtract(seen, (400, 800))))]
        + [(1000, seen)]
    )
    fix, why = fixation_on_dot(t, xy, 1000 * MS, DOT, int(t[-1]), RULES)
    assert why == "ok"
    assert 1250 * MS <= fix.t0_ns <= 1300 * MS  # it starts where the eye landed
    assert fix.t1_ns - fix.t0_ns >= RULES.min_fixation_ms * MS
    assert fix.t1_ns <= 1600 * MS  # and ends as soon as it is long enough
    assert np.hypot(*np.subtract(fix.centre_px, seen)) < 10


def test_a_fixation_already_on_the_dot_counts_from_the_dot_on():
    t, xy = stream([(2000, DOT)])
    fix, why = fixation_on_dot(t, xy, 500 * MS, DOT, int(t[-1]), RULES)
    assert why == "ok" and fix.t0_ns >= 700 * MS


def test_the_eye_still_near_where_it_was_is_not_part_of_the_label():
    """Looking 100 px beside the dot's place when it appears: the eye needs about 200 ms to
    move (here 260 ms). From 80 ms on, the stretch mixed the old place with the dot's (both
    within the radius of their median) and labelled the old place."""
    t, xy = stream([(1260, (DOT[0] + 100, DOT[1])), (1000, DOT)])
    fix, why = fixation_on_dot(t, xy, 1000 * MS, DOT, int(t[-1]), RULES)
    assert why == "ok" and np.hypot(*np.subtract(fix.centre_px, DOT)) < 15


def test_the_fixation_before_the_dot_is_not_the_label():
    # Resting near the dot's place until 50 ms after it appears, then off to elsewhere.
    t, xy = stream([(1050, DOT), (2500, (200, 900))])
    fix, why = fixation_on_dot(t, xy, 1000 * MS, DOT, 1000 * MS + 2500 * MS, RULES)
    assert fix is None and why == "far"


def test_waiting_until_the_timeout_then_no_fixation_for_saccades_only():
    rng = np.random.default_rng(2)
    # The eye jumps every 100 ms between random far-apart places: never a stable stretch.
    places = [tuple(rng.uniform((0, 0), (1920, 1080))) for _ in range(40)]
    t, xy = stream([(100, p) for p in places], rng)
    early = int(1500 * MS)
    assert fixation_on_dot(t[t <= early], xy[t <= early], 0, DOT, early, RULES) == (
        None,
        "waiting",
    )
    fix, why = fixation_on_dot(t, xy, 0, DOT, int(t[-1]), RULES)
    assert fix is None and why == "no_fixation"


def test_a_fixation_that_begins_after_the_timeout_is_too_late():
    t, xy = stream([(2600, (300, 300)), (1000, DOT)])
    # Resting far away all through the timeout (2.5 s), then on the dot: too late.
    fix, why = fixation_on_dot(t, xy, 0, DOT, int(t[-1]), RULES)
    assert fix is None and why == "far"
    # Sweeping back and forth across the screen (pursuit of something moving fast).
    moving = stream([(2550, lambda u: (100 + 1700 * (10 * u % 1), 540)), (1000, DOT)], noise=0.0)
    fix, why = fixation_on_dot(*moving, 0, DOT, int(moving[0][-1]), RULES)
    assert fix is None and why == "no_fixation"


def test_no_samples_after_the_dot():
    t, xy = stream([(900, DOT)])
    assert fixation_on_dot(t, xy, 1000 * MS, DOT, 4000 * MS, RULES) == (None, "no_samples")


def test_a_hole_in_the_samples_breaks_a_stretch():
    t, xy = stream([(3000, DOT)])
    keep = (t < 300 * MS) | (t > 520 * MS)  # 220 ms without a face (gap 150 ms allowed)
    rules = GlanceRules(min_fixation_ms=300)
    fix, why = fixation_on_dot(t[keep], xy[keep], 0, DOT, int(t[-1]), rules)
    assert why == "ok" and fix.t0_ns > 500 * MS


def test_rules_must_be_positive():
    with pytest.raises(ValueError, match="timeout_ms"):
        GlanceRules(timeout_ms=0)
