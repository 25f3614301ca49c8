"""The geometric mapping (gaze ray from the eyes onto the screen plane): it recovers a known
geometry, follows the head where a ridge on angles cannot, survives JSON, and refuses
degenerate calibrations with the reason."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gazeloop.calibration.mapping import (
    MAPPINGS,
    NotEnoughTargets,
    ScreenMapping,
    fit_select,
    make_mapping,
)
from gazeloop.calibration.mapping import geometric as geo
from gazeloop.fastpath.eye_geometry import EYE_SPAN_MM, eye_position_mm

W_MM, H_MM = 300.0, 190.0
# kappa, gains, cross terms, camera (x, y) from the screen's top-left, tilt; the last five
# at the laptop prior (camera centred 5 mm above the screen, looking along its normal)
TRUTH = np.array([0.03, -0.05, 1.15, 0.85, 0.0, 0.0, 150.0, -5.0, 0.0])


def grid(side: int, lo: float = 0.05, hi: float = 0.95) -> np.ndarray:
    v = np.linspace(lo, hi, side)
    return np.array([(x, y) for y in v for x in v])


def target_camera(s_mm: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Screen mm (x right, y down) → camera axes (x image right, y up, z toward the camera)."""
    c, s = math.cos(p[8]), math.sin(p[8])
    ex, ey = np.array([-1.0, 0, 0]), np.array([0, -c, -s])
    return (s_mm[:, :1] - p[6]) * ex + (s_mm[:, 1:] - p[7]) * ey


def network_angles(target_cam: np.ndarray, eye: np.ndarray, p: np.ndarray) -> np.ndarray:
    """What a network with this calibration answers: its corrected angles, in each eye's ray
    frame, point from the eye at the target (corrected = kappa + G · raw)."""
    true = geo.ray_angles(target_cam - eye, geo.ray_frames(eye))
    G = np.array([[p[2], p[4]], [p[5], p[3]]])
    return np.linalg.solve(G, (true - p[:2]).T).T


def session(
    p: np.ndarray = TRUTH,
    side: int = 5,
    frames: int = 6,
    head: tuple[float, float, float] = (10.0, -20.0, -600.0),
    move: tuple[float, float, float] = (5.0, 5.0, 10.0),
    noise_deg: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, Y, groups): X columns are geometric.COLUMNS."""
    rng = np.random.default_rng(seed)
    pts = grid(side)
    Y = np.repeat(pts, frames, axis=0)
    groups = np.repeat(np.arange(len(pts)), frames)
    eye = np.asarray(head) + rng.uniform(-1, 1, size=(len(Y), 3)) * np.asarray(move)
    ang = network_angles(target_camera(Y * [W_MM, H_MM], p), eye, p)
    ang += np.radians(noise_deg) * rng.normal(size=ang.shape)
    return np.column_stack([ang, eye]), Y, groups


def test_registered_and_reads_its_columns_by_name():
    assert MAPPINGS["geometric"] is geo.GeometricMapping
    names = ["head_yaw", "eye_z_mm", "gaze_pitch", "eye_x_mm", "gaze_yaw", "eye_y_mm"]
    m = make_mapping("geometric", feature_names=names)
    assert [names[c] for c in m.columns] == list(geo.COLUMNS)
    X, Y, g = session()
    wide = np.column_stack([np.zeros(len(X)), X[:, 4], X[:, 1], X[:, 2], X[:, 0], X[:, 3]])
    np.testing.assert_allclose(
        m.fit(wide, Y, groups=g).predict(wide),
        make_mapping("geometric").fit(X, Y, groups=g).predict(X),
        atol=1e-9,
    )
    with pytest.raises(ValueError, match="exactly five columns"):
        make_mapping("geometric", columns=[0, 1])


def test_recovers_a_known_geometry():
    X, Y, g = session()
    m = make_mapping("geometric").fit(X, Y, groups=g)
    fitted = np.array(list(m.geometry.values()))
    # With the head still, a kappa of 0.1° and a camera 0.3 mm away are the same thing: the
    # priors share the difference. Gains and cross terms are pinned.
    np.testing.assert_allclose(fitted[:2], TRUTH[:2], atol=math.radians(0.1))
    np.testing.assert_allclose(fitted[2:6], TRUTH[2:6], atol=2e-3)
    np.testing.assert_allclose(fitted[6:8], TRUTH[6:8], atol=0.5)  # mm
    np.testing.assert_allclose(m.predict(X) * [W_MM, H_MM], Y * [W_MM, H_MM], atol=0.5)
    assert m.params()["state"]["free"] == list(geo.PARAM_NAMES)


def test_recovers_camera_offset_tilt_and_cross_terms_when_the_head_moves():
    # A camera 25 mm above the screen and tilted 4° looks like an angular offset while the
    # head is still; when it moves during the calibration, a loose prior finds them.
    truth = TRUTH.copy()
    truth[4:6] = 0.05, -0.03
    truth[7], truth[8] = -25.0, math.radians(4.0)
    X, Y, g = session(truth, move=(120.0, 60.0, 150.0), seed=3)
    m = make_mapping("geometric", flex=100.0).fit(X, Y, groups=g)
    fitted = np.array(list(m.geometry.values()))
    np.testing.assert_allclose(fitted[:2], truth[:2], atol=math.radians(0.3))
    np.testing.assert_allclose(fitted[2:6], truth[2:6], atol=5e-3)
    np.testing.assert_allclose(fitted[6:8], truth[6:8], atol=3.0)  # mm
    assert fitted[8] == pytest.approx(truth[8], abs=math.radians(0.3))
    assert np.abs((m.predict(X) - Y) * [W_MM, H_MM]).max() < 1.0
    # the usual prior (camera ±10 mm, tilt ±3°) holds the layout near a laptop's: 2σ away
    # here, it leaves a few mm rather than follow all the way
    near = make_mapping("geometric").fit(X, Y, groups=g)
    assert 0.5 < np.abs((near.predict(X) - Y) * [W_MM, H_MM]).max() < 10.0


def test_few_targets_fit_fewer_parameters():
    # 4 corners: kappa, gains and the cross terms; the layout stays the laptop prior
    X, Y, g = session(side=2, frames=10, noise_deg=0.3)
    m = make_mapping("geometric").fit(X, Y, groups=g)
    assert m.params()["state"]["free"] == list(geo.PARAM_NAMES[:6])
    layout = m.geometry
    assert (layout["camera_x_mm"], layout["camera_y_mm"], layout["tilt"]) == (150.0, -5.0, 0.0)
    assert np.abs((m.predict(X) - Y) * [W_MM, H_MM]).mean() < 5.0
    # flex 0: kappa and gains only
    m0 = make_mapping("geometric", flex=0.0).fit(X, Y, groups=g)
    assert m0.params()["state"]["free"] == list(geo.PARAM_NAMES[:4])
    # selection with no target to spare takes the rule, not the grid
    _, chosen, score = fit_select("geometric", X[g < 3], Y[g < 3], g[g < 3])
    assert chosen == {"flex": 3.0} and math.isnan(score)


def test_prediction_follows_the_head_where_a_ridge_cannot():
    """Calibrate with a still head, then move it 50 mm sideways, 100 mm closer, 150 mm
    back, while the eyes keep looking at the same targets: the geometric prediction stays on
    them. A ridge on the angles keeps up with the sideways move only because the network's
    angles are relative to the eye–camera ray (they hardly change when the eye slides
    sideways and still looks at the same point), and misses the moves in depth."""
    X, Y, g = session(move=(1.0, 1.0, 2.0))
    m = make_mapping("geometric").fit(X, Y, groups=g)
    ridge = make_mapping("ridge", alpha=0.0).fit(X[:, :2], Y, groups=g)
    for shift, ridge_mean_mm in (
        ((50.0, 0, 0), (0, 5)),
        ((0, 0, 100.0), (15, 60)),
        ((0, 0, -150.0), (15, 60)),
    ):
        eye = X[:, 2:] + shift
        ang = network_angles(target_camera(Y * [W_MM, H_MM], TRUTH), eye, TRUTH)
        moved = np.column_stack([ang, eye])
        err_mm = np.hypot(*((m.predict(moved) - Y) * [W_MM, H_MM]).T)
        assert err_mm.max() < 0.5, shift
        r_mm = np.hypot(*((ridge.predict(ang) - Y) * [W_MM, H_MM]).T)
        assert ridge_mean_mm[0] <= r_mm.mean() <= ridge_mean_mm[1], (shift, r_mm.mean())


def test_json_round_trip_restores_an_identical_predictor():
    X, Y, g = session(noise_deg=0.5, seed=2)
    m = make_mapping("geometric", screen_w_mm=W_MM, screen_h_mm=H_MM, flex=3.0).fit(X, Y, groups=g)
    text = json.dumps(m.params())
    back = ScreenMapping.from_params(json.loads(text))
    assert type(back) is geo.GeometricMapping and back.hyper == m.hyper
    X_new = X + np.r_[0.01, 0.01, 20.0, -10.0, 50.0]
    np.testing.assert_array_equal(back.predict(X_new), m.predict(X_new))
    bad = json.loads(text)
    del bad["state"]["params"]["tilt"]
    with pytest.raises(ValueError, match="lack.*tilt"):
        ScreenMapping.from_params(bad)


def test_selection_and_nested_scores_run():
    X, Y, g = session(side=4, frames=3, noise_deg=0.5, seed=4)
    m, chosen, score = fit_select("geometric", X, Y, g, aspect=W_MM / H_MM)
    assert chosen["flex"] in geo.GeometricMapping.default_grid["flex"]
    assert 0 <= score < 0.05 and m.fitted


@pytest.mark.parametrize(
    "case, message",
    [
        ("one_row", "targets lie on one line"),
        ("behind", "in front of the camera"),
        ("mirrored", "look mirrored"),
        ("still_gaze", "does not vary across targets"),
    ],
)
def test_degenerate_calibrations_raise_with_the_reason(case, message):
    X, Y, g = session(noise_deg=0.2)
    if case == "one_row":
        keep = Y[:, 1] == Y[0, 1]
        X, Y, g = X[keep], Y[keep], g[keep]
    elif case == "behind":
        X[:, 4] *= -1
    elif case == "mirrored":
        X[:, 0] = -X[:, 0]  # a selfie view: yaw runs the other way
    else:
        X[:, 1] = 0.1
    with pytest.raises(geo.GeometryError, match=message) as e:
        make_mapping("geometric").fit(X, Y, groups=g)
    assert isinstance(e.value, ValueError)  # what selection and callers catch
    with pytest.raises(NotEnoughTargets, match="at least 3"):
        make_mapping("geometric").fit(X[g < 2], Y[g < 2], groups=g[g < 2])


def test_rays_that_miss_the_screen_predict_nan_and_sit_out_a_fit():
    X, Y, g = session()
    m = make_mapping("geometric").fit(X, Y, groups=g)
    away = X.copy()
    away[::10, 0] = math.radians(120.0)  # a few glances sideways, past the screen plane
    assert np.isnan(m.predict(away[::10])).all()
    m2 = make_mapping("geometric").fit(away, Y, groups=g)
    np.testing.assert_allclose(m2.predict(X), m.predict(X), atol=2e-3)


@pytest.mark.parametrize("depth_mm", [-40.0, -5.0, 0.0, 30.0])
def test_eyes_nearer_than_the_fit_allows_are_placed_nowhere(depth_mm):
    """A face size gone wrong puts the eyes a few mm from the lens: the fit refuses such
    frames, and so does a prediction (NaN, which the fast path drops) rather than send the
    ray from there to a confident point (an audit: 236 px from the real frame's point)."""
    X, Y, g = session()
    m = make_mapping("geometric").fit(X, Y, groups=g)
    near = X[:3].copy()
    near[:, 4] = depth_mm
    assert np.isnan(m.predict(near)).all()
    assert np.isfinite(m.predict(X[:3])).all()


def test_an_inner_fold_is_fitted_without_its_held_out_target():
    """Inner leave-one-target-out (what selection compares) fits each fold on the other
    targets alone: moving the held-out target's label moves its error only by the move,
    never its prediction (a start fitted on every target left a trace of it)."""
    X, Y, g = session(noise_deg=0.5, side=3)
    w, held = np.ones(len(Y)), g == 4
    m = make_mapping("geometric")
    m.n_features = X.shape[1]
    m._fit(X[~held], Y[~held], w[~held])
    pred = m._predict(X[held])
    for shift in (0.0, 0.3):
        Y2 = Y.copy()
        Y2[held, 0] += shift
        per = m._loto_target_errors(X, Y2, w, g, [dict(m.hyper)], 1.0)
        want = np.hypot(*(pred - Y2[held]).T).mean()
        assert per[0, 4] == pytest.approx(want, rel=1e-7, abs=1e-15)


def _one_fold_at_a_time(m, X, Y, w, g, combos, aspect):
    """The definition `_loto_target_errors` batches: `_fit` on the other targets, `_predict`
    on the held-out one, fold by fold; a fold that raises rules its combination out."""
    ids = np.unique(g)
    out = np.full((len(combos), len(ids)), np.nan)
    for ci, c in enumerate(combos):
        f = type(m)(columns=[0, 1, 2, 3, 4], **{**m.hyper, **c})
        f.n_features = X.shape[1]
        try:
            per = []
            for t in ids:
                held = g == t
                f._fit(X[~held], Y[~held], w[~held])
                err = np.hypot(*((f._predict(X[held]) - Y[held]) * [aspect, 1.0]).T)
                per.append(err @ w[held] / w[held].sum())
        except geo.GeometryError:
            continue
        if np.isfinite(per).all():
            out[ci] = per
    return out


@pytest.mark.parametrize(
    "case",
    [
        "noisy",
        "weighted",
        "off_screen",
        "zero_weight",
        "near_eye",
        "few_targets",
        "shared_place",
        "one_fold_on_a_line",
        "still_gaze",
        "mirrored",
    ],
)
def test_the_folds_fitted_together_are_the_folds_fitted_one_at_a_time(case):
    """Every fold of a nested selection in one batched Levenberg–Marquardt (`_Folds`): each
    fold stops, damps and fails as its own fit would, so the scores are the same."""
    X, Y, g = session(side=4, frames=3, noise_deg=0.7, move=(40.0, 30.0, 80.0), seed=9)
    w = np.ones(len(Y))
    if case == "weighted":
        w = np.random.default_rng(3).uniform(0.2, 2.0, len(Y))
    elif case == "off_screen":  # frames whose ray misses the screen at the prior sit out
        X[::7, 1] = 1.6  # the fits; held out, they are placed again by the fitted geometry
    elif case == "zero_weight":  # a frame at weight zero still bars steps that throw its
        X[3, 0], w[3] = 1.375, 0.0  # ray off the screen plane
    elif case == "near_eye":  # eyes nearer the camera than a fit allows: every combination out
        X[5, 4] = -30.0
    elif case == "few_targets":  # five targets, four per fold: fewer free parameters
        keep = np.isin(g, [0, 3, 5, 12, 15])  # the corners and one more
        X, Y, g, w = X[keep], Y[keep], g[keep], w[keep]
    elif case == "shared_place":  # 7 targets at 6 places: folds of 6 places and of 5 free
        keep = np.isin(g, [0, 1, 3, 5, 10, 12, 15])  # different parameters (FULL_TARGETS)
        X, Y, g, w = X[keep], Y[keep], g[keep], w[keep]
        Y[g == 1] = Y[g == 0][0]
    elif case == "one_fold_on_a_line":  # without target 0 the others are a diagonal
        keep = np.isin(g, [0, 3, 6, 9, 12])
        X, Y, g, w = X[keep], Y[keep], g[keep], w[keep]
    elif case == "still_gaze":  # a pitch that never varies: no gain to fit
        X[:, 1] = 0.1
    elif case == "mirrored":  # every fold's yaw gain goes negative: every combination out
        X[:, 0] = -X[:, 0]
    m = make_mapping("geometric")
    m.n_features = X.shape[1]
    combos = [{"flex": f} for f in (0.0, 1.0, 3.0)]
    want = _one_fold_at_a_time(m, X, Y, w, g, combos, 1.6)
    got = m._loto_target_errors(X, Y, w, g, combos, 1.6)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    out = ("near_eye", "one_fold_on_a_line", "still_gaze", "mirrored")
    assert np.isnan(want).all() == (case in out)


def test_folds_in_small_batches_score_as_in_one(monkeypatch):
    """A calibration pooled over many sittings' videos fits its folds a few at a time
    (`FOLD_BATCH`), with the same scores: here two folds per batch, and a batch each for
    the folds that keep 6 places and those that keep 5."""
    X, Y, g = session(side=4, frames=3, noise_deg=0.7, move=(40.0, 30.0, 80.0), seed=9)
    keep = np.isin(g, [0, 1, 3, 5, 10, 12, 15])
    X, Y, g = X[keep], Y[keep], g[keep]
    Y[g == 1] = Y[g == 0][0]
    m = make_mapping("geometric")
    m.n_features = X.shape[1]
    w, combos = np.ones(len(Y)), [{"flex": f} for f in (0.0, 1.0, 3.0)]
    whole = m._loto_target_errors(X, Y, w, g, combos, 1.6)
    monkeypatch.setattr(geo, "FOLD_BATCH", 2 * 10 * len(X))
    batches = geo._fold_batches(np.array([6, 6, 5, 5, 5, 5, 5]), len(X))
    assert [b.tolist() for b in batches] == [[2, 3], [4, 5], [6], [0, 1]]
    np.testing.assert_allclose(m._loto_target_errors(X, Y, w, g, combos, 1.6), whole, rtol=1e-9)
    assert np.isfinite(whole).all()


def test_eye_position_from_a_projected_mesh():
    f, size = 700.0, (640, 480)
    centre = np.array([40.0, -30.0, -550.0])  # camera axes, mm
    pts = np.zeros((478, 3))
    for i, dx in zip((33, 133, 362, 263), (-45.0, -15.0, 15.0, 45.0), strict=True):
        x, y, z = centre + [dx, 0.0, 0.0]
        pts[i, :2] = (size[0] / 2 + f * x / -z, size[1] / 2 - f * y / -z)
    got = eye_position_mm(pts, size, f)
    np.testing.assert_allclose(got, centre, rtol=1e-12)
    assert EYE_SPAN_MM == 90.0
    # without a focal length, the image width: depth scales, x and y in mm do not
    got_w = eye_position_mm(pts, size)
    np.testing.assert_allclose(got_w[:2], centre[:2], rtol=1e-12)
    assert got_w[2] == pytest.approx(centre[2] * size[0] / f)
    pts[263] = pts[33]
    assert np.isnan(eye_position_mm(pts, size)).all()
