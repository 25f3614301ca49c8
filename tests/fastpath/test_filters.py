from __future__ import annotations

import csv
from collections.abc import Callable

import numpy as np
import pytest

from gazeloop.fastpath.filters import (
    FILTER_NAMES,
    Filter,
    KalmanFilter,
    NoFilter,
    OneEuroFilter,
    make_filter,
)
from tests.paths import SHARED

ONE_EURO_CSV = SHARED / "data" / "oneeuro" / "groundTruth.csv"

PERIOD_NS = 16_666_667  # 60 Hz
ALL = ("one_euro", "kalman", "none")
SMOOTHING = ("one_euro", "kalman")


def _load_reference() -> dict[str, np.ndarray]:
    if not ONE_EURO_CSV.is_file():
        pytest.skip(f"1€ reference data not found at {ONE_EURO_CSV} (../shared is absent)")
    with ONE_EURO_CSV.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = [[float(v) for v in row] for row in reader]
    assert header == ["timestamp", "signal", "noisy", "filtered"]
    cols = np.array(rows).T
    return dict(zip(header, cols, strict=True))


def _run(
    f: Callable[[int, np.ndarray], np.ndarray], ts_ns: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    """Feed a stream sample by sample; 1-D `xs` becomes a stream of 1-element arrays."""
    return np.array(
        [
            f(int(t), np.atleast_1d(np.asarray(x, dtype=float)))
            for t, x in zip(ts_ns, xs, strict=True)
        ]
    )


def _stream(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A moving, noisy 2-D gaze-like stream at 60 Hz (radians)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.int64) * PERIOD_NS
    s = t * 1e-9
    xy = np.stack([0.2 * np.sin(2.0 * s), 0.1 * np.cos(3.0 * s)], axis=1)
    return t, xy + rng.normal(0.0, 0.02, xy.shape)


# ---- 1€ conformance with the authors' reference data ----


def test_one_euro_matches_reference_with_csv_timestamps() -> None:
    ref = _load_reference()
    assert ref["timestamp"].size == 1200
    f = OneEuroFilter(min_cutoff=1.0, beta=0.1, d_cutoff=1.0)
    ts_ns = np.round(ref["timestamp"] * 1e9).astype(np.int64)
    out = _run(f, ts_ns, ref["noisy"])[:, 0]
    assert out[0] == ref["noisy"][0]  # the first sample passes through
    err = np.abs(out - ref["filtered"])
    # The csv's timestamps have 6 significant digits, so their differences wobble around
    # 1/120 s; that, not the algorithm, is what is left (about 2.4e-5).
    assert err.max() < 1e-4


def test_one_euro_matches_reference_at_exact_120hz() -> None:
    # The reference values were produced at exactly 120 Hz: with exact sample times the
    # only difference left is the csv's 6-digit rounding of the values themselves.
    ref = _load_reference()
    f = OneEuroFilter(min_cutoff=1.0, beta=0.1, d_cutoff=1.0)
    ts_ns = np.round(np.arange(1200) * 1e9 / 120).astype(np.int64)
    out = _run(f, ts_ns, ref["noisy"])[:, 0]
    assert np.abs(out - ref["filtered"]).max() < 1e-5


def test_one_euro_filters_each_axis_independently() -> None:
    ref = _load_reference()
    ts_ns = np.round(np.arange(1200) * 1e9 / 120).astype(np.int64)
    both = _run(OneEuroFilter(1.0, 0.1, 1.0), ts_ns, np.stack([ref["noisy"], ref["signal"]], 1))
    alone = _run(OneEuroFilter(1.0, 0.1, 1.0), ts_ns, ref["signal"])[:, 0]
    np.testing.assert_allclose(both[:, 0], ref["filtered"], atol=1e-5)
    np.testing.assert_allclose(both[:, 1], alone, rtol=0, atol=1e-12)


def test_one_euro_beta_cuts_lag_in_motion() -> None:
    t = np.arange(120, dtype=np.int64) * PERIOD_NS
    ramp = 1.0 * t * 1e-9  # 1 rad/s
    slow = _run(OneEuroFilter(1.0, 0.0), t, ramp)[:, 0]
    fast = _run(OneEuroFilter(1.0, 5.0), t, ramp)[:, 0]
    lag_slow, lag_fast = ramp[-1] - slow[-1], ramp[-1] - fast[-1]
    # beta=0 is a 1 Hz low-pass: its ramp lag tends to 1/(2π·1 Hz) s × 1 rad/s ≈ 0.16 rad.
    assert lag_slow == pytest.approx(1.0 / (2.0 * np.pi), rel=0.01)
    assert 0.0 < lag_fast < 0.2 * lag_slow


# ---- Kalman ----


def test_kalman_reduces_noise_on_a_constant() -> None:
    rng = np.random.default_rng(1)
    n = 900
    t = np.arange(n, dtype=np.int64) * PERIOD_NS
    truth = np.array([0.1, -0.05])
    z = truth + rng.normal(0.0, 0.02, (n, 2))
    y = _run(KalmanFilter(), t, z)
    settled = y[60:]
    # Measured ratio is about 0.55 with the default tuning.
    assert settled.std(axis=0).max() < 0.7 * z[60:].std(axis=0).min()
    np.testing.assert_allclose(settled.mean(axis=0), truth, atol=0.004)
    # Lower process noise smooths more.
    y_smooth = _run(KalmanFilter(process_noise=0.1), t, z)
    assert y_smooth[60:].std(axis=0).max() < settled.std(axis=0).min()


def test_kalman_tracks_a_ramp_with_bounded_lag() -> None:
    rng = np.random.default_rng(2)
    n = 600
    # Irregular frame times (a real camera jitters), so dt must come from the timestamps.
    t = np.cumsum(rng.integers(12_000_000, 22_000_000, n)).astype(np.int64)
    speed = 0.5  # rad/s
    truth = speed * (t - t[0]) * 1e-9
    y = _run(KalmanFilter(), t, truth + rng.normal(0.0, 0.01, n))[:, 0]
    err = y[120:] - truth[120:]
    # A constant-velocity model has no steady-state lag on a ramp; a lagging filter with
    # a 1 Hz cutoff would sit ~0.08 rad behind here.
    assert abs(err.mean()) < 0.003
    assert np.abs(err).max() < 0.03
    # The same ramp without noise is followed almost exactly once converged.
    clean = _run(KalmanFilter(), t, truth)[:, 0]
    assert np.abs(clean[120:] - truth[120:]).max() < 1e-3


def _textbook_kalman(ts_ns: np.ndarray, z: np.ndarray, q: float, r: float, v0: float) -> np.ndarray:
    """Per-axis matrix Kalman filter, written out plainly as a reference."""
    out = np.empty_like(z)
    for axis in range(z.shape[1]):
        x = np.array([z[0, axis], 0.0])
        p = np.diag([r * r, v0 * v0])
        out[0, axis] = x[0]
        for i in range(1, len(ts_ns)):
            dt = (ts_ns[i] - ts_ns[i - 1]) * 1e-9
            f = np.array([[1.0, dt], [0.0, 1.0]])
            qm = q * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]])
            x = f @ x
            p = f @ p @ f.T + qm
            h = np.array([[1.0, 0.0]])
            k = p @ h.T / (h @ p @ h.T + r * r)
            x = x + (k * (z[i, axis] - x[0])).ravel()
            p = (np.eye(2) - k @ h) @ p
            out[i, axis] = x[0]
    return out


def test_kalman_equals_the_textbook_matrix_form() -> None:
    rng = np.random.default_rng(3)
    t = np.cumsum(rng.integers(8_000_000, 40_000_000, 200)).astype(np.int64)
    z = np.cumsum(rng.normal(0.0, 0.01, (200, 3)), axis=0)
    params = {"process_noise": 2.0, "measurement_noise": 0.03, "initial_velocity_std": 0.5}
    ours = _run(KalmanFilter(**params), t, z)
    ref = _textbook_kalman(t, z, q=2.0, r=0.03, v0=0.5)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_kalman_follows_a_step_within_a_few_frames() -> None:
    t = np.arange(60, dtype=np.int64) * PERIOD_NS
    z = np.where(np.arange(60) < 20, 0.0, 0.2)
    y = _run(KalmanFilter(), t, z)[:, 0]
    assert y[19] == 0.0
    assert y[20 + 6] > 0.9 * 0.2  # 100 ms after a saccade-like step
    assert abs(y[-1] - 0.2) < 0.01


# ---- shared semantics, every filter ----


@pytest.mark.parametrize("name", ALL)
def test_satisfies_protocol_and_first_sample_passes_through(name: str) -> None:
    f = make_filter(name)
    assert isinstance(f, Filter)
    x = np.array([0.3, -0.2])
    out = f(5, x)
    np.testing.assert_array_equal(out, x)
    assert out is not x


@pytest.mark.parametrize("name", ALL)
def test_reset_starts_again_from_the_next_sample(name: str) -> None:
    t, xy = _stream(40)
    f = make_filter(name)
    _run(f, t, xy)
    f.reset()
    assert f.last is None
    later_t = t + t[-1] + PERIOD_NS
    fresh = _run(make_filter(name), later_t, xy[::-1])
    again = _run(f, later_t, xy[::-1])
    np.testing.assert_array_equal(again, fresh)
    np.testing.assert_array_equal(again[0], xy[-1])


@pytest.mark.parametrize("name", ALL)
def test_duplicate_time_returns_last_output_and_changes_nothing(name: str) -> None:
    t, xy = _stream(30)
    f = make_filter(name)
    out = _run(f, t[:20], xy[:20])
    dup = f(int(t[19]), np.array([5.0, 5.0]))
    np.testing.assert_array_equal(dup, out[-1])
    rest = _run(f, t[20:], xy[20:])
    np.testing.assert_array_equal(rest, _run(make_filter(name), t, xy)[20:])


@pytest.mark.parametrize("name", ALL)
def test_time_going_backwards_resets(name: str) -> None:
    t, xy = _stream(30)
    f = make_filter(name)
    _run(f, t, xy)
    back_t = t[:10]  # earlier than the last sample: a new stream
    out = _run(f, back_t, xy[10:20])
    np.testing.assert_array_equal(out[0], xy[10])
    np.testing.assert_array_equal(out, _run(make_filter(name), back_t, xy[10:20]))


@pytest.mark.parametrize("name", ALL)
def test_nothing_of_the_old_stream_survives_a_rewind(name: str) -> None:
    t, xy = _stream(30)
    f = make_filter(name)
    _run(f, 2 * t, xy)  # a 30 Hz stream: its period must not leak into the new one
    f.hold()
    g = make_filter(name)
    for h in (f, g):
        h(0, xy[0])  # back in time: a new stream
        h.hold()  # a blink right after its first sample uses the nominal period
    np.testing.assert_array_equal(f(10**9, xy[1]), g(10**9, xy[1]))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_sample_returns_last_output_and_leaves_state_alone(
    name: str, bad: float
) -> None:
    t, xy = _stream(40)
    f = make_filter(name)
    before = _run(f, t[:20], xy[:20])
    # Off the frame grid so the next valid sample's dt is not affected either way.
    skipped = f(int(t[19]) + PERIOD_NS // 2, np.array([bad, 0.1]))
    np.testing.assert_array_equal(skipped, before[-1])
    after = _run(f, t[20:], xy[20:])
    np.testing.assert_array_equal(after, _run(make_filter(name), t, xy)[20:])


@pytest.mark.parametrize("name", ALL)
def test_non_finite_first_sample_gives_nan_and_the_next_passes_through(name: str) -> None:
    f = make_filter(name)
    assert np.isnan(f(0, np.array([np.nan, np.nan]))).all()
    x = np.array([0.1, 0.2])
    np.testing.assert_array_equal(f(PERIOD_NS, x), x)


@pytest.mark.parametrize("name", ALL)
def test_hold_skips_the_blink_gap_in_the_time_base(name: str) -> None:
    t, xy = _stream(60)
    gap_ns = 400_000_000  # a blink
    held = make_filter(name)
    _run(held, t[:30], xy[:30])
    last = held.last
    assert held.hold() is None
    np.testing.assert_array_equal(held.last, last)  # hold keeps the state
    held.hold()  # a blink lasts several frames; repeated holds are harmless
    out_held = _run(held, t[30:] + gap_ns, xy[30:])
    # Same as a stream in which the blink never happened.
    np.testing.assert_array_equal(out_held, _run(make_filter(name), t, xy)[30:])


@pytest.mark.parametrize("name", SMOOTHING)
def test_without_hold_the_gap_changes_the_output(name: str) -> None:
    # Guards the test above: the gap must matter when it is not held.
    t, xy = _stream(60)
    f = make_filter(name)
    _run(f, t[:30], xy[:30])
    out_gap = _run(f, t[30:] + 400_000_000, xy[30:])
    ref = _run(make_filter(name), t, xy)[30:]
    assert np.abs(out_gap[0] - ref[0]).max() > 1e-4


@pytest.mark.parametrize("name", SMOOTHING)
def test_hold_after_a_single_sample_uses_a_nominal_period(name: str) -> None:
    f = make_filter(name)
    f(0, np.array([0.0]))
    f.hold()
    held = f(10**9, np.array([0.1]))
    g = make_filter(name)
    g(0, np.array([0.0]))
    ref = g(PERIOD_NS, np.array([0.1]))  # 1/60 s, the documented default
    np.testing.assert_allclose(held, ref, rtol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_hold_before_any_sample_is_a_no_op(name: str) -> None:
    f = make_filter(name)
    f.hold()
    x = np.array([0.4, 0.5])
    np.testing.assert_array_equal(f(0, x), x)


@pytest.mark.parametrize("name", ALL)
def test_output_is_a_copy_the_caller_may_modify(name: str) -> None:
    t, xy = _stream(20)
    f = make_filter(name)
    for i in range(20):
        out = f(int(t[i]), xy[i])
        out[:] = 99.0
    np.testing.assert_array_equal(f.last, _run(make_filter(name), t, xy)[-1])


@pytest.mark.parametrize("name", ALL)
def test_changing_dimension_mid_stream_is_an_error(name: str) -> None:
    f = make_filter(name)
    f(0, np.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        f(PERIOD_NS, np.zeros(3))
    f.reset()  # a new stream may have another dimension
    np.testing.assert_array_equal(f(2 * PERIOD_NS, np.ones(3)), np.ones(3))


@pytest.mark.parametrize("name", ALL)
def test_float_time_is_rejected(name: str) -> None:
    f = make_filter(name)
    with pytest.raises(TypeError):
        f(0.5, np.zeros(2))  # type: ignore[arg-type]
    np.testing.assert_array_equal(f(np.int64(1), np.ones(2)), np.ones(2))


# ---- construction ----


def test_make_filter_names_and_default() -> None:
    assert FILTER_NAMES == ALL
    assert type(make_filter()) is OneEuroFilter
    assert type(make_filter("one_euro")) is OneEuroFilter
    assert type(make_filter("kalman")) is KalmanFilter
    assert type(make_filter("none")) is NoFilter
    f = make_filter("one_euro", min_cutoff=0.5, beta=0.2, d_cutoff=2.0)
    assert (f.min_cutoff, f.beta, f.d_cutoff) == (0.5, 0.2, 2.0)
    k = make_filter("kalman", process_noise=3.0, measurement_noise=0.01)
    assert (k.process_noise, k.measurement_noise) == (3.0, 0.01)


def test_make_filter_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as exc:
        make_filter("median")
    msg = str(exc.value)
    assert "median" in msg
    for name in ALL:
        assert name in msg


def test_make_filter_rejects_parameters_the_filter_does_not_take() -> None:
    with pytest.raises(ValueError, match="mincutoff.*min_cutoff"):
        make_filter("one_euro", mincutoff=1.0)
    with pytest.raises(ValueError, match="no parameters"):
        make_filter("none", beta=0.1)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("one_euro", {"min_cutoff": 0.0}),
        ("one_euro", {"d_cutoff": -1.0}),
        ("one_euro", {"beta": -0.1}),
        ("one_euro", {"min_cutoff": float("nan")}),
        ("kalman", {"process_noise": 0.0}),
        ("kalman", {"measurement_noise": -0.01}),
        ("kalman", {"initial_velocity_std": float("inf")}),
    ],
)
def test_invalid_parameter_values_are_rejected(name: str, params: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(params))):
        make_filter(name, **params)


def _ms_to_90_percent(jump_px: float, hz: int, screen_w: float = 2560.0) -> int:
    """The fast path's default 1€ filter on a noise-free step of the screen point."""
    from gazeloop.fastpath.pipeline import default_filter_params

    f = OneEuroFilter(**default_filter_params("one_euro"))
    period = round(1e9 / hz)
    a = np.array([0.3, 0.5])
    b = a + [jump_px / screen_w, 0.0]
    for k in range(hz):  # a second at rest
        f(k * period, a)
    for k in range(1, 5 * hz):
        if f((hz + k - 1) * period, b)[0] - a[0] >= 0.9 * (b[0] - a[0]):
            return round(k * 1000 / hz)
    raise AssertionError("never reached 90 %")


@pytest.mark.parametrize(("hz", "ms"), [(60, (433, 267, 167, 100)), (30, (567, 400, 267, 167))])
def test_the_lag_quoted_for_smaller_gaze_shifts(hz, ms):
    """fastpath.pipeline's comment on its defaults: a shift smaller than the recording's
    screen-wide switches is smoothed longer (the filter opens with speed)."""
    assert tuple(_ms_to_90_percent(j, hz) for j in (50, 150, 400, 1000)) == ms
