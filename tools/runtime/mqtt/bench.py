"""`gazeloop bench mqtt`: end-to-end latency of the gaze stream through a real broker.

Measured from the `publish_sample` call on the caller's thread to the moment a subscriber
in the same process has the message, so it includes the publisher's queue and thread hop,
the broker, and the subscriber's parsing; both ends read the same monotonic clock.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import aiomqtt
import numpy as np

from gazeloop.tools.runtime.mqtt.conn import (
    LoopThread,
    MqttSettings,
    client_id,
    connected,
    first_of,
)
from gazeloop.tools.runtime.mqtt.gaze import GazePublisher, decode_sample, gaze_topic
from gazeloop.tools.runtime.mqtt.timebase import SampleTime


class _Receiver:
    """Subscribes to one gaze topic in its own thread and stamps every arrival."""

    def __init__(self, settings: MqttSettings, topic: str) -> None:
        self.settings, self.topic = settings, topic
        self.arrived: dict[int, int] = {}  # seq -> monotonic ns
        self.ready = threading.Event()
        self.error: str | None = None
        self._thread = LoopThread("bench-receiver")

    async def _main(self, stop: asyncio.Event) -> None:
        # The stop event ends the whole session, the connect included: a broker that never
        # answers would otherwise hold close() for its full timeout. No timeout around the
        # receive either: cancelling a pending receive can lose the message it was handed.
        try:
            await first_of(self._session(), stop.wait())
        except Exception as e:  # reported to the caller, who decides
            self.error = str(e) or type(e).__name__
            self.ready.set()

    async def _session(self) -> None:
        async with connected(self.settings, identifier=client_id("bench")) as c:
            await c.subscribe(self.topic, qos=0)
            self.ready.set()
            await self._receive(c)

    async def _receive(self, c: aiomqtt.Client) -> None:
        async for m in c.messages:
            now = time.monotonic_ns()
            if isinstance(m.payload, bytes | bytearray):
                self.arrived[decode_sample(bytes(m.payload)).seq] = now

    def start(self) -> None:
        self._thread.start(self._main)

    def close(self) -> None:
        self._thread.stop(5.0)


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values.size else None


def _subscribed(settings: MqttSettings, topic: str, connect_timeout_s: float) -> _Receiver:
    """A receiver on `topic` whose subscription the broker has confirmed: a sample sent
    before that would count as lost though no broker lost it."""
    rx = _Receiver(settings, topic)
    rx.start()
    if not rx.ready.wait(connect_timeout_s) or rx.error:
        rx.close()
        why = rx.error or f"no answer within {connect_timeout_s:g} s"
        raise RuntimeError(f"bench: cannot subscribe at {settings.redacted()}: {why}")
    return rx


def _wait_connected(pub: GazePublisher, settings: MqttSettings, connect_timeout_s: float) -> None:
    """Until the publisher is connected: samples queued before then would measure the
    connect, not the stream."""
    deadline = time.monotonic() + connect_timeout_s
    while not pub.stats.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    if not pub.stats.connected:
        why = pub.stats.last_error or f"no answer within {connect_timeout_s:g} s"
        raise RuntimeError(f"bench: cannot publish at {settings.redacted()}: {why}")


def _publish_circle(
    pub: GazePublisher, rate_hz: float, seconds: float
) -> tuple[dict[int, int], list[int]]:
    """Publish at `rate_hz` for `seconds` on a schedule fixed at the start (a late sample
    does not shift the ones after it): when each sample was handed over, by its number, and
    how long each `publish_sample` call took (ns)."""
    n = max(1, round(rate_hz * seconds))
    period_ns = int(1e9 / rate_hz)
    start = time.monotonic_ns()
    sent: dict[int, int] = {}
    call_ns = []
    for i in range(n):
        wake = start + i * period_ns
        delay = (wake - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)
        stamp = SampleTime.now()
        t = stamp.mono_ns
        # A slow circle, so consecutive payloads differ like real gaze does.
        a = 2 * np.pi * i / max(n, 1)
        pub.publish_sample(stamp, (0.5 + 0.3 * np.cos(a), 0.5 + 0.3 * np.sin(a)), 0)
        call_ns.append(time.monotonic_ns() - t)
        sent[i + 1] = t  # the publisher numbers samples from 1
    return sent, call_ns


def bench_mqtt(
    url: str | MqttSettings,
    rate_hz: float = 60.0,
    seconds: float = 5.0,
    *,
    ca_file: str | None = None,
    insecure: bool = False,
    connect_timeout_s: float = 5.0,
    settle_s: float = 1.0,
) -> dict[str, Any]:
    """Publish a synthetic gaze stream at `rate_hz` for `seconds` through the broker at
    `url` and return latency percentiles (ms) and loss counts. RuntimeError if the broker
    cannot be reached. A sample not in within `settle_s` after the last one was handed over
    counts as lost; the wait ends as soon as every sample is in, so a longer `settle_s`
    costs time only when samples are missing (a test gives a long one: a loaded machine
    then takes longer, it does not lose samples)."""
    if rate_hz <= 0 or seconds <= 0:
        raise ValueError("rate_hz and seconds must be positive")
    settings = MqttSettings.of(url, ca_file=ca_file, insecure=insecure)
    device = f"bench-{uuid.uuid4().hex[:8]}"  # two benches on one broker stay apart
    rx = _subscribed(settings, gaze_topic("bench", device), connect_timeout_s)
    # No staleness cutoff: a latency benchmark counts a late sample as late, not as lost.
    pub = GazePublisher(
        settings, user="bench", device=device, queue_size=64, max_age_s=None
    ).start()
    try:
        _wait_connected(pub, settings, connect_timeout_s)
        sent, call_ns = _publish_circle(pub, rate_hz, seconds)
        settle = time.monotonic() + settle_s
        while len(rx.arrived) < len(sent) and time.monotonic() < settle:
            time.sleep(0.01)
        stats = pub.stats
    finally:
        pub.close()
        rx.close()
    lat = np.array([(rx.arrived[s] - t) / 1e6 for s, t in sent.items() if s in rx.arrived])
    calls = np.array(call_ns) / 1e3
    return {
        "broker": settings.redacted(),
        "rate_hz": rate_hz,
        "seconds": seconds,
        "samples": len(sent),
        "received": int(lat.size),
        "lost": len(sent) - int(lat.size),
        "dropped": stats.dropped,
        "p50_ms": _pct(lat, 50),
        "p95_ms": _pct(lat, 95),
        "p99_ms": _pct(lat, 99),
        "max_ms": round(float(lat.max()), 3) if lat.size else None,
        "publish_call_p99_us": _pct(calls, 99),
    }


__all__ = ["bench_mqtt"]
