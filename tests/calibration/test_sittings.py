"""Pooling sittings: a screen point is one target across sittings, outliers are judged within
their own sitting, and head-pose features compete only once the data spans two sittings."""

from __future__ import annotations

import numpy as np
import pytest

from gazeloop.calibration.frames import LabelledFrames
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping.candidates import FEATURE_SETS, SITTING_FEATURE_SETS
from gazeloop.calibration.sittings import (
    choose_with_history,
    loto_with_history,
    point_groups,
    pool_sittings,
    pooled_candidates,
    without_point,
)

COLS = ("gaze_yaw", "gaze_pitch", "head_yaw")


def _reads(raw) -> dict[str, LabelledFrames]:
    """(named columns per read, labels, groups) as one sitting's frames per read."""
    views, labels, groups = raw
    names = [f"f{i}" for i in range(len(labels))]
    return {r: LabelledFrames(cols, labels, groups, names) for r, cols in views.items()}


def _sitting(points, frames, shift, reads=("as read",)):
    """`frames` frames at each screen point; the gaze angles moved by `shift` (a head
    elsewhere in this sitting)."""
    labels = np.repeat(np.asarray(points, float), frames, axis=0)
    groups = np.repeat(np.arange(len(points)) + 100 * (shift + 1), frames)
    base = labels / 1000.0 + shift
    # a fixed spread within each target (a drawn one would make chance outliers of 5 frames)
    jitter = np.tile(np.linspace(-1e-3, 1e-3, frames), len(points))
    view = {
        "gaze_yaw": base[:, 0] + jitter,
        "gaze_pitch": base[:, 1] - jitter,
        "head_yaw": np.full(len(labels), float(shift)),
    }
    return {r: {k: v.copy() for k, v in view.items()} for r in reads}, labels, groups


def test_a_screen_point_is_one_target_in_every_sitting():
    pts = [(100, 100), (900, 100), (500, 500), (100, 800)]
    a = _sitting(pts, 5, 0)
    b = _sitting(pts[:3] + [(800, 800)], 5, 1)  # three shared points, one new
    pool = pool_sittings([_reads(a), _reads(b)])
    f = pool.frames
    assert pool.n_sittings == 2 and pool.dropped == 0 and len(f) == 40
    assert f.n_targets == 5
    for p in pts[:3]:
        rows = (f.labels_px == p).all(axis=1)
        assert len(np.unique(f.groups[rows])) == 1
        assert set(pool.sitting[rows]) == {0, 1}
    # sub-pixel differences in a label are the same point
    assert len(np.unique(point_groups(np.array([[10.2, 5.0], [9.8, 5.3], [11.0, 5.0]])))) == 2


def test_outliers_are_judged_within_their_own_sitting():
    """A point's angles differ between sittings (the head moved): nothing is dropped for
    that, but a wild frame within one sitting's target is."""
    pts = [(100, 100), (900, 100), (500, 500), (100, 800)]
    a, a2 = _sitting(pts, 6, 0), _sitting(pts, 6, 0)
    b = _sitting(pts, 6, 3)  # every angle moved by 3 rad: far beyond a pooled point's MAD
    b[0]["as read"]["gaze_yaw"][2] += 0.5  # one blink-like frame of b's first target
    pool = pool_sittings([_reads(a), _reads(a2), _reads(b)])
    assert pool.dropped == 1 and len(pool.frames) == 71
    assert (pool.sitting == 2).sum() == 23


def test_only_reads_and_columns_every_sitting_has_are_pooled():
    pts = [(100, 100), (900, 100), (500, 500), (100, 800)]
    a = _sitting(pts, 2, 0, reads=("as read", "other"))
    b = _sitting(pts, 2, 1)
    del b[0]["as read"]["head_yaw"]
    pool = pool_sittings([_reads(a), _reads(b)])
    assert list(pool.reads) == ["as read"]
    assert set(pool.frames.features) == {"gaze_yaw", "gaze_pitch"}
    with pytest.raises(ValueError, match="no sittings"):
        pool_sittings([])


def test_head_pose_features_compete_from_two_sittings_on():
    one = {c.feature_set for c in pooled_candidates(("as read",), 1)}
    two = {c.feature_set for c in pooled_candidates(("as read",), 2)}
    assert one == set(SITTING_FEATURE_SETS) | {"geometric"}
    assert two == set(FEATURE_SETS) | {"geometric"}
    assert not any("head" in s for s in one) and {"gaze+head", "gaze+head+eyes"} <= two
    assert {c.read for c in pooled_candidates(("as read", "other"), 2)} == {"as read", "other"}


def test_a_pooled_fit_judges_outliers_within_a_target_of_one_sitting():
    """Three sittings, the third with its head elsewhere: judged per point across sittings
    its frames would all be outliers; judged per target of one sitting, none is."""
    from gazeloop.calibration.geometry import ScreenGeometry
    from gazeloop.calibration.procedure import fit_profile

    pts = [(100, 100), (900, 100), (500, 500), (100, 800), (800, 800)]
    pool = pool_sittings([_reads(_sitting(pts, 6, s)) for s in (0, 0, 3)])
    screen = ScreenGeometry(px=(1000, 1000))
    x = pool.frames.matrix(COLS)
    kw = dict(
        screen=screen,
        features=list(COLS),
        user="u",
        device="d",
        gaze_model_id="m",
        gaze_model_sha256="0" * 64,
    )
    y, groups = screen.to_norm(pool.frames.labels_px), pool.frames.groups
    assert len(np.unique(pool.cells)) == 15
    assert fit_profile(x, y, groups, outlier_groups=pool.cells, **kw).fit.frames == 90
    assert fit_profile(x, y, groups, **kw).fit.frames == 60


def _moving_head(points, frames, rng, scale=1.0):
    """A head that moves from frame to frame: the gaze angles that land on a screen point
    depend on where the head is (screen = 4000 px/rad × (gaze + 0.3 head) / `scale`)."""
    labels = np.repeat(np.asarray(points, float), frames, axis=0)
    groups = np.repeat(np.arange(len(points)), frames)
    head = rng.normal(0, 0.05, labels.shape)
    gaze = scale * labels / 4000.0 - 0.3 * head + rng.normal(0, 2e-4, labels.shape)
    view = {
        "gaze_yaw": gaze[:, 0],
        "gaze_pitch": gaze[:, 1],
        "head_yaw": head[:, 0],
        "head_pitch": head[:, 1],
    }
    return _reads(({"as read": view}, labels, groups))


GRID = [(x, y) for y in (100, 400, 700) for x in (100, 500, 900)]
SCREEN = ScreenGeometry(px=(1000, 800))


def test_a_calibration_pools_earlier_sittings_that_agree_with_it():
    """Earlier sittings of the same person: pooled, head pose competes as a feature and
    explains what a moving head does to the angles, which this sitting alone is not offered
    (one sitting's leave-one-out cannot judge it), and this sitting's own points say so."""
    rng = np.random.default_rng(0)
    now = _moving_head(GRID, 2, rng)
    earlier = [_moving_head(GRID, 2, rng) for _ in range(3)]
    h = choose_with_history(now, earlier, SCREEN)
    assert h.use_pool and h.pooled_px < 0.25 * h.alone_px
    assert h.chosen is h.pooled and h.pool.n_sittings == 4
    assert h.pooled.candidate.feature_set == "gaze+head"
    assert h.alone.candidate.feature_set == "gaze"


def test_a_calibration_stays_alone_when_earlier_sittings_disagree():
    """Earlier sittings map angles to the screen half as steeply (another screen distance,
    say, with nothing in the features to tell): the pool is a compromise, worse on this
    sitting's points, which is what they show."""
    rng = np.random.default_rng(1)
    now = _moving_head(GRID, 2, rng)
    earlier = [_moving_head(GRID, 2, rng, scale=0.5) for _ in range(3)]
    h = choose_with_history(now, earlier, SCREEN)
    assert not h.use_pool and h.alone_px < 0.5 * h.pooled_px
    assert h.chosen is h.alone


def test_the_choice_with_history_is_judged_on_points_left_out_of_every_sitting():
    rng = np.random.default_rng(0)
    now = _moving_head(GRID, 2, rng)
    earlier = [_moving_head(GRID, 2, rng) for _ in range(3)]
    part = without_point(earlier[0], np.array([500.0, 400.0]))["as read"]
    assert len(part) == 16 and not (part.labels_px == (500, 400)).all(axis=1).any()
    errs, pooled = loto_with_history(now, earlier, SCREEN)
    assert len(errs) == 9 and pooled == 9  # every fold chose the pool, as on all the points
    # Every fold chose the pool's candidate with the same hyper-parameters, so the outer
    # error is the inner score: in both, the point is left out of every sitting.
    h = choose_with_history(now, earlier, SCREEN)
    assert errs.mean() == pytest.approx(h.pooled_px)
    assert errs.mean() < 0.25 * h.alone_px
