"""The click labeller of `gazeloop run`: presses on the listener's clock, judged against the
History on the frame clock, decided once the burst window has closed. A hand-driven clock."""

from __future__ import annotations

import numpy as np

from gazeloop.calibration.drift.history import History
from gazeloop.tools.runtime.clicks import ClickLabeller

MS = 1_000_000
SCREEN = (2000, 1000)
TARGET = (1200.0, 700.0)


class Clock:
    def __init__(self):
        self.t = 5_000 * MS  # the listener's clock, unrelated to the frames'

    def __call__(self):
        return self.t


def setup():
    clock, labels = Clock(), []
    hist = History()
    lab = ClickLabeller(hist, SCREEN, labels.append, clock=clock)
    return clock, hist, lab, labels


def frames(clock, hist, lab, t0_ms, t1_ms, xy_px, frame_base_ms=100_000):
    """Frames every 1/60 s: History on the frame clock (offset from the listener's)."""
    for t in np.arange(t0_ms, t1_ms, 1000 / 60):
        clock.t = round(t * MS) + 5_000 * MS
        ft = round((t + frame_base_ms) * MS)
        hist.append(ft, np.divide(xy_px, SCREEN))
        lab.frame(ft)
        lab.poll()


def test_a_click_after_a_fixation_becomes_a_label_once_no_second_press_can_come():
    clock, hist, lab, labels = setup()
    frames(clock, hist, lab, 0, 500, (300.0, 300.0))
    frames(clock, hist, lab, 500, 900, TARGET)
    lab.press(*TARGET)
    clock.t += 80 * MS
    lab.release(*TARGET)
    frames(clock, hist, lab, 900, 1200, TARGET)
    assert labels == []  # 300 ms: the burst window (400 ms) is still open
    frames(clock, hist, lab, 1200, 1400, TARGET)
    (label,) = labels
    assert label.oracle == "clicks" and label.observation.xy == (0.6, 0.7)
    # Timed on the frame clock, at the fixation's last sample before the press.
    assert 100_880 * MS <= label.t_ns <= 100_900 * MS
    assert lab.verdicts == {"ok": 1}


def test_double_clicks_and_clicks_off_the_monitor_give_nothing():
    clock, hist, lab, labels = setup()
    frames(clock, hist, lab, 0, 900, TARGET)
    lab.press(*TARGET)
    lab.release(*TARGET)
    clock.t += 150 * MS
    lab.press(*TARGET)
    lab.release(*TARGET)
    lab.press(2500.0, 300.0)  # another monitor, to the right
    frames(clock, hist, lab, 1100, 1800, TARGET)
    assert labels == [] and lab.verdicts == {"burst": 2}


def test_no_frame_yet_means_the_press_is_not_placed_in_time():
    clock, hist, lab, labels = setup()
    lab.press(*TARGET)
    assert lab.poll() == [] and lab._open == []


def test_a_click_soon_after_a_gaze_shift_is_compared_with_the_frames_estimate():
    """Why the History holds each frame's own estimate and not the filtered cursor: the eye
    jumps 200 px to a button and the hand clicks 150 ms after it landed, with no drift at
    all. Judged against the 1€-filtered points the label said the gaze was 54 px off (the
    filter still on its way), and the loop would move for drift that is not there."""
    from gazeloop.fastpath.filters import make_filter
    from gazeloop.fastpath.pipeline import default_filter_params

    def residual_px(filtered: bool) -> float:
        clock, hist, lab, labels = setup()
        f = make_filter("one_euro", **default_filter_params("one_euro"))
        button = np.add(TARGET, (200.0, 0.0))
        for k, t in enumerate(np.arange(0, 2000, 1000 / 30)):  # 30 fps, jump at 1000 ms
            clock.t = round(t * MS) + 5_000 * MS
            ft = round((t + 100_000) * MS)
            xy = np.divide(button if t >= 1000 else TARGET, SCREEN)
            hist.append(ft, f(ft, xy) if filtered else xy)
            lab.frame(ft)
            lab.poll()
            if k == round(1150 * 30 / 1000):  # 150 ms after the eye landed
                lab.press(*button)
                lab.release(*button)
        (label,) = labels
        est = hist.at(label.t_ns, 0)
        return float(np.hypot(*((np.array(label.observation.xy) - est) * SCREEN)))

    assert residual_px(filtered=False) < 1.0
    assert residual_px(filtered=True) > 40.0
