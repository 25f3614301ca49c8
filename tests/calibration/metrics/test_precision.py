"""Precision measures (RMS-S2S and STD, Holmqvist et al. 2012) on hand-computable points."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gazeloop.calibration.metrics.precision import (
    angles_from_eye,
    deg_per_mm,
    precision_report,
    rms_s2s,
    std_xy,
)

NAN = [math.nan, math.nan]


def test_rms_s2s_by_hand():
    # steps of length 5 and 0: sqrt((25 + 0) / 2)
    assert rms_s2s([[0, 0], [3, 4], [3, 4]]) == pytest.approx(math.sqrt(12.5))
    # a constant step of 1 in x: exactly 1, whatever the number of samples
    assert rms_s2s([[i, 7] for i in range(10)]) == pytest.approx(1.0)


def test_std_xy_is_rms_distance_from_centroid():
    square = [[0, 0], [2, 0], [0, 2], [2, 2]]  # var_x = var_y = 1 (ddof=0)
    assert std_xy(square) == pytest.approx(math.sqrt(2))
    # every corner is sqrt(2) from the centre (1, 1): same number, second definition
    assert std_xy(square) == pytest.approx(np.sqrt(np.mean(np.sum((np.array(square) - 1) ** 2, 1))))
    assert std_xy([[5, 5]]) == 0.0


def test_order_matters_for_s2s_not_for_std():
    zigzag = [[0, 0], [1, 0], [0, 0], [1, 0]]  # steps 1, 1, 1
    sorted_ = [[0, 0], [0, 0], [1, 0], [1, 0]]  # steps 0, 1, 0
    assert rms_s2s(zigzag) == pytest.approx(1.0)
    assert rms_s2s(sorted_) == pytest.approx(math.sqrt(1 / 3))
    assert std_xy(zigzag) == std_xy(sorted_) == pytest.approx(0.5)


def test_timestamps_order_the_samples():
    t = [3, 0, 2, 1]
    points = [[3, 0], [0, 0], [2, 0], [1, 0]]  # in time order: 0, 1, 2, 3 -> steps of 1
    assert rms_s2s(points, t) == pytest.approx(1.0)
    assert rms_s2s(points) == pytest.approx(math.sqrt((9 + 4 + 1) / 3))  # file order


def test_nan_breaks_the_chain_instead_of_joining_across_it():
    points = [[0, 0], [1, 0], NAN, [5, 0], [6, 0]]
    # pairs (0->1) and (5->6) only; joining 1->5 would give sqrt((1 + 16 + 1) / 3)
    assert rms_s2s(points) == pytest.approx(1.0)
    assert std_xy(points) == pytest.approx(np.std([0, 1, 5, 6]))


def test_max_gap_skips_pairs_across_dropped_frames():
    t = [0, 1, 2, 10, 11]
    points = [[0, 0], [1, 0], [2, 0], [12, 0], [13, 0]]
    assert rms_s2s(points, t) == pytest.approx(math.sqrt((1 + 1 + 100 + 1) / 4))
    assert rms_s2s(points, t, max_gap=1.5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="timestamps"):
        rms_s2s(points, max_gap=1.5)


def test_undefined_cases_are_nan_and_bad_shapes_raise():
    assert math.isnan(rms_s2s([[1, 1]]))
    assert math.isnan(rms_s2s(np.empty((0, 2))))
    assert math.isnan(rms_s2s([[0, 0], NAN]))
    assert math.isnan(std_xy([NAN]))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        rms_s2s([1, 2, 3])
    with pytest.raises(ValueError, match="timestamps"):
        rms_s2s([[0, 0], [1, 1]], t=[0])


def test_white_noise_s2s_is_sqrt2_times_std_and_smoothing_lowers_s2s_more():
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 1.0, size=(20000, 2))  # sigma 1 per axis
    assert std_xy(noise) == pytest.approx(math.sqrt(2), rel=0.02)
    assert rms_s2s(noise) == pytest.approx(2.0, rel=0.02)  # sqrt(2 * 2 * sigma^2)
    # An exponential smoother (alpha 0.2) keeps the centroid but removes fast changes.
    smooth = np.empty_like(noise)
    smooth[0] = noise[0]
    for i in range(1, len(noise)):
        smooth[i] = smooth[i - 1] + 0.2 * (noise[i] - smooth[i - 1])
    s2s_ratio = rms_s2s(smooth) / rms_s2s(noise)
    std_ratio = std_xy(smooth) / std_xy(noise)
    # y[i] = a y[i-1] + (1-a) x[i] with a = 0.8: var(y) = (1-a)/(1+a) var(x), so STD falls
    # to sqrt(0.2/1.8) = 1/3; y[i] - y[i-1] = (1-a)(x[i] - y[i-1]), so RMS-S2S falls to
    # (1-a)/sqrt(1+a) = 0.149 of the raw value.
    assert std_ratio == pytest.approx(math.sqrt(0.2 / 1.8), rel=0.05)
    assert s2s_ratio == pytest.approx(0.2 / math.sqrt(1.8), rel=0.05)


def test_deg_per_mm_and_angles_from_eye():
    # 1 rad = 57.2958 deg, so 1 mm at 572.958 mm subtends 0.1 deg (small angle)
    assert deg_per_mm(572.958) == pytest.approx(0.1, rel=1e-5)
    to_deg = angles_from_eye((100.0, 50.0), 500.0)
    got = to_deg(np.array([[100.0, 50.0], [600.0, 50.0], [100.0, -450.0]]))
    np.testing.assert_allclose(got, [[0, 0], [45, 0], [0, -45]], atol=1e-12)
    with pytest.raises(ValueError):
        deg_per_mm(0)


def test_report_converts_normalised_points_per_axis():
    w, h = 2560, 1440
    mm_per_px = 597 / 2560
    # Target 1: one step of (3, 4) px = 5 px. Target 2: steps of 1 px in x.
    a = np.array([[0.5, 0.5], [0.5 + 3 / w, 0.5 + 4 / h]])
    b = np.array([[0.1 + i / w, 0.2] for i in range(3)])
    rep = precision_report({2: b, 1: a}, px_per_norm=(w, h), mm_per_px=mm_per_px, to_deg=0.1)
    assert rep["units"] == ["norm", "px", "mm", "deg"]
    assert "Holmqvist" in rep["definitions"]
    assert rep["filtered"] is None
    t1 = rep["raw"]["per_target"][1]
    assert t1["n"] == 2
    assert t1["rms_s2s"]["px"] == pytest.approx(5.0)
    assert t1["rms_s2s"]["norm"] == pytest.approx(math.hypot(3 / w, 4 / h))
    assert t1["rms_s2s"]["mm"] == pytest.approx(5.0 * mm_per_px)
    assert t1["rms_s2s"]["deg"] == pytest.approx(0.5 * mm_per_px)
    assert t1["std"]["px"] == pytest.approx(2.5)  # two points 5 apart: 2.5 from the centroid
    t2 = rep["raw"]["per_target"][2]
    assert t2["rms_s2s"]["px"] == pytest.approx(1.0)
    assert t2["std"]["px"] == pytest.approx(math.sqrt(2 / 3))  # var of 0, 1, 2
    mean = rep["raw"]["mean"]
    assert mean["rms_s2s"]["px"] == pytest.approx(3.0)  # (5 + 1) / 2, targets weigh equally
    assert mean["std"]["mm"] == pytest.approx((2.5 + math.sqrt(2 / 3)) / 2 * mm_per_px)
    assert mean["n_targets"] == 2


def test_report_raw_and_filtered_with_callable_geometry():
    raw = {0: np.array([[0.0, 0.0], [500.0, 0.0], [0.0, 0.0]])}
    filt = {0: np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])}
    rep = precision_report(
        raw,
        filtered_by_target=filt,
        mm_per_px=1.0,
        to_deg=angles_from_eye((0.0, 0.0), 500.0),
    )
    assert rep["units"] == ["px", "mm", "deg"]
    assert rep["raw"]["per_target"][0]["rms_s2s"]["deg"] == pytest.approx(45.0)
    assert rep["raw"]["per_target"][0]["rms_s2s"]["px"] == pytest.approx(500.0)
    assert rep["filtered"]["per_target"][0]["rms_s2s"]["deg"] == 0.0
    assert rep["filtered"]["mean"]["std"]["px"] == 0.0


def test_report_leaves_undefined_targets_out_of_the_mean():
    rep = precision_report({0: [[0, 0], [0, 2]], 1: [[1, 1]], 2: [NAN, NAN]})
    assert rep["units"] == ["px"]
    assert math.isnan(rep["raw"]["per_target"][1]["rms_s2s"]["px"])
    assert rep["raw"]["per_target"][1]["std"]["px"] == 0.0
    assert rep["raw"]["per_target"][2]["n"] == 0
    # s2s: only target 0 has a pair; std: targets 0 (1.0) and 1 (0.0)
    assert rep["raw"]["mean"]["rms_s2s"]["px"] == pytest.approx(2.0)
    assert rep["raw"]["mean"]["std"]["px"] == pytest.approx(0.5)
    assert rep["raw"]["mean"]["n_targets"] == 2


def test_report_uses_timestamps_and_max_gap():
    pts = {0: [[0, 0], [1, 0], [2, 0], [12, 0]]}
    rep = precision_report(pts, t_by_target={0: [0, 10, 20, 100]}, max_gap=15)
    assert rep["raw"]["per_target"][0]["rms_s2s"]["px"] == pytest.approx(1.0)


def test_report_rejects_inconsistent_input():
    pts = {0: [[0, 0], [1, 1]]}
    with pytest.raises(ValueError, match="mm_per_px"):
        precision_report(pts, to_deg=0.1)
    with pytest.raises(ValueError, match="differ"):
        precision_report(pts, filtered_by_target={1: [[0, 0], [1, 1]]})
    with pytest.raises(ValueError, match="length"):
        precision_report(pts, filtered_by_target={0: [[0, 0]]})
    with pytest.raises(ValueError, match="t_by_target"):
        precision_report(pts, t_by_target={})
    with pytest.raises(ValueError, match="px_per_norm"):
        precision_report(pts, px_per_norm=(0, 1440))


# --- lag on a target switch -----------------------------------------------------------------


def _steps(n_per=20, targets=((0.2, 0.2), (0.8, 0.2), (0.2, 0.8)), ramp=(0.3, 0.8)):
    """Fixations on `targets`, each change reached through the fractions `ramp` (a saccade
    spread over frames), and each frame's label."""
    pts, labels = [], []
    for k, xy in enumerate(targets):
        for i in range(n_per):
            if k > 0 and i < len(ramp):
                prev = np.asarray(targets[k - 1])
                pts.append(prev + ramp[i] * (np.asarray(xy) - prev))
            else:
                pts.append(xy)
            labels.append(k)
    return np.array(pts, dtype=np.float64), np.array(labels)


def _delayed(p, d):
    return np.concatenate([np.repeat(p[:1], d, axis=0), p[:-d]]) if d else p.copy()


@pytest.mark.parametrize("d", [0, 1, 3])
def test_a_pure_delay_is_recovered_exactly(d):
    from gazeloop.calibration.metrics.precision import lag_summary, switch_lags

    raw, labels = _steps()
    lags = switch_lags(raw, _delayed(raw, d), labels)
    assert [x["index"] for x in lags] == [20, 40]
    assert [x["lag_frames"] for x in lags] == [pytest.approx(d, abs=1e-12)] * 2
    s = lag_summary(lags)
    assert s["median_frames"] == pytest.approx(d) and s["max_frames"] == pytest.approx(d)
    assert (s["switches"], s["measured"], s["not_reached"]) == (2, 2, 0)


def test_a_pure_delay_in_time_and_on_a_noisy_step():
    from gazeloop.calibration.metrics.precision import switch_lags

    raw, labels = _steps(ramp=())  # an instantaneous step
    t = np.arange(len(raw)) / 60.0 + 5.0
    lags = switch_lags(raw, _delayed(raw, 3), labels, t)
    assert [x["lag_frames"] for x in lags] == [pytest.approx(3)] * 2
    assert [x["lag"] for x in lags] == [pytest.approx(3 / 60)] * 2
    # noise far below the jump leaves the whole-frame delay within a fraction of a frame
    rng = np.random.default_rng(0)
    noisy = raw + rng.normal(0, 0.005, raw.shape)
    lags = switch_lags(noisy, _delayed(noisy, 3), labels)
    assert all(abs(x["lag_frames"] - 3) < 1e-9 for x in lags)  # the same samples, delayed


def test_noise_alone_is_not_a_switch():
    from gazeloop.calibration.metrics.precision import lag_summary, switch_lags

    rng = np.random.default_rng(1)
    raw = 0.5 + rng.normal(0, 0.01, (60, 2))
    labels = np.repeat([0, 1, 2], 20)
    lags = switch_lags(raw, _delayed(raw, 2), labels)
    assert all(x["lag_frames"] is None and "noise" in x["why"] for x in lags)
    s = lag_summary(lags)
    assert (s["measured"], s["median_frames"], s["max_frames"]) == (0, None, None)


def test_a_filter_that_never_gets_half_way_is_counted():
    from gazeloop.calibration.metrics.precision import lag_summary, switch_lags

    raw, labels = _steps(targets=((0.2, 0.2), (0.8, 0.2)), ramp=())
    stuck = np.repeat(raw[:1], len(raw), axis=0)  # the output never moves
    (lag,) = switch_lags(raw, stuck, labels)
    assert lag["lag_frames"] is None and "filtered stream does not reach" in lag["why"]
    assert lag_summary([lag])["not_reached"] == 1


def test_one_euro_lag_grows_as_the_cutoff_falls():
    from gazeloop.calibration.metrics.precision import switch_lags
    from gazeloop.fastpath.filters import OneEuroFilter

    raw, labels = _steps(ramp=())
    t_ns = (np.arange(len(raw)) * 1e9 / 30).astype(np.int64)

    def lag(min_cutoff):
        f = OneEuroFilter(min_cutoff=min_cutoff, beta=0.0)
        out = np.array([f(int(t), p) for t, p in zip(t_ns, raw, strict=True)])
        return switch_lags(raw, out, labels)[0]["lag_frames"]

    assert 0 < lag(4.0) < lag(1.0) < lag(0.25)


def test_lag_input_checks():
    from gazeloop.calibration.metrics.precision import half_crossing, switch_lags

    with pytest.raises(ValueError, match="differ"):
        switch_lags([[0, 0], [1, 1]], [[0, 0]], [0, 1])
    with pytest.raises(ValueError, match="time order"):
        switch_lags([[0, 0], [1, 1]], [[0, 0], [1, 1]], [0, 1], t=[1, 1])
    assert half_crossing([0, 0.2, 0.6, 1.0]) == pytest.approx(1.75)
    assert half_crossing([0, 1.0], t=[10, 20]) == pytest.approx(15)
    assert math.isnan(half_crossing([0, 0.1]))
    # from `start`, interpolated from the sample before it, unless that one is already there
    assert half_crossing([0, 0.2, 1.0], start=2) == pytest.approx(1.375)
    assert half_crossing([0.6, 1.0], start=1) == 1.0
