"""The closed loop: what each kind of label may move, every gate, the bounds, the alarm, and
the offset the fast path reads."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from gazeloop.calibration.drift.history import History
from gazeloop.calibration.drift.loop import DriftLoop, LoopConfig
from gazeloop.calibration.labels import LineObservation, OracleLabel, PointObservation

ASPECT = 16 / 9
K = np.array([1.0, 1.0 / ASPECT])  # normalised → screen widths
CAMERA = (0.5, -0.04)  # a bezel webcam, normalised


def wlen(v) -> float:
    """Length in screen widths of a normalised vector."""
    return float(np.hypot(*(np.asarray(v) * K)))


class Rig:
    """A loop on a history the test writes as the fast path would: raw + offset in force."""

    def __init__(self, offset=(0.0, 0.0), **cfg) -> None:
        self.history = History(max_age_s=10_000.0)
        self.loop = DriftLoop(LoopConfig(aspect=ASPECT, **cfg), self.history, offset)
        self.i = 0

    def frame(self, raw_xy) -> int:
        self.i += 1
        t = self.i * 1_000_000_000
        self.history.append(t, np.asarray(raw_xy, dtype=np.float64) + self.loop.offset)
        return t

    def point(self, raw_xy, obs_xy, **kw):
        t = self.frame(raw_xy)
        obs = PointObservation(xy=tuple(obs_xy))
        return self.loop.update(label(t, obs, **kw))

    def line(self, raw_xy, through_xy, origin=CAMERA, **kw):
        t = self.frame(raw_xy)
        d = np.asarray(through_xy) - np.asarray(origin)
        obs = LineObservation(origin=origin, direction=(d[0], d[1]))
        return self.loop.update(label(t, obs, **kw))


_ids = iter(range(10**9))


def label(t, obs, confidence=1.0, sid=None, **kw) -> OracleLabel:
    return OracleLabel(
        t_ns=t,
        snapshot_id=sid or f"s{next(_ids)}",
        oracle="test",
        observation=obs,
        confidence=confidence,
        **kw,
    )


def dist_to_line(p, origin, through) -> float:
    """Physical (screen-width) distance from p to the line, all normalised inputs."""
    o, d = np.asarray(origin) * K, (np.asarray(through) - np.asarray(origin)) * K
    d = d / np.hypot(*d)
    e = np.asarray(p) * K - o
    return abs(e[0] * d[1] - e[1] * d[0])


# --- what a label may move ---------------------------------------------------------------


def test_point_label_moves_the_offset_toward_the_observation():
    rig = Rig(prior_weight=0.0)
    dec = rig.point((0.5, 0.5), (0.55, 0.47))
    assert dec.accepted, dec.why
    np.testing.assert_allclose(dec.residual, [0.05, -0.03], atol=1e-12)
    # Along the residual, a good part of the way (young change hypotheses hold back).
    along = float(np.dot(dec.step * K, dec.residual * K)) / wlen(dec.residual) ** 2
    assert 0.3 < along <= 1.0 + 1e-9
    sq, rq = dec.step * K, dec.residual * K
    assert abs(sq[0] * rq[1] - sq[1] * rq[0]) < 1e-9 * wlen(dec.residual)  # parallel
    assert dec.offset is rig.loop.offset


def test_line_label_moves_only_across_the_line():
    rig = Rig(prior_weight=0.0)
    raw, target = np.array([0.56, 0.57]), np.array([0.6, 0.55])
    before = dist_to_line(raw, CAMERA, target)
    dec = rig.line(raw, target)
    assert dec.accepted, dec.why
    d = (target - np.asarray(CAMERA)) * K
    d /= np.hypot(*d)
    step_q = dec.step * K
    assert np.hypot(*step_q) > 0.5 * before  # it did move, most of the way
    assert abs(float(np.dot(step_q, d))) < 1e-9  # and not at all along the line
    # The residual reported is the perpendicular one: the move onto the line.
    assert abs(float(np.dot(dec.residual * K, d))) < 1e-12
    assert wlen(dec.residual) == pytest.approx(before, rel=1e-9)
    assert dist_to_line(raw + dec.offset, CAMERA, target) < 0.5 * before


def test_parallel_lines_never_move_along_themselves():
    rig = Rig(prior_weight=0.0)
    # Targets on one ray from the camera: every label is the same line.
    d = np.array([0.3, 0.8])
    for s in (0.4, 0.7, 0.5, 0.9, 0.6, 0.8):
        through = np.asarray(CAMERA) + s * d
        rig.line(through + [0.04, 0.0], through)
    dq = d * K / np.hypot(*(d * K))
    assert abs(float(np.dot(rig.loop.offset * K, dq))) < 1e-9
    assert wlen(rig.loop.offset) > 0.01  # while the perpendicular part was corrected


def test_two_non_parallel_lines_converge_to_the_full_correction():
    true_c = np.array([0.03, -0.025])
    rig = Rig()
    targets = [np.array([0.2, 0.7]), np.array([0.8, 0.3])]
    first = None
    for i in range(30):
        tgt = targets[i % 2]
        dec = rig.line(tgt - true_c, tgt)
        assert dec.accepted, dec.why
        if first is None:
            first = dec
    # After one line, nothing moved along it; after both kinds, all of C is known.
    d0 = (targets[0] - np.asarray(CAMERA)) * K
    assert abs(float(np.dot(first.step * K, d0 / np.hypot(*d0)))) < 1e-9
    assert wlen(rig.loop.offset - true_c) < 0.002  # ≈ 3.5 px on a 1728 px screen


# --- gates -------------------------------------------------------------------------------


def test_low_confidence_is_rejected_and_moves_nothing():
    rig = Rig(min_confidence=0.5)
    dec = rig.point((0.5, 0.5), (0.6, 0.5), confidence=0.4)
    assert not dec.accepted and "confidence 0.40 < 0.50" in dec.why
    assert np.all(dec.step == 0) and np.all(rig.loop.offset == 0)
    assert rig.point((0.5, 0.5), (0.6, 0.5), confidence=0.5).accepted


def test_no_observation_is_rejected_with_its_reason():
    rig = Rig()
    t = rig.frame((0.5, 0.5))
    dec = rig.loop.update(label(t, None, in_frame=False))
    assert not dec.accepted and dec.why == "no observation (target outside the frame)"
    assert np.isnan(dec.residual).all()


def test_no_fast_estimate_at_the_snapshot_time():
    rig = Rig(max_gap_ms=100.0)
    obs = PointObservation(xy=(0.5, 0.5))
    assert rig.loop.update(label(5, obs)).why == "no fast estimate at t"  # empty history
    rig.history.append(1_000_000_000, np.array([0.5, 0.5]))
    rig.history.append(2_000_000_000, np.array([0.5, 0.5]))
    # Between two samples a second apart: a blink, not something to interpolate across.
    dec = rig.loop.update(label(1_500_000_000, obs))
    assert not dec.accepted and dec.why == "no fast estimate at t"
    rig.history.append(1_550_000_000, np.array([0.5, 0.5]))
    assert not rig.loop.update(label(1_500_000_000, obs)).accepted  # one side only
    rig.history.append(1_450_000_000, np.array([0.5, 0.5]))
    assert rig.loop.update(label(1_500_000_000, obs)).accepted  # 50 ms either side


def test_stale_label_is_rejected():
    rig = Rig(max_label_age_s=10.0)
    t_old = rig.frame((0.5, 0.5))
    rig.history.append(t_old + 11_000_000_000, np.array([0.5, 0.5]))
    dec = rig.loop.update(label(t_old, PointObservation(xy=(0.52, 0.5))))
    assert not dec.accepted and dec.why.startswith("stale: 11.0 s")


def test_duplicate_snapshot_is_rejected():
    rig = Rig()
    assert rig.point((0.5, 0.5), (0.51, 0.5), sid="same").accepted
    dec = rig.point((0.5, 0.5), (0.51, 0.5), sid="same")
    assert not dec.accepted and "duplicate" in dec.why


def test_line_labels_without_a_camera_and_broken_lines_are_rejected():
    rig = Rig(accept_lines=False)
    dec = rig.line((0.5, 0.5), (0.6, 0.6))
    assert not dec.accepted and "takes no lines" in dec.why
    rig = Rig()
    t = rig.frame((0.5, 0.5))
    # model_construct skips validation, as a buggy producer might.
    bad = LineObservation.model_construct(origin=(math.nan, 0.0), direction=(0.0, 1.0))
    dec = rig.loop.update(label(t, bad))
    assert not dec.accepted and "origin" in dec.why
    t = rig.frame((0.5, 0.5))
    behind = LineObservation(origin=(0.5, 0.8), direction=(0.0, 1.0))  # points away
    dec = rig.loop.update(label(t, behind))
    assert not dec.accepted and "behind the ray" in dec.why


def test_garbage_never_raises():
    rig = Rig()
    t = rig.frame((0.5, 0.5))
    assert "not an OracleLabel" in rig.loop.update("junk").why  # type: ignore[arg-type]
    weird = OracleLabel.model_construct(
        t_ns=t, snapshot_id="w", oracle="x", observation="junk", confidence=1.0, in_frame=None
    )
    assert not rig.loop.update(weird).accepted
    nan_conf = OracleLabel.model_construct(
        t_ns=t, snapshot_id="n", oracle="x", observation=None, confidence=math.nan
    )
    assert not rig.loop.update(nan_conf).accepted


def steady(rig: Rig, rng, n: int, c=(0.0, 0.0), noise=0.01):
    """n point labels at random places saying the offset should be c (± noise, widths)."""
    out = []
    for _ in range(n):
        truth = rng.uniform(0.1, 0.9, 2)
        raw = truth - np.asarray(c)
        out.append(rig.point(raw, truth + rng.normal(0, noise, 2) / K))
    return out


def test_an_isolated_outlier_is_rejected_and_moves_nothing():
    rng = np.random.default_rng(1)
    rig = Rig()
    steady(rig, rng, 20)
    before = rig.loop.offset
    dec = rig.point((0.3, 0.6), (0.7, 0.2))  # 0.45 widths away: 30σ
    assert not dec.accepted and dec.why.startswith("outlier:")
    assert rig.loop.offset is before and np.all(dec.step == 0)
    assert all(d.accepted for d in steady(rig, rng, 5))
    assert wlen(rig.loop.offset) < 0.01


def test_a_persistent_drift_beyond_the_gate_is_accepted_after_a_few_labels():
    rng = np.random.default_rng(2)
    rig = Rig()
    steady(rig, rng, 20)
    drift = np.array([0.08, 0.05])  # ≈ 0.09 widths: 9σ of this oracle's noise
    decs = steady(rig, rng, 20, c=drift)
    assert not decs[0].accepted and decs[0].why.startswith("outlier:")
    first_ok = next(i for i, d in enumerate(decs) if d.accepted)
    assert first_ok <= 4
    assert all(d.accepted for d in decs[first_ok + 2 :])
    assert wlen(rig.loop.offset - drift) < 0.01


def test_a_step_starts_a_new_run_at_its_onset_and_is_followed_at_once():
    rng = np.random.default_rng(11)
    rig = Rig()
    steady(rig, rng, 30)
    assert rig.loop.changes == 0 and rig.loop.run_labels == 30
    steady(rig, rng, 10, c=(0.05, 0.0))
    assert rig.loop.changes == 1
    assert 10 <= rig.loop.run_labels <= 12  # the run starts at (or a label before) the step
    # The target is the fit of the labels since the onset, not a creep toward it.
    assert wlen(rig.loop.estimate - np.array([0.05, 0.0])) < 0.008
    assert wlen(rig.loop.offset - rig.loop.estimate) < 1e-9


def test_a_change_the_later_labels_do_not_bear_out_is_undone():
    rng = np.random.default_rng(0)
    rig = Rig()
    steady(rig, rng, 30)
    steady(rig, rng, 6, c=(0.04, 0.0))  # a short excursion: declared a change...
    assert rig.loop.changes == 1 and wlen(rig.loop.offset) > 0.02
    steady(rig, rng, 30)  # ...which 30 labels back at zero undo
    assert rig.loop.merges == 1 and rig.loop.run_labels >= 60
    assert wlen(rig.loop.offset) < 0.003


# --- bounds ------------------------------------------------------------------------------


def test_steps_and_total_are_bounded_and_a_pinned_offset_alarms():
    rig = Rig(max_step=0.02, max_total=0.1, alarm_pinned_labels=3)
    rng = np.random.default_rng(3)
    drift = np.array([0.25, 0.1])  # 0.25 widths: beyond max_total
    decs = steady(rig, rng, 30, c=drift, noise=0.002)
    steps = [wlen(d.step) for d in decs]
    assert max(steps) <= 0.02 + 1e-12
    assert max(wlen(d.offset) for d in decs) <= 0.1 + 1e-12
    assert sum(s > 0.0199 for s in steps) >= 3  # the clip was active, not idle
    assert wlen(rig.loop.offset) == pytest.approx(0.1, rel=1e-9)
    # Pinned toward the drift (the best bounded answer), and the alarm says why.
    cosine = np.dot(rig.loop.offset * K, drift * K) / (wlen(rig.loop.offset) * wlen(drift))
    assert cosine > 0.99
    assert decs[-1].alarm and "bound" in decs[-1].alarm_reason
    assert rig.loop.alarm and "recalibrate" in rig.loop.alarm_reason


def test_alarm_when_accepted_residuals_stay_large_and_not_when_they_are_small():
    rng = np.random.default_rng(4)
    quiet = Rig(alarm_labels=8, alarm_residual=0.12)
    assert not any(d.alarm for d in steady(quiet, rng, 40, noise=0.02))

    # An oracle that scatters 0.2 widths per axis: no offset can absorb it.
    loud = Rig(alarm_labels=8, alarm_residual=0.12)
    decs = steady(loud, rng, 30, noise=0.2)
    assert sum(d.accepted for d in decs) >= 20
    assert decs[-1].alarm and "median residual" in decs[-1].alarm_reason


def test_alarm_when_labels_are_rejected_in_a_row():
    rng = np.random.default_rng(5)
    rig = Rig(alarm_rejected_labels=6)
    steady(rig, rng, 20)
    decs = []
    for i in range(6):  # far off, each in another direction: junk, not a drift
        ang = 2 * math.pi * i / 6 + 0.3
        truth = np.array([0.5, 0.5])
        decs.append(rig.point(truth, truth + 0.4 * np.array([math.cos(ang), math.sin(ang)])))
    assert not any(d.accepted for d in decs)
    assert not decs[-2].alarm and decs[-1].alarm
    assert "6 labels in a row" in decs[-1].alarm_reason


# --- the offset the fast path reads -------------------------------------------------------


def test_offset_is_replaced_never_mutated():
    rig = Rig(offset=(0.01, 0.02))
    o0 = rig.loop.offset
    np.testing.assert_array_equal(o0, [0.01, 0.02])
    with pytest.raises(ValueError):
        o0[0] = 1.0  # read-only: a reader cannot corrupt it either
    dec = rig.point((0.5, 0.5), (0.55, 0.5))
    assert dec.accepted
    assert rig.loop.offset is not o0 and dec.offset is rig.loop.offset
    np.testing.assert_array_equal(o0, [0.01, 0.02])  # the old array is untouched
    rejected = rig.point((0.5, 0.5), (0.55, 0.5), confidence=0.0)
    assert rig.loop.offset is dec.offset and rejected.offset is dec.offset


@pytest.mark.slow
def test_a_reader_thread_only_ever_sees_published_offsets():
    rig = Rig()
    rng = np.random.default_rng(6)
    published = {tuple(rig.loop.offset)}
    seen: set[tuple[float, float]] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            o = rig.loop.offset
            seen.add((float(o[0]), float(o[1])))

    th = threading.Thread(target=reader)
    th.start()
    try:
        for d in steady(rig, rng, 60, c=(0.03, 0.0), noise=0.02):
            published.add(tuple(d.offset))
    finally:
        stop.set()
        th.join()
    assert len(published) > 20
    assert seen and seen <= published


def test_a_late_label_is_read_against_the_offset_in_force_at_its_time():
    """A snapshot taken before the last correction carries the old offset in its estimate;
    reading it against the new one would double-count the correction and overshoot."""
    rig = Rig(prior_weight=0.0)
    raw, truth = np.array([0.5, 0.5]), np.array([0.56, 0.5])
    t0 = rig.frame(raw)
    first = rig.loop.update(label(t0, PointObservation(xy=tuple(truth))))
    assert first.accepted and first.offset[0] > 0.02
    for _ in range(12):  # the same old snapshot, answered again and again, late
        rig.frame(raw)  # frames after each correction carry the new offset
        late = rig.loop.update(label(t0, PointObservation(xy=tuple(truth))))
        assert late.accepted
        np.testing.assert_allclose(late.residual, first.residual)  # same frame, same estimate
        assert rig.loop.offset[0] <= 0.06 + 1e-9  # never beyond what the labels say
    assert rig.loop.offset[0] > 0.055


def test_reset_forgets_and_restarts_from_the_given_offset():
    rng = np.random.default_rng(7)
    rig = Rig()
    steady(rig, rng, 10, c=(0.05, 0.0))
    rig.loop.reset((0.0, 0.01))
    np.testing.assert_array_equal(rig.loop.offset, [0.0, 0.01])
    assert rig.loop.n_labels == 0 and not rig.loop.alarm
    with pytest.raises(ValueError):
        rig.loop.reset((math.nan, 0.0))


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        LoopConfig(alpha=0.0)
    with pytest.raises(ValueError):
        LoopConfig(max_step=-1.0)
    with pytest.raises(ValueError):
        LoopConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        DriftLoop(LoopConfig(), None)


# -- a profile from an earlier sitting ------------------------------------------------------


def test_a_profile_from_an_earlier_sitting_gives_way_to_a_few_labels():
    """Eight labels that say the offset is 0.05 of the width (± 0.03): a loop that trusts a
    calibration just made (80 labels' worth) barely moves, one that knows the profile is
    from an earlier sitting ((0.075 / 0.04)² = 3.5 labels' worth) takes most of it:
    about 8 / (8 + 3.5)."""
    moved = {}
    for new_sitting in (False, True):
        rig = Rig()
        rig.loop.reset((0.0, 0.0), new_sitting=new_sitting)
        rng = np.random.default_rng(3)
        steady(rig, rng, 8, c=(0.05, 0.0), noise=0.03)
        moved[new_sitting] = rig.loop.offset[0] / 0.05
    assert rig.loop.sitting_prior_weight == pytest.approx((0.075 / 0.04) ** 2)
    assert moved[False] < 0.15
    assert 0.5 < moved[True] < 0.85


def test_a_sitting_prior_given_in_the_config_wins_and_the_constructor_takes_the_flag():
    h = History(max_age_s=10.0)
    loop = DriftLoop(LoopConfig(aspect=ASPECT, sitting_prior_weight=12.0), h, new_sitting=True)
    assert loop.sitting_prior_weight == 12.0
    assert np.allclose(loop._runs[0].info, 12.0 * np.eye(2))


def test_a_frame_stored_after_an_offset_change_is_read_with_the_offset_it_carries():
    """The loop took the offset a frame carries from when it set a new one: a frame mapped
    with the old offset (the mapper takes the new one after the update returns) but stored
    after it was read as carrying the new one, and its label's drift was off by the whole
    step. A history that keeps each frame's offset beside its point (as `Live` stores it)
    is read exactly."""
    from gazeloop.calibration.labels import OracleLabel, PointObservation

    period = 16_666_667
    h = History()
    loop = DriftLoop(LoopConfig(aspect=16 / 9, prior_weight=1.0), h, offset=(0.0, 0.0))
    gaze, truth = np.array([0.5, 0.5]), np.array([0.55, 0.5])  # a drift of +0.05 in x
    carried = loop.offset
    t, n = 0, 0

    def frame(store=True):
        nonlocal t
        t += period
        xy = gaze + carried  # what ProfileMapper gives: the mapping's point plus the offset
        if store:
            h.append(t, xy, carried)
        return t, xy

    def label(at):
        nonlocal n
        n += 1
        obs = PointObservation(xy=tuple(truth))
        return loop.update(
            OracleLabel(t_ns=at, snapshot_id=f"s{n}", oracle="clicks", observation=obs)
        )

    for _ in range(30):
        frame()
    for _ in range(6):
        label(t)
        carried = loop.offset
        frame()
    tk, xyk = frame(store=False)  # mapped with the offset of now...
    moved = label(t - period).step  # ...a label moves it...
    assert np.hypot(*moved) > 1e-4
    h.append(tk, xyk, carried)  # ...and the frame is stored after, with the old one
    carried = loop.offset
    label(tk)
    g = loop._samples[-1].g / loop._k
    assert np.allclose(g, [0.05, 0.0], atol=1e-9), g
