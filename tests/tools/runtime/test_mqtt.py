"""The MQTT bridge against a real broker (Debian's mosquitto) started by the test on a free
loopback port, stopped and restarted on the same port where a test needs an outage.

mosquitto runs with persistence on, as a deployment must for the label guarantees to hold
across a broker restart: the collector's persistent session (its subscription and the QoS 1
labels queued for it) is saved at shutdown and restored at start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.labels import LineObservation, OracleLabel, PointObservation
from gazeloop.calibration.store.labelstore import LabelStore
from gazeloop.calibration.store.session import read_session

aiomqtt = pytest.importorskip(
    "aiomqtt", reason="aiomqtt is not installed (pip install -e '.[mqtt]')"
)

from gazeloop.tools.runtime.mqtt import labels as labels_module  # noqa: E402
from gazeloop.tools.runtime.mqtt.bench import bench_mqtt  # noqa: E402
from gazeloop.tools.runtime.mqtt.conn import Backoff, MqttSettings, connected, first_of, wait_event  # noqa: E402
from gazeloop.tools.runtime.mqtt.gaze import GazePublisher, decode_sample  # noqa: E402
from gazeloop.tools.runtime.mqtt.labels import Collector, LabelUplink, make_uid, message_from_row  # noqa: E402
from gazeloop.tools.runtime.mqtt.outbox import Outbox, outbox_path  # noqa: E402
from gazeloop.tools.runtime.mqtt.timebase import SampleTime  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
# A self-signed certificate (its key was thrown away): a CA file the TLS settings accept.
TEST_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBhzCCAS2gAwIBAgIUYStZGmIdFXuo99m0SZa9YdvtXD8wCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNZ2F6ZWxvb3AtdGVzdDAgFw0yNjEyMDYwMDUzNDdaGA8yMTI2
MTExMjAwNTM0N1owGDEWMBQGA1UEAwwNZ2F6ZWxvb3AtdGVzdDBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABDuqBAPQUSV4DOrXWfa6sp0rjW2qdaCkhNSZmPrz82vW
7LnoHsyL4zTddgQd993Orvd0LZg4JOKURAuivTHI+NGjUzBRMB0GA1UdDgQWBBRK
CwIgRUmhvfO1sDbDk56N4Bsz8TAfBgNVHSMEGDAWgBRKCwIgRUmhvfO1sDbDk56N
4Bsz8TAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQCjVtWVbsFK
7puN4cmZQtLYNAaRwe4QrnmQZ2DB+PZYcQIgJPxlylZqARdogCBx1HvfKAsB1jl4
qLD0laFDm68JcJ4=
-----END CERTIFICATE-----
"""
FAST = Backoff(initial_s=0.05, cap_s=0.4)  # tests wait for reconnects, not for politeness


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


class Broker:
    """One mosquitto process with its own config, password file, TLS files and persistence
    folder under tmp; `stop()` and `start()` keep the port, so clients reconnect to the
    same URL after an outage."""

    def __init__(
        self,
        folder: Path,
        *,
        users: dict[str, str] | None = None,
        tls: tuple[Path, Path] | None = None,
        config: tuple[str, ...] = (),
    ) -> None:
        assert MOSQUITTO is not None
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if users else 'true'}",
            "persistence true",
            f"persistence_location {folder}/",
            "max_queued_messages 10000",
            f"log_dest file {folder / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            *config,  # a deployment's own settings, e.g. its message_size_limit
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to `mosquitto`, which cannot read tmp
        if users:
            assert MOSQUITTO_PASSWD is not None
            pw = folder / "passwd"
            pw.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, password], check=True)
            lines.append(f"password_file {pw}")
        if tls:
            cert, key = tls
            lines += [f"certfile {cert}", f"keyfile {key}"]
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.url = f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self.proc = None
                raise RuntimeError(f"mosquitto exited at start: {err} {self.log()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file on the way out
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def log(self) -> str:
        p = self.folder / "mosquitto.log"
        return p.read_text()[-2000:] if p.exists() else ""


@pytest.fixture
def make_broker(tmp_path) -> Iterator[Callable[..., Broker]]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto)")
    brokers: list[Broker] = []

    def make(name: str = "broker", **kw) -> Broker:
        b = Broker(tmp_path / name, **kw)
        brokers.append(b)
        b.start()
        return b

    yield make
    for b in brokers:
        b.stop()


@pytest.fixture
def broker(make_broker) -> Broker:
    return make_broker()


class Listener:
    """A subscriber in its own thread that keeps every message on a topic filter."""

    def __init__(self, url: str, topic: str, **settings_kw) -> None:
        from gazeloop.tools.runtime.mqtt.conn import LoopThread

        self.settings = MqttSettings.from_url(url, **settings_kw)
        self.topic = topic
        self.messages: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self._thread = LoopThread("test-listener")

    async def _main(self, stop: asyncio.Event) -> None:
        async with connected(self.settings) as c:
            await c.subscribe(self.topic, qos=1)
            self.ready.set()
            await first_of(self._receive(c), stop.wait())

    async def _receive(self, c: aiomqtt.Client) -> None:
        try:
            async for m in c.messages:
                self.messages.append((m.topic.value, bytes(m.payload)))
        except aiomqtt.MqttError:
            return  # the broker went away: a test that stops it expects this

    def __enter__(self) -> Listener:
        self._thread.start(self._main)
        assert self.ready.wait(5), "test listener could not subscribe"
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.stop()


def publish_raw(
    url: str, items: list[tuple[str, bytes]], *, retain: bool = False, **settings_kw
) -> None:
    """Publish payloads as they are (QoS 1), for messages our own writers would never make."""

    async def go() -> None:
        async with connected(MqttSettings.from_url(url, **settings_kw)) as c:
            for topic, payload in items:
                await c.publish(topic, payload, qos=1, retain=retain)

    asyncio.run(go())


# -- settings ----------------------------------------------------------------------------------


def test_url_parsing_and_redaction(tmp_path, monkeypatch):
    s = MqttSettings.from_url("mqtt://ann:p%40ss@broker.lan:1999")
    assert (s.host, s.port, s.username, s.password, s.tls) == (
        "broker.lan",
        1999,
        "ann",
        "p@ss",
        False,
    )
    assert "p@ss" not in s.redacted() and "p@ss" not in repr(s)
    assert MqttSettings.from_url("mqtts://h").port == 8883
    assert MqttSettings.from_url("h").port == 1883
    monkeypatch.setenv("GAZELOOP_MQTT_PASSWORD", "from-env")
    assert MqttSettings.from_url("mqtt://ann@h").password == "from-env"
    ca = tmp_path / "ca.pem"
    ca.write_text(TEST_CA_PEM)
    s = MqttSettings.from_url("mqtt://h", ca_file=ca)
    assert s.tls and s.port == 8883  # a CA file means TLS even under mqtt://
    from gazeloop.tools.runtime.mqtt.conn import MqttConfigError, topic_part

    for bad in ("http://h", "mqtt://", "mqtt://h/path", "mqtt://h:99999"):
        with pytest.raises(MqttConfigError):
            MqttSettings.from_url(bad)
    with pytest.raises(MqttConfigError, match="CA file"):
        MqttSettings.from_url("mqtts://h", ca_file=tmp_path / "missing.pem")
    # A file that holds no certificate is the user's to fix, said once (the connection
    # supervisor retried its handshake failure for ever as a broker problem).
    (tmp_path / "not.pem").write_text("not a certificate")
    with pytest.raises(MqttConfigError, match="holds no usable PEM certificate"):
        MqttSettings.from_url("mqtts://h", ca_file=tmp_path / "not.pem")
    for bad in ("a/b", "+", "#", "", "$SYS"):
        with pytest.raises(MqttConfigError):
            topic_part(bad)


def test_backoff_grows_to_its_cap_and_resets():
    b = Backoff(initial_s=0.1, cap_s=1.0, factor=2.0, jitter=0.0)
    assert [round(b.next(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == pytest.approx(0.1)
    j = Backoff(initial_s=1.0, cap_s=1.0, jitter=0.5)
    assert all(0.5 <= j.next() <= 1.0 for _ in range(50))


def test_a_stop_is_never_lost_when_it_lands_as_the_wake_up_fires():
    """A session waits for a wake-up with a poll timeout and is stopped by a cancel. On Python
    3.11 `asyncio.wait_for` returned the wake-up when the cancel landed while it was firing:
    the label uplink's session ran on after close(), polling the outbox close() had closed.
    Counted in loop turns, not seconds: the cancel is placed at each turn the wake-up takes."""

    async def turns(n: int) -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    async def main(gap: int) -> bool:
        wake = asyncio.Event()

        async def session() -> None:
            while True:
                await wait_event(wake, 3600)
                wake.clear()

        task = asyncio.create_task(session())
        await turns(1)  # parked in its wait
        wake.set()
        await turns(gap)
        task.cancel()
        await turns(50)  # a cancel that is not lost ends it within a few
        stopped = task.done()
        if not stopped:  # so the loop can close
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return stopped

    assert [asyncio.run(main(gap)) for gap in range(5)] == [True] * 5


# -- the gaze stream ---------------------------------------------------------------------------


def test_gaze_stream_reaches_a_subscriber_in_order(broker):
    with Listener(broker.url, "gazeloop/ann/mac/gaze") as rx:
        # No staleness cutoff: order is under test, and a stalled thread must not drop a sample.
        pub = GazePublisher(
            broker.url, user="ann", device="mac", queue_size=256, max_age_s=None, backoff=FAST
        )
        with pub:
            assert wait_until(lambda: pub.stats.connected, 5)
            t0 = SampleTime.now()
            began = time.monotonic()
            for i in range(30):
                # Captured 1/60 s apart (epoch ms), handed over now (monotonic).
                stamp = SampleTime(t0.epoch_ms + round(i * 16.667), time.monotonic_ns())
                pub.publish_sample(stamp, (i / 30, 0.25), {"blink": i % 2 == 0})
                time.sleep(0.002)
            assert wait_until(lambda: len(rx.messages) >= 30, 5)
            waited_ms = (time.monotonic() - began) * 1000
        st = pub.stats
    got = [decode_sample(p) for _, p in rx.messages]
    assert [g.seq for g in got] == list(range(1, 31))
    assert got[3].x == pytest.approx(0.1) and got[3].y == 0.25
    assert got[2].flags == {"blink": True} and got[3].flags == {"blink": False}
    # t is the sample's capture time as given, in unix seconds, 16.7 ms apart.
    assert [g.t_ms - t0.epoch_ms for g in got] == [round(i * 16.667) for i in range(30)]
    # How long each waited to be sent, in ms: within the test's own run (0.05: the wire's
    # rounding), however slowly a loaded machine ran it.
    assert all(0 <= g.age_ms <= waited_ms + 0.05 for g in got)
    assert (st.offered, st.sent, st.dropped, st.failures) == (30, 30, 0, 0)


@pytest.mark.slow
def test_bench_returns_sane_latency(broker):
    # Long bounds for the connect and for late samples: each wait ends when its condition
    # holds, so a loaded machine makes the bench slower, never short of samples.
    t0 = time.monotonic()
    r = bench_mqtt(broker.url, rate_hz=60, seconds=1.0, connect_timeout_s=60, settle_s=60)
    ran_ms = (time.monotonic() - t0) * 1000
    # Loopback QoS 0 with a queue longer than the run: a loss here would be a bug.
    assert (r["samples"], r["received"], r["lost"], r["dropped"]) == (60, 60, 0, 0)
    # In ms, not s or ns: no sample can take longer than the whole bench did.
    assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"] <= ran_ms
    json.dumps(r)  # the CLI prints it as JSON


def test_bench_against_a_listener_that_never_answers_says_so():
    """The kernel completes the handshake and nobody ever sends CONNACK: the bench gives up
    at its own timeout with a reason (it used to say ': None')."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        url = f"mqtt://127.0.0.1:{hole.getsockname()[1]}"
        with pytest.raises(RuntimeError, match="cannot subscribe") as ei:
            bench_mqtt(url, rate_hz=60, seconds=0.1, connect_timeout_s=0.3)
    assert "None" not in str(ei.value) and str(ei.value).split(": ")[-1].strip()


@pytest.mark.parametrize("kind", ["refused", "black_hole"])
def test_publisher_never_blocks_when_the_broker_is_away(kind, monkeypatch):
    """Port closed (refused at once) or a listener that never answers (CONNECT hangs until
    the timeout): either way publish_sample only queues, and the queue drops the oldest.
    The publisher's connection attempt is held at a gate while the samples are offered, so
    a call that waited on the network could not return before the gate opens."""
    held, gate = threading.Event(), threading.Event()

    class GatedClient(aiomqtt.Client):
        async def __aenter__(self):
            held.set()
            while not gate.is_set():
                await asyncio.sleep(0.01)
            return await super().__aenter__()

    monkeypatch.setattr(aiomqtt, "Client", GatedClient)
    hole = None
    if kind == "refused":
        url = f"mqtt://127.0.0.1:{free_port()}"
    else:
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)  # the kernel completes the handshake; nobody ever reads
        url = f"mqtt://127.0.0.1:{hole.getsockname()[1]}"
    try:
        pub = GazePublisher(url, user="u", device="d", queue_size=8, backoff=FAST)

        def offer() -> None:
            for i in range(600):  # ten seconds of 60 Hz samples, as fast as possible
                pub.publish_sample(SampleTime.now(), (0.5, 0.5), i)

        with pub:
            try:
                assert held.wait(60), "the publisher never tried to connect"
                # On a thread: one that blocks must fail the test, not hang it.
                caller = threading.Thread(target=offer, daemon=True)
                caller.start()
                caller.join(120)  # only a blocked call ever comes near this
                returned, during = not caller.is_alive(), pub.stats
            finally:
                gate.set()
            assert returned, f"publish_sample waited on the held connection: {during}"
            if kind == "refused":  # and it keeps trying, in its own thread
                assert wait_until(lambda: pub.stats.failures >= 3, 60), pub.stats
            st = pub.stats
        # Every call returned while the first attempt was still held (none had failed).
        assert (during.offered, during.queued, during.failures) == (600, 8, 0)
        assert st.sent == 0 and st.dropped == st.dropped_queue == 600 - 8 and not st.connected
        # Closing counts what was still queued: every sample offered is accounted for.
        end = pub.stats
        assert (end.offered, end.dropped_closed, end.dropped, end.queued) == (600, 8, 600, 0)
        if kind == "refused":
            assert "refused" in (st.last_error or "").lower()
    finally:
        if hole is not None:
            hole.close()


@pytest.mark.slow
def test_publisher_survives_a_broker_restart_and_drops_stale_samples(broker):
    # Stale by their stamps, not by waiting: the samples made while the broker is away were
    # captured two minutes ago, and a fresh one would have to wait a minute to go stale.
    pub = GazePublisher(
        broker.url, user="u", device="d", queue_size=4, max_age_s=60.0, backoff=FAST
    )
    with pub:
        with Listener(broker.url, "gazeloop/u/d/gaze") as rx:
            assert wait_until(lambda: pub.stats.connected, 5)
            pub.publish_sample(SampleTime.now(), (0.1, 0.1))
            assert wait_until(lambda: len(rx.messages) == 1, 5)
            broker.stop()
        assert wait_until(lambda: not pub.stats.connected, 5)
        for _ in range(10):  # while the broker is away: 4 kept, 6 overflow
            now = SampleTime.now()
            old = SampleTime(now.epoch_ms - 120_000, now.mono_ns - 120 * 10**9)
            pub.publish_sample(old, (0.2, 0.2))
        broker.start()
        with Listener(broker.url, "gazeloop/u/d/gaze") as rx2:
            assert wait_until(lambda: pub.stats.connected, 10), broker.log()
            pub.publish_sample(SampleTime.now(), (0.3, 0.3))
            assert wait_until(lambda: len(rx2.messages) == 1, 5)
            time.sleep(0.1)  # anything stale would have arrived before the fresh one
        st = pub.stats
    assert [decode_sample(p).seq for _, p in rx2.messages] == [12]
    assert (st.sent, st.dropped, st.dropped_queue, st.dropped_stale) == (2, 10, 6, 4)
    assert st.text() == "sent 2, dropped 10 (queue 6, stale 4)"
    assert st.reconnects >= 1 and st.failures >= 1


# -- labels ------------------------------------------------------------------------------------


def tiny_jpeg(i: int) -> bytes:
    img = np.full((24, 32, 3), (i * 37) % 256, np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def add_label(
    store,
    i: int,
    *,
    line: bool = False,
    accepted: bool = True,
    run_id=None,
    jpeg: bytes | None = None,
    judged: bool = True,
) -> int:
    """Store label `i` (a point, or a line) with its picture; `judged=False`: as a run
    without a loop stores it."""
    obs = (
        LineObservation(origin=(0.5, 0.0), direction=(0.0, 1.0))
        if line
        else PointObservation(xy=(0.05 + (i % 10) / 10, 0.5))
    )
    label = OracleLabel(
        t_ns=1_000_000 + i, snapshot_id=f"snap-{i}", oracle="click", observation=obs
    )
    decision = SimpleNamespace(
        accepted=accepted, why="ok", residual=np.array([0.01, 0.0]), offset=np.zeros(2)
    )
    return store.add(
        label,
        jpeg if jpeg is not None else tiny_jpeg(i),
        fast_xy=(0.5, 0.5),
        decision=decision if judged else None,
        snapshot_ms=T0_MS + 1000 * i,
        run_id=run_id,
    )


T0_MS = 1_765_000_000_000
SCREEN = (1920, 1080)


def wire(store, label_id: int, user: str = "ann", device: str = "mac") -> bytes:
    """The exact payload the uplink sends for a stored label."""
    row = store.get(label_id)
    msg = message_from_row(
        row,
        store.image_path(row).read_bytes(),
        user=user,
        device=device,
        screen=ScreenGeometry(px=SCREEN),
    )
    return msg.model_dump_json(exclude_none=True).encode()


def unsent(store) -> list[int]:
    """What the store's uplink has yet to send, as its outbox on disk says."""
    with Outbox(outbox_path(store.root)) as outbox:
        outbox.take_in(store)
        return outbox.pending(1000)


def records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("img_*.json"))]


def subscribing_collector(url: str, out: Path) -> Collector:
    """A started collector whose `subscribed` event is set once the broker has acknowledged
    its subscription: connected is not enough, a label published in between has no
    subscriber on a fresh session and is dropped (seen under load)."""
    subscribed = threading.Event()
    c = Collector(url, out, backoff=FAST, on_subscribed=lambda _n: subscribed.set()).start()
    c.subscribed = subscribed
    return c


def ann_uplink(url: str, store, **kw) -> LabelUplink:
    """The uplink of ann's mac on the test screen, reconnecting and polling fast."""
    return LabelUplink(
        url, store, user="ann", device="mac", screen=SCREEN, backoff=FAST, poll_s=0.05, **kw
    )


@pytest.mark.slow
def test_every_label_reaches_the_collector_exactly_once_across_a_broker_restart(broker, tmp_path):
    """The done criterion: 50 labels from a real LabelStore while the broker goes down for
    about a second and comes back on the same port; each is written once."""
    store = LabelStore(tmp_path / "store")
    out = tmp_path / "dataset"
    collector = subscribing_collector(broker.url, out)
    uplink = ann_uplink(broker.url, store)
    try:
        assert collector.subscribed.wait(5), broker.log()
        uplink.start()
        ids = []
        for i in range(50):
            if i == 20:
                broker.stop()
            if i == 35:
                waiting = len(uplink.unsent(100))  # what the outage held back, pending
                broker.start()
            ids.append(add_label(store, i))
            uplink.nudge()
            time.sleep(0.065 if 20 <= i < 35 else 0.02)
        done = wait_until(lambda: collector.stats.written == 50 and not uplink.unsent(1), 20)
        assert done, (collector.stats, uplink.stats, broker.log())
        time.sleep(0.3)  # a late redelivery would show up as a duplicate, never a write
        up, col = uplink.stats, collector.stats
    finally:
        uplink.close()
        collector.close()
    assert waiting >= 14
    assert up.sent == 50 and up.failures >= 1 and up.reconnects >= 1
    assert col.written == 50 and col.malformed == 0 and col.reconnects >= 1
    assert col.received == col.written + col.duplicates

    folder = out / "ann__mac__1920x1080"
    recs = records(folder)
    uids = [r["label_uid"] for r in recs]
    assert sorted(uids) == sorted(make_uid("ann", "mac", i, f"snap-{k}") for k, i in enumerate(ids))
    session = read_session(folder, check_images=True)  # what the trainer reads
    assert len(session) == 50 and not session.rejected
    assert session.manifest.screen_px == SCREEN and session.manifest.user == "ann"
    by_t = {it.t_ms: it for it in session.items}
    it7 = by_t[T0_MS + 7000]
    assert it7.label_px == pytest.approx((0.75 * 1920, 0.5 * 1080))
    assert it7.image.read_bytes() == store.image_path(store.get(ids[7])).read_bytes()

    # A redelivered label (same uid) is counted, not written; also after a collector restart,
    # which learns what it already has from the files.
    payload = wire(store, ids[3])
    again = Collector(broker.url, out, backoff=FAST).start()
    try:
        assert wait_until(lambda: again.stats.connected, 5)
        publish_raw(broker.url, [("gazeloop/ann/mac/labels", payload)] * 2)
        assert wait_until(lambda: again.stats.duplicates == 2, 5), again.stats
    finally:
        again.close()
    assert again.stats.written == 0 and len(records(folder)) == 50


def test_a_backlog_goes_out_without_a_warning_per_batch(broker, tmp_path, caplog):
    """The uplink keeps a batch of QoS 1 publishes in flight by design; aiomqtt warned
    "There are 11 pending publish calls." and on up to 16, six lines per batch, on every run
    that began with labels unsent (after an outage, or from earlier runs)."""
    store = LabelStore(tmp_path / "store")
    for i in range(40):
        add_label(store, i)
    uplink = ann_uplink(broker.url, store)
    try:
        uplink.start()
        assert wait_until(lambda: uplink.stats.sent == 40, 20), (uplink.stats, broker.log())
    finally:
        uplink.close()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in said if "pending publish calls" in m], said


def test_malformed_labels_are_counted_and_never_written(broker, tmp_path):
    store = LabelStore(tmp_path / "store")
    good = add_label(store, 1)
    ok = json.loads(wire(store, good))

    def variant(**changes) -> bytes:
        return json.dumps({**ok, **changes}).encode()

    not_decodable = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 64).decode()
    topic = "gazeloop/ann/mac/labels"
    bad = [
        (topic, b"not json at all"),
        (topic, b'{"format": "gazeloop.label"}'),
        (topic, variant(jpeg_b64="%%% not base64 %%%")),
        (topic, variant(jpeg_b64=base64.b64encode(b"GIF89a...").decode())),
        (topic, variant(jpeg_b64=not_decodable)),
        ("gazeloop/bob/mac/labels", wire(store, good)),  # says ann/mac, arrives as bob's
        (topic, variant(uid="ann/mac/999/snap-other")),
        (topic, variant(label={**ok["label"], "observation": {"kind": "point", "xy": [1e400, 0]}})),
        (topic, variant(snapshot_ms=10**20)),  # it named a file img_1000...000.jpg
        (topic, variant(screen={"px": [10**9, 10**9]})),  # a folder ann__mac__1e9x1e9
    ]
    out = tmp_path / "dataset"
    collector = subscribing_collector(broker.url, out)
    try:
        assert collector.subscribed.wait(5)
        publish_raw(broker.url, [*bad, (topic, wire(store, good))])
        judged = lambda: collector.stats.malformed + collector.stats.written  # noqa: E731
        assert wait_until(lambda: judged() == len(bad) + 1, 5), collector.stats
        st = collector.stats
    finally:
        collector.close()
    assert st.malformed == len(bad) and st.written == 1 and st.duplicates == 0
    assert set(collector.malformed_reasons) == {"schema", "jpeg", "identity", "uid"}
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [
        "ann__mac__1920x1080/img_1765000001000.jpg",
        "ann__mac__1920x1080/img_1765000001000.json",
        "ann__mac__1920x1080/session.json",
    ]


def test_non_point_labels_are_kept_aside_not_given_to_the_trainer(tmp_path):
    """Line labels and labels the loop rejected are no seed records (export_session's rule),
    but nothing received is thrown away. No broker needed: `handle` is the whole decision."""
    store = LabelStore(tmp_path / "store")
    ids = [add_label(store, 0), add_label(store, 1, line=True), add_label(store, 2, accepted=False)]
    c = Collector("mqtt://127.0.0.1:1", tmp_path / "out")
    got = [c.handle("gazeloop/ann/mac/labels", wire(store, i)) for i in ids]
    assert got == ["written", "other", "other"]
    assert c.handle("gazeloop/ann/mac/labels", wire(store, ids[1])) == "duplicate"
    other = sorted((tmp_path / "out" / "ann__mac__1920x1080" / "other").glob("*.json"))
    kept = [json.loads(p.read_text()) for p in other]
    assert [k["label"]["observation"]["kind"] for k in kept] == ["line", "point"]
    assert all(p.with_suffix(".jpg").is_file() for p in other)
    assert len(read_session(tmp_path / "out" / "ann__mac__1920x1080")) == 1


def test_two_people_whose_names_fold_alike_are_two_folders(tmp_path):
    """The folder name folded a name to letters, digits and `._-` and joined the pair with
    `__`: "ada lovelace" and "ada_lovelace" were one folder, and so were user "x__y" on "z"
    and user "x" on "y__z": two people trained as one, under the first one's name."""
    store = LabelStore(tmp_path / "store")
    c = Collector("mqtt://127.0.0.1:1", tmp_path / "out")
    pairs = [("ada lovelace", "mac"), ("ada_lovelace", "mac"), ("x__y", "z"), ("x", "y__z")]
    for i, (user, device) in enumerate(pairs):
        payload = wire(store, add_label(store, i), user=user, device=device)
        assert c.handle(f"gazeloop/{user}/{device}/labels", payload) == "written"
    folders = sorted((tmp_path / "out").iterdir())
    assert len(folders) == 4 and "ada_lovelace__mac__1920x1080" in [f.name for f in folders]
    manifests = [json.loads((f / "session.json").read_text()) for f in folders]
    whose = {(m["user"], m["device"]) for m in manifests}
    assert whose == set(pairs)


def test_a_schema_1_store_sends_only_what_it_had_not_sent(broker, tmp_path):
    """A store written before the outbox existed kept its delivery flag in a `sent` column:
    the uplink takes it over, so what went out then does not go out again."""
    root = tmp_path / "store"
    with LabelStore(root) as store:
        ids = [add_label(store, i) for i in range(5)]
    with sqlite3.connect(root / "labels.sqlite3") as db:  # schema 1: the flag in the store
        db.execute("ALTER TABLE labels ADD COLUMN sent INTEGER NOT NULL DEFAULT 0")
        db.executemany("UPDATE labels SET sent = 1 WHERE id = ?", [(i,) for i in ids[:2]])
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    store = LabelStore(root)
    ids.append(add_label(store, 5))
    out = tmp_path / "dataset"
    collector = subscribing_collector(broker.url, out)
    uplink = ann_uplink(broker.url, store)
    try:
        assert collector.subscribed.wait(5), broker.log()
        uplink.start()
        assert wait_until(lambda: uplink.stats.sent == 4, 10), uplink.stats
        assert wait_until(lambda: collector.stats.written == 4, 5), collector.stats
    finally:
        uplink.close()
        collector.close()
    uids = [r["label_uid"] for r in records(out / "ann__mac__1920x1080")]
    assert sorted(uids) == sorted(make_uid("ann", "mac", ids[k], f"snap-{k}") for k in range(2, 6))
    assert not unsent(store)
    store.close()


def test_each_label_goes_out_on_the_screen_its_run_recorded(broker, tmp_path):
    """A run on the external monitor stored labels that are fractions of that monitor: they
    reach the collector filed under its size, the others under the screen the uplink was
    given; and under the device that run was on (all went under the sending run's device,
    two camera placements in one folder). A run record that does not read costs its own
    label only, not the batch."""
    store = LabelStore(tmp_path / "store")
    monitor = store.begin_run({"source": "0", "device": "desk"}, ScreenGeometry(px=(2560, 1440)))
    broken = store.begin_run({"source": "1"}, ScreenGeometry(px=(800, 600)))
    for i in range(4):  # odd ones on the monitor, even ones from before runs were recorded
        add_label(store, i, run_id=monitor if i % 2 else None)
    add_label(store, 4, run_id=broken)
    with sqlite3.connect(store.root / "labels.sqlite3") as db:  # a damaged run row
        db.execute('UPDATE runs SET screen = \'{"px": "wide"}\' WHERE id = ?', (broken,))
    out = tmp_path / "dataset"
    collector = subscribing_collector(broker.url, out)
    uplink = ann_uplink(broker.url, store)
    try:
        assert collector.subscribed.wait(5), broker.log()
        uplink.start()
        assert wait_until(lambda: collector.stats.written == 4, 10), (collector.stats, uplink.stats)
        assert wait_until(lambda: uplink.stats.unsendable == 1, 5), uplink.stats
    finally:
        uplink.close()
        collector.close()
    laptop = read_session(out / "ann__mac__1920x1080")
    external = read_session(out / "ann__desk__2560x1440")
    assert len(laptop) == len(external) == 2 and external.manifest.screen_px == (2560, 1440)
    assert sorted(it.label_px[0] for it in external.items) == pytest.approx(
        [0.15 * 2560, 0.35 * 2560]
    )
    store.close()


def webcam_like_jpeg() -> bytes:
    """A 1280x720 snapshot of about 230 KB, the size of a real one (~195 KB): fine noise on
    smooth colour, which JPEG cannot squeeze as it does a flat test picture."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:720, 0:1280]
    base = np.stack([(x / 5) % 256, (y / 3) % 256, ((x + y) / 7) % 256], -1)
    img = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def test_a_reencoded_snapshot_goes_as_schema_2_so_an_older_collector_names_why(tmp_path):
    """`jpeg_reencoded` is a field a schema-1 collector does not know: it files the label as
    malformed ("schema"). Only those labels carry the new version; every other stays 1."""
    from gazeloop.tools.runtime.mqtt.labels import Reencoded

    store = LabelStore(tmp_path / "store")
    row = store.get(add_label(store, 0))
    how = Reencoded(original_bytes=250_000, quality=80, scale=1.0)
    screen = ScreenGeometry(px=SCREEN)
    as_stored = message_from_row(row, b"\xff\xd8", user="ann", device="mac", screen=screen)
    smaller = message_from_row(
        row, b"\xff\xd8", user="ann", device="mac", screen=screen, reencoded=how
    )
    assert (as_stored.schema_version, smaller.schema_version) == (1, 2)
    store.close()


@pytest.mark.slow
def test_a_label_over_the_brokers_size_limit_arrives_reencoded_not_lost(make_broker, tmp_path):
    """mosquitto drops a message over its message_size_limit and still acknowledges it: a
    real snapshot (~260 KB in base64) was counted as sent and never arrived. It now goes
    with its snapshot re-encoded to fit the uplink's limit, and the record says so."""
    b = make_broker(config=("message_size_limit 131072",))
    store = LabelStore(tmp_path / "store")
    big = webcam_like_jpeg()
    assert len(big) > 200_000
    ids = [add_label(store, 0, jpeg=big), add_label(store, 1)]
    out = tmp_path / "dataset"
    collector = subscribing_collector(b.url, out)
    uplink = ann_uplink(b.url, store)
    try:
        assert collector.subscribed.wait(5), b.log()
        uplink.start()
        done = wait_until(lambda: collector.stats.written == 2, 10)
        assert done, (collector.stats, uplink.stats, b.log())
        assert wait_until(lambda: uplink.stats.sent == 2, 5), uplink.stats
    finally:
        uplink.close()
        collector.close()
    assert "too large" not in b.log()
    folder = out / "ann__mac__1920x1080"
    by_id = {r["oracle"]["label_id"]: r for r in records(folder)}
    how = by_id[ids[0]]["jpeg_reencoded"]
    assert how["original_bytes"] == len(big) and how["quality"] < 92
    assert "jpeg_reencoded" not in by_id[ids[1]]  # a small one goes as it was stored
    sent = (folder / f"img_{by_id[ids[0]]['timestamp']}.jpg").read_bytes()
    assert len(sent) * 4 / 3 < 120 * 1024
    shape = cv2.imdecode(np.frombuffer(sent, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    assert shape == (round(720 * how["scale"]), round(1280 * how["scale"]))
    assert len(read_session(folder, check_images=True)) == 2
    assert store.image_path(store.get(ids[0])).read_bytes() == big  # the store keeps it
    store.close()


def test_a_label_that_cannot_fit_the_limit_stays_pending_with_one_warning(
    broker, tmp_path, caplog, monkeypatch
):
    """Never counted as sent, never holding up the labels behind it, said once by id."""
    store = LabelStore(tmp_path / "store")
    big, small = add_label(store, 0, jpeg=webcam_like_jpeg()), add_label(store, 1)
    collector = subscribing_collector(broker.url, tmp_path / "dataset")
    # Its smallest re-encoding is ~3 KB of JPEG, 4 KB in base64.
    uplink = ann_uplink(broker.url, store, max_message_bytes=4096)
    try:
        assert collector.subscribed.wait(5), broker.log()
        uplink.start()
        assert wait_until(lambda: collector.stats.written == 1, 10), (collector.stats, uplink.stats)
        assert wait_until(lambda: uplink.stats.unsendable == 1, 5), uplink.stats
        assert wait_until(lambda: uplink.stats.sent == 1, 30), uplink.stats

        # The end of a run does not wait its --mqtt-wait for a label that cannot go: with
        # nothing else pending, drain returns at its first look, without a single wait.
        def no_wait(s: float) -> None:
            raise AssertionError(f"drain waited {s} s for a label that cannot go")

        clock = SimpleNamespace(monotonic=time.monotonic, sleep=no_wait)
        with monkeypatch.context() as m:
            m.setattr(labels_module, "time", clock)
            left = uplink.drain(24 * 3600)
        st = uplink.stats
        # Its thread ends with close(): it went on reading the outbox close() had closed
        # (a cancel lost in asyncio.wait_for). The bound only matters if it hangs.
        uplink.close(timeout=120)
        assert not uplink.alive
    finally:
        uplink.close()
        collector.close()
    assert left == 1 and st.sent == 1 and st.unsendable == 1 and unsent(store) == [big]
    said = [r.getMessage() for r in caplog.records if "kept unsent" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"label {big} (snapshot snap-0)")
    assert "4096-byte limit" in said[0]
    assert small not in unsent(store)
    store.close()


@pytest.mark.slow
def test_a_label_no_loop_judged_is_collected_as_export_writes_it(broker, tmp_path):
    """A label stored without a loop (no profile yet) went out as rejected by the loop, so
    collect filed it under other/ while `LabelStore.export_session` trains on it."""
    from gazeloop.calibration.store.labelstore import NOT_PROCESSED

    store = LabelStore(tmp_path / "store")
    ids = [add_label(store, 0), add_label(store, 1, judged=False)]
    assert store.get(ids[1]).why == NOT_PROCESSED
    assert "decision" not in json.loads(wire(store, ids[1]))  # no verdict, none sent
    out = tmp_path / "dataset"
    collector = subscribing_collector(broker.url, out)
    uplink = ann_uplink(broker.url, store)
    try:
        assert collector.subscribed.wait(5), broker.log()
        uplink.start()
        done = wait_until(lambda: collector.stats.written + collector.stats.other == 2, 10)
        assert done, (collector.stats, uplink.stats)
        st = collector.stats
    finally:
        uplink.close()
        collector.close()
    assert (st.written, st.other) == (2, 0)
    assert store.export_session(tmp_path / "export", ScreenGeometry(px=SCREEN))["written"] == 2
    fields = ("screen_x", "screen_y", "oracle")
    exported = {r["oracle"]["label_id"]: r for r in records(tmp_path / "export")}
    collected = {r["oracle"]["label_id"]: r for r in records(out / "ann__mac__1920x1080")}
    for i in ids:
        assert {k: collected[i][k] for k in fields} == {k: exported[i][k] for k in fields}
    assert collected[ids[1]]["oracle"]["accepted"] is None

    # What an older uplink sent for such a label (the reason as a rejection): no verdict.
    old = json.loads(wire(store, ids[1]))
    old["decision"] = {"accepted": False, "why": NOT_PROCESSED}
    again = Collector("mqtt://127.0.0.1:1", tmp_path / "older")
    assert again.handle("gazeloop/ann/mac/labels", json.dumps(old).encode()) == "written"
    store.close()


@pytest.mark.slow
def test_bad_credentials_are_retried_and_labels_wait_in_the_store(
    make_broker, tmp_path, monkeypatch
):
    if MOSQUITTO_PASSWD is None:
        pytest.skip("mosquitto_passwd is not installed")
    b = make_broker(users={"ann": "s3cret", "trainer": "t0p"})
    port = b.port
    store = LabelStore(tmp_path / "store")
    for i in range(3):
        add_label(store, i)
    wrong = LabelUplink(
        f"mqtt://ann:nope@127.0.0.1:{port}", store, user="ann", device="mac", backoff=FAST
    ).start()
    try:
        assert wait_until(lambda: wrong.stats.failures >= 3, 5), wrong.stats
        st = wrong.stats
    finally:
        wrong.close()
    assert re.search(r"not authori[sz]ed|bad user ?name or password", st.last_error or "", re.I)
    assert st.sent == 0 and st.reconnects == 0 and not st.connected
    assert len(unsent(store)) == 3

    # The password from the environment (kept out of the process list), and the collector's
    # from the URL: the same labels now arrive.
    monkeypatch.setenv("GAZELOOP_MQTT_PASSWORD", "s3cret")
    out = tmp_path / "dataset"
    collector = subscribing_collector(f"mqtt://trainer:t0p@127.0.0.1:{port}", out)
    right = LabelUplink(
        f"mqtt://ann@127.0.0.1:{port}", store, user="ann", device="mac", screen=SCREEN, backoff=FAST
    )
    try:
        assert collector.subscribed.wait(5), collector.stats
        right.start()
        assert wait_until(lambda: collector.stats.written == 3, 5), (right.stats, b.log())
        assert wait_until(lambda: right.stats.sent == 3, 5), right.stats
    finally:
        right.close()
        collector.close()
    assert not unsent(store)


# -- models ------------------------------------------------------------------------------------


def tiny_model(folder: Path, model_id: str, n_weights: int) -> tuple[Path, dict]:
    """A small valid ONNX (Identity, with a weight blob for size) and its card, tagged the
    way the registry checks (`trainer.card`, which needs no torch)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from gazeloop.fastpath.ir_onnx import OMZ_IO_CONVENTION

    w = numpy_helper.from_array(np.arange(n_weights, dtype=np.float32), "w")
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g", io[:1], io[1:], initializer=[w]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in (("gazeloop.model_id", model_id), ("gazeloop.io_convention", OMZ_IO_CONVENTION)):
        p = model.metadata_props.add()
        p.key, p.value = k, v
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model_id}-{n_weights}.onnx"
    onnx.save(model, str(path))
    card = {
        "model_id": model_id,
        "created": "2026-01-01T00:00:00Z",
        "inputs": [],
        "outputs": [],
        "preprocessing": {"version": "test"},
        "opset": 17,
    }
    return path, card


def test_a_card_of_another_model_is_refused_naming_the_model(tmp_path):
    from gazeloop.tools.runtime.mqtt.models import AnnounceError, ModelAnnouncer

    path, card = tiny_model(tmp_path / "m", "gaze-net", 1_000)
    card["onnx_sha256"] = "0" * 64
    path.with_name(path.stem + ".card.json").write_text(json.dumps(card))
    # Refused before any connection: the port has no broker.
    with pytest.raises(AnnounceError) as e:
        ModelAnnouncer("mqtt://127.0.0.1:9").announce_path(path)
    assert str(path) in str(e.value) and "do not belong together" in str(e.value)


def test_a_fetch_that_never_reached_its_broker_fails_saying_so(tmp_path, capsys):
    """It exited 0 with `fetched: 0`, as if the broker had had no new model."""
    from gazeloop.tools.cli import main

    reg = tmp_path / "registry"
    argv = ["fetch", "--mqtt", "mqtt://127.0.0.1:9", "--registry", str(reg), "--seconds", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gazeloop fetch: never reached the broker at mqtt://127.0.0.1:9")


def test_fetch_once_gives_up_on_a_broker_it_never_reaches(tmp_path, capsys, monkeypatch):
    """`fetch --once` on a closed port waited for ever: a script asking for a new model got
    no answer."""
    from gazeloop.tools.cli import main
    from gazeloop.tools.commands import mqtt as mqtt_cmd

    monkeypatch.setattr(mqtt_cmd, "ONCE_CONNECT_S", 0.5)
    reg = tmp_path / "reg"
    assert main(["fetch", "--mqtt", "mqtt://127.0.0.1:9", "--registry", str(reg), "--once"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gazeloop fetch: never reached the broker at mqtt://127.0.0.1:9")


def test_a_collect_that_never_reached_its_broker_fails_saying_so(tmp_path, capsys):
    """It exited 0 after a wrong --ca-file or a closed port, as after a quiet night."""
    from gazeloop.tools.cli import main

    argv = ["collect", "--mqtt", "mqtt://127.0.0.1:9", "--out", str(tmp_path / "o")]
    assert main([*argv, "--seconds", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gazeloop collect: never reached the broker at mqtt://127.0.0.1:9")


def test_collect_refuses_a_screen_px_beyond_any_screen_at_the_flag(tmp_path, capsys):
    """19200x1080 was taken, and then every label without a screen crashed the collector
    (and again after each restart)."""
    from gazeloop.tools.cli import main

    argv = ["collect", "--mqtt", "mqtt://127.0.0.1:9", "--out", str(tmp_path / "o")]
    assert main([*argv, "--screen-px", "19200", "1080", "--seconds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gazeloop collect: --screen-px: screen size 19200x1080 px is beyond any screen"]
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="beyond any screen"):  # the API refuses it too
        Collector("mqtt://127.0.0.1:9", tmp_path / "o", screen_px=(19200, 1080))


@pytest.mark.parametrize(
    ("flag", "name"), [("--user", "a/b"), ("--device", "lap#1"), ("--user", "")]
)
def test_collect_refuses_a_name_that_cannot_be_a_topic_level_at_the_flag(
    tmp_path, capsys, flag, name
):
    """A traceback (MqttConfigError), where fetch and announce said it in one line."""
    from gazeloop.tools.cli import main

    argv = ["collect", "--mqtt", "mqtt://127.0.0.1:9", "--out", str(tmp_path / "o")]
    assert main([*argv, flag, name, "--seconds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"gazeloop collect: {flag}: {name!r} cannot be a topic level (empty, or has / + # $)"
    ]


def test_insecure_on_an_unencrypted_url_is_refused(tmp_path, capsys):
    """--insecure with mqtt:// sent everything in plaintext without a word."""
    from gazeloop.tools.cli import main
    from gazeloop.tools.runtime.mqtt.conn import MqttConfigError

    with pytest.raises(MqttConfigError, match="--insecure is for TLS"):
        MqttSettings.from_url("mqtt://h", insecure=True)
    assert MqttSettings.from_url("mqtts://h", insecure=True).insecure
    ca = tmp_path / "ca.pem"
    ca.write_text(TEST_CA_PEM)
    assert MqttSettings.from_url("mqtt://h", ca_file=ca, insecure=True).tls  # a CA means TLS
    argv = ["fetch", "--mqtt", "mqtt://127.0.0.1:9", "--registry", str(tmp_path / "r")]
    assert main([*argv, "--insecure", "--seconds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--insecure is for TLS (mqtts://) but mqtt:// is unencrypted" in err[0]


def test_announce_refuses_a_card_no_registry_would_take(tmp_path, capsys):
    """A card without `created` was announced, and every laptop refused it; one whose
    evaluation is not an object crashed every laptop's fetch."""
    from gazeloop.tools.cli import main

    path, card = tiny_model(tmp_path / "m", "gaze-net", 1_000)
    for change, field in (
        ({"created": None}, "created"),
        ({"evaluation": "promoted"}, "evaluation"),
    ):
        bad = {k: v for k, v in {**card, **change}.items() if v is not None}
        path.with_name(path.stem + ".card.json").write_text(json.dumps(bad))
        # Refused before any connection: the port has no broker.
        assert main(["announce", "--mqtt", "mqtt://127.0.0.1:9", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"gazeloop announce: {path}: its card is not")
        assert f"{field}:" in err[0]


ANNOUNCE = "gazeloop/models/announce/default"


def run_cli(argv: list[str], within_s: float = 20.0) -> int:
    """`gazeloop ARGV` in a thread, which must end within `within_s` (it is given a longer
    --seconds as a backstop, so a command that does not end by itself is seen failing)."""
    from gazeloop.tools.cli import main

    result: dict[str, object] = {}

    def go() -> None:
        try:
            result["rc"] = main(argv)
        except BaseException as e:  # shown by the test, not lost in the thread
            result["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(within_s)
    assert not t.is_alive(), f"gazeloop {' '.join(argv)} did not end within {within_s} s"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["rc"]  # type: ignore[return-value]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["already_had", "hash_mismatch", "refused", "bad_card"])
def test_fetch_once_ends_after_the_first_announcement_whatever_came_of_it(
    broker, tmp_path, capsys, case
):
    """--once waited for ever unless a model was fetched; a whole-file hash mismatch and a
    registry refusal left last_error null; a card whose evaluation is not an object
    crashed fetch (and every later one: the announcement is retained)."""
    from gazeloop.tools.runtime.mqtt.models import build_announcement, chunk_topic
    from gazeloop.trainer.registry import ModelRegistry

    path, card = tiny_model(tmp_path / "m", "gaze-net", 10_000)
    laptop = ModelRegistry(tmp_path / "laptop")
    if case == "already_had":
        laptop.register(path, card)
    if case == "refused":  # a valid card, but not this model's (its ONNX says gaze-net)
        card = {**card, "model_id": "other-net"}
    ann, chunks = build_announcement(path.read_bytes(), card, chunk_size=4096)
    doc = json.loads(ann.model_dump_json())
    if case == "hash_mismatch":  # every chunk as announced, the whole not
        doc["sha256"] = "f" * 64
        doc["chunk_topic"] = chunk_topic(ann.model_id, doc["sha256"])
    if case == "bad_card":
        doc["card"]["evaluation"] = "promoted"
    parts = [(f"{doc['chunk_topic']}/{i}", c) for i, c in enumerate(chunks)]
    publish_raw(broker.url, [*parts, (ANNOUNCE, json.dumps(doc).encode())], retain=True)

    argv = ["fetch", "--mqtt", broker.url, "--registry", str(laptop.root), "--once"]
    rc = run_cli([*argv, "--seconds", "60"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = {
        "already_had": (0, "already_had", None),
        "hash_mismatch": (1, "failed", "gaze-net: the assembled file fails the SHA-256 check"),
        "refused": (1, "failed", "other-net: refused by the registry: "),
        "bad_card": (1, "malformed", "gaze-net announcement: card: evaluation: "),
    }[case]
    assert rc == want[0] and summary[want[1]] == 1 and summary["fetched"] == 0, summary
    if want[2] is None:
        assert summary["last_error"] is None
    else:
        assert summary["last_error"].startswith(want[2]), summary
    assert len(laptop.list()) == (1 if case == "already_had" else 0)


def test_a_version_promoted_by_hand_is_announced_as_such_not_as_the_gates(tmp_path, capsys):
    """The laptop's `models list` said "gate: promoted: worse than its parent" of a model
    the gate had refused and a person had promoted on the training box."""
    from gazeloop.tools.cli import main
    from gazeloop.tools.runtime.mqtt.models import resolve_model
    from gazeloop.trainer.registry import ModelRegistry

    box = ModelRegistry(tmp_path / "box")
    refused = {"promoted": False, "reason": "worse than its parent by 0.5 px"}
    path, card = tiny_model(tmp_path / "m", "gaze-net", 1_000)
    e1 = box.register(path, {**card, "evaluation": refused})
    box.promote(e1.version, reason="hand override")
    _, sent = resolve_model(box.root)
    assert sent["evaluation"] == {**refused, "promoted": True, "promoted_by_hand": "hand override"}
    laptop = ModelRegistry(tmp_path / "laptop")
    laptop.register(e1.onnx_path, sent, promote=True, reason="fetched")
    assert main(["models", "list", "--registry", str(laptop.root)]) == 0
    out = capsys.readouterr().out
    assert "gate: refused: worse than its parent by 0.5 px; promoted by hand: hand override" in out
    # Never judged, promoted by hand: said so too (it showed as "gate: promoted").
    path, card = tiny_model(tmp_path / "m", "gaze-net", 1_500)
    e2 = box.register(path, card)
    box.promote(e2.version, reason="my own export")
    _, sent = resolve_model(box.root)
    assert sent["evaluation"] == {"promoted": True, "promoted_by_hand": "my own export"}
    laptop.register(e2.onnx_path, sent, promote=True, reason="fetched")
    assert main(["models", "list", "--registry", str(laptop.root)]) == 0
    assert "gate: not judged; promoted by hand: my own export" in capsys.readouterr().out
    # Promoted by the gate: announced as it was.
    path, card = tiny_model(tmp_path / "m", "gaze-net", 2_000)
    box.register(path, {**card, "evaluation": {"promoted": True, "reason": "better"}}, promote=True)
    _, sent = resolve_model(box.root)
    assert sent["evaluation"] == {"promoted": True, "reason": "better"}


@pytest.mark.slow
def test_model_announce_and_fetch_into_a_registry(broker, tmp_path):
    from gazeloop.tools.runtime.mqtt.models import ModelAnnouncer, ModelFetcher, build_announcement
    from gazeloop.trainer.registry import ModelRegistry

    trainer = ModelRegistry(tmp_path / "trainer-registry")
    laptop = ModelRegistry(tmp_path / "laptop-registry")
    trainer.register(*tiny_model(tmp_path / "m", "gaze-net", 9_000))  # never promoted
    e1 = trainer.register(*tiny_model(tmp_path / "m", "gaze-net", 10_000), promote=True)
    trainer.register(*tiny_model(tmp_path / "m", "gaze-net", 11_000))  # newer, not promoted
    announcer = ModelAnnouncer(broker.url, chunk_size=4096)
    ann1 = announcer.announce_path(trainer.root)  # the registry root: its PROMOTED version
    assert ann1.sha256 == e1.card.onnx_sha256 and len(ann1.chunk_sha256) == 10

    # Started after the announcement: the retained messages bring the model anyway.
    # No step here relies on the transfer timeout firing; a slow one must not fail a transfer.
    fetcher = ModelFetcher(broker.url, laptop, backoff=FAST, fetch_timeout_s=30.0).start()
    try:
        assert wait_until(lambda: fetcher.stats.fetched == 1, 10), fetcher.stats
        got = laptop.latest("gaze-net")
        assert got is not None and got.card.onnx_sha256 == ann1.sha256
        assert got.onnx_path.read_bytes() == e1.onnx_path.read_bytes()
        assert laptop.promoted("gaze-net").version == got.version  # promoted at its source

        e2 = trainer.register(*tiny_model(tmp_path / "m", "gaze-net", 12_000))
        ann2 = announcer.announce_path(e2.path)  # a registry version folder
        assert wait_until(lambda: fetcher.stats.fetched == 2, 10), fetcher.stats
        assert laptop.latest("gaze-net").card.onnx_sha256 == e2.card.onnx_sha256

        announcer.announce_path(e2.path)  # the same model again: nothing new to fetch
        assert wait_until(lambda: fetcher.stats.already_had == 1, 5), fetcher.stats

        # Garbage where the chunks should be: the first one fails the transfer at once (it
        # is retained: the right one cannot come), counted, never registered.
        path3, card3 = tiny_model(tmp_path / "m", "gaze-net", 3_000)
        ann3, chunks3 = build_announcement(path3.read_bytes(), card3, chunk_size=4096)
        garbage = [(f"{ann3.chunk_topic}/{i}", b"garbage") for i in range(len(chunks3))]
        publish_raw(broker.url, garbage, retain=True)
        publish_raw(
            broker.url,
            [
                (ANNOUNCE, b"{not an announcement"),
                (ANNOUNCE, ann3.model_dump_json().encode()),
            ],
        )
        n3 = len(chunks3)
        assert wait_until(lambda: fetcher.stats.failed == 1, 10), fetcher.stats
        st = fetcher.stats
    finally:
        fetcher.close()
    assert n3 > 1 and st.malformed == 2  # the announcement that is not one, one bad chunk
    assert st.fetched == 2 and st.failed == 1 and "is not the one announced" in st.last_error
    assert [e.version for e in laptop.list("gaze-net")] == [1, 2]

    # The broker keeps one model's chunks: the first model's were cleared.
    with Listener(broker.url, f"{ann1.chunk_topic}/+") as old:
        time.sleep(0.3)
    with Listener(broker.url, f"{ann2.chunk_topic}/+") as new:
        assert wait_until(lambda: len(new.messages) == len(ann2.chunk_sha256), 5)
    assert old.messages == []


@pytest.mark.slow
def test_a_rollback_at_the_source_reaches_the_laptop_and_a_choice_made_there_stays(
    broker, tmp_path
):
    """The training box rolled back to v1 and announced it; the laptop held v1 already,
    counted it `already_had` and went on serving the withdrawn v2."""
    from gazeloop.tools.runtime.mqtt.models import ModelAnnouncer, ModelFetcher
    from gazeloop.trainer.registry import ModelRegistry

    box, laptop = ModelRegistry(tmp_path / "box"), ModelRegistry(tmp_path / "laptop")
    announcer = ModelAnnouncer(broker.url, chunk_size=4096)
    fetcher = ModelFetcher(broker.url, laptop, backoff=FAST, fetch_timeout_s=30.0).start()
    try:
        for n, size in enumerate((10_000, 12_000), start=1):
            box.register(*tiny_model(tmp_path / "m", "gaze-net", size), promote=True)
            announcer.announce_path(box.root)
            assert wait_until(lambda n=n: fetcher.stats.fetched == n, 10), fetcher.stats
        assert laptop.promoted("gaze-net").version == 2
        box.rollback("gaze-net")  # v2 withdrawn at the source
        announcer.announce_path(box.root)
        # counted after the decision: the count first, then what is served
        assert wait_until(lambda: fetcher.stats.already_had == 1, 10), fetcher.stats
        assert laptop.promoted("gaze-net").version == 1
        # The person at the laptop serves v2 again, by hand, then rolls back to nothing: the
        # source's v1, announced again (a retained announcement comes on every connection),
        # undoes neither.
        laptop.promote(2, "gaze-net", reason="I prefer it")
        announcer.announce_path(box.root)
        assert wait_until(lambda: fetcher.stats.already_had == 2, 10), fetcher.stats
        assert laptop.promoted("gaze-net").version == 2
        for _ in range(10):  # back past the first promotion: nothing served, the stock model
            if laptop.rollback("gaze-net") is None:
                break
        assert laptop.promoted("gaze-net") is None
        announcer.announce_path(box.root)
        assert wait_until(lambda: fetcher.stats.already_had == 3, 10), fetcher.stats
        assert laptop.promoted("gaze-net") is None
        # A held copy damaged since is no copy: fetched again, not a traceback.
        held = laptop.get(1, "gaze-net").onnx_path
        held.write_bytes(held.read_bytes()[:-10] + b"0123456789")
        announcer.announce_path(box.root)
        assert wait_until(lambda: fetcher.stats.fetched == 3, 10), fetcher.stats
    finally:
        fetcher.close()
    assert fetcher.stats.failed == 0


def test_a_laptop_fetches_only_its_users_models(broker, tmp_path, monkeypatch, capsys):
    """One announcement topic for everyone: `fetch --user bob` registered and served alice's
    personal model, announced from her registry as the README says."""
    from gazeloop.tools.cli import main
    from gazeloop.tools.runtime.mqtt.models import ModelAnnouncer, ModelFetcher
    from gazeloop.trainer.registry import ModelRegistry, default_registry_root

    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "spark"))
    alice = ModelRegistry(default_registry_root("alice"))
    alice.register(*tiny_model(tmp_path / "m", "gaze-net", 10_000), promote=True)
    assert main(["announce", "--mqtt", broker.url, str(alice.root)]) == 0
    assert capsys.readouterr().out.startswith("announced gaze-net v1 for alice: ")
    assert main(["announce", "--mqtt", broker.url, "--user", "bob", str(alice.root)]) == 2
    assert f"{alice.root} is alice's registry: --user bob would send" in capsys.readouterr().err
    bobs = ModelRegistry(tmp_path / "laptop" / "bob")
    fetcher = ModelFetcher(broker.url, bobs, user="bob", backoff=FAST).start()
    try:
        bob = ModelRegistry(default_registry_root("bob"))
        bob.register(*tiny_model(tmp_path / "m", "gaze-net", 12_000), promote=True)
        ann = ModelAnnouncer(broker.url, user="bob").announce_path(bob.root)
        assert wait_until(lambda: fetcher.stats.fetched == 1, 10), fetcher.stats
    finally:
        fetcher.close()
    assert [e.card.onnx_sha256 for e in bobs.list()] == [ann.sha256]
    # A name that cannot be a topic level: one line, before any connection.
    assert main(["fetch", "--mqtt", broker.url, "--user", "team/eve", "--once"]) == 2
    assert capsys.readouterr().err.startswith("gazeloop fetch: --user: 'team/eve' cannot be")


# -- TLS ---------------------------------------------------------------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, valid a day: a TLS broker's (the test skips without
    openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.slow
def test_tls_with_a_ca_file_and_insecure(make_broker, tmp_path):
    cert, key = self_signed(tmp_path)
    b = make_broker(tls=(cert, key))
    assert b.url.startswith("mqtts://")

    r = bench_mqtt(
        b.url, rate_hz=60, seconds=0.25, ca_file=str(cert), connect_timeout_s=60, settle_s=60
    )
    assert r["received"] == r["samples"] == 15

    untrusted = GazePublisher(b.url, user="u", device="d", backoff=FAST).start()
    insecure = GazePublisher(b.url, user="u", device="d", backoff=FAST, insecure=True).start()
    try:
        assert wait_until(lambda: untrusted.stats.failures >= 2, 5), untrusted.stats
        assert wait_until(lambda: insecure.stats.connected, 5), insecure.stats
        assert "certificate verify failed" in (untrusted.stats.last_error or "")
        assert not untrusted.stats.connected
    finally:
        untrusted.close()
        insecure.close()
