"""The MQTT bridge against a real broker (Debian's mosquitto) started by the test on a free
loopback port, stopped and restarted on the same port where a test needs an outage.

mosquitto runs with persistence on, as a deployment must for the label guarantees to hold
across a broker restart: the collector's persistent session (its subscription and the QoS 1
labels queued for it) is saved at shutdown and restored at start.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

aiomqtt = pytest.importorskip(
    "aiomqtt", reason="aiomqtt is not installed (pip install -e '.[mqtt]')"
)

from tools.mqtt.conn import Backoff, MqttSettings  # noqa: E402
from tools.mqtt.gaze import GazePublisher, decode_sample  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
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
        from tools.mqtt.conn import LoopThread

        self.settings = MqttSettings.from_url(url, **settings_kw)
        self.topic = topic
        self.messages: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self._thread = LoopThread("test-listener")

    async def _main(self, stop: asyncio.Event) -> None:
        async with self.settings.client() as c:
            await c.subscribe(self.topic, qos=1)
            self.ready.set()
            it = aiter(c.messages)
            while not stop.is_set():
                try:
                    m = await asyncio.wait_for(anext(it), 0.05)
                except TimeoutError:
                    continue
                except aiomqtt.MqttError:
                    return  # the broker went away: a test that stops it expects this
                self.messages.append((m.topic.value, bytes(m.payload)))

    def __enter__(self) -> Listener:
        self._thread.start(self._main)
        assert self.ready.wait(5), "test listener could not subscribe"
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.stop()


def publish_raw(url: str, items: list[tuple[str, bytes]], **settings_kw) -> None:
    """Publish payloads as they are (QoS 1), for messages our own writers would never make."""

    async def go() -> None:
        async with MqttSettings.from_url(url, **settings_kw).client() as c:
            for topic, payload in items:
                await c.publish(topic, payload, qos=1)

    asyncio.run(go())


# -- settings ----------------------------------------------------------------------------------


def test_url_parsing_and_redaction(tmp_path, monkeypatch):
    s = MqttSettings.from_url("mqtt://ann:p%40ss@broker.lan:1999")
    assert (s.host, s.port, s.username, s.password, s.tls) == ("broker.lan", 1999, "ann", "p@ss", False)
    assert "p@ss" not in s.redacted() and "p@ss" not in repr(s)
    assert MqttSettings.from_url("mqtts://h").port == 8883
    assert MqttSettings.from_url("h").port == 1883
    monkeypatch.setenv("GAZELOOP_MQTT_PASSWORD", "from-env")
    assert MqttSettings.from_url("mqtt://ann@h").password == "from-env"
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    s = MqttSettings.from_url("mqtt://h", ca_file=ca)
    assert s.tls and s.port == 8883  # a CA file means TLS even under mqtt://
    from tools.mqtt.conn import MqttConfigError, topic_part

    for bad in ("http://h", "mqtt://", "mqtt://h/path", "mqtt://h:99999"):
        with pytest.raises(MqttConfigError):
            MqttSettings.from_url(bad)
    with pytest.raises(MqttConfigError, match="CA file"):
        MqttSettings.from_url("mqtts://h", ca_file=tmp_path / "missing.pem")
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


# -- the gaze stream ---------------------------------------------------------------------------


def test_gaze_stream_reaches_a_subscriber_in_order(broker):
    with Listener(broker.url, "gazeloop/ann/mac/gaze") as rx:
        pub = GazePublisher(broker.url, user="ann", device="mac", queue_size=256, backoff=FAST)
        with pub:
            assert wait_until(lambda: pub.stats.connected, 5)
            t0 = time.monotonic_ns()
            for i in range(30):
                pub.publish_sample(t0 + i * 16_666_667, (i / 30, 0.25), {"blink": i % 2 == 0})
                time.sleep(0.002)
            assert wait_until(lambda: len(rx.messages) >= 30, 5)
        st = pub.stats
    got = [decode_sample(p) for _, p in rx.messages]
    assert [g.seq for g in got] == list(range(1, 31))
    assert got[3].x == pytest.approx(0.1) and got[3].y == 0.25
    assert got[2].flags == {"blink": True} and got[3].flags == {"blink": False}
    # t is the sample's own time on the wall clock, 16.7 ms apart like the samples.
    assert abs(got[0].t_ms - time.time() * 1000) < 10_000
    assert got[29].t_ms - got[0].t_ms == pytest.approx(29 * 16.667, abs=2)
    assert (st.sent, st.dropped, st.failures) == (30, 0, 0)


def test_bench_returns_sane_latency(broker):
    from tools.mqtt.bench import bench_mqtt

    r = bench_mqtt(broker.url, rate_hz=60, seconds=1.0)
    assert r["samples"] == 60 and r["received"] + r["lost"] == 60
    assert r["received"] >= 55  # loopback QoS 0: a loss here would be a bug, not the network
    assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"] < 5000
    json.dumps(r)  # the CLI prints it as JSON


@pytest.mark.parametrize("kind", ["refused", "black_hole"])
def test_publisher_never_blocks_when_the_broker_is_away(kind):
    """Port closed (refused at once) or a listener that never answers (CONNECT hangs until
    the timeout): either way publish_sample only queues, and the queue drops the oldest."""
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
        settings_timeout = pub.settings.timeout_s
        with pub:
            worst = 0.0
            t0 = time.perf_counter()
            for i in range(600):  # ten seconds of 60 Hz samples, as fast as possible
                t = time.perf_counter()
                pub.publish_sample(time.monotonic_ns(), (0.5, 0.5), i)
                worst = max(worst, time.perf_counter() - t)
            total = time.perf_counter() - t0
            if kind == "refused":  # and it keeps trying, in its own thread
                assert wait_until(lambda: pub.stats.failures >= 3, 5)
            st = pub.stats
        # Blocking on the network would cost at least one connect attempt (refused: a
        # round trip per call; black hole: the 10 s CONNACK timeout).
        assert total < settings_timeout / 4 and worst < 0.5
        assert st.sent == 0 and st.dropped == 600 - 8 and not st.connected
        if kind == "refused":
            assert "refused" in (st.last_error or "").lower()
    finally:
        if hole is not None:
            hole.close()


def test_publisher_survives_a_broker_restart_and_drops_stale_samples(broker):
    pub = GazePublisher(
        broker.url, user="u", device="d", queue_size=4, max_age_s=0.3, backoff=FAST
    )
    with pub:
        with Listener(broker.url, "gazeloop/u/d/gaze") as rx:
            assert wait_until(lambda: pub.stats.connected, 5)
            pub.publish_sample(time.monotonic_ns(), (0.1, 0.1))
            assert wait_until(lambda: len(rx.messages) == 1, 5)
            broker.stop()
        assert wait_until(lambda: not pub.stats.connected, 5)
        for _ in range(10):  # while the broker is away: 4 kept, 6 overflow
            pub.publish_sample(time.monotonic_ns(), (0.2, 0.2))
        time.sleep(0.4)  # the 4 kept are now older than max_age_s
        broker.start()
        with Listener(broker.url, "gazeloop/u/d/gaze") as rx2:
            assert wait_until(lambda: pub.stats.connected, 10), broker.log()
            pub.publish_sample(time.monotonic_ns(), (0.3, 0.3))
            assert wait_until(lambda: len(rx2.messages) == 1, 5)
            time.sleep(0.1)  # anything stale would have arrived before the fresh one
        st = pub.stats
    assert [decode_sample(p).seq for _, p in rx2.messages] == [12]
    assert (st.sent, st.dropped) == (2, 10)
    assert st.reconnects >= 1 and st.failures >= 1
