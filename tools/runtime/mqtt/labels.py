"""Labels from the laptop's label store to the training box: at-least-once on the wire,
exactly once in the dataset.

Uplink (laptop): labels are read FROM THE STORE, oldest first, published with QoS 1, and
marked sent in the uplink's own outbox (`tools.runtime.mqtt.outbox`, beside the store) only
once the broker has acknowledged them (PUBACK). A broker outage, a refused login or a laptop
restart leaves them pending in the outbox, to go out on the next connection; a connection
lost between PUBACK and `mark_sent` sends a label twice, which the collector drops.

Collector (training box): a persistent session (fixed client id, clean_session=False, QoS 1)
so the broker queues labels while the collector is away, and manual acks so a label is
acknowledged to the broker only after it is on disk (a collector killed mid-write gets it
again). Each label has a `uid` (user/device/store id/snapshot id/oracle); a uid already on
disk is counted as a duplicate and not written again. Malformed payloads are counted with
their reason and never written.

Why the JPEG rides in the label message (base64) rather than on a second topic: one QoS 1
message is then one complete label, acknowledged and de-duplicated as a unit; two topics
would need the collector to hold half-labels across reconnects and restarts until the
other half arrived. The cost is a third more bytes on a message every few seconds.

Why a size limit on the uplink: brokers cap a message (mosquitto's `message_size_limit`;
some at 128 KB) and a broker drops a message over its cap while still
acknowledging it, so a too-big label would count as sent and be lost. A real snapshot is
~195 KB of JPEG (~260 KB in base64). So a label whose message would exceed the uplink's
`max_message_bytes` goes with its snapshot re-encoded smaller (lower quality, then smaller
size), said in the message's `jpeg_reencoded`; one that still cannot fit stays pending in
the outbox, with a warning, and is never counted as sent. The store keeps the original.

What the collector writes: seed-format session folders (`calibration.store.writer`), one per
user, device and screen size, `out/<user>__<device>__<W>x<H>/img_<unix-ms>.{jpg,json}` with
a `session.json` manifest, which `trainer.readers.sessions` reads as it is. Only point
labels on a known screen size can be seed records (the format's label is a pixel); the
others (line observations, "nothing usable" answers, unknown screen size) go to the same
folder's `other/` sub-folder with their full label, so nothing received is thrown away.
The collector writes the JPEG as it came (checked to decode, never re-encoded); a record
whose snapshot the uplink re-encoded to fit says so (`jpeg_reencoded`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import aiomqtt
import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.labels import OracleLabel, PointObservation
from gazeloop.calibration.problems import first_problem, one_line
from gazeloop.calibration.store.atomic import atomic_write_bytes
from gazeloop.calibration.store.labelstore import (
    NOT_PROCESSED,
    LabelStoreError,
    StoredLabel,
    StoredRun,
    seed_record,
)
from gazeloop.calibration.store.session import MANIFEST_NAME, SessionManifest
from gazeloop.calibration.store.writer import write_manifest
from gazeloop.tools.runtime.mqtt.conn import (
    TOPIC_ROOT,
    Backoff,
    MqttSettings,
    Supervised,
    ack,
    client_id,
    topic_part,
    wait_event,
)
from gazeloop.tools.runtime.mqtt.outbox import Outbox, OutboxError, outbox_path

log = logging.getLogger(__name__)

MAX_JPEG_BYTES = 8 * 1024 * 1024
# Under the 128 KiB some brokers cap a message at, with room for the packet's own header.
MAX_MESSAGE_BYTES = 120 * 1024
# (scale, quality) tried in turn on a snapshot too big for a message: quality goes first,
# since the fast path's eye crops need the pixels more than fine detail.
_SHRINK_STEPS = tuple((s, q) for s in (1.0, 0.75, 0.5, 0.35, 0.25) for q in (80, 65, 50))


def label_topic(user: str = "+", device: str = "+") -> str:
    """The labels topic; `+` (the default) subscribes to every user or device."""
    u = user if user == "+" else topic_part(user)
    d = device if device == "+" else topic_part(device)
    return f"{TOPIC_ROOT}/{u}/{d}/labels"


# -- the wire format ---------------------------------------------------------------------------


class WireDecision(BaseModel):
    """What the laptop's drift loop did with the label (normalised screen units)."""

    model_config = ConfigDict(extra="forbid")
    accepted: bool
    why: str = ""
    residual: tuple[float, float] | None = None
    offset: tuple[float, float] | None = None


class Reencoded(BaseModel):
    """How the uplink shrank a snapshot to fit the message limit (the store has the original)."""

    model_config = ConfigDict(extra="forbid")
    original_bytes: int = Field(ge=1)
    quality: int = Field(ge=1, le=100)
    scale: float = Field(gt=0, le=1)  # of the original's width and height


class LabelMessage(BaseModel):
    """One label on the wire (JSON): a label-store row, its snapshot and its screen."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["gazeloop.label"] = "gazeloop.label"
    # 2: the snapshot may be re-encoded (`jpeg_reencoded`); sent only then, so a collector
    # of schema 1 takes every other label and names the version of the ones it cannot.
    schema_version: Literal[1, 2] = 1
    uid: str = Field(min_length=1, max_length=512)  # the de-duplication key
    user: str
    device: str
    label_id: int  # the row in the laptop's store
    # The snapshot's wall-clock time (unix ms); before 2286, so it names a file (the
    # collector's img_<ms>) that every reader takes for a time.
    snapshot_ms: int = Field(ge=0, lt=10**13)
    label: OracleLabel
    screen: ScreenGeometry | None = None  # the screen the label's xy is normalised to
    fast_xy: tuple[float, float] | None = None  # the fast path's estimate at the same time
    decision: WireDecision | None = None
    jpeg_b64: str | None = None  # the snapshot, as stored unless `jpeg_reencoded` says
    jpeg_reencoded: Reencoded | None = None


def make_uid(user: str, device: str, label_id: int, snapshot_id: str) -> str:
    # The store's row id alone would repeat if a store were ever recreated; its snapshot id
    # (unique within a store) makes a recreated store's labels distinct from the old ones.
    return f"{user}/{device}/{label_id}/{snapshot_id}"


def _finite_pair(v: tuple[float, float] | None) -> tuple[float, float] | None:
    return v if v is not None and all(math.isfinite(x) for x in v) else None


def message_from_row(
    row: StoredLabel,
    jpeg: bytes | None,
    *,
    user: str,
    device: str,
    screen: ScreenGeometry | None,
    reencoded: Reencoded | None = None,
) -> LabelMessage:
    """A label-store row as a wire message with `jpeg` as given (re-encoded only if
    `reencoded` says so). A label no loop judged goes without a decision: it is no outlier,
    and the collector files it as a seed record, as `LabelStore.export_session` does."""
    return LabelMessage(
        uid=make_uid(user, device, row.id, row.snapshot_id),
        user=user,
        device=device,
        label_id=row.id,
        snapshot_ms=row.snapshot_ms,
        label=row.to_label(),
        screen=screen,
        fast_xy=_finite_pair(row.fast_xy),
        decision=None
        if row.verdict is None
        else WireDecision(
            accepted=row.accepted,
            why=row.why,
            residual=_finite_pair(row.residual),
            offset=_finite_pair(row.offset),
        ),
        jpeg_b64=base64.b64encode(jpeg).decode("ascii") if jpeg else None,
        jpeg_reencoded=reencoded if jpeg else None,
        schema_version=2 if jpeg and reencoded is not None else 1,
    )


def shrunk_jpegs(jpeg: bytes, max_bytes: int) -> Iterator[tuple[bytes, Reencoded]]:
    """The snapshot re-encoded at each of `_SHRINK_STEPS` that comes out within `max_bytes`,
    smallest change first; nothing when it does not decode."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return
    h, w = img.shape[:2]
    for scale, quality in _SHRINK_STEPS:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = img if scale == 1.0 else cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok and len(buf) <= max_bytes:
            yield buf.tobytes(), Reencoded(original_bytes=len(jpeg), quality=quality, scale=scale)


class LabelSource(Protocol):
    """What the uplink needs of `calibration.store.labelstore.LabelStore`: label reads."""

    root: Path

    def ids_after(self, label_id: int, limit: int | None = None) -> list[int]: ...

    def legacy_sent_ids(self) -> list[int]: ...

    def get(self, label_id: int) -> StoredLabel | None: ...

    def image_path(self, row: StoredLabel) -> Path | None: ...

    def run(self, run_id: int) -> StoredRun | None: ...


# -- the uplink --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UplinkStats:
    sent: int  # acknowledged by the broker and marked sent in the outbox
    unsendable: int  # corrupt store records and labels over the size limit: pending, skipped
    connected: bool
    reconnects: int
    failures: int
    last_error: str | None


class LabelUplink(Supervised):
    """Sends the store's unsent labels, oldest first, on its own thread and connection.
    `outbox`: where it keeps what the broker has acknowledged (default: beside the store).
    `max_message_bytes`: no label message is larger (the broker's cap, or below it)."""

    def __init__(
        self,
        mqtt: str | MqttSettings,
        store: LabelSource,
        *,
        user: str,
        device: str,
        screen: ScreenGeometry | tuple[int, int] | None = None,
        batch: int = 16,
        poll_s: float = 1.0,
        backoff: Backoff | None = None,
        ca_file: str | None = None,
        insecure: bool = False,
        outbox: str | os.PathLike[str] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.settings = MqttSettings.of(mqtt, ca_file=ca_file, insecure=insecure)
        if max_message_bytes < 4096:  # a label's fields alone take a kilobyte or so
            raise ValueError(f"max_message_bytes must be at least 4096, got {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        self.store = store
        self.outbox = Outbox(outbox if outbox is not None else outbox_path(store.root))
        self.user, self.device = user, device
        self.topic = label_topic(user, device)
        if screen is not None and not isinstance(screen, ScreenGeometry):
            screen = ScreenGeometry(px=(int(screen[0]), int(screen[1])))
        # The screen for labels whose run recorded none (or made before runs were
        # recorded); without it the collector files their points under other/.
        self.screen = screen
        self._runs: dict[int, StoredRun | None] = {}  # the store's run records, read once
        self.batch = batch  # within paho's in-flight QoS 1 messages (conn.PAHO_INFLIGHT)
        self.poll_s = poll_s
        self._own_loop(f"label-uplink {self.topic}", backoff)
        self._sent = 0
        self._bad: set[Any] = set()
        self._wake: asyncio.Event | None = None
        self._closing = threading.Event()

    def _run_of(self, row: StoredLabel) -> StoredRun | None:
        if row.run_id is None:
            return None
        if row.run_id not in self._runs:
            self._runs[row.run_id] = self.store.run(row.run_id)
        return self._runs[row.run_id]

    def _screen_of(self, row: StoredLabel) -> ScreenGeometry | None:
        """The screen the label's point is a fraction of: its run's, when recorded (a run
        after a calibration on another monitor), else the one this uplink was given."""
        run = self._run_of(row)
        return run.screen if run is not None and run.screen is not None else self.screen

    def _device_of(self, row: StoredLabel) -> str:
        """The device the label was made on: its run's, when recorded, else this uplink's.
        Labels still pending from a run on another device were all filed under the device
        of the run that sent them, mixing two camera placements in one session folder."""
        run = self._run_of(row)
        device = None if run is None else run.settings.get("device")
        return device if isinstance(device, str) and device else self.device

    @property
    def stats(self) -> UplinkStats:
        s = self._link
        return UplinkStats(
            self._sent, len(self._bad), s.connected, s.reconnects, s.failures, s.last_error
        )

    def close(self, timeout: float = 5.0) -> None:
        # Said before the stop, so the session leaves at its next look even if the stop's
        # cancel is lost in a library await, and says nothing of the outbox closed below.
        self._closing.set()
        super().close(timeout)
        self.outbox.close()

    def unsent(self, limit: int = 100) -> list[int]:
        """The ids of the oldest labels of the store the broker has not acknowledged yet."""
        self.outbox.take_in(self.store)
        return self.outbox.pending(limit)

    def pending_count(self) -> int:
        """How many of the store's labels the broker has not acknowledged yet."""
        self.outbox.take_in(self.store)
        return self.outbox.count()

    def drain(self, timeout: float) -> int:
        """Wait (at most `timeout` s) until every stored label is acknowledged; returns how
        many are still pending. Gives up early once two connection attempts in a row have
        failed meanwhile (the broker is away, not restarting): the labels stay in the outbox
        for the next run. Labels set aside as unsendable (over the size limit, unreadable) are
        not waited for: they would hold every run's end for its whole timeout."""
        end = time.monotonic() + timeout
        failures = self._link.failures
        self.nudge()
        while True:
            left = self.pending_count()
            if left <= len(self._bad) or time.monotonic() >= end:  # set aside ⊆ pending
                return left
            if not self._link.connected and self._link.failures >= failures + 2:
                return left
            time.sleep(0.05)  # polling a local SQLite count: cheap, and bounded by `end`

    def nudge(self) -> None:
        """A label was just stored: look now instead of at the next poll (any thread)."""
        wake = self._wake
        if wake is not None:
            self._thread.call_soon(wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        self._wake = asyncio.Event()
        await self._supervise(
            stop, identifier=client_id("labels"), watch=True, name=f"labels {self.topic}"
        )

    def _next_batch(self) -> list[tuple[int, str, bytes]]:
        """(label id, topic, message) of the next pending labels: each on its own device's
        topic (the collector checks the message names the topic's user and device)."""
        out = []
        for label_id in self.unsent(self.batch + len(self._bad)):
            if label_id in self._bad:
                continue
            row = self.store.get(label_id)
            if row is None:  # rows are never deleted; a store made anew resets the outbox
                self._bad.add(label_id)
                log.error("label %d is pending but not in the store %s", label_id, self.store.root)
                continue
            jpeg = None
            path = self.store.image_path(row)
            if path is not None:
                try:
                    jpeg = path.read_bytes()
                except OSError as e:
                    # The label is still worth having; the collector files it under other/.
                    log.warning("label %d: snapshot unreadable (%s); sending without it", row.id, e)
            try:
                device = self._device_of(row)
                payload = self._payload(row, jpeg, device)
            except (ValidationError, ValueError, LabelStoreError) as e:  # a bad row or run
                # Left pending (a repaired store could still send it) but not retried here, so
                # one bad row cannot hold up every label behind it.
                self._bad.add(row.id)
                log.error("label %d cannot be sent: %s", row.id, one_line(e))
                continue
            if payload is None:  # too big: pending, as a bad row is, and said once
                self._bad.add(row.id)
                continue
            out.append((row.id, label_topic(self.user, device), payload))
            if len(out) == self.batch:
                break
        return out

    def _payload(self, row: StoredLabel, jpeg: bytes | None, device: str) -> bytes | None:
        """The label's message within `max_message_bytes`: with the snapshot as stored, else
        re-encoded smaller; None (and a warning) when it cannot fit. A broker drops what is
        over its cap yet acknowledges it, so sending it anyway would lose the label."""
        screen, limit = self._screen_of(row), self.max_message_bytes

        def build(img: bytes | None, how: Reencoded | None = None) -> bytes:
            msg = message_from_row(
                row, img, user=self.user, device=device, screen=screen, reencoded=how
            )
            return msg.model_dump_json(exclude_none=True).encode()

        payload = build(jpeg)
        size = len(payload)
        if size <= limit:
            return payload
        if jpeg is not None:
            # Base64 takes 4 bytes per 3; 200 bytes for the jpeg keys and `jpeg_reencoded`.
            budget = (limit - len(build(None)) - 200) * 3 // 4
            for small, how in shrunk_jpegs(jpeg, budget) if budget > 0 else ():
                payload = build(small, how)
                if len(payload) <= limit:
                    log.info("label %d: snapshot re-encoded to fit (%s)", row.id, how)
                    return payload
        log.warning(
            "label %d (snapshot %s) is kept unsent: its message is %d bytes, over the uplink's "
            "%d-byte limit, and no smaller encoding of its snapshot fits (down to 25%% size at "
            "quality 50)",
            row.id, row.snapshot_id, size, limit,
        )  # fmt: skip
        return None

    def _mark_sent(self, ids: list[int]) -> None:
        # Marked and counted in one call on the worker thread, which finishes even when
        # close() cancels the await. Counted by what the outbox changed: a label re-sent
        # after a lost ack (at least once on the wire) is still one label sent.
        self._sent += self.outbox.mark_sent(ids)

    async def _session(self, client: aiomqtt.Client) -> None:
        assert self._wake is not None
        while not self._closing.is_set():
            self._wake.clear()  # before looking: a nudge from now on is not lost
            try:
                batch = await asyncio.to_thread(self._next_batch)
            except (LabelStoreError, OutboxError) as e:
                if self._closing.is_set():
                    return  # closed by close() itself, not a fault to report
                # The store is the queue: while it (or the outbox) cannot be read, wait (a
                # closed or locked store is the owner's business), keep the connection.
                self._link.last_error = str(e)
                log.warning("labels unreadable: %s", e)
                batch = []
            if not batch:
                await wait_event(self._wake, self.poll_s)
                continue
            results = await asyncio.gather(
                *(client.publish(topic, payload, qos=1) for _, topic, payload in batch),
                return_exceptions=True,
            )
            acked = [i for (i, _, _), r in zip(batch, results, strict=True) if r is None]
            if acked:
                try:
                    await asyncio.to_thread(self._mark_sent, acked)
                except OutboxError as e:
                    # Sent but not marked: they go again later and the collector drops them.
                    log.warning("labels sent but not marked sent: %s", e)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]  # the supervisor reconnects; the rest stay unsent


# -- the collector -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CollectorStats:
    received: int
    written: int  # seed records the trainer reads
    other: int  # kept under other/ (line or empty observation, unknown screen size)
    duplicates: int
    malformed: int
    connected: bool
    reconnects: int
    failures: int
    last_error: str | None
    connects: int = 0  # connections made at all: 0 is a broker never reached


class MalformedLabel(ValueError):
    """A payload that is not a label; its message starts with the reason's kind and ":"."""


def _verdict(decision: WireDecision | None) -> bool | None:
    """Whether the laptop's loop accepted the label; None when no loop judged it (an uplink
    before this one sent such labels as rejected, with `NOT_PROCESSED` as the reason)."""
    if decision is None or (not decision.accepted and decision.why == NOT_PROCESSED):
        return None
    return decision.accepted


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:80] or "_"


def _pair_folder(user: str, device: str) -> str:
    """`<user>__<device>`, one folder per pair: as they are when that is unambiguous, else
    with a short hash of the pair. "ada lovelace" and "ada_lovelace" were one folder, and
    user "x__y" on device "z" shared one with user "x" on "y__z": two people trained as
    one, under the first one's name."""
    u, d = _safe(user), _safe(device)
    if (u, d) == (user, device) and "__" not in user + device:
        return f"{u}__{d}"
    digest = hashlib.sha256(json.dumps([user, device]).encode()).hexdigest()[:8]
    return f"{u}__{d}-{digest}"


def _decode_jpeg(b64: str) -> bytes:
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedLabel(f"jpeg: jpeg_b64 is not base64 ({e})") from e
    if len(data) > MAX_JPEG_BYTES:
        raise MalformedLabel(f"jpeg: {len(data)} bytes is over {MAX_JPEG_BYTES}")
    if data[:2] != b"\xff\xd8":
        raise MalformedLabel("jpeg: the snapshot is not a JPEG")
    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None:
        raise MalformedLabel("jpeg: the snapshot does not decode")
    return data


def default_collector_id(out_dir: Path) -> str:
    # Stable across restarts of the same collector (the broker keeps its session under
    # this id), distinct for two collectors writing to different folders or hosts.
    key = f"{socket.gethostname()}:{out_dir.resolve()}"
    return f"gazeloop-collect-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


class Collector(Supervised):
    """Subscribes to labels and writes them as session folders under `out_dir`."""

    def __init__(
        self,
        mqtt: str | MqttSettings,
        out_dir: str | os.PathLike[str],
        *,
        user: str = "+",
        device: str = "+",
        screen_px: tuple[int, int] | None = None,
        identifier: str | None = None,
        backoff: Backoff | None = None,
        ca_file: str | None = None,
        insecure: bool = False,
        on_subscribed: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = MqttSettings.of(mqtt, ca_file=ca_file, insecure=insecure)
        self.out = Path(out_dir)
        # Told (with the connection's number, from 1) once the broker has confirmed the
        # subscription: from then on no label published is missed, even while away.
        self.on_subscribed = on_subscribed
        self.topic = label_topic(user, device)
        # For labels whose laptop did not say; checked now, as every label would fail on it.
        self.screen = None if screen_px is None else ScreenGeometry(px=screen_px)
        self.identifier = identifier or default_collector_id(self.out)
        self._own_loop("label-collector", backoff)
        self.counts: Counter[str] = Counter()
        self.malformed_reasons: Counter[str] = Counter()
        self._seen: set[str] = set()
        self._load_seen()

    @property
    def stats(self) -> CollectorStats:
        c, s = self.counts, self._link
        return CollectorStats(
            c["received"], c["written"], c["other"], c["duplicates"], c["malformed"],
            s.connected, s.reconnects, s.failures, s.last_error, s.connects,
        )  # fmt: skip

    def _load_seen(self) -> None:
        """The uids already on disk: the files are the record of what was collected, so a
        restarted collector de-duplicates against everything it ever wrote."""
        if not self.out.is_dir():
            return
        for path in self.out.glob("*/**/*.json"):
            if path.name == MANIFEST_NAME or path.name.startswith("."):
                continue
            with contextlib.suppress(OSError, ValueError, AttributeError):
                uid = json.loads(path.read_bytes()).get("label_uid")
                if isinstance(uid, str):
                    self._seen.add(uid)

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self._supervise(
            stop,
            identifier=self.identifier,
            clean_session=False,
            manual_ack=True,
            name="collector",
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self.topic, qos=1)
        if self.on_subscribed is not None:
            self.on_subscribed(self._link.connects)
        async for m in client.messages:
            payload = m.payload if isinstance(m.payload, bytes | bytearray) else b""
            await asyncio.to_thread(self.handle, m.topic.value, bytes(payload))
            ack(client, m)  # only now that it is on disk (or judged a duplicate or malformed)

    # -- one message -------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> str:
        """Judge and (maybe) write one message; returns "written", "other", "duplicate" or
        "malformed: <why>". Never raises for bad input; OSError (disk full, ...) is raised
        so the message is not acknowledged and comes again after a reconnect."""
        self.counts["received"] += 1
        try:
            msg, jpeg = self._parse(topic, payload)
        except (MalformedLabel, ValueError) as e:
            if not isinstance(e, MalformedLabel):  # a validator we did not foresee
                e = MalformedLabel(f"invalid: {e}")
            self.counts["malformed"] += 1
            reason = str(e).split(":")[0]
            self.malformed_reasons[reason] += 1
            log.warning("malformed label on %s skipped: %s", topic, e)
            return f"malformed: {e}"
        if msg.uid in self._seen:
            self.counts["duplicates"] += 1
            return "duplicate"
        kind = self._write(msg, jpeg)
        self._seen.add(msg.uid)
        self.counts[kind] += 1
        return kind

    def _parse(self, topic: str, payload: bytes) -> tuple[LabelMessage, bytes | None]:
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != TOPIC_ROOT or parts[3] != "labels":
            raise MalformedLabel(f"topic: {topic} is not {TOPIC_ROOT}/<user>/<device>/labels")
        try:
            msg = LabelMessage.model_validate_json(payload)
        except ValidationError as e:
            raise MalformedLabel(f"schema: {first_problem(e)}") from e
        if (msg.user, msg.device) != (parts[1], parts[2]):
            raise MalformedLabel(f"identity: payload says {msg.user}/{msg.device}")
        if msg.uid != make_uid(msg.user, msg.device, msg.label_id, msg.label.snapshot_id):
            raise MalformedLabel("uid: does not match the label it names")
        jpeg = _decode_jpeg(msg.jpeg_b64) if msg.jpeg_b64 is not None else None
        return msg, jpeg

    def _folder(self, msg: LabelMessage, screen: ScreenGeometry | None) -> Path:
        name = _pair_folder(msg.user, msg.device)
        if screen is None:
            return self.out / name
        folder = self.out / f"{name}__{screen.px[0]}x{screen.px[1]}"
        if not (folder / MANIFEST_NAME).exists():
            cam = screen.camera_mm
            write_manifest(
                folder,
                SessionManifest(
                    screen_px=screen.px,
                    screen_mm=screen.mm,
                    camera_mm=None if cam is None else (cam[0], cam[1]),
                    mirrored=False,  # snapshots are stored as the camera gave them
                    user=msg.user,
                    device=msg.device,
                    source="gazeloop collect",
                ),
            )
        return folder

    def _seed_point(
        self, msg: LabelMessage, screen: ScreenGeometry | None, verdict: bool | None
    ) -> tuple | None:
        """The label's pixel, if it can be a seed record: a point the laptop's loop did not
        reject (as `LabelStore.export_session` exports), on a known screen."""
        obs = msg.label.observation
        if not isinstance(obs, PointObservation) or screen is None:
            return None
        if verdict is False:
            return None  # the loop judged it an outlier: not ground truth to train on
        x, y = obs.xy[0] * screen.px[0], obs.xy[1] * screen.px[1]
        if not (0 <= x <= screen.px[0] and 0 <= y <= screen.px[1]):
            return None  # the session reader would reject it
        return (x, y)

    def _write(self, msg: LabelMessage, jpeg: bytes | None) -> str:
        screen = msg.screen or self.screen
        folder = self._folder(msg, screen)
        verdict = _verdict(msg.decision)
        point = self._seed_point(msg, screen, verdict) if jpeg is not None else None
        if point is not None:
            assert screen is not None
            t_ms = self._free_ms(folder, msg.snapshot_ms)
            fast = msg.fast_xy
            # The record `LabelStore.export_session` writes, plus the uid.
            record = seed_record(
                t_ms,
                point,
                msg.label,
                label_id=msg.label_id,
                verdict=verdict,
                why=None if verdict is None else msg.decision.why,
                fast_xy_px=None
                if fast is None
                else [fast[0] * screen.px[0], fast[1] * screen.px[1]],
                label_uid=msg.uid,
            )
            body = record.model_dump(mode="json", by_alias=True, exclude_unset=True)
            if msg.jpeg_reencoded is not None:  # the picture is not the one captured
                body["jpeg_reencoded"] = msg.jpeg_reencoded.model_dump(mode="json")
            stem = folder / f"img_{t_ms}"
        else:
            # Not a seed record (line or empty observation, rejected by the loop, off the
            # screen, no screen size or no image): kept whole under other/, so a later
            # exporter or a line-aware trainer has everything the laptop sent.
            folder = folder / "other"
            body = {"label_uid": msg.uid, **msg.model_dump(mode="json", exclude={"jpeg_b64"})}
            stem = folder / f"{msg.snapshot_ms}_{hashlib.sha256(msg.uid.encode()).hexdigest()[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        # Image first, record second: a record on disk always has its image.
        if jpeg is not None:
            atomic_write_bytes(stem.with_suffix(".jpg"), jpeg)
        atomic_write_bytes(stem.with_suffix(".json"), json.dumps(body, indent=2).encode() + b"\n")
        return "written" if point is not None else "other"

    @staticmethod
    def _free_ms(folder: Path, t_ms: int) -> int:
        # The name is a record's identity: two labels in one millisecond (two oracles, one
        # snapshot time) are told apart by moving the second on by 1 ms, as export does.
        while (folder / f"img_{t_ms}.json").exists():
            t_ms += 1
        return t_ms


__all__ = [
    "Collector",
    "CollectorStats",
    "LabelMessage",
    "LabelSource",
    "LabelUplink",
    "MAX_MESSAGE_BYTES",
    "Reencoded",
    "UplinkStats",
    "WireDecision",
    "label_topic",
    "make_uid",
    "message_from_row",
]
