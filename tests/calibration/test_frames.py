"""`LabelledFrames`: one validated set of columns, filtered as a whole, made by adapters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from gazeloop.calibration.frames import LabelledFrames, feature_columns, pick, rows_of


def _frames(n: int = 4, **over) -> LabelledFrames:
    cols = {
        "features": {"gaze_yaw": np.arange(n) * 0.1, "gaze_pitch": -np.arange(n) * 0.1},
        "labels_px": np.column_stack([np.arange(n) * 100.0, np.full(n, 50.0)]),
        "groups": np.arange(n) // 2,
        "names": [f"f{i}.jpg" for i in range(n)],
        "t_ns": np.arange(n) * 33_000_000,
        "settling": np.arange(n) % 2 == 0,
    }
    return LabelledFrames(**(cols | over))


BAD = [
    ({"labels_px": np.zeros((4, 3))}, "labels_px: shape (4, 3), expected (4, 2)"),
    ({"labels_px": np.array([[0, 0], [1, np.nan], [2, 2], [3, 3]])}, "labels_px: not every"),
    ({"groups": np.arange(3)}, "groups: shape (3,), expected (4,)"),
    ({"groups": np.array([0.5, 1, 2, 3])}, "groups: float64 values, expected integers"),
    ({"names": ["a", "b"]}, "names: shape (2,), expected (4,)"),
    ({"t_ns": np.zeros(5, np.int64)}, "t_ns: shape (5,), expected (4,)"),
    ({"settling": np.zeros((4, 1), bool)}, "settling: shape (4, 1), expected (4,)"),
    ({"features": {"gaze_yaw": np.zeros(2)}}, "gaze_yaw: shape (2,), expected (4,)"),
    ({"groups": np.ones(4, bool)}, "groups: bool values, expected integers"),
    ({"settling": ["False"] * 4}, "settling: <U5 values, expected True/False"),
    ({"settling": np.zeros(4)}, "settling: float64 values, expected True/False"),
]


@pytest.mark.parametrize(("over", "message"), BAD)
def test_a_column_that_does_not_fit_is_refused_by_name(over, message):
    with pytest.raises(ValueError) as e:
        _frames(**over)
    assert message in str(e.value)


def test_columns_are_typed_and_sorted():
    f = _frames()
    assert list(f.features) == ["gaze_pitch", "gaze_yaw"]
    assert f.labels_px.dtype == np.float64 and f.groups.dtype == np.int64
    assert f.t_ns.dtype == np.int64 and f.settling.dtype == bool and f.names.dtype.kind == "U"
    assert len(f) == 4 and f.n_targets == 2


def test_defaults_for_time_and_settling():
    f = LabelledFrames(features={}, labels_px=np.zeros((2, 2)), groups=[0, 1], names=["a", "b"])
    assert f.t_ns.tolist() == [0, 0] and f.settling.tolist() == [False, False]


def test_a_mask_or_an_index_picks_rows_of_every_column():
    f = _frames()
    s = f[~f.settling]
    assert s.names.tolist() == ["f1.jpg", "f3.jpg"]
    assert s.features["gaze_yaw"].tolist() == pytest.approx([0.1, 0.3])
    assert s.labels_px[:, 0].tolist() == [100.0, 300.0] and s.groups.tolist() == [0, 1]
    assert s.t_ns.tolist() == [33_000_000, 99_000_000] and not s.settling.any()
    back = f[np.array([3, 0])]
    assert back.names.tolist() == ["f3.jpg", "f0.jpg"] and back.groups.tolist() == [1, 0]
    with pytest.raises(IndexError, match="mask of shape"):
        f[np.array([True, False])]
    with pytest.raises(IndexError, match="boolean mask, an index array or a slice"):
        f[0]
    assert len(f[[]]) == 0 and list(f[[]].features) == list(f.features)
    assert f[1:3].names.tolist() == ["f1.jpg", "f2.jpg"]


def test_the_columns_are_the_batchs_own_not_the_callers():
    yaw, groups = np.zeros(2), np.array([0, 1])
    f = LabelledFrames(
        features={"gaze_yaw": yaw}, labels_px=np.zeros((2, 2)), groups=groups, names=["a", "b"]
    )
    yaw[0], groups[0] = 9.0, 7
    assert f.features["gaze_yaw"][0] == 0.0 and f.groups[0] == 0


def test_no_frames_is_a_batch_whose_matrix_has_every_column():
    f = LabelledFrames(features={}, labels_px=[], groups=[], names=[])
    assert len(f) == 0 and f.n_targets == 0
    assert f.matrix(["gaze_yaw", "gaze_pitch"]).shape == (0, 2)


def test_matrix_in_the_asked_order_and_a_missing_feature_named():
    f = _frames()
    m = f.matrix(["gaze_yaw", "gaze_pitch"])
    assert m.shape == (4, 2) and m[:, 0].tolist() == pytest.approx([0, 0.1, 0.2, 0.3])
    with pytest.raises(KeyError) as e:
        f.matrix(["gaze_yaw", "head_yaw"])
    assert "'head_yaw' is not produced by this fast path (available: gaze_pitch, gaze_yaw)" in str(
        e.value
    )


def test_embedding_stands_for_every_embedding_column():
    emb = {f"emb_{i}": np.full(2, float(i)) for i in range(3)}
    f = LabelledFrames(
        features={"gaze_yaw": np.zeros(2), **emb},
        labels_px=np.zeros((2, 2)),
        groups=[0, 1],
        names=["a", "b"],
    )
    assert f.expand(["gaze_yaw", "embedding"]) == ["gaze_yaw", "emb_0", "emb_1", "emb_2"]
    assert f.matrix(["embedding"])[0].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(KeyError, match=r"emb_0..emb_2\)"):
        f.matrix(["iris_lx"])


@dataclass
class _Sample:
    d: dict

    def feature_dict(self):
        return self.d


@dataclass
class _Row:  # shaped like the fast path's LabelledSample
    name: str
    t_ns: int
    label_px: tuple[float, float]
    target: int
    sample: _Sample
    settling: bool = False


def test_from_samples_keeps_order_and_only_the_features_every_frame_has():
    rows = [
        _Row("a", 1, (10.0, 20.0), 0, _Sample({"gaze_yaw": 0.1, "gaze_ray_yaw": 0.3})),
        _Row("b", 2, (30.0, 40.0), 1, _Sample({"gaze_yaw": 0.2}), settling=True),
    ]
    f = LabelledFrames.from_samples(rows)
    assert list(f.features) == ["gaze_yaw"]
    assert f.names.tolist() == ["a", "b"] and f.t_ns.tolist() == [1, 2]
    assert f.labels_px.tolist() == [[10.0, 20.0], [30.0, 40.0]]
    assert f.settling.tolist() == [False, True]
    empty = LabelledFrames.from_samples([])
    assert len(empty) == 0 and empty.features == {} and empty.matrix([]).shape == (0, 0)


def test_concat_of_a_batch_without_frames_keeps_the_others_features():
    """Hot reload pools a user's sittings: one that gave no usable frame adds no rows and
    must not take every feature away from the rest."""
    empty = LabelledFrames.from_samples([])
    c = LabelledFrames.concat([_frames(2), empty, _frames(3)])
    assert len(c) == 5 and list(c.features) == ["gaze_pitch", "gaze_yaw"]
    assert c.matrix(["gaze_yaw"]).shape == (5, 1)


def test_concat_keeps_rows_in_order_and_the_common_features():
    a = _frames(2)
    b = _frames(3, features={"gaze_yaw": np.ones(3)}, groups=[5, 5, 6])
    c = LabelledFrames.concat([a, b])
    assert len(c) == 5 and list(c.features) == ["gaze_yaw"]
    assert c.groups.tolist() == [0, 0, 5, 5, 6]
    assert c.names.tolist() == ["f0.jpg", "f1.jpg", "f0.jpg", "f1.jpg", "f2.jpg"]
    assert len(LabelledFrames.concat([])) == 0


def test_feature_columns_of_no_frames_is_empty():
    assert feature_columns([]) == {}
    cols = feature_columns([{"a": 1, "b": 2}, {"a": 3}])
    assert list(cols) == ["a"] and cols["a"].tolist() == [1.0, 3.0]


def test_collected_picks_its_rows_before_it_makes_the_columns():
    """A settling frame without a feature (the eyes' line is left out when the mesh is
    degenerate) must not take that feature from the settled frames a mapping uses."""
    from gazeloop.fastpath.collect import Collected

    ray = {"gaze_yaw": 0.1, "gaze_ray_yaw": 0.3}
    col = Collected(
        session=None,
        samples=[
            _Row("a", 1, (0.0, 0.0), 0, _Sample({"gaze_yaw": 0.0}), settling=True),
            _Row("b", 2, (10.0, 0.0), 0, _Sample(ray)),
            _Row("c", 3, (20.0, 0.0), 1, _Sample(ray)),
        ],
    )
    used = col.labelled()
    assert used.names.tolist() == ["b", "c"]
    assert used.matrix(["gaze_ray_yaw"]).ravel().tolist() == [0.3, 0.3]
    every = col.labelled(settling=True)
    assert every.names.tolist() == ["a", "b", "c"] and "gaze_ray_yaw" not in every.features


def test_reads_are_picked_together_and_must_hold_the_same_frames():
    """Nested selection compares candidates of each read on the same frames: a pick takes
    the same rows of every read, and reads of other rows are refused by name."""
    mirrored = _frames(features={"gaze_yaw": -np.arange(4) * 0.1})
    reads = {"as read": _frames(), "other": mirrored}
    kept = pick(reads, np.array([True, False, True, True]))
    assert rows_of(kept).names.tolist() == ["f0.jpg", "f2.jpg", "f3.jpg"]
    assert kept["other"].features["gaze_yaw"].tolist() == pytest.approx([0.0, -0.2, -0.3])
    assert rows_of(reads) is reads["as read"]
    with pytest.raises(ValueError, match="read 'other': not the same frames as 'as read'"):
        rows_of({"as read": _frames(), "other": mirrored[::-1]})
    with pytest.raises(ValueError, match="read 'other': not the same frames"):
        rows_of({"as read": _frames(), "other": mirrored[:3]})
    with pytest.raises(ValueError, match="no read of the frames"):
        rows_of({})
