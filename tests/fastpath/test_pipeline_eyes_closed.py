"""The cursor across closed eyes, on real frames: the 4-corner recording's first and last
corners through the real fast path, its 1€ filter and a profile fitted on it, with
`no_face.jpg` (a person, eyes closed) between them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gazeloop.calibration.profile import Profile, ProfileMapper
from gazeloop.calibration.store.session import load_image
from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
from gazeloop.fastpath.types import Frame

PERIOD_NS = 33_000_000  # 30 fps


def _corner(session, target: int) -> list[np.ndarray]:
    out = []
    for rec in sorted(session.glob("img_*.json")):
        d = json.loads(rec.read_text())
        if d["target"] == target and not d.get("settling", False):
            out.append(load_image(rec.with_suffix(".jpg")))
    return out


@pytest.fixture(scope="module")
def corners(c4_profile, shared):
    session = c4_profile.parent / "session"
    closed = load_image(shared / "data/video-corners4/no_face.jpg")
    return _corner(session, 0), closed, _corner(session, 3), Profile.load(c4_profile)


def _first_open_frame(corners, closed_frames: int) -> float:
    """How far the shown point is from the frame's own estimate (px) on the first open
    frame at the last corner, after 1 s at the first and `closed_frames` eyes closed."""
    first, closed, last, prof = corners
    fp = FastPath(FastPathConfig())
    fp.set_mapper(ProfileMapper(prof))
    seq = [first[k % len(first)] for k in range(30)] + [closed] * closed_frames + last[:1]
    try:
        for k, img in enumerate(seq):
            s = fp.process(Frame(k * PERIOD_NS, img, k))
            assert s.quality.blink == (30 <= k < 30 + closed_frames)
    finally:
        fp.close()
    px = np.asarray(prof.screen.px, dtype=float)
    return np.hypot(*((s.screen_xy_unclipped - s.screen_xy_raw) * px))


def test_eyes_closed_for_seconds_start_the_cursor_afresh_where_the_gaze_is(corners):
    """The filter resumed as if one frame had passed: after 2 s with the eyes closed (a
    look down at the keys reads so too) the cursor glided from the first corner, half the
    screen away, and the History took each point of the glide for gaze."""
    assert _first_open_frame(corners, 60) < 1.0


def test_a_blink_keeps_the_filter_so_the_cursor_does_not_jump(corners):
    assert _first_open_frame(corners, 6) > 300.0  # 0.2 s: still on its way from the first
