"""`LabelledFrames`: one validated set of columns, filtered as a whole, made by adapters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from gazeloop.calibration.frames import LabelledFrames, feature_columns


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
    s = f.settled()
    assert s.names.tolist() == ["f1.jpg", "f3.jpg"]
    assert s.features["gaze_yaw"].tolist() == pytest.approx([0.1, 0.3])
    assert s.labels_px[:, 0].tolist() == [100.0, 300.0] and s.groups.tolist() == [0, 1]
    assert s.t_ns.tolist() == [33_000_000, 99_000_000] and not s.settling.any()
    back = f[np.array([3, 0])]
    assert back.names.tolist() == ["f3.jpg", "f0.jpg"] and back.groups.tolist() == [1, 0]
    with pytest.raises(IndexError, match="mask of shape"):
        f[np.array([True, False])]


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
