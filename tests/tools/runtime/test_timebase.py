"""The stream's one time base: a camera frame's capture time on the wall clock (converted
once, at the source) and its monotonic stamp for staleness; the wire's seconds and age.
(Video and session sources: `test_run_mqtt.py`, which reads the shared recordings.)"""

from __future__ import annotations

import threading
import time

import pytest

from gazeloop.fastpath.sources import CameraSource
from gazeloop.tools.runtime.mqtt.timebase import SampleTime, SourceClock
from tests.fastpath.test_sources import FakeCapture, Opener


class HandshakeCapture(FakeCapture):
    """Grabs a frame only once the consumer took the one before. The camera keeps only the
    latest frame, so a consumer that the scheduler holds back would otherwise lose some
    (seen on a loaded machine: one of three arrived), and this test needs them all."""

    def __init__(self, frames: int) -> None:
        super().__init__(frames)
        self.taken = threading.Semaphore(0)

    def grab(self) -> bool:
        if self.grabbed and not self.taken.acquire(timeout=10):
            return False  # the consumer is gone
        return super().grab()


def test_a_camera_frame_is_stamped_with_its_capture_time_on_the_wall_clock():
    cap = HandshakeCapture(frames=3)
    cam = CameraSource(0, open_capture=Opener(cap), retries=0)
    frames = []
    with cam:
        clock = SourceClock(cam)
        for f in cam:
            frames.append(f)
            cap.taken.release()
    assert len(frames) == 3 and cam.dropped == 0
    stamps = [clock.stamp(f.t_ns) for f in frames]
    # Staleness is judged from the capture itself: the frame's monotonic time, unchanged.
    assert [s.mono_ns for s in stamps] == [f.t_ns for f in frames]
    # The wall-clock offset is read once, so the spacing is exactly the capture spacing.
    for a, b, fa, fb in zip(stamps, stamps[1:], frames, frames[1:], strict=False):
        assert abs((b.epoch_ms - a.epoch_ms) - (fb.t_ns - fa.t_ns) / 1e6) <= 1
    # And it is today's time: neither a monotonic count (time since boot) nor twice the
    # epoch (the bound is wide because the two clocks are read apart on a loaded machine).
    offset_ms = (time.time_ns() - time.monotonic_ns()) / 1e6
    assert abs(stamps[0].epoch_ms - (frames[0].t_ns / 1e6 + offset_ms)) < 1000
    assert clock.ms(frames[0].t_ns) == stamps[0].epoch_ms


def test_the_wire_carries_epoch_seconds_and_the_age():
    pytest.importorskip("aiomqtt", reason="aiomqtt is not installed (pip install -e '.[mqtt]')")
    from gazeloop.tools.runtime.mqtt.gaze import decode_sample, encode_sample

    msg = decode_sample(encode_sample(1_708_071_395_772, 12.34, 0.25, 0.75, {"blink": 0}, 7))
    assert (msg.t, msg.t_ms, msg.age_ms, msg.seq) == (1708071395.772, 1708071395772, 12.3, 7)
    assert (msg.x, msg.y, msg.flags) == (0.25, 0.75, {"blink": False})
    with pytest.raises(ValueError, match="not a gaze message"):
        decode_sample(b'{"t": "NaN", "x": 0, "y": 0, "seq": 1}')
    now = SampleTime.now()
    assert abs(now.epoch_ms - time.time() * 1000) < 1000 and now.age_ns(now.mono_ns) == 0
