"""`gazeloop bench clicks`: the frame thread's time with clicks judged on it and on the label
judge, on the real fast path and a profile. Times are never asserted (they move with the
host); what is: both modes ran the same frames and clicks, and every click was judged."""

from __future__ import annotations

import json

import pytest

from tests.cli import cli
from tests.paths import SHARED

VIDEO = SHARED / "data" / "video-corners4" / "calibrate.mp4"


@pytest.mark.slow
def test_both_modes_judge_every_click_on_the_same_frames(c4_profile):
    rc, out, err = cli(
        "bench", "clicks", "--profile", c4_profile, "--source", VIDEO,
        "--frames", 30, "--every", 5, "--rounds", 1, "--json",
    )  # fmt: skip
    assert rc == 0, err
    r = json.loads(out)
    assert r["frames"] == 30 and r["recorded_frames"] == 74
    for mode in ("frame_thread", "judge_thread"):
        m = r[mode]
        assert m["all"]["n"] == 30
        # the recording's face is found in every frame: a click at each 5th
        assert m["clicks"] == m["click_frames"]["n"] == m["judged"] == 6, m
        assert m["frames_after_a_click"]["n"] == 5  # the last click has no frame after it
        assert 0 <= m["late_frames"] <= 30


def test_fewer_frames_than_one_click_is_one_line(c4_profile):
    rc, _, err = cli(
        "bench", "clicks", "--profile", c4_profile, "--source", VIDEO, "--frames", 5,
        "--every", 10,
    )  # fmt: skip
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--frames 5: fewer than one click (--every 10)" in err, err
