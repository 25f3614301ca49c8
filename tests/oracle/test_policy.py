from __future__ import annotations

import math

import numpy as np
import pytest

from gazeloop.oracle.policy import DEFAULT_MAX_SPEED, SnapshotPolicy

MS = 1_000_000
FRAME = 16_666_667  # ns, 60 Hz


def run(policy: SnapshotPolicy, frames) -> list[int]:
    """Indices of the frames the policy takes; frames are (t_ns, xy | None, usable)."""
    return [i for i, (t, xy, ok) in enumerate(frames) if policy.offer(t, xy, ok)]


def still(n: int, xy=(0.5, 0.5), t0: int = 0, usable: bool = True):
    p = np.array(xy, dtype=float)
    return [(t0 + i * FRAME, p, usable) for i in range(n)]


def test_first_snapshot_after_fixation_ms_of_stable_gaze() -> None:
    # Frame 9 is the first at >= 150 ms from the fixation's first frame (9 × 16.67 ms).
    assert run(SnapshotPolicy(fixation_ms=150), still(30))[:1] == [9]
    assert run(SnapshotPolicy(fixation_ms=100), still(30))[:1] == [6]


def test_a_saccade_restarts_the_fixation() -> None:
    frames = still(5)
    # A jump of 0.2 in one frame is 12 units/s, a saccade by any measure.
    frames += still(30, xy=(0.7, 0.5), t0=5 * FRAME)
    p = SnapshotPolicy(fixation_ms=150)
    assert run(p, frames)[:1] == [5 + 9]
    assert p.last_on_demand is False


def test_slow_drift_below_max_speed_is_still_a_fixation() -> None:
    v = 0.8 * DEFAULT_MAX_SPEED  # units/s
    frames = [(i * FRAME, np.array([0.5 + v * i * FRAME / 1e9, 0.5]), True) for i in range(20)]
    assert run(SnapshotPolicy(), frames)[:1] == [9]
    w = 1.2 * DEFAULT_MAX_SPEED
    frames = [(i * FRAME, np.array([0.2 + w * i * FRAME / 1e9, 0.5]), True) for i in range(20)]
    assert run(SnapshotPolicy(), frames) == []


def test_default_speed_tolerates_filtered_jitter() -> None:
    # σ = 0.001 per axis per frame (≈0.03° at 60 cm): frame-to-frame speed ≈ 0.1 units/s.
    rng = np.random.default_rng(1)
    frames = [(i * FRAME, 0.5 + rng.normal(0, 0.001, 2), True) for i in range(20)]
    assert run(SnapshotPolicy(), frames)[:1] == [9]


def test_at_most_one_snapshot_per_interval() -> None:
    frames = still(60 * 12)  # 12 s of one long fixation
    taken = run(SnapshotPolicy(min_interval_s=5.0), frames)
    times = [frames[i][0] for i in taken]
    assert len(taken) == 3
    assert times[0] == 9 * FRAME
    # Each next one is the first frame at least 5 s after the previous.
    for a, b in zip(times, times[1:], strict=False):
        assert 5e9 <= b - a < 5e9 + FRAME


def test_blink_or_face_loss_ends_the_fixation() -> None:
    for gap in ([(5 * FRAME, np.array([0.5, 0.5]), False)], [(5 * FRAME, None, True)]):
        frames = still(5) + gap + still(30, t0=6 * FRAME)
        assert run(SnapshotPolicy(), frames)[:1] == [6 + 9]


def test_non_finite_point_is_not_usable() -> None:
    frames = still(5) + [(5 * FRAME, np.array([math.nan, 0.5]), True)] + still(30, t0=6 * FRAME)
    assert run(SnapshotPolicy(), frames)[:1] == [6 + 9]


def test_a_hole_in_the_stream_restarts_the_fixation() -> None:
    frames = still(5) + still(30, t0=4 * FRAME + 300 * MS)  # 300 ms without frames
    assert run(SnapshotPolicy(max_gap_ms=200), frames)[:1] == [5 + 9]
    # The same hole under a larger max_gap keeps the fixation: taken 150 ms after frame 0.
    assert run(SnapshotPolicy(max_gap_ms=400), frames)[:1] == [5]


def test_on_demand_bypasses_interval_and_fixation() -> None:
    p = SnapshotPolicy(min_interval_s=5.0)
    frames = still(20)
    assert run(p, frames)[:1] == [9]
    p.request()
    assert p.requested
    # Moving fast and 0.5 s after the last snapshot: taken anyway, on the next frame.
    assert p.offer(20 * FRAME, np.array([0.9, 0.1]), True)
    assert p.last_on_demand is True and not p.requested
    # The interval restarts from the on-demand snapshot.
    later = still(60 * 6, t0=21 * FRAME)
    taken = run(p, later)
    assert later[taken[0]][0] - 20 * FRAME >= 5e9
    assert p.last_on_demand is False


def test_on_demand_waits_for_a_usable_frame() -> None:
    p = SnapshotPolicy()
    p.request()
    assert not p.offer(0, np.array([0.5, 0.5]), False)  # eyes closed
    assert not p.offer(FRAME, None, False)  # face lost
    assert p.requested
    assert p.offer(2 * FRAME, None, True)  # usable; no screen point needed for the verify key
    assert p.last_on_demand


def test_on_demand_request_expires() -> None:
    p = SnapshotPolicy(request_timeout_s=1.0)
    p.request()
    frames = still(61, usable=False)  # 0 .. 1.0167 s, eyes closed throughout
    assert run(p, frames) == []
    assert not p.requested
    # A face found afterwards gets the ordinary treatment: fixation first.
    assert run(p, still(20, t0=61 * FRAME))[:1] == [9]
    assert p.last_on_demand is False


def test_duplicate_and_backward_times() -> None:
    p = SnapshotPolicy(min_interval_s=5.0)
    frames = still(10)
    assert run(p, frames) == [9]
    assert not p.offer(frames[9][0], frames[9][1], True)  # the same frame again
    # Time going back means a new stream: the old interval does not block it.
    assert run(p, still(10)) == [9]


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="max_speed"):
        SnapshotPolicy(max_speed=0)
    with pytest.raises(ValueError, match="fixation_ms"):
        SnapshotPolicy(fixation_ms=-1)
    with pytest.raises(ValueError, match="request_timeout_s"):
        SnapshotPolicy(request_timeout_s=0)


def test_frames_too_far_apart_for_a_fixation_are_why_no_snapshot_was_taken():
    """A replayed session of stills (one a second) ran with "oracle 0 done" and no reason."""
    p = SnapshotPolicy(min_interval_s=0.0)
    xy = np.array([0.5, 0.5])
    assert not any(p.offer(k * 1_000_000_000, xy, True) for k in range(16))
    assert p.why_none() == (
        "no snapshot: 15 of 16 frames came more than 200 ms after the one before, so no "
        "fixation could be seen (a session of stills has none)"
    )
    steady = SnapshotPolicy(min_interval_s=0.0)
    took = [steady.offer(k * 33_000_000, xy, True) for k in range(16)]  # 30 fps, still
    assert any(took) and steady.why_none() is None
