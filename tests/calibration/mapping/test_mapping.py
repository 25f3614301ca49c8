"""Calibration mappings: recovery of known maps, persistence, honest (nested, leave-one-
TARGET-out) selection and evaluation, and the constant baseline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gazeloop.calibration import mapping as mp
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping import (
    MAPPINGS,
    NotEnoughTargets,
    ScreenMapping,
    constant_baseline_loto,
    fit_select,
    loto_predict,
    make_mapping,
    mean_error,
    min_targets,
    target_errors,
)
from gazeloop.calibration.mapping import families as fam


def grid_targets(side: int, lo: float = 0.1, hi: float = 0.9) -> np.ndarray:
    v = np.linspace(lo, hi, side)
    return np.array([(x, y) for y in v for x in v])


def frames_of(points: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    return np.repeat(points, frames, axis=0), np.repeat(np.arange(len(points)), frames)


def brute_force_loto(name, X, Y, groups, hyper, w, aspect):
    """What the fast inner loop must equal: a real refit per held-out target."""
    pred = np.empty_like(Y)
    for g in np.unique(groups):
        out = groups == g
        m = make_mapping(name, **hyper).fit(X[~out], Y[~out], w[~out], groups[~out])
        pred[out] = m.predict(X[out])
    err = np.hypot(aspect * (pred - Y)[:, 0], (pred - Y)[:, 1])
    ids = np.unique(groups)
    return np.mean([np.average(err[groups == t], weights=w[groups == t]) for t in ids])


# --- recovery of known maps ----------------------------------------------------------------


def test_ridge_and_affine_recover_an_affine_map_exactly():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    A = rng.normal(size=(5, 2)) * 0.1
    Y = X @ A + [0.5, 0.4]
    X_new = rng.normal(size=(10, 5))
    ridge = make_mapping("ridge", alpha=0.0).fit(X, Y)
    np.testing.assert_allclose(ridge.predict(X_new), X_new @ A + [0.5, 0.4], atol=1e-10)

    # affine reads the gaze angles (columns 0, 1) and ignores everything else
    Y2 = X[:, :2] @ np.array([[0.8, 0.1], [-0.2, 0.6]]) + [0.5, 0.5]
    affine = make_mapping("affine").fit(X, Y2)
    expect = X_new[:, :2] @ np.array([[0.8, 0.1], [-0.2, 0.6]]) + [0.5, 0.5]
    np.testing.assert_allclose(affine.predict(X_new), expect, atol=1e-10)
    # a small alpha is close, not exact: the penalty is real
    shrunk = make_mapping("ridge", alpha=0.1).fit(X, Y).predict(X_new)
    assert 1e-4 < np.abs(shrunk - (X_new @ A + [0.5, 0.4])).max() < 0.1


def test_affine_reads_named_columns():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 4))
    Y = 0.5 + 0.1 * X[:, [3, 1]]  # x from "yaw" (col 3), y from "pitch" (col 1)
    names = ["ax", "pitch", "bx", "yaw"]
    m = make_mapping("affine", columns=("yaw", "pitch"), feature_names=names).fit(X, Y)
    assert m.columns == [3, 1]
    np.testing.assert_allclose(m.predict(X), Y, atol=1e-12)
    with pytest.raises(ValueError, match="'roll' is not among feature_names"):
        make_mapping("affine", columns=("yaw", "roll"), feature_names=names)
    with pytest.raises(ValueError, match="exactly two columns"):
        make_mapping("affine", columns=(0, 1, 2))


def quadratic_map(X: np.ndarray) -> np.ndarray:
    a, b = X[:, 0], X[:, 1]
    return np.column_stack(
        [0.5 + 0.3 * a + 0.1 * a * a - 0.05 * a * b, 0.5 + 0.25 * b + 0.08 * b * b + 0.04 * a]
    )


def test_poly2_recovers_a_quadratic_map_that_ridge_cannot():
    rng = np.random.default_rng(2)
    X = rng.uniform(-1, 1, size=(80, 2))
    X_new = rng.uniform(-1, 1, size=(20, 2))
    Y = quadratic_map(X)
    poly = make_mapping("poly2", alpha=0.0).fit(X, Y)
    np.testing.assert_allclose(poly.predict(X_new), quadratic_map(X_new), atol=1e-10)
    ridge_err = np.abs(
        make_mapping("ridge", alpha=0.0).fit(X, Y).predict(X_new) - quadratic_map(X_new)
    )
    assert ridge_err.max() > 0.03  # the curvature it cannot express


def smooth_map(X: np.ndarray) -> np.ndarray:
    a, b = X[:, 0], X[:, 1]
    return np.column_stack([0.5 + 0.3 * np.sin(1.5 * a), 0.5 + 0.3 * np.tanh(2 * b) * np.cos(a)])


def test_rbf_fits_a_smooth_nonlinear_map():
    g = np.linspace(-1, 1, 9)
    X = np.array([(a, b) for a in g for b in g])
    rng = np.random.default_rng(3)
    X_new = rng.uniform(-0.9, 0.9, size=(50, 2))
    Y, Y_new = smooth_map(X), smooth_map(X_new)
    rbf_err = np.abs(make_mapping("rbf", gamma=1.0, alpha=1e-6).fit(X, Y).predict(X_new) - Y_new)
    ridge_err = np.abs(make_mapping("ridge", alpha=0.0).fit(X, Y).predict(X_new) - Y_new)
    poly_err = np.abs(make_mapping("poly2", alpha=0.0).fit(X, Y).predict(X_new) - Y_new)
    assert rbf_err.max() < 0.01
    assert ridge_err.max() > 0.05 and poly_err.max() > 0.03
    # far outside the training points the kernel vanishes: prediction → intercept
    far = make_mapping("rbf", gamma=1.0, alpha=1e-2).fit(X, Y)
    np.testing.assert_allclose(far.predict(np.array([1e3, 1e3])), far.intercept, atol=1e-12)


def test_sample_weight_equals_repeating_frames():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(30, 3))
    Y = rng.uniform(0, 1, size=(30, 2))
    w = rng.integers(1, 4, size=30)
    X_rep, Y_rep = np.repeat(X, w, axis=0), np.repeat(Y, w, axis=0)
    for name, hyper in [("ridge", {"alpha": 0.3}), ("poly2", {"alpha": 0.3}), ("rbf", {})]:
        a = make_mapping(name, **hyper).fit(X, Y, sample_weight=w).predict(X)
        b = make_mapping(name, **hyper).fit(X_rep, Y_rep).predict(X)
        np.testing.assert_allclose(a, b, atol=1e-9, err_msg=name)
    # zero weight is the same as leaving the frame out
    w0 = np.ones(30)
    w0[:5] = 0
    a = make_mapping("ridge", alpha=0.3).fit(X, Y, sample_weight=w0).predict(X)
    b = make_mapping("ridge", alpha=0.3).fit(X[5:], Y[5:]).predict(X)
    np.testing.assert_allclose(a, b, atol=1e-12)


# The geometric mapping reads named gaze and eye-position columns, not any matrix: its own
# versions of these checks are in test_geometric.py.
FEATURE_AGNOSTIC = sorted(set(MAPPINGS) - {"geometric"})


@pytest.mark.parametrize("name", FEATURE_AGNOSTIC)
def test_constant_features_are_ignored(name):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 3))
    Y = 0.5 + 0.1 * X[:, :2] + 0.01 * rng.normal(size=(40, 2))
    Xc = np.column_stack([X[:, :2], np.full(40, 7.0), X[:, 2:]])  # constant third column
    m = make_mapping(name).fit(Xc, Y)
    moved = Xc.copy()
    moved[:, 2] = -3.0  # a value never seen in training changes nothing
    np.testing.assert_allclose(m.predict(moved), m.predict(Xc), atol=1e-12)
    assert np.isfinite(m.predict(Xc)).all()


def test_predict_shapes_and_errors():
    X, Y, _ = mp.synthetic_calibration(9, 3, 4)
    m = make_mapping("ridge").fit(X, Y)
    assert m.predict(X[0]).shape == (2,)
    np.testing.assert_allclose(m.predict(X[0]), m.predict(X[:1])[0])
    with pytest.raises(ValueError, match="width 4"):
        m.predict(X[:, :3])
    with pytest.raises(mp.NotFitted):
        make_mapping("ridge").predict(X)
    with pytest.raises(ValueError, match="NaN"):
        make_mapping("ridge").fit(np.where(np.arange(len(X))[:, None] == 2, np.nan, X), Y)
    with pytest.raises(ValueError, match=r"Y must be \(n, 2\)"):
        make_mapping("ridge").fit(X, Y[:, :1])


# --- persistence ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FEATURE_AGNOSTIC)
def test_json_round_trip_restores_an_identical_predictor(name):
    X, Y, g = mp.synthetic_calibration(9, 4, 5, seed=7)
    X = np.column_stack([X, np.ones(len(X))])  # a constant column survives the trip too
    m = make_mapping(name).fit(X, Y, groups=g)
    text = json.dumps(m.params())  # plain JSON: no default= hook, no pickle
    back = ScreenMapping.from_params(json.loads(text))
    assert type(back) is type(m) and back.hyper == m.hyper
    rng = np.random.default_rng(8)
    X_new = X + 0.1 * rng.normal(size=X.shape)
    np.testing.assert_allclose(back.predict(X_new), m.predict(X_new), rtol=0, atol=1e-12)
    assert type(m).from_params(json.loads(text)).predict(X_new[:1]).shape == (1, 2)


def test_from_params_rejects_what_it_cannot_trust():
    X, Y, _ = mp.synthetic_calibration(9, 2, 3)
    p = make_mapping("ridge").fit(X, Y).params()
    with pytest.raises(ValueError, match="not gazeloop mapping parameters"):
        ScreenMapping.from_params({"name": "ridge"})
    with pytest.raises(ValueError, match="version 99"):
        ScreenMapping.from_params({**p, "version": 99})
    with pytest.raises(ValueError, match="for mapping 'ridge', not 'rbf'"):
        mp.RBFMapping.from_params(p)
    with pytest.raises(ValueError, match="unknown mapping 'svm'"):
        ScreenMapping.from_params({**p, "name": "svm"})
    np.testing.assert_array_equal(
        mp.mapping_from_params("ridge", p).predict(X), mp.mapping_from_params(p).predict(X)
    )
    with pytest.raises(ValueError, match="for mapping 'ridge', not 'poly2'"):
        mp.mapping_from_params("poly2", p)
    bad = json.loads(json.dumps(p))
    bad["state"]["W"] = bad["state"]["W"][:-1]
    with pytest.raises(ValueError, match="bad parameters for mapping 'ridge'"):
        ScreenMapping.from_params(bad)


# --- registry and target counts ------------------------------------------------------------


def test_registry_and_unknown_names():
    assert set(MAPPINGS) == {"ridge", "poly2", "rbf", "affine", "geometric"}
    assert mp.DEFAULT_MAPPING == "ridge"
    names = ("affine", "ridge", "poly2", "rbf", "geometric")
    assert [min_targets(n) for n in names] == [3, 3, 5, 4, 3]
    with pytest.raises(ValueError, match="unknown mapping 'svr'; known mappings: affine, geom"):
        make_mapping("svr")
    with pytest.raises(ValueError, match="no hyper-parameter"):
        make_mapping("ridge", gamma=1.0)
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        fit_select("ridge", *mp.synthetic_calibration(9, 2, 3), grid={"gamma": [1.0]})


def test_not_enough_targets_says_how_many():
    X, Y, g = mp.synthetic_calibration(4, 3, 3)
    with pytest.raises(NotEnoughTargets) as e:
        make_mapping("poly2").fit(X, Y)  # targets counted from distinct Y points
    assert isinstance(e.value, ValueError)
    assert (e.value.needed, e.value.given) == (5, 4)
    assert str(e.value) == "mapping 'poly2' needs at least 5 distinct targets to fit, got 4"
    with pytest.raises(NotEnoughTargets, match="needs at least 3 distinct targets to fit, got 2"):
        make_mapping("ridge").fit(X[g < 2], Y[g < 2], groups=g[g < 2])
    with pytest.raises(NotEnoughTargets, match="at least 5 .* to evaluate leave-one-target-out"):
        loto_predict("rbf", X, Y, g)  # 4 targets: each fold would have 3 < 4
    # exactly the minimum: fitted with the defaults, nothing left to choose with
    m, chosen, score = fit_select("rbf", X, Y, g)
    assert chosen == mp.RBFMapping.defaults and math.isnan(score) and m.fitted


# --- selection: fast == brute force, and it selects sensibly -------------------------------


@pytest.mark.parametrize(
    ("name", "combos"),
    [
        ("ridge", [{"alpha": 0.0}, {"alpha": 0.02}, {"alpha": 5.0}]),
        ("poly2", [{"alpha": 0.01}, {"alpha": 1.0}]),
        ("affine", [{}]),
    ],
)
def test_fast_inner_loto_equals_a_refit_per_target(name, combos):
    X, Y, g = mp.synthetic_calibration(12, 4, 5, noise=0.05, seed=11)
    # uneven targets, weights, a feature constant in every fold but one
    keep = ~((g == 3) & (np.arange(len(g)) % 4 == 0))
    X, Y, g = X[keep], Y[keep], g[keep]
    X = np.column_stack([X, np.where(g == 5, 1.0, 0.0)])
    w = np.random.default_rng(12).uniform(0.5, 2.0, len(X))
    proto = make_mapping(name)
    fast = proto._loto_scores(proto._select(X), Y, w, g, combos, 1.7)
    slow = [brute_force_loto(name, X, Y, g, c, w, 1.7) for c in combos]
    np.testing.assert_allclose(fast, slow, rtol=1e-8)


def test_rbf_inner_loto_is_the_exact_group_deletion():
    # The identity y_g − f₋g(x_g) = (I − H_gg)⁻¹(y_g − ŷ_g) against real refits that share
    # the set's standardisation and penalty, as the fast loop documents.
    X, Y, g = mp.synthetic_calibration(8, 3, 3, noise=0.05, seed=13)
    w = np.random.default_rng(14).uniform(0.5, 2.0, len(X))
    gamma, alpha, aspect = 0.7, 1e-3, 1.3
    fast = make_mapping("rbf")._loto_scores(X, Y, w, g, [{"gamma": gamma, "alpha": alpha}], aspect)
    center, scale = fam._standardise_stats(X, w)
    U = (X - center) / scale
    per_target = []
    for t in np.unique(g):
        o = g == t
        K = np.exp(-gamma / 3 * fam._sqdist(U[~o], U[~o]))
        c, b = fam._krr_fit(K, Y[~o], w[~o], alpha * w.sum())
        pred = np.exp(-gamma / 3 * fam._sqdist(U[o], U[~o])) @ c + b
        err = np.hypot(aspect * (pred - Y[o])[:, 0], (pred - Y[o])[:, 1])
        per_target.append(np.average(err, weights=w[o]))
    np.testing.assert_allclose(fast, [np.mean(per_target)], rtol=1e-8)


def noisy_features(sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    Y, g = frames_of(grid_targets(4), 5)
    X = (Y - 0.5) @ rng.normal(size=(2, 8)) + sigma * rng.normal(size=(len(Y), 8))
    return X, Y, g


@pytest.mark.parametrize("seed", range(4))
def test_selection_picks_a_larger_alpha_on_noisier_data(seed):
    _, clean, clean_score = fit_select("ridge", *noisy_features(0.01, seed))
    _, noisy, noisy_score = fit_select("ridge", *noisy_features(1.0, seed))
    assert clean["alpha"] == 0.001  # the grid's least regularisation
    assert noisy["alpha"] >= 0.01
    assert clean_score < 0.02 < 0.2 < noisy_score


def test_fit_select_refits_on_all_data_with_the_chosen_hyper():
    X, Y, g = mp.synthetic_calibration(9, 5, 4, seed=15)
    m, chosen, score = fit_select("ridge", X, Y, g, grid={"alpha": [0.01, 0.1]})
    ref = make_mapping("ridge", **chosen).fit(X, Y)
    np.testing.assert_allclose(m.predict(X), ref.predict(X), atol=1e-12)
    assert chosen["alpha"] in (0.01, 0.1) and 0 < score < 0.1


def test_aspect_makes_the_score_square():
    # Same normalised errors; on a 2:1 screen an x error is twice as far as a y error.
    X, Y, g = mp.synthetic_calibration(9, 3, 3, noise=0.1, seed=16)
    combos = [{"alpha": 0.1}]
    proto = make_mapping("ridge")
    s1 = proto._loto_scores(X, Y, np.ones(len(X)), g, combos, 1.0)[0]
    s2 = proto._loto_scores(X, Y, np.ones(len(X)), g, combos, 2.0)[0]
    assert s1 < s2 < 2 * s1


# --- honest evaluation ---------------------------------------------------------------------


def leak_detector(n_targets: int = 10, frames: int = 3):
    """Each target's features are its own one-hot id: any fit that has seen a target's frames
    predicts it perfectly; a fit that has not can only fall back to the other targets."""
    rng = np.random.default_rng(17)
    points = rng.uniform(0.1, 0.9, size=(n_targets, 2))
    Y, g = frames_of(points, frames)
    return np.eye(n_targets)[g], Y, g


@pytest.mark.parametrize(
    ("name", "hyper"), [("ridge", {"alpha": 1e-3}), ("rbf", {"gamma": 1.0, "alpha": 1e-4})]
)
def test_loto_never_lets_the_held_out_target_into_a_fit(name, hyper):
    X, Y, g = leak_detector()
    baseline = mean_error(constant_baseline_loto(Y, g), Y, g)
    # the detector works: a fit that has seen the target is nearly perfect on it
    leaky = make_mapping(name, **hyper).fit(X, Y).predict(X)
    assert mean_error(leaky, Y, g) < 0.05 * baseline
    grid = {k: [v] for k, v in hyper.items()}
    honest = mean_error(loto_predict(name, X, Y, g, grid), Y, g)
    assert 0.8 * baseline < honest < 1.5 * baseline
    assert baseline > 0.1
    # with the default grid (nested selection on top) it is no better than the baseline either
    assert mean_error(loto_predict(name, X, Y, g), Y, g) > 0.8 * baseline


def test_loto_beats_the_baseline_when_there_is_signal():
    X, Y, g = mp.synthetic_calibration(9, 4, 5, noise=0.05, seed=18)
    pred = loto_predict("ridge", X, Y, g, aspect=16 / 9)
    assert pred.shape == Y.shape
    err = mean_error(pred, Y, g, 16 / 9)
    assert err < 0.2 * mean_error(constant_baseline_loto(Y, g), Y, g, 16 / 9)


def test_constant_baseline_by_hand():
    # Four corners, the first with three frames: the mean counts each target once.
    Y = np.array([[0, 0], [0, 0], [0, 0], [1, 0], [0, 1], [1, 1]], dtype=float)
    g = np.array([0, 0, 0, 1, 2, 3])
    pred = constant_baseline_loto(Y, g)
    np.testing.assert_allclose(pred[:3], [[2 / 3, 2 / 3]] * 3)
    np.testing.assert_allclose(pred[3:], [[1 / 3, 2 / 3], [2 / 3, 1 / 3], [1 / 3, 1 / 3]])
    np.testing.assert_allclose(target_errors(pred, Y, g), [math.sqrt(8) / 3] * 4)
    assert mean_error(pred, Y, g) == pytest.approx(2 * math.sqrt(2) / 3)
    # on a 2:1 screen the x part of each error counts double: sqrt((4/3)² + (2/3)²)
    assert mean_error(pred, Y, g, aspect=2.0) == pytest.approx(2 * math.sqrt(5) / 3)
    with pytest.raises(ValueError, match="at least 2 targets"):
        constant_baseline_loto(Y[:3], g[:3])


# --- a profile across resolutions ----------------------------------------------------------


def test_a_profile_gives_the_same_points_at_another_resolution():
    fhd = ScreenGeometry(px=(1920, 1080), mm=(345.6, 194.4))
    qhd = fhd.with_px(2560, 1440)
    X, Y_norm, g = mp.synthetic_calibration(9, 4, 5, seed=19)
    labels_fhd = fhd.to_px(Y_norm)  # what the recorder stored on each screen
    labels_qhd = qhd.to_px(Y_norm)
    m_fhd, _, _ = fit_select("poly2", X, fhd.to_norm(labels_fhd), g, aspect=fhd.aspect)
    m_qhd, _, _ = fit_select("poly2", X, qhd.to_norm(labels_qhd), g, aspect=qhd.aspect)
    np.testing.assert_allclose(m_qhd.predict(X), m_fhd.predict(X), atol=1e-12)
    # one stored profile drives either screen; only the edge conversion differs
    profile = ScreenMapping.from_params(json.loads(json.dumps(m_fhd.params())))
    norm = profile.predict(X)
    np.testing.assert_allclose(qhd.to_px(norm), fhd.to_px(norm) * (2560 / 1920), atol=1e-9)
    np.testing.assert_allclose(qhd.to_norm(qhd.to_px(norm)), norm, atol=1e-15)


def test_benchmark_reports_percentiles():
    r = mp.benchmark_fit(n_targets=9, frames=3, d=4, repeats=3)
    assert r["mapping"] == "ridge" and r["repeats"] == 3
    assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p95_ms"]
    assert r["chosen"]["alpha"] in mp.RidgeMapping.default_grid["alpha"]


def test_a_fold_with_no_target_to_spare_uses_the_measured_rule_not_the_default():
    """Issue 12, cause 1: with exactly min_targets targets nested selection cannot run; the
    alpha then comes from `no_spare_hyper` (what selection picks where it can), because the
    default 0.1 pulled the held-out corner of a 4-corner calibration to the centre."""
    corners = np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9]])
    rng = np.random.default_rng(3)
    Y = np.repeat(corners, 10, axis=0)
    g = np.repeat(np.arange(4), 10)
    X = (Y - 0.5) @ np.array([[0.4, 0.05], [-0.03, 0.3]]) + 0.003 * rng.normal(size=Y.shape)
    _, chosen, score = fit_select("ridge", X[g != 3], Y[g != 3], g[g != 3])
    assert chosen == {"alpha": 0.01} and math.isnan(score)
    pred = loto_predict("ridge", X, Y, g)
    old = loto_predict("ridge", X, Y, g, grid={"alpha": [0.1]})
    err, err_old = mean_error(pred, Y, g), mean_error(old, Y, g)
    assert err < 0.05 < err_old  # normalised units: the old default misses a corner by > 5 %
