"""Leave-one-target-out evaluation (`calibration.evaluate`) on synthetic data whose right
answer is known: a perfect relation, an injected outlier frame, features that leak the
target's identity, too few targets."""

from __future__ import annotations

import numpy as np
import pytest

from gazeloop.calibration.frames import LabelledFrames
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping import make_mapping
from gazeloop.calibration.metrics.evaluate import (
    EvalReport,
    evaluate_arrays,
    evaluate_candidates,
    evaluate_fixed,
    robust_keep,
)

SCREEN = ScreenGeometry(px=(1920, 1080), mm=(344.0, 194.0), viewing_distance_mm=600.0)
# A 3x3 grid of targets in px, as a calibration would show them.
GRID = np.array([(x, y) for y in (100.0, 540.0, 980.0) for x in (100.0, 960.0, 1820.0)])
FRAMES = 6


def grid_data(frames: int = FRAMES, n_targets: int = 9):
    groups = np.repeat(np.arange(n_targets), frames)
    labels = GRID[:n_targets][groups]
    return labels, groups


def linear_features(
    labels: np.ndarray, groups: np.ndarray, noise: float = 0.0, seed: int = 0
) -> np.ndarray:
    """Three features that are an exact affine function of the target, plus per-frame noise:
    within each target and feature the frames' noise is spread evenly over [-noise, noise] in
    random order (no tails, so no frame is an outlier by chance)."""
    rng = np.random.default_rng(seed)
    a = np.array([[0.8, -0.3, 0.5], [0.2, 0.9, -0.4]])
    x = (labels / 1000.0) @ a + np.array([0.1, -0.2, 0.3])
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        for j in range(x.shape[1]):
            x[idx, j] += noise * rng.permutation(np.linspace(-1.0, 1.0, len(idx)))
    return x


def baseline_px(labels: np.ndarray, groups: np.ndarray) -> float:
    """The constant predictor by hand: each frame predicted by the mean of the OTHER
    targets' points (each target once), mean distance over frames."""
    ids = np.unique(groups)
    pts = {g: labels[groups == g][0] for g in ids}
    err = [
        np.linalg.norm(np.mean([pts[h] for h in ids if h != g], axis=0) - labels[i])
        for i, g in enumerate(groups)
    ]
    return float(np.mean(err))


def evaluate(x, labels, groups, **kw):
    kw.setdefault("session", "synthetic")
    kw.setdefault("features", [f"f{i}" for i in range(x.shape[1])])
    kw.setdefault("screen", SCREEN)
    return evaluate_arrays(x, labels, groups, **kw)


# --- a perfect relation ------------------------------------------------------------------


def test_baseline_matches_hand_computation():
    labels, groups = grid_data()
    ev = evaluate(linear_features(labels, groups), labels, groups)
    assert ev.report.baseline_mean_px == pytest.approx(baseline_px(labels, groups), abs=0.01)
    # a 3x3 grid over 1720x880 px: the mean of the other eight points is far from each
    assert ev.report.baseline_mean_px > 500


@pytest.mark.parametrize(("mapping", "tol_px"), [("affine", 1e-6), ("ridge", 5.0)])
def test_perfect_linear_relation_gives_near_zero_error(mapping, tol_px):
    labels, groups = grid_data()
    x = (
        linear_features(labels, groups)[:, :2]
        if mapping == "affine"
        else linear_features(labels, groups)
    )
    r = evaluate(x, labels, groups, mapping=mapping).report
    assert r.mean_px <= tol_px
    assert r.median_px <= tol_px
    assert r.baseline_mean_px > 100 * max(r.mean_px, 0.01)
    assert r.targets == 9 and r.frames == r.frames_used == 9 * FRAMES
    assert r.rejected == []
    assert r.diag_basis == "screen" and r.screen_px == (1920, 1080)
    assert r.mapping == mapping
    for t in r.per_target:
        assert t.frames == FRAMES
        assert t.mean_px <= tol_px + 0.01
        assert np.allclose(t.pred_px, t.label_px, atol=tol_px + 0.01)
        assert tuple(t.label_px) == tuple(GRID[t.target])


def test_report_numbers_agree_with_the_arrays():
    """mean/median/% diagonal/degrees are what the held-out predictions say, on the screen's
    diagonal; without a screen the targets' bounding box is the basis and degrees are None."""
    labels, groups = grid_data()
    x = linear_features(labels, groups, noise=0.03, seed=1)
    ev = evaluate(x, labels, groups)
    r = ev.report
    err = np.linalg.norm(ev.pred_px - ev.labels_px, axis=1)
    assert r.mean_px > 5  # the noise must show, or this test checks nothing
    assert r.mean_px == pytest.approx(err.mean(), abs=0.006)
    assert r.median_px == pytest.approx(np.median(err), abs=0.006)
    assert r.mean_pct_diag == pytest.approx(100 * err.mean() / np.hypot(1920, 1080), abs=1e-3)
    assert r.mean_deg == pytest.approx(np.mean(SCREEN.error_deg(err)), abs=1e-3)
    # ~344 mm over 1920 px at 600 mm: 1 deg is about 58 px
    assert r.mean_deg == pytest.approx(r.mean_px / 58.4, rel=0.05)
    for t in r.per_target:
        m = ev.groups == t.target
        assert t.mean_px == pytest.approx(err[m].mean(), abs=0.006)
        assert np.allclose(t.pred_px, ev.pred_px[m].mean(axis=0), atol=0.006)

    nb = evaluate(x, labels, groups, screen=None).report
    assert nb.diag_basis == "targets" and nb.screen_px is None and nb.mean_deg is None
    box_diag = np.hypot(1720, 880)
    assert nb.mean_pct_diag == pytest.approx(100 * nb.mean_px / box_diag, abs=1e-3)
    assert nb.baseline_mean_px == pytest.approx(r.baseline_mean_px, abs=0.01)

    no_distance = SCREEN.model_copy(update={"viewing_distance_mm": None})
    assert evaluate(x, labels, groups, screen=no_distance).report.mean_deg is None


def test_report_is_json_with_the_documented_keys():
    labels, groups = grid_data()
    r = evaluate(linear_features(labels, groups), labels, groups).report
    back = EvalReport.model_validate_json(r.model_dump_json())
    assert back == r
    assert set(r.model_dump()) == {
        "gaze_model",
        "in_sample",
        "extrapolated",
        "mirrored",
        "mirrored_basis",
        "session",
        "mapping",
        "features",
        "screen_px",
        "frames",
        "frames_used",
        "targets",
        "mean_px",
        "median_px",
        "mean_pct_diag",
        "diag_basis",
        "baseline_mean_px",
        "mean_deg",
        "per_target",
        "rejected",
        "precision",
        "selection",
        "profile",
        "clamped",
    }


# --- candidates and a fitted mapping applied unchanged -------------------------------------


def _frames(x, labels, groups) -> LabelledFrames:
    """Gaze angles (the first two columns of `x`) as the frames nested selection reads."""
    names = [f"f{i}.jpg" for i in range(len(x))]
    return LabelledFrames({"gaze_yaw": x[:, 0], "gaze_pitch": x[:, 1]}, labels, groups, names)


def test_candidates_report_the_choice_and_every_fold():
    labels, groups = grid_data()
    x = linear_features(labels, groups)
    reads = {"as read": _frames(x, labels, groups)}
    ev, choice = evaluate_candidates(reads, session="s", screen=SCREEN)
    sel = ev.report.selection
    assert sel.chosen == choice.candidate.label == "ridge:gaze"
    assert sum(sel.picked_per_fold.values()) == ev.report.targets
    # the other candidates lack their features here and say so
    assert "iris_lx" in sel.dropped["ridge:gaze+iris"]
    assert "eye_x_mm" in sel.dropped["geometric:geometric"]
    plain = evaluate(x[:, :2], labels, groups).report
    assert ev.report.mean_px == pytest.approx(plain.mean_px, abs=0.01)


def test_a_fitted_mapping_applied_unchanged_reports_like_loto():
    labels, groups = grid_data()
    x = linear_features(labels, groups)
    reads = {"as read": _frames(x, labels, groups)}
    _, choice = evaluate_candidates(reads, session="s", screen=SCREEN)
    ev = evaluate_fixed(
        choice.mapping,
        x[:, :2],
        labels,
        groups,
        session="t",
        screen=SCREEN,
        mapping_name="ridge",
        features=["gaze_yaw", "gaze_pitch"],
        frames=len(x),
        rejected=[],
    )
    r = ev.report
    assert r.frames_used == len(x) and r.targets == len(np.unique(groups))
    # in-sample on noise-free linear features: near zero, far under the constant predictor
    assert r.mean_px < 0.05 * r.baseline_mean_px


# --- outliers within a target ------------------------------------------------------------


def test_robust_keep_drops_only_the_injected_outlier():
    labels, groups = grid_data(frames=10)
    x = linear_features(labels, groups, noise=0.01, seed=2)
    bad = 10 * 4 + 3  # the 4th frame of target 4
    x[bad, 1] += 1.0  # 100 noise sigmas away
    keep = robust_keep(x, groups)
    assert keep.dtype == bool and keep.shape == (len(x),)
    assert np.flatnonzero(~keep).tolist() == [bad]


def test_robust_keep_keeps_small_and_constant_targets_whole():
    groups = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2])
    x = np.zeros((12, 2))
    x[2, 0] = 50.0  # target 0 has 3 frames: a MAD of three numbers says nothing
    x[3:8, 0] = 1.0  # target 1: constant feature 0 ...
    x[3:8, 1] = [0.0, 0.1, 0.2, 0.3, 0.4]  # ... and a spread one without outliers
    x[8:, 1] = [0.0, 0.1, 0.2, 0.3]
    assert robust_keep(x, groups).all()
    x[11, 1] = 3.0  # target 2, 4 frames: now one is far out
    assert np.flatnonzero(~robust_keep(x, groups)).tolist() == [11]


def test_outlier_frame_is_removed_and_listed():
    labels, groups = grid_data(frames=10)
    x = linear_features(labels, groups, noise=0.01, seed=2)
    names = [f"img_{1000 + i}.jpg" for i in range(len(x))]
    clean = evaluate(x, labels, groups, names=names).report
    bad = 10 * 4 + 3
    x[bad, 1] += 1.0
    ev = evaluate(x, labels, groups, names=names, rejected=[("img_1.json", "malformed record")])
    r = ev.report
    assert [(f.file, f.why) for f in r.rejected] == [
        ("img_1.json", "malformed record"),
        (names[bad], "outlier within its target"),
    ]
    assert r.frames_used == 9 * 10 - 1
    assert r.frames == 9 * 10 + 1  # used + every rejected file
    assert len(ev.labels_px) == len(ev.pred_px) == len(ev.groups) == r.frames_used
    target4 = next(t for t in r.per_target if t.target == 4)
    assert target4.frames == 9
    # the outlier did not reach any fit: the numbers are those of the clean data
    # (apart from the missing frame's own error)
    assert r.mean_px == pytest.approx(clean.mean_px, rel=0.1)
    # names default to frame indices
    unnamed = evaluate(x, labels, groups).report
    assert [f.file for f in unnamed.rejected] == [f"frame {bad}"]


# --- leave-one-TARGET-out ------------------------------------------------------------------


@pytest.mark.parametrize("mapping", ["ridge", "poly2", "rbf"])
def test_held_out_target_never_reaches_the_fit(mapping):
    """Features that are a one-hot target id identify each target perfectly, so any fit that
    saw the held-out target's frames would predict it exactly (0 px). Held out honestly,
    the id of an unseen target says nothing and the error stays at the constant predictor's."""
    labels, groups = grid_data()
    x = np.eye(9)[groups]
    r = evaluate(x, labels, groups, mapping=mapping).report
    assert r.baseline_mean_px > 500
    assert r.mean_px == pytest.approx(r.baseline_mean_px, rel=0.05)
    base = {g: np.linalg.norm(np.delete(GRID, g, axis=0).mean(axis=0) - GRID[g]) for g in range(9)}
    for t in r.per_target:  # target by target, not just on average
        assert t.mean_px == pytest.approx(base[t.target], abs=0.05 * r.baseline_mean_px)
    # the same features fitted with every target seen are (near) perfect: the leak is real
    hyper = {"alpha": 1e-4, "gamma": 1.0} if mapping == "rbf" else {"alpha": 1e-4}
    m = make_mapping(mapping, **hyper).fit(x, SCREEN.to_norm(labels), groups=groups)
    in_sample = np.linalg.norm(SCREEN.to_px(m.predict(x)) - labels, axis=1).mean()
    assert in_sample < 0.2 * r.mean_px


# --- too few targets ---------------------------------------------------------------------


@pytest.mark.parametrize(("mapping", "n_targets", "need"), [("ridge", 3, 4), ("rbf", 4, 5)])
def test_too_few_targets_is_a_value_error_naming_the_counts(mapping, n_targets, need):
    labels, groups = grid_data(n_targets=n_targets)
    with pytest.raises(ValueError) as e:
        evaluate(linear_features(labels, groups), labels, groups, mapping=mapping, session="s1")
    msg = str(e.value)
    assert msg.startswith("s1:")
    assert f"{n_targets} usable targets" in msg
    assert f"at least {need}" in msg
    assert mapping in msg
    # one more target is enough
    labels, groups = grid_data(n_targets=need)
    r = evaluate(linear_features(labels, groups), labels, groups, mapping=mapping).report
    assert r.targets == need


class _Fixed:
    """A fitted mapping that answers given normalised points, one per frame."""

    def __init__(self, norm: np.ndarray):
        self.norm = norm

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.norm[x[:, 0].astype(int)]


def test_a_point_off_the_screen_is_scored_where_the_cursor_shows_it():
    """The fast path never shows the cursor beyond the screen's edge, so an error is
    measured from the edge; off-screen predictions are counted, and without a known screen
    (targets' bounding box) nothing is clamped."""
    labels, groups = grid_data(frames=1)
    norm = SCREEN.to_norm(labels) + [0.01, 0.0]
    norm[2] = [3.0, -1.0]  # target (1820, 100): predicted far beyond the top right
    x = np.arange(9.0)[:, None]
    kw = dict(session="s", mapping_name="fixed", features=["i"], frames=9, rejected=[])
    r = evaluate_fixed(_Fixed(norm), x, labels, groups, screen=SCREEN, **kw).report
    assert r.clamped == 1
    far = next(t for t in r.per_target if t.target == 2)
    assert far.pred_px == (1920.0, 0.0)
    assert far.mean_px == pytest.approx(np.hypot(100, 100), abs=0.01)
    assert r.per_target[0].mean_px == pytest.approx(19.2, abs=0.01)  # on screen: untouched
    # the same predictions when no screen is known: nothing to clamp to
    unknown = evaluate_arrays(
        x, labels, groups, session="s", features=["i"], screen=None, mapping="ridge"
    ).report
    assert unknown.clamped is None


def test_targets_held_out_beyond_the_others_are_counted_as_extrapolation(monkeypatch):
    """DESIGN: with 4 targets, leave-one-target-out is extrapolation to a corner and says
    so. Counted from the layout: outside the convex hull of the other targets, without
    scipy (only the trainer extra has it: a laptop's eval would fail on the import)."""
    import sys

    from gazeloop.calibration.metrics.evaluate import outside_the_others

    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.spatial", None)

    grid = [(x, y) for y in (0, 0.5, 1) for x in (0, 0.5, 1)]
    assert outside_the_others(grid).tolist() == [1, 0, 1, 0, 0, 0, 1, 0, 1]  # the corners
    wobbly = [(x + 0.003 * (i % 2), y) for i, (x, y) in enumerate(grid)]  # a hair off a row
    assert outside_the_others(wobbly).sum() == 4
    assert outside_the_others([(0, 0), (1, 0), (0, 1), (1, 1)]).all()
    assert outside_the_others([(0, 0), (1, 0), (2, 0), (3, 0)]).all()  # no area inside


def test_a_frame_the_chosen_mapping_cannot_place_is_placed_by_the_next_candidate():
    """One target's frames with the eyes 30 mm from the lens (a face size gone wrong): the
    geometric mapping places them nowhere, and where it wins the fold that holds them out,
    the next candidate fitted on the same targets places them (features only). The means
    stay numbers, not NaN."""
    from gazeloop.calibration.mapping.geometric import COLUMNS
    from gazeloop.calibration.metrics.evaluate import evaluate_candidates
    from tests.calibration.mapping.test_geometric import H_MM, W_MM, session

    X, Y, g = session(noise_deg=0.3, side=3)
    X[g == 4, 4] = -30.0
    screen = ScreenGeometry(px=(1500, 950), mm=(W_MM, H_MM))
    cols = {k: X[:, i] for i, k in enumerate(COLUMNS)}
    fr = LabelledFrames(cols, Y * np.array(screen.px), g, [f"f{i}" for i in range(len(Y))])
    ev, _ = evaluate_candidates({"as read": fr}, session="s", screen=screen)
    assert ev.report.selection.picked_per_fold.get("geometric:geometric", 0) >= 1
    assert np.isfinite(ev.pred_px).all() and np.isfinite(ev.report.mean_px)
    (t4,) = [t for t in ev.report.per_target if t.target == 4]
    assert t4.mean_px < 100
