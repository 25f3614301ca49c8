"""`gazeloop bench clicks`: the frame thread's time with clicks judged on it and on the label
judge, on the real fast path and a profile. Times are never asserted (they move with the
host); what is: both modes ran the same frames and clicks, each run's frames on their own,
and every click was judged."""

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
        "--frames", 20, "--every", 5, "--rounds", 2, "--json",
    )  # fmt: skip
    assert rc == 0, err
    r = json.loads(out)
    assert r["frames"] == 20 and r["recorded_frames_used"] == 20
    for mode in ("frame_thread", "judge_thread"):
        m = r[mode]
        assert m["all"]["n"] == 2 * 20
        # the recording's face is found in every frame: a click at each 5th, in each run
        assert m["clicks"] == m["click_frames"]["n"] == m["judged"] == 2 * 4, m
        # each run's last click has no frame after it; the next run's first is not one
        assert m["frames_after_a_click"]["n"] == 2 * 3
        assert m["labels_held_at_end"] == [4, 4]


def test_fewer_frames_than_one_click_is_one_line(tmp_path):
    profile = tmp_path / "p.json"
    profile.write_text("{}")
    rc, _, err = cli(
        "bench", "clicks", "--profile", profile, "--source", VIDEO, "--frames", 5,
        "--every", 10,
    )  # fmt: skip
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--frames 5: fewer than one click (--every 10)" in err, err


def test_a_profile_that_cannot_be_read_is_one_line_before_any_frame(tmp_path):
    profile = tmp_path / "p.json"
    profile.write_text("{}")
    rc, _, err = cli("bench", "clicks", "--profile", profile, "--source", tmp_path / "no.mp4")
    assert rc != 0 and len(err.strip().splitlines()) == 1
    assert str(profile) in err and "no.mp4" not in err, err
