"""The gaze stream: one small JSON message per sample, QoS 0, latest-first.

`publish_sample` is called on the fast path, so it only appends to a bounded queue under a
lock and (at most once per batch) wakes the publisher's own loop; when the broker is slow or
down the oldest samples are dropped and counted, never the caller delayed. A sample older
than `max_age_s` when its turn comes is dropped too: a gaze point from before an outage is
no use to anyone watching the stream live (a replay, whose samples are all old by nature,
runs with `max_age_s=None` and a deep queue). Every sample handed over ends up counted once:
sent, or dropped for a reason (`queue` overflow, `stale`, or still queued at `close`).

Wire format (topic `gazeloop/<user>/<device>/gaze`), compact JSON:
`{"t": <unix s>, "age_ms": <ms>, "x": <0..1>, "y": <0..1>, "flags": <int or {name: bool}>,
"seq": <n>}`. `t` is the capture time on the wall clock, in seconds with millisecond
resolution, converted once at the source (`timebase.SourceClock`: a camera's monotonic
capture time, a video's media time, a session's recorded time), so consumers on other
machines can line samples up with each other and with the labels' `snapshot_ms`. `age_ms`
is how long the sample had waited in this process when it was sent (monotonic clock: the
one honest staleness measure, whatever the source's clock). `seq` counts samples handed to
the publisher, so gaps show drops anywhere on the way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiomqtt

from gazeloop.tools.runtime.mqtt.conn import (
    TOPIC_ROOT,
    Backoff,
    MqttSettings,
    Supervised,
    client_id,
    topic_part,
)
from gazeloop.tools.runtime.mqtt.timebase import SampleTime

log = logging.getLogger(__name__)

Flags = int | Mapping[str, bool | int]


def gaze_topic(user: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{topic_part(user)}/{topic_part(device)}/gaze"


def encode_sample(
    epoch_ms: int, age_ms: float, x: float, y: float, flags: Flags, seq: int
) -> bytes:
    f: int | dict[str, bool] = (
        int(flags) if not isinstance(flags, Mapping) else {k: bool(v) for k, v in flags.items()}
    )
    body = {
        "t": round(epoch_ms / 1000, 3),
        "age_ms": round(age_ms, 1),
        "x": round(x, 5),
        "y": round(y, 5),
        "flags": f,
        "seq": seq,
    }
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class GazeMessage:
    t: float  # capture time, unix seconds
    age_ms: float  # time spent in the laptop's process before sending
    x: float
    y: float
    flags: int | dict[str, bool]
    seq: int

    @property
    def t_ms(self) -> int:
        return round(self.t * 1000)


def decode_sample(payload: bytes) -> GazeMessage:
    """Parse one gaze message; ValueError on anything else."""
    try:
        d = json.loads(payload)
        msg = GazeMessage(
            float(d["t"]),
            float(d.get("age_ms", 0.0)),
            float(d["x"]),
            float(d["y"]),
            d.get("flags", 0),
            int(d["seq"]),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a gaze message: {e}") from e
    if not all(math.isfinite(v) for v in (msg.t, msg.age_ms, msg.x, msg.y)):
        raise ValueError("not a gaze message: t, age_ms, x, y not finite")
    return msg


@dataclass(frozen=True, slots=True)
class PublisherStats:
    offered: int  # samples handed to the publisher
    sent: int
    dropped: int  # the sum of the three reasons below
    reconnects: int
    failures: int
    connected: bool
    last_error: str | None
    dropped_queue: int = 0  # overflow while the broker was slow or away
    dropped_stale: int = 0  # older than max_age_s when their turn came
    dropped_closed: int = 0  # still queued when the publisher was closed

    @property
    def queued(self) -> int:
        return self.offered - self.sent - self.dropped

    def text(self) -> str:
        """For status lines: "sent 70, dropped 4 (stale 4)"."""
        why = [
            f"{k} {n}"
            for k, n in (
                ("queue", self.dropped_queue),
                ("stale", self.dropped_stale),
                ("closed", self.dropped_closed),
            )
            if n
        ]
        out = f"sent {self.sent}, dropped {self.dropped}"
        return out + (f" ({', '.join(why)})" if why else "")


Item = tuple[int, int, float, float, Flags, int]  # epoch_ms, mono_ns, x, y, flags, seq


class GazePublisher(Supervised):
    """Publishes gaze samples from the fast path; owns a thread with its own asyncio loop."""

    def __init__(
        self,
        mqtt: str | MqttSettings,
        *,
        user: str,
        device: str,
        queue_size: int = 8,
        max_age_s: float | None = 0.5,
        backoff: Backoff | None = None,
        ca_file: str | None = None,
        insecure: bool = False,
    ) -> None:
        self.settings = MqttSettings.of(mqtt, ca_file=ca_file, insecure=insecure)
        self.topic = gaze_topic(user, device)
        # None: no age limit (a replay: its samples are all "old", and all wanted).
        self.max_age_ns = None if max_age_s is None else int(max_age_s * 1e9)
        self._own_loop(f"gaze-publisher {self.topic}", backoff or Backoff(cap_s=10.0))
        self._queue: deque[Item] = deque(maxlen=queue_size)
        self._lock = threading.Lock()
        self._counted = threading.Condition(self._lock)  # notified when a sample is counted
        self._seq = 0
        self._sent = 0
        self._drops: Counter[str] = Counter()
        self._notified = False
        self._wake: asyncio.Event | None = None

    # -- the caller's side (fast path) ------------------------------------------------------

    def publish_sample(
        self, stamp: SampleTime, xy: Sequence[float] | tuple[float, float], flags: Flags = 0
    ) -> None:
        """Queue one sample (its capture time, see `timebase.SourceClock`; normalised screen
        xy). Never blocks on I/O."""
        with self._lock:
            self._seq += 1
            if len(self._queue) == self._queue.maxlen:
                self._drop("queue")  # deque(maxlen) drops the oldest on append
            self._queue.append(
                (
                    int(stamp.epoch_ms),
                    int(stamp.mono_ns),
                    float(xy[0]),
                    float(xy[1]),
                    flags,
                    self._seq,
                )
            )
            notify = not self._notified
            self._notified = True
        if notify and self._wake is not None:
            # One wake-up per batch: call_soon_threadsafe writes to the loop's self-pipe,
            # which is non-blocking, so this cannot stall even if the loop is busy.
            self._thread.call_soon(self._wake.set)

    @property
    def stats(self) -> PublisherStats:
        with self._lock:
            offered, sent, d = self._seq, self._sent, dict(self._drops)
        s = self._link
        return PublisherStats(
            offered, sent, sum(d.values()), s.reconnects, s.failures, s.connected, s.last_error,
            d.get("queue", 0), d.get("stale", 0), d.get("closed", 0),
        )  # fmt: skip

    def _drop(self, why: str, n: int = 1) -> None:
        # Under self._lock.
        self._drops[why] += n
        self._counted.notify_all()

    # -- lifecycle ---------------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until every sample handed over is sent or dropped.
        Gives up early, False, once two connection attempts in a row have failed meanwhile
        (the broker is away, not restarting)."""
        end = time.monotonic() + timeout
        failures = self._link.failures
        with self._counted:
            while self._sent + sum(self._drops.values()) < self._seq:
                left = end - time.monotonic()
                away = not self._link.connected and self._link.failures >= failures + 2
                if left <= 0 or away:
                    return False
                self._counted.wait(min(left, 0.1))  # re-checks the connection meanwhile
        return True

    def close(self, timeout: float = 5.0) -> None:
        super().close(timeout)
        with self._lock:  # what never got its turn is counted, so the counts add up
            if self._queue:
                self._drop("closed", len(self._queue))
                self._queue.clear()

    def __enter__(self) -> GazePublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the publisher's thread --------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._wake = asyncio.Event()
        await self._supervise(
            stop, identifier=client_id("gaze"), watch=True, name=f"gaze {self.topic}"
        )

    def _take(self) -> list[Item]:
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
            for i, (epoch_ms, mono_ns, x, y, flags, seq) in enumerate(items):
                age = time.monotonic_ns() - mono_ns
                if self.max_age_ns is not None and age > self.max_age_ns:
                    with self._lock:
                        self._drop("stale")
                    continue
                payload = encode_sample(epoch_ms, age / 1e6, x, y, flags, seq)
                try:
                    await client.publish(self.topic, payload, qos=0)
                except (aiomqtt.MqttError, asyncio.CancelledError):
                    # Put back what this batch had not sent, so the next connection (or
                    # the age limit, or close) decides about it, and the counts stay exact.
                    self._requeue(items[i:])
                    raise
                with self._lock:
                    self._sent += 1
                    self._counted.notify_all()

    def _requeue(self, items: list[Item]) -> None:
        with self._lock:
            newer = list(self._queue)
            self._queue.clear()
            for it in [*items, *newer]:
                if len(self._queue) == self._queue.maxlen:
                    self._drop("queue")
                self._queue.append(it)


__all__ = [
    "GazeMessage",
    "GazePublisher",
    "PublisherStats",
    "SampleTime",
    "decode_sample",
    "encode_sample",
    "gaze_topic",
]
