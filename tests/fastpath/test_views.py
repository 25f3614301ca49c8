"""`session_views`: the frames every read can use, the same rows in each read, and every
frame left out named with why. The collection is canned (its own tests run the networks)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from gazeloop.calibration.store.session import Rejection
from gazeloop.fastpath import views
from gazeloop.fastpath.collect import Collected


@dataclass
class _Sample:
    d: dict

    def feature_dict(self):
        return self.d


@dataclass
class _Row:  # shaped like LabelledSample
    name: str
    t_ns: int
    label_px: tuple[float, float]
    target: int
    sample: _Sample
    settling: bool = False


def _row(name, yaw, target, *, settling=False, ray=True):
    d = {"gaze_yaw": yaw, "gaze_pitch": 0.0} | ({"gaze_ray_yaw": yaw / 2} if ray else {})
    return _Row(name, int(name[1:]), (100.0 * target, 50.0), target, _Sample(d), settling)


def _views(monkeypatch, as_read: Collected, other: Collected | None):
    as_read.other = other
    monkeypatch.setattr(views, "collect_session", lambda *a, **k: as_read)
    return views.session_views(SimpleNamespace(folder="s"), fp=None)


def test_frames_either_read_cannot_use_are_named_and_the_rows_agree(monkeypatch):
    session = SimpleNamespace(folder="s")
    as_read = Collected(
        session=session,
        samples=[
            _row("f1", 0.1, 0, settling=True, ray=False),  # no eyes' line: must not matter
            _row("f2", 0.2, 0),
            _row("f3", 0.3, 1),
            _row("f4", 0.4, 2),
        ],
        rejected=[Rejection(file="f0", why="no face found")],
    )
    other = Collected(session=session, samples=[_row("f2", -0.2, 0), _row("f4", -0.4, 2)])
    v = _views(monkeypatch, as_read, other)
    assert v.rejected == [
        ("f0", "no face found"),
        ("f1", "settling: eyes still moving to the target"),
        ("f3", "no gaze in the other read of the frames"),
    ]
    f = v.frames
    assert f.names.tolist() == ["f2", "f4"] and f.groups.tolist() == [0, 2]
    assert f.labels_px.tolist() == [[0.0, 50.0], [200.0, 50.0]]
    assert f.features["gaze_yaw"].tolist() == [0.2, 0.4]
    assert v.reads["other"].features["gaze_yaw"].tolist() == [-0.2, -0.4]
    assert v.reads["other"].names.tolist() == ["f2", "f4"]  # the same rows in every read
    # A settling frame without a feature does not take it from the frames that are used.
    assert f.features["gaze_ray_yaw"].tolist() == [0.1, 0.2]


def test_no_usable_frame_in_every_read_is_refused(monkeypatch):
    session = SimpleNamespace(folder="s")
    as_read = Collected(session=session, samples=[_row("f1", 0.1, 0, settling=True)])
    # Why, not only how many: a one-frame session that was settling said "(1 rejected)".
    why = "s: no usable frames \\(1 rejected; settling: eyes still moving to the target\\)"
    with pytest.raises(views.NoUsableFrames, match=why):
        _views(monkeypatch, as_read, None)


def test_the_line_for_no_usable_frame_names_the_commonest_reason():
    rejected = [("a", "no face found"), ("b", "no face found"), ("c", "blink")]
    assert views.none_usable("s", rejected) == (
        "s: no usable frames (3 rejected; 2 of them: no face found)"
    )
    assert views.none_usable("s", []) == "s: no usable frames (no labelled frame in it)"
