"""The gaze stream: one small JSON message per sample, QoS 0, latest-first.

`publish_sample` is called on the fast path, so it only appends to a bounded queue under a
lock and (at most once per batch) wakes the publisher's own loop; when the broker is slow or
down the oldest samples are dropped and counted, never the caller delayed. A sample older
than `max_age_s` when its turn comes is dropped too: a gaze point from before an outage is
no use to anyone watching the stream live.

Wire format (topic `gazeloop/<user>/<device>/gaze`), compact JSON:
`{"t": <unix ms>, "x": <0..1>, "y": <0..1>, "flags": <int or {name: bool}>, "seq": <n>}`.
`t` is the sample's own time (its monotonic stamp moved onto the wall clock) so consumers on
other machines can line it up; `seq` counts samples handed to the publisher, so gaps show
drops anywhere on the way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiomqtt

from gazeloop.tools.runtime.mqtt.conn import (
    TOPIC_ROOT,
    Backoff,
    LinkStats,
    LoopThread,
    MqttSettings,
    client_id,
    supervise,
    topic_part,
)

log = logging.getLogger(__name__)

Flags = int | Mapping[str, bool | int]


def gaze_topic(user: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{topic_part(user)}/{topic_part(device)}/gaze"


def encode_sample(t_ms: int, x: float, y: float, flags: Flags, seq: int) -> bytes:
    f: int | dict[str, bool] = (
        int(flags) if not isinstance(flags, Mapping) else {k: bool(v) for k, v in flags.items()}
    )
    body = {"t": t_ms, "x": round(x, 5), "y": round(y, 5), "flags": f, "seq": seq}
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class GazeMessage:
    t_ms: int
    x: float
    y: float
    flags: int | dict[str, bool]
    seq: int


def decode_sample(payload: bytes) -> GazeMessage:
    """Parse one gaze message; ValueError on anything else."""
    try:
        d = json.loads(payload)
        msg = GazeMessage(
            int(d["t"]), float(d["x"]), float(d["y"]), d.get("flags", 0), int(d["seq"])
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a gaze message: {e}") from e
    if not (math.isfinite(msg.x) and math.isfinite(msg.y)):
        raise ValueError("not a gaze message: x, y not finite")
    return msg


@dataclass(frozen=True, slots=True)
class PublisherStats:
    sent: int
    dropped: int  # queue overflow while the broker was slow or away, or too old to send
    reconnects: int
    failures: int
    connected: bool
    last_error: str | None


class GazePublisher:
    """Publishes gaze samples from the fast path; owns a thread with its own asyncio loop."""

    def __init__(
        self,
        mqtt: str | MqttSettings,
        *,
        user: str,
        device: str,
        queue_size: int = 8,
        max_age_s: float = 0.5,
        backoff: Backoff | None = None,
        ca_file: str | None = None,
        insecure: bool = False,
    ) -> None:
        self.settings = MqttSettings.of(mqtt, ca_file=ca_file, insecure=insecure)
        self.topic = gaze_topic(user, device)
        self.max_age_ns = int(max_age_s * 1e9)
        self._backoff = backoff or Backoff(cap_s=10.0)
        self._queue: deque[tuple[int, float, float, Flags, int]] = deque(maxlen=queue_size)
        self._lock = threading.Lock()
        self._seq = 0
        self._sent = 0
        self._dropped = 0
        self._notified = False
        self._wake: asyncio.Event | None = None
        self._link = LinkStats()
        self._thread = LoopThread(f"gaze-publisher {self.topic}")

    # -- the caller's side (fast path) ------------------------------------------------------

    def publish_sample(
        self, t_ns: int, xy: Sequence[float] | tuple[float, float], flags: Flags = 0
    ) -> None:
        """Queue one sample (monotonic ns, normalised screen xy). Never blocks on I/O."""
        item = (int(t_ns), float(xy[0]), float(xy[1]), flags, 0)
        with self._lock:
            self._seq += 1
            item = (*item[:4], self._seq)
            if len(self._queue) == self._queue.maxlen:
                self._dropped += 1  # deque(maxlen) drops the oldest on append
            self._queue.append(item)
            notify = not self._notified
            self._notified = True
        if notify and self._wake is not None:
            # One wake-up per batch: call_soon_threadsafe writes to the loop's self-pipe,
            # which is non-blocking, so this cannot stall even if the loop is busy.
            self._thread.call_soon(self._wake.set)

    @property
    def stats(self) -> PublisherStats:
        with self._lock:
            sent, dropped = self._sent, self._dropped
        s = self._link
        return PublisherStats(sent, dropped, s.reconnects, s.failures, s.connected, s.last_error)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> GazePublisher:
        self._thread.start(self._main)
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._thread.stop(timeout)

    def __enter__(self) -> GazePublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the publisher's thread --------------------------------------------------------------

    async def _main(self, stop: asyncio.Event) -> None:
        self._wake = asyncio.Event()
        await supervise(
            self.settings,
            self._session,
            stop=stop,
            stats=self._link,
            backoff=self._backoff,
            identifier=client_id("gaze"),
            watch=True,
            name=f"gaze {self.topic}",
        )

    def _take(self) -> list[tuple[int, float, float, Flags, int]]:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            self._notified = False
        return items

    async def _session(self, client: aiomqtt.Client) -> None:
        assert self._wake is not None
        self._wake.set()  # samples may have queued while there was no connection
        while True:
            await self._wake.wait()
            self._wake.clear()
            items = self._take()
            # Monotonic → wall clock once per batch: both clocks read back to back.
            now_mono = time.monotonic_ns()
            wall_offset_ns = time.time_ns() - now_mono
            for i, (t_ns, x, y, flags, seq) in enumerate(items):
                if now_mono - t_ns > self.max_age_ns:
                    with self._lock:
                        self._dropped += 1
                    continue
                payload = encode_sample((t_ns + wall_offset_ns) // 1_000_000, x, y, flags, seq)
                try:
                    await client.publish(self.topic, payload, qos=0)
                except aiomqtt.MqttError:
                    # Put back what this batch had not sent, so the next connection (or
                    # the age limit) decides about it, and the counts stay exact.
                    self._requeue(items[i:])
                    raise
                with self._lock:
                    self._sent += 1

    def _requeue(self, items: list[tuple[int, float, float, Flags, int]]) -> None:
        with self._lock:
            newer = list(self._queue)
            self._queue.clear()
            for it in [*items, *newer]:
                if len(self._queue) == self._queue.maxlen:
                    self._dropped += 1
                self._queue.append(it)


__all__ = [
    "GazeMessage",
    "GazePublisher",
    "PublisherStats",
    "decode_sample",
    "encode_sample",
    "gaze_topic",
]
