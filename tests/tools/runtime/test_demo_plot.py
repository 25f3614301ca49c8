"""The demo's loop.png: says its errors are in-sample, on what data, with the summary's
figures, and keeps the frames where the filter still trails a target change apart."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from gazeloop.tools.runtime.demo import CATCH_UP_S, plot_trace, summarise

PASS = 20  # frames in one pass of the recording, 0.12 s apart
SETTLING = 3  # frames without an error at the start of each pass


def _trace(passes: int = 4) -> dict:
    """A pass is one target: settling, then two frames far off while the filter catches
    up, then settled frames; drifted from the second pass on, back on the last two."""
    t = np.arange(passes * PASS) * 120_000_000
    err = np.tile([np.nan] * SETTLING + [400.0, 300.0] + [20.0] * (PASS - SETTLING - 2), passes)
    err[PASS : 2 * PASS] += 150.0
    labels = np.repeat(np.arange(passes) * 3, PASS)
    offset = np.zeros((len(t), 2))
    return {"t": t, "err": err, "offset": offset, "labels": labels, "onset": int(t[PASS - 1])}


def _summary(tr: dict) -> dict:
    ev = SimpleNamespace(report=SimpleNamespace(mean_px=99.0, baseline_mean_px=1500.0))
    live = SimpleNamespace(decisions=[SimpleNamespace(accepted=True)] * 9)
    return summarise(tr, ev, 150.0, live, "no store")


def test_the_title_says_in_sample_on_what_data_with_the_summarys_figures(tmp_path, saved_figures):
    tr = _trace()
    s = _summary(tr)
    plot_trace(tr, np.array([150.0, 0.0]), tmp_path, s)
    title = saved_figures[0]._suptitle.get_text()
    keys = ("error_before_drift_px", "error_just_after_drift_px", "error_last_two_passes_px")
    assert " → ".join(f"{s[k]:.0f}" for k in keys) + " px" in title
    assert "in-sample" in title and "4-corner recording" in title
    assert f"{4 * PASS} frames = 4 passes of {PASS}" in title
    assert "9 labels: its own targets replayed" in title


def test_frames_after_a_target_change_are_grey_and_settling_ones_counted(tmp_path, saved_figures):
    tr = _trace()
    plot_trace(tr, np.array([150.0, 0.0]), tmp_path, _summary(tr))
    top = saved_figures[0].axes[0]
    red, grey = (ln for ln in top.lines if ln.get_marker() == ".")
    assert red.get_color() == "tab:red" and max(red.get_ydata()) < 200.0
    catching_up = int(CATCH_UP_S / 0.12)  # frames within the window after the gap
    assert len(grey.get_xdata()) == 4 * catching_up
    assert min(grey.get_ydata()) < 200.0 < max(grey.get_ydata())
    assert f"{4 * SETTLING} settling frames left out" in top.get_ylabel()
