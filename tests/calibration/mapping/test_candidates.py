"""Candidates in the nested selection: feature sets, families and reads of the frames
compete by inner leave-one-target-out; those that cannot run drop out with the reason; a
near tie goes to the simpler one; the held-out target never reaches the choice."""

from __future__ import annotations

import numpy as np
import pytest

from gazeloop.calibration.frames import LabelledFrames
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping import candidates as cd
from gazeloop.calibration.mapping.candidates import Candidate
from gazeloop.calibration.mapping.families import mapping_class


def grid(side: int) -> np.ndarray:
    v = np.linspace(0.1, 0.9, side)
    return np.array([(x, y) for y in v for x in v])


def views_for(Y: np.ndarray, *, head_matters: bool, seed: int = 0, noise: float = 0.01):
    """Gaze angles that see the target, head pose that varies per target; with
    `head_matters` the gaze angles are off by the head pose (the head must be modelled)."""
    rng = np.random.default_rng(seed)
    head = rng.normal(scale=0.1, size=(len(Y), 2))
    gaze = (Y - 0.5) * 0.5 + noise * rng.normal(size=Y.shape)
    if head_matters:
        gaze = gaze + head
    view = {"gaze_yaw": gaze[:, 0], "gaze_pitch": gaze[:, 1]}
    view |= {"head_yaw": head[:, 0], "head_pitch": head[:, 1]}
    return {"as read": view}


# A square screen of 1000 px: the targets' normalised units are Y itself.
SCREEN = ScreenGeometry(px=(1000, 1000))


def reads(views: dict, Y: np.ndarray) -> dict[str, LabelledFrames]:
    """Named columns per read as the frames nested selection takes, one target per row."""
    names = [f"f{i}" for i in range(len(Y))]
    return {
        r: LabelledFrames(cols, Y * 1000.0, np.arange(len(Y)), names) for r, cols in views.items()
    }


RIDGE_GAZE = Candidate("ridge", cd.GAZE, "gaze")
RIDGE_HEAD = Candidate("ridge", cd.GAZE + cd.HEAD, "gaze+head")


def test_the_simplest_wins_when_richer_features_add_nothing():
    Y = grid(4)
    views = views_for(Y, head_matters=False)
    ch = cd.choose([RIDGE_GAZE, RIDGE_HEAD], reads(views, Y), SCREEN)
    assert ch.candidate == RIDGE_GAZE
    assert set(ch.scores) == {"ridge:gaze", "ridge:gaze+head"}
    assert set(ch.fitted) == {"ridge:gaze", "ridge:gaze+head"}


def test_head_pose_wins_when_the_gaze_is_off_by_it():
    Y = grid(4)
    views = views_for(Y, head_matters=True)
    ch = cd.choose([RIDGE_GAZE, RIDGE_HEAD], reads(views, Y), SCREEN)
    assert ch.candidate == RIDGE_HEAD
    assert ch.scores["ridge:gaze+head"] < 0.5 * ch.scores["ridge:gaze"]


def test_a_near_tie_goes_to_the_simpler():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.05, 0.1, 12)
    assert not cd.beats(base - 0.001 + rng.normal(scale=0.01, size=12), base)  # within noise
    assert cd.beats(base - 0.02 + rng.normal(scale=0.005, size=12), base)  # a clear gain
    assert not cd.beats(None, base) and not cd.beats(base, None)  # no spare target


def test_too_few_targets_drop_a_family_with_the_reason():
    Y = grid(2)  # 4 targets: poly2 needs 5
    views = views_for(Y, head_matters=False)
    poly = Candidate("poly2", cd.GAZE, "gaze")
    ch = cd.choose([RIDGE_GAZE, poly], reads(views, Y), SCREEN)
    assert ch.candidate == RIDGE_GAZE
    assert ch.dropped == {"poly2:gaze": "needs 5 targets, has 4"}


def test_unsolvable_geometry_drops_out_and_the_others_run():
    Y = np.column_stack([np.linspace(0.1, 0.9, 6), np.full(6, 0.5)])  # targets on one line
    views = views_for(Y, head_matters=False)
    n = len(Y)
    views["as read"] |= {"eye_x_mm": np.zeros(n), "eye_y_mm": np.zeros(n)}
    views["as read"]["eye_z_mm"] = np.full(n, -500.0)
    geo = Candidate(
        "geometric", ("gaze_yaw", "gaze_pitch", "eye_x_mm", "eye_y_mm", "eye_z_mm"), "geometric"
    )
    ch = cd.choose([RIDGE_GAZE, geo], reads(views, Y), SCREEN)
    assert ch.candidate == RIDGE_GAZE
    assert "one line" in ch.dropped["geometric:geometric"]


def test_missing_features_drop_a_candidate():
    Y = grid(3)
    views = views_for(Y, head_matters=False)
    iris = Candidate("ridge", cd.GAZE + cd.IRIS, "gaze+iris")
    ch = cd.choose([RIDGE_GAZE, iris], reads(views, Y), SCREEN)
    # Every missing feature is named: the report says what the fast path would have to give.
    want = "feature(s) ['iris_lx', 'iris_ly', 'iris_rx', 'iris_ry'] not produced by this fast path"
    assert ch.dropped["ridge:gaze+iris"] == want


def test_a_candidate_with_the_same_columns_as_an_earlier_one_is_fitted_once():
    # Under the ray-frame read the network's angles are the ray-frame ones: ridge on gaze_ray
    # is ridge on gaze. It is dropped with the reason; one that differs still competes.
    Y = grid(3)
    views = views_for(Y, head_matters=False)
    v = views["as read"]
    v["gaze_ray_yaw"], v["gaze_ray_pitch"] = v["gaze_yaw"].copy(), v["gaze_pitch"].copy()
    ray = Candidate("ridge", cd.GAZE_RAY, "gaze_ray")
    ch = cd.choose([RIDGE_GAZE, ray], reads(views, Y), SCREEN)
    assert ch.dropped == {"ridge:gaze_ray": "the same columns as ridge:gaze"}
    assert set(ch.scores) == {"ridge:gaze"}
    v["gaze_ray_yaw"] = v["gaze_ray_yaw"] + 1e-9  # one bit apart: a different fit
    ch = cd.choose([RIDGE_GAZE, ray], reads(views, Y), SCREEN)
    assert ch.dropped == {} and set(ch.scores) == {"ridge:gaze", "ridge:gaze_ray"}
    # Another family on the same columns is another fit.
    poly = Candidate("poly2", cd.GAZE_RAY, "gaze_ray")
    v["gaze_ray_yaw"] = v["gaze_yaw"].copy()
    ch = cd.choose([RIDGE_GAZE, poly], reads(views, Y), SCREEN)
    assert "poly2:gaze_ray" in ch.scores


def test_nothing_fits_is_one_error_naming_every_reason():
    Y = grid(2)
    views = views_for(Y, head_matters=False)
    with pytest.raises(ValueError, match="poly2:gaze: needs 5 targets"):
        cd.choose([Candidate("poly2", cd.GAZE, "gaze")], reads(views, Y), SCREEN)


def test_the_other_read_of_the_frames_competes():
    """Mirroring as a candidate: the read whose features see the targets wins."""
    Y = grid(4)
    good = views_for(Y, head_matters=False)["as read"]
    rng = np.random.default_rng(3)
    bad = {k: rng.normal(size=len(Y)) for k in good}
    views = {"as read": bad, "other": good}
    cands = cd.default_candidates(("as read", "other"), mappings=("ridge",), feature_sets=("gaze",))
    ch = cd.choose(cands, reads(views, Y), SCREEN)
    assert ch.candidate.read == "other" and ch.candidate.label == "ridge:gaze:other"


def both_reads(
    Y: np.ndarray, right: str = "as read", labels: np.ndarray | None = None
) -> dict[str, LabelledFrames]:
    """A camera-frame read whose gaze yaw falls as the target `Y` moves right (DESIGN.md,
    Conventions), and its mirror image; labelled `labels` (default `Y`)."""
    view = views_for(Y, head_matters=False)["as read"]
    view = view | {"gaze_yaw": -view["gaze_yaw"]}
    mirror = view | {"gaze_yaw": -view["gaze_yaw"]}
    wrong = "other" if right == "as read" else "as read"
    return reads({right: view, wrong: mirror}, Y if labels is None else labels)


@pytest.mark.parametrize("right", ["as read", "other"])
def test_the_frames_say_which_read_in_every_fold(right):
    """Both reads come whenever nothing stated the mirroring; the one the training targets'
    gaze says is right is the only one a fold may choose, decided on that fold's targets."""
    Y = grid(3)
    r = both_reads(Y, right)
    cands = cd.default_candidates(("as read", "other"), mappings=("ridge",), feature_sets=("gaze",))
    ch = cd.choose(cands, r, SCREEN)
    assert ch.candidate.read == right
    (wrong,) = [c.label for c in cands if c.read != right]
    assert ch.dropped[wrong].startswith("the other read is right on these targets")
    _, picked = cd.loto_predict_candidates(cands, r, SCREEN)
    assert picked == {next(c.label for c in cands if c.read == right): 9}


def test_a_held_out_label_cannot_choose_how_its_own_frames_are_read():
    """Four corners: moving one target's label across the screen makes the verdict on all
    four targets undecided (both reads compete) while the three others still decide; the
    fold that holds that target out reads its frames as the three others say."""
    Y = np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9]])
    moved = Y.copy()
    moved[2, 0] = 0.97
    r, r_moved = both_reads(Y), both_reads(Y, labels=moved)
    rest = np.array([0, 1, 3])
    assert cd.reads_ruled_out(r_moved, np.arange(4)) == {}  # undecided on every target
    assert set(cd.reads_ruled_out(r_moved, rest)) == {"other"}
    assert set(cd.reads_ruled_out(r, rest)) == {"other"}


def test_reads_of_other_frames_are_refused_not_compared():
    """A candidate of each read must be scored on the same frames: reads whose rows differ
    are a caller's mistake, said, not a comparison of two data sets."""
    Y = grid(3)
    r = reads(views_for(Y, head_matters=False), Y)
    r["other"] = r["as read"][np.arange(1, 9)]
    cands = cd.default_candidates(("as read", "other"), mappings=("ridge",), feature_sets=("gaze",))
    with pytest.raises(ValueError, match="read 'other': not the same frames as 'as read'"):
        cd.choose(cands, r, SCREEN)


def test_the_held_out_target_never_reaches_the_choice():
    Y = grid(4)
    views = views_for(Y, head_matters=True, noise=0.03)
    pred, picked = cd.loto_predict_candidates([RIDGE_GAZE, RIDGE_HEAD], reads(views, Y), SCREEN)
    assert sum(picked.values()) == 16
    # change one target's label: its own held-out prediction cannot change
    Y2 = Y.copy()
    Y2[5] = [0.95, 0.05]
    pred2, _ = cd.loto_predict_candidates([RIDGE_GAZE, RIDGE_HEAD], reads(views, Y2), SCREEN)
    np.testing.assert_allclose(pred2[5], pred[5], atol=1e-12)


def test_default_candidates_geometric_first_then_simplest_and_geometric_once_per_read():
    """The geometric mapping is the prior (it follows a moving head, which LOTO within a
    sitting cannot reward); ridge on gaze angles is the simplest of the rest."""
    c = cd.default_candidates(("as read", "other"))
    geometric = tuple(mapping_class("geometric").features)
    assert c[0] == Candidate("geometric", geometric, "geometric", "as read")
    assert c[1] == Candidate("ridge", cd.GAZE, "gaze", "as read")
    labels = [x.label for x in c]
    assert labels.count("geometric:geometric") == 1
    assert labels.count("geometric:geometric:other") == 1
    assert {x.feature_set for x in c if x.mapping == "ridge"} == set(cd.SITTING_FEATURE_SETS)
    # A calibration made in one sitting is never offered head-pose terms (DESIGN, Measuring).
    assert not any(f.startswith("head_") for x in c for f in x.features)
    assert set(cd.SITTING_FEATURE_SETS) < set(cd.FEATURE_SETS)
