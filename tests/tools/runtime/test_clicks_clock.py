"""Where a press lands on the frames' clock: a camera's frames are stamped by the clock the
presses are read from, so a press is at its own time; a replay's frames carry media time,
so a press is placed after the latest frame by the time since it was processed."""

from __future__ import annotations

from gazeloop.calibration.drift.history import History
from gazeloop.tools.runtime.clicks import ClickLabeller

MS = 1_000_000


def _press_time(same_clock: bool, frame_ms: float) -> float:
    now = [0]
    lab = ClickLabeller(
        History(), (1000, 1000), lambda _: None, clock=lambda: now[0], same_clock=same_clock
    )
    now[0] = 1045 * MS  # the frame grabbed at `frame_ms` is processed at 1045 ms
    lab.frame(round(frame_ms * MS))
    now[0] = 1050 * MS
    lab.press(10, 10)
    return lab._open[0].t_ns / MS


def test_a_cameras_press_is_at_its_own_time_not_moved_by_the_processing_delay():
    assert _press_time(True, 1000.0) == 1050.0  # it was 1005: 45 ms early


def test_a_replays_press_follows_the_latest_frame():
    assert _press_time(False, 3.0) == 8.0  # media time 3 ms, processed 5 ms before the press
