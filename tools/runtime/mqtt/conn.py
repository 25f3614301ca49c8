"""Connections to the broker: URL parsing, TLS, reconnect with capped backoff, and the
thread that owns an asyncio loop so callers on the fast path never wait on the network.

Every long-lived MQTT object here (publisher, uplink, collector, fetcher) runs the same
supervisor: connect, run its session until the connection fails or it is told to stop, back
off (exponential, capped, jittered), connect again. A new aiomqtt client is made for every
attempt so nothing half-sent from a dead connection leaks into the next one; what must not be
lost lives outside the client (the label store, the retained model chunks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import unquote, urlsplit

import aiomqtt

log = logging.getLogger(__name__)

T = TypeVar("T")

TOPIC_ROOT = "gazeloop"
PASSWORD_ENV = "GAZELOOP_MQTT_PASSWORD"
_SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True, "tls": True}
_DEFAULT_PORT = {False: 1883, True: 8883}
PAHO_INFLIGHT = 20  # paho's default of QoS 1 messages in flight at once


class MqttConfigError(ValueError):
    """A broker URL or TLS option that cannot work; raised before any connection is tried."""


def topic_part(name: str) -> str:
    """A user or device name as one topic level: wildcards and separators would let one
    device's stream spill into another's subscription."""
    if not name or any(c in name for c in "/+#\0") or name.startswith("$"):
        raise MqttConfigError(f"{name!r} cannot be a topic level (empty, or has / + # $)")
    return name


def _check_ca(ca: Path) -> None:
    """A CA file that holds no certificate fails every TLS handshake, which the connection
    supervisor would retry for ever as a broker problem: it is the user's file, said once."""
    try:
        ssl.create_default_context(cafile=str(ca))
    except (ssl.SSLError, OSError) as e:
        why = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
        raise MqttConfigError(f"CA file {ca} holds no usable PEM certificate ({why})") from None


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: Path | None = None
    insecure: bool = False  # TLS without certificate or host name checks (test brokers)
    keepalive_s: int = 15  # a dead broker is noticed within ~1.5x this when idle
    timeout_s: float = 10.0  # connect, subscribe and ack waits

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ca_file: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        **overrides: Any,
    ) -> MqttSettings:
        """`mqtt://[user[:pass]@]host[:port]` or `mqtts://...` (TLS). A user without a
        password in the URL takes it from $GAZELOOP_MQTT_PASSWORD, which keeps it out of the
        process list."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise MqttConfigError(f"{url!r}: scheme must be one of {sorted(_SCHEMES)}")
        if not parts.hostname:
            raise MqttConfigError(f"{url!r}: no host")
        if parts.path not in ("", "/") or parts.query:
            raise MqttConfigError(f"{url!r}: a broker URL has no path or query")
        try:
            port = parts.port
        except ValueError as e:
            raise MqttConfigError(f"{url!r}: {e}") from e
        tls = _SCHEMES[scheme] or ca_file is not None
        if insecure and not tls:
            # It turns off TLS checks; on a plain connection it would only hide that
            # everything, face pictures and passwords, goes unencrypted.
            raise MqttConfigError(
                f"--insecure is for TLS (mqtts://) but {scheme}:// is unencrypted: "
                "use mqtts://, or drop --insecure"
            )
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if username is not None and password is None:
            password = os.environ.get(PASSWORD_ENV)
        ca = Path(ca_file) if ca_file is not None else None
        if ca is not None and not ca.is_file():
            raise MqttConfigError(f"CA file not found: {ca}")
        if ca is not None:
            _check_ca(ca)
        settings = cls(
            host=parts.hostname,
            port=port or _DEFAULT_PORT[tls],
            username=username,
            password=password,
            tls=tls,
            ca_file=ca,
            insecure=insecure,
        )
        return replace(settings, **overrides) if overrides else settings

    @classmethod
    def of(cls, url_or_settings: str | MqttSettings, **kw: Any) -> MqttSettings:
        if isinstance(url_or_settings, MqttSettings):
            return url_or_settings
        return cls.from_url(url_or_settings, **kw)

    def redacted(self) -> str:
        """The URL without the password, for logs and reports."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def client(
        self,
        *,
        identifier: str | None = None,
        clean_session: bool | None = None,
        manual_ack: bool = False,
    ) -> aiomqtt.Client:
        """A new aiomqtt client (needs a running loop). One per connection attempt.

        `manual_ack`: QoS 1 messages are acknowledged only when the caller says so (paho's
        manual_ack, which aiomqtt 2 does not expose; the caller acks via `ack`)."""
        c = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=identifier,
            clean_session=clean_session,
            keepalive=self.keepalive_s,
            timeout=self.timeout_s,
            tls_context=self.ssl_context(),
            tls_insecure=self.insecure if self.tls else None,
        )
        # The label uplink keeps a batch of QoS 1 publishes in flight on purpose (within
        # paho's 20); aiomqtt's warning past 10 pending calls then came six times a batch
        # on every run that began with labels unsent.
        c.pending_calls_threshold = max(c.pending_calls_threshold, PAHO_INFLIGHT)
        _clients.add(c)
        if manual_ack:
            paho = getattr(c, "_client", None)
            if paho is None or not hasattr(paho, "manual_ack_set"):
                raise RuntimeError("this aiomqtt version hides paho's manual acks")
            paho.manual_ack_set(True)
        return c


def ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """Acknowledge a QoS 1 message received with `manual_ack=True`."""
    if message.qos > 0:
        client._client.ack(message.mid, message.qos)  # noqa: SLF001 (see MqttSettings.client)


def client_id(role: str) -> str:
    # Unique per process: two laptops running the same user/device must not kick each other
    # off the broker (MQTT drops the older of two connections with one client id).
    return f"gazeloop-{role}-{uuid.uuid4().hex[:12]}"


@dataclass(slots=True)
class Backoff:
    """Exponential delay between connection attempts, capped, with jitter so a fleet of
    laptops does not hammer a broker that just came back in lockstep."""

    initial_s: float = 0.2
    cap_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25  # the delay is drawn from [(1 - jitter)·d, d]
    _next: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.cap_s) or self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"bad backoff {self}")
        self._next = self.initial_s

    def next(self) -> float:
        d = self._next
        self._next = min(self.cap_s, d * self.factor)
        return d * (1.0 - self.jitter * random.random())

    def reset(self) -> None:
        self._next = self.initial_s


@dataclass(slots=True)
class LinkStats:
    """Connection history of one supervised client. Read from any thread (plain ints)."""

    connected: bool = False
    connects: int = 0  # successful connections
    failures: int = 0  # refused or failed attempts, and connections lost
    last_error: str | None = None

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)


_clients: weakref.WeakSet[aiomqtt.Client] = weakref.WeakSet()


async def release_all() -> None:
    """At the end of a loop's life: let connects still running in the executor finish (a
    connection abandoned mid-connect opens its socket after we gave up on it), then close
    every socket left open by this loop's clients, while the loop can still run the close
    callbacks."""
    loop = asyncio.get_running_loop()
    await loop.shutdown_default_executor()
    await asyncio.sleep(0)  # the late socket-open callbacks
    for c in list(_clients):
        if getattr(c, "_loop", None) is loop:
            release(c)
    await asyncio.sleep(0)  # the close callbacks


def release(client: aiomqtt.Client) -> None:
    """Close what a lost, refused or abandoned connection left open. aiomqtt closes paho's
    socket only on a clean disconnect; otherwise the garbage collector does it later, and
    paho's close callback then touches this loop, perhaps after it has closed."""
    paho = getattr(client, "_client", None)
    close = getattr(paho, "_sock_close", None)
    if paho is not None and close is not None and paho.socket() is not None:
        with contextlib.suppress(Exception):
            close()


@contextlib.asynccontextmanager
async def connected(settings: MqttSettings, **client_kw: Any) -> AsyncIterator[aiomqtt.Client]:
    """One connection, no retries (for one-shot work: announce, bench, tests); broker
    errors raise aiomqtt.MqttError."""
    client = settings.client(**client_kw)
    try:
        async with client as c:
            yield c
    finally:
        release(client)


async def _watch_disconnect(client: aiomqtt.Client) -> None:
    """Raise as soon as the connection drops. For sessions that only publish: aiomqtt would
    otherwise notice only at the next publish, or after a QoS 1 ack wait times out."""
    async for _ in client.messages:
        pass


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Until `event` is set or `timeout` s have passed; whether it is set. Not
    `asyncio.wait_for`: on Python 3.11 a cancel that lands while the awaited event has just
    fired is returned as a result and lost, and a session that lost its stop that way ran on
    after close() (the label uplink kept polling a closed outbox)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


async def first_of(*aws: Awaitable[Any]) -> Any:
    """Run awaitables together; return the first result (or raise its error), cancel the
    rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = next(t for t in tasks if t in done)
        return first.result()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def supervise(
    settings: MqttSettings,
    session: Callable[[aiomqtt.Client], Coroutine[Any, Any, T]],
    *,
    stop: asyncio.Event,
    stats: LinkStats,
    backoff: Backoff | None = None,
    identifier: str | None = None,
    clean_session: bool | None = None,
    manual_ack: bool = False,
    watch: bool = False,
    stable_s: float = 5.0,
    name: str = "mqtt",
) -> T | None:
    """Keep `session(client)` running on a live connection until `stop` is set or the
    session returns (its result is returned). Broker errors never escape: they are counted
    in `stats`, logged once per distinct message, and followed by a capped backoff."""
    backoff = backoff or Backoff()
    last_logged: str | None = None
    up_since: float | None = None
    client: aiomqtt.Client | None = None

    async def attempt() -> T:
        nonlocal last_logged, up_since, client
        client = settings.client(
            identifier=identifier, clean_session=clean_session, manual_ack=manual_ack
        )
        async with client as c:
            up_since = time.monotonic()
            stats.connected = True
            stats.connects += 1
            if stats.connects > 1 or last_logged is not None:
                log.info("%s: connected to %s", name, settings.redacted())
            last_logged = None
            if not watch:
                return await session(c)
            return await first_of(session(c), _watch_disconnect(c))

    while not stop.is_set():
        up_since = None
        try:
            # The stop event is raced against the connect too: a broker that accepts TCP
            # but never answers must not hold close() for the whole connect timeout.
            result = await first_of(attempt(), stop.wait())
            if not stop.is_set():
                return result
        except (aiomqtt.MqttError, OSError) as e:
            # OSError: TLS handshakes and socket options can fail outside aiomqtt's wrapping.
            msg = str(e) or type(e).__name__
            stats.failures += 1
            stats.last_error = msg
            if msg != last_logged:
                log.warning("%s: %s: %s (retrying)", name, settings.redacted(), msg)
                last_logged = msg
        finally:
            stats.connected = False
            if client is not None:
                release(client)
                client = None
        if stop.is_set():
            break
        if up_since is not None and time.monotonic() - up_since >= stable_s:
            backoff.reset()  # only a connection that held counts as recovery
        await wait_event(stop, backoff.next())
    return None


class Supervised:
    """What the publisher, the uplink, the collector and the fetcher share: a `LoopThread`
    of their own, on which `supervise` keeps one session alive. They differ in the session
    and in how it connects; a subclass sets `settings`, calls `_own_loop` and has a
    `_session(client)` and a `run(stop)` for `start` to run."""

    settings: MqttSettings
    _link: LinkStats
    _backoff: Backoff
    _thread: LoopThread
    run: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
    _session: Callable[[aiomqtt.Client], Coroutine[Any, Any, None]]

    def _own_loop(self, thread: str, backoff: Backoff | None) -> None:
        """The thread, backoff and connection record that `start` and `_supervise` use; set
        in the subclass's constructor once the thread's name (often its topic) is known."""
        self._backoff = backoff or Backoff()
        self._link = LinkStats()
        self._thread = LoopThread(thread)

    def start(self) -> Self:
        self._thread.start(self.run)
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._thread.stop(timeout)

    @property
    def alive(self) -> bool:
        """Whether its thread runs: from start() until close() has ended it."""
        return self._thread.alive

    async def _supervise(self, stop: asyncio.Event, **connect: Any) -> None:
        """`supervise` this object's session with its own stats and backoff, so that what
        each caller says is only how it connects (client id, name, session options)."""
        await supervise(
            self.settings,
            self._session,
            stop=stop,
            stats=self._link,
            backoff=self._backoff,
            **connect,
        )


class LoopThread:
    """A daemon thread running one asyncio loop with a stop event, for objects whose owner
    is synchronous code (the fast path, a CLI). `start()` returns once the loop runs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def start(self, main: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")

        def target() -> None:
            async def runner() -> None:
                self.loop = asyncio.get_running_loop()
                self.stop_event = asyncio.Event()
                self._ready.set()
                try:
                    await main(self.stop_event)
                finally:
                    await release_all()

            try:
                asyncio.run(runner())
            except BaseException as e:  # a bug here must be visible, not a silent dead thread
                self.error = e
                log.exception("%s: thread died", self.name)
            finally:
                self._ready.set()

        self._thread = threading.Thread(target=target, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def call_soon(self, fn: Callable[[], Any]) -> bool:
        """Schedule `fn` on the loop from any thread; False once the loop is gone."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # closed between the check and the call
            return False
        return True

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the loop's main to finish and wait; True if the thread ended in time."""
        if self._thread is None:
            return True
        ev = self.stop_event
        if ev is not None:
            self.call_soon(ev.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("%s: did not stop within %.1f s", self.name, timeout)
            return False
        return True


__all__ = [
    "PASSWORD_ENV",
    "TOPIC_ROOT",
    "Backoff",
    "LinkStats",
    "LoopThread",
    "MqttConfigError",
    "MqttSettings",
    "ack",
    "client_id",
    "connected",
    "first_of",
    "release",
    "supervise",
    "topic_part",
    "wait_event",
]
