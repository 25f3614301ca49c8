"""What the drift loop and the click and glance rules compare labels with: the History of a
real run, on the 4-corner recording through the real fast path and its 1€ filter."""

from __future__ import annotations

import numpy as np

from gazeloop.calibration.profile import Profile, ProfileMapper
from gazeloop.calibration.store.session import read_session
from gazeloop.fastpath.pipeline import FastPath, FastPathConfig
from gazeloop.fastpath.sources import SessionSource
from gazeloop.tools.runtime.live import Live


def test_the_history_holds_each_frames_own_estimate_not_the_cursor_trailing_it(c4_profile):
    """The filtered cursor trails a gaze shift by 0.3-0.6 s: a click 150 ms after the eye
    landed was compared with a point still on its way, and the loop moved the offset for
    drift that was not there."""
    prof = Profile.load(c4_profile)
    live = Live(FastPath(FastPathConfig()), mapper=ProfileMapper(prof))
    w, h = prof.screen.px
    lag_px = []
    try:
        with SessionSource(read_session(c4_profile.parent / "session")) as src:
            for frame in src:
                s = live.process(frame)
                if s.screen_xy_raw is None or not s.quality.usable:
                    continue
                kept = live.history.at(frame.t_ns, 0)
                assert kept is not None and np.array_equal(kept, s.screen_xy_raw)
                lag_px.append(np.hypot(*((s.screen_xy_unclipped - s.screen_xy_raw) * (w, h))))
    finally:
        live.close()
    # The two differ where it matters (after each target switch), so the History's choice
    # between them is what is tested here.
    assert len(lag_px) > 50 and max(lag_px) > 100, (len(lag_px), max(lag_px, default=None))
