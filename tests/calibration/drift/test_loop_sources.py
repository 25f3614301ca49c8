"""Several label sources in one loop: each earns its weight from its own residuals."""

from __future__ import annotations

import numpy as np
import pytest

from gazeloop.calibration.drift.history import History
from gazeloop.calibration.drift.loop import DriftLoop, LoopConfig
from gazeloop.calibration.labels import OracleLabel, PointObservation

W, H = 1920, 1080
ASPECT = W / H
DRIFT_PX = np.array([90.0, -60.0])  # the fast path's error; the right offset is its negative


class Stream:
    """A fast path with a constant drift, and sources that see the true point with their
    own noise (pixels, per axis)."""

    def __init__(self, seed: int = 0, **cfg) -> None:
        self.rng = np.random.default_rng(seed)
        self.history = History(max_age_s=10_000.0)
        self.loop = DriftLoop(LoopConfig(aspect=ASPECT, **cfg), self.history)
        self.i = 0

    def label(self, source: str, sigma_px: float | None, junk: bool = False, truth=None):
        self.i += 1
        t = self.i * 1_000_000_000
        true = self.rng.uniform(0.15, 0.85, 2) if truth is None else np.asarray(truth)
        raw = true + DRIFT_PX / (W, H)
        self.history.append(t, raw + self.loop.offset)
        if junk:
            obs = self.rng.uniform(0.0, 1.0, 2)
        else:
            obs = true + self.rng.normal(0.0, sigma_px, 2) / (W, H)
        lab = OracleLabel(
            t_ns=t,
            snapshot_id=f"{source}-{self.i}",
            oracle=source,
            observation=PointObservation(xy=(float(obs[0]), float(obs[1]))),
        )
        return self.loop.update(lab)

    def error_px(self) -> float:
        return float(np.hypot(*(self.loop.offset * (W, H) + DRIFT_PX)))


def scale_px(loop: DriftLoop, source: str) -> float:
    return loop.sources()[source].scale * W  # σ per axis, screen widths → px


def test_an_accurate_and_a_noisy_source_get_their_own_scales_and_weights():
    st = Stream(seed=1)
    decisions = []
    for _ in range(80):
        decisions.append(st.label("clicks", 30.0))
        decisions.append(st.label("moon", 200.0))
    src = st.loop.sources()
    acc, noisy = src["clicks"], src["moon"]
    assert (acc.labels, noisy.labels) == (80, 80)
    assert acc.usable == 80 and noisy.usable == 80
    # The scales are those of the sources (σ per axis), measured from their residuals.
    assert scale_px(st.loop, "clicks") == pytest.approx(30.0, rel=0.3)
    assert scale_px(st.loop, "moon") == pytest.approx(200.0, rel=0.3)
    # Inverse variance relative to the best: (30/200)² ≈ 0.02.
    assert acc.weight == 1.0 and 0.01 < noisy.weight < 0.05
    # Each source has its own gate: the noisy one's labels are not thrown out as outliers.
    assert acc.accepted >= 72 and noisy.accepted >= 72
    # Decisions carry their source, weight and scale.
    last = decisions[-1]
    assert last.source == "moon" and last.weight == pytest.approx(noisy.weight, rel=0.2)
    # The drift is found to within the accurate source's noise.
    assert st.error_px() < 20.0
    # Once the scales are known, a noisy label moves the offset far less than an accurate one.
    steps = {"clicks": [], "moon": []}
    for d in decisions[60:]:
        steps[d.source].append(np.hypot(*(np.asarray(d.step) * (W, H))))
    assert np.mean(steps["moon"]) < 0.5 * np.mean(steps["clicks"])


def _after(source: str, dx_px: float, **cfg) -> float:
    """How far one label of `source`, `dx_px` to the right of the truth, moves the offset
    of a loop that has seen the same 60 labels of both sources."""
    st = Stream(seed=7, **cfg)
    for _ in range(30):
        st.label("clicks", 30.0)
        st.label("moon", 200.0)
    before = st.loop.offset.copy()
    true = np.array([0.5, 0.5])
    st.i += 1
    t = st.i * 1_000_000_000
    st.history.append(t, true + DRIFT_PX / (W, H) + st.loop.offset)
    obs = true + np.array([dx_px / W, 0.0])
    d = st.loop.update(
        OracleLabel(
            t_ns=t, snapshot_id="probe", oracle=source, observation=PointObservation(xy=obs)
        )
    )
    assert d.accepted, d.why
    return float(np.hypot(*((st.loop.offset - before) * (W, H))))


def test_the_same_residual_moves_the_offset_less_from_the_noisy_source():
    moved_acc, moved_noisy = _after("clicks", 60.0), _after("moon", 60.0)
    assert moved_noisy < 0.2 * moved_acc


def test_without_weighting_both_sources_move_the_offset_alike():
    same = _after("clicks", 60.0, weigh_sources=False), _after("moon", 60.0, weigh_sources=False)
    assert same[0] == pytest.approx(same[1], rel=1e-9)


def test_a_junk_source_ends_with_a_large_scale_and_no_say():
    st = Stream(seed=3)
    for _ in range(80):
        st.label("clicks", 30.0)
        st.label("junk", None, junk=True)
    src = st.loop.sources()
    assert src["junk"].scale * W > 250.0  # a uniform answer across the screen
    assert src["junk"].weight < 0.02
    assert st.error_px() < 20.0  # and the offset is the accurate source's


def test_a_new_source_starts_at_its_prior_and_few_labels_do_not_talk_it_down():
    st = Stream(seed=4)
    for _ in range(40):
        st.label("clicks", 30.0)
    st.label("moondream", 5.0)  # one lucky label
    m = st.loop.sources()["moondream"]
    assert m.measured == 0 or m.scale == pytest.approx(LoopConfig().source_prior["moondream"])
    assert m.weight < 0.1


def test_one_source_is_the_single_source_loop():
    """Weights are relative to the best source: with one source, every label weighs 1 and
    the loop is exactly what it was without sources."""
    a, b = Stream(seed=5), Stream(seed=5, weigh_sources=False)
    for _ in range(60):
        da, db = a.label("clicks", 60.0), b.label("clicks", 60.0)
        assert da.accepted == db.accepted and np.array_equal(da.offset, db.offset)
    assert a.loop.sources()["clicks"].weight == 1.0


def test_reset_forgets_the_sources():
    st = Stream(seed=6)
    for _ in range(10):
        st.label("clicks", 30.0)
    st.loop.reset()
    assert st.loop.sources() == {}
