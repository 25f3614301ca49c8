"""Labels from the laptop's label store to the training box: at-least-once on the wire,
exactly once in the dataset.

Uplink (laptop): labels are read FROM THE STORE (`store.unsent(limit)`), published with QoS 1,
and marked sent (`store.mark_sent(ids)`) only once the broker has acknowledged them
(PUBACK). A broker outage, a refused login or a laptop restart leaves them unsent in the
store, to go out on the next connection; a connection lost between PUBACK and `mark_sent`
sends a label twice, which the collector drops.

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

What the collector writes: seed-format session folders (`calibration.session`), one per
user, device and screen size, `out/<user>__<device>__<W>x<H>/img_<unix-ms>.{jpg,json}` with
a `session.json` manifest, which `trainer.readers.sessions` reads as it is. Only point
labels on a known screen size can be seed records (the format's label is a pixel); the
others (line observations, "nothing usable" answers, unknown screen size) go to the same
folder's `other/` sub-folder with their full label, so nothing received is thrown away.
The JPEG is written as it was captured (checked to decode, never re-encoded).
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
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import aiomqtt
import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from calibration.labels import OracleLabel, PointObservation
from calibration.session import (
    MANIFEST_NAME,
    SeedRecord,
    SessionManifest,
    atomic_write_bytes,
    write_manifest,
)
from tools.mqtt.conn import (
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

MAX_JPEG_BYTES = 8 * 1024 * 1024


def label_topic(user: str = "+", device: str = "+") -> str:
    """The labels topic; `+` (the default) subscribes to every user or device."""
    u = user if user == "+" else topic_part(user)
    d = device if device == "+" else topic_part(device)
    return f"{TOPIC_ROOT}/{u}/{d}/labels"


# -- the wire format ---------------------------------------------------------------------------


class LabelMessage(BaseModel):
    """One label on the wire (JSON)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["gazeloop.label"] = "gazeloop.label"
    schema_version: Literal[1] = 1
    uid: str = Field(min_length=1, max_length=512)  # the de-duplication key
    user: str
    device: str
    label_id: int | str  # the row in the laptop's store
    wall_ms: int = Field(ge=0)  # capture time on the laptop's wall clock (unix ms)
    label: OracleLabel
    screen_px: tuple[int, int] | None = None  # the screen the label's xy is normalised to
    fast_xy: tuple[float, float] | None = None  # the fast path's estimate at the same time
    decision: dict[str, Any] | None = None  # what the drift loop did with it
    jpeg_b64: str | None = None  # the snapshot, as captured


def make_uid(user: str, device: str, label_id: int | str, label: OracleLabel) -> str:
    # The store's row id alone would repeat if a store were ever recreated; the snapshot id
    # and oracle make a recreated store's labels distinct from the old ones.
    return f"{user}/{device}/{label_id}/{label.snapshot_id}/{label.oracle}"


# -- reading the laptop's store ----------------------------------------------------------------


class LabelSource(Protocol):
    """What the uplink needs from `calibration.labelstore.LabelStore`."""

    def unsent(self, limit: int) -> Sequence[Any]: ...

    def mark_sent(self, ids: Iterable[Any]) -> Any: ...


class UnsendableRecord(ValueError):
    """A store record that cannot be turned into a label message (corrupt row)."""


def _field(rec: Any, *names: str) -> Any:
    for n in names:
        if isinstance(rec, Mapping):
            if n in rec:
                return rec[n]
        elif hasattr(rec, n):
            return getattr(rec, n)
    return None


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, dict):
        return v
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    if hasattr(v, "__dataclass_fields__"):
        from dataclasses import asdict

        return json.loads(json.dumps(asdict(v), default=_json_default))
    return None


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def message_from_record(
    rec: Any, store: Any, *, user: str, device: str, screen_px: tuple[int, int] | None
) -> LabelMessage:
    """A store record as a wire message. The record's JPEG is sent as stored."""
    label_id = _field(rec, "id", "label_id")
    raw_label = _field(rec, "label")
    if label_id is None or raw_label is None:
        raise UnsendableRecord("record has no id or no label")
    try:
        label = (
            raw_label
            if isinstance(raw_label, OracleLabel)
            else OracleLabel.model_validate_json(raw_label)
            if isinstance(raw_label, str | bytes)
            else OracleLabel.model_validate(raw_label)
        )
    except ValidationError as e:
        raise UnsendableRecord(f"label {label_id}: {e}") from e
    jpeg = _field(rec, "jpeg", "jpeg_bytes", "image_jpeg")
    if jpeg is None:
        path = _field(rec, "image_path", "jpeg_path")
        if path is not None:
            with contextlib.suppress(OSError):
                jpeg = Path(path).read_bytes()
    if jpeg is None and hasattr(store, "jpeg"):
        with contextlib.suppress(Exception):
            jpeg = store.jpeg(label_id)
    wall_ms = _field(rec, "wall_ms", "timestamp_ms", "timestamp", "t_ms")
    if wall_ms is None:
        raise UnsendableRecord(f"label {label_id}: no wall-clock time")
    fast = _field(rec, "fast_xy")
    rec_screen = _field(rec, "screen_px")
    return LabelMessage(
        uid=make_uid(user, device, label_id, label),
        user=user,
        device=device,
        label_id=label_id,
        wall_ms=int(wall_ms),
        label=label,
        screen_px=tuple(rec_screen) if rec_screen is not None else screen_px,
        fast_xy=(float(fast[0]), float(fast[1])) if fast is not None else None,
        decision=_jsonable(_field(rec, "decision")),
        jpeg_b64=base64.b64encode(jpeg).decode("ascii") if jpeg else None,
    )


# -- the uplink --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UplinkStats:
    sent: int  # acknowledged by the broker and marked sent in the store
    unsendable: int  # corrupt store records, left unsent and skipped
    connected: bool
    reconnects: int
    failures: int
    last_error: str | None


class LabelUplink:
    """Sends the store's unsent labels, oldest first, on its own thread and connection."""

    def __init__(
        self,
        mqtt: str | MqttSettings,
        store: LabelSource,
        *,
        user: str,
        device: str,
        screen_px: tuple[int, int] | None = None,
        batch: int = 16,
        poll_s: float = 1.0,
        backoff: Backoff | None = None,
        ca_file: str | None = None,
        insecure: bool = False,
    ) -> None:
        self.settings = MqttSettings.of(mqtt, ca_file=ca_file, insecure=insecure)
        self.store = store
        self.user, self.device = user, device
        self.topic = label_topic(user, device)
        self.screen_px = screen_px
        self.batch = batch  # within paho's 20 in-flight QoS 1 messages
        self.poll_s = poll_s
        self._backoff = backoff or Backoff()
        self._link = LinkStats()
        self._sent = 0
        self._bad: set[Any] = set()
        self._wake: asyncio.Event | None = None
        self._thread = LoopThread(f"label-uplink {self.topic}")

    @property
    def stats(self) -> UplinkStats:
        s = self._link
        return UplinkStats(
            self._sent, len(self._bad), s.connected, s.reconnects, s.failures, s.last_error
        )

    def start(self) -> LabelUplink:
        self._thread.start(self.run)
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._thread.stop(timeout)

    def nudge(self) -> None:
        """A label was just stored: look now instead of at the next poll (any thread)."""
        wake = self._wake
        if wake is not None:
            self._thread.call_soon(wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        self._wake = asyncio.Event()
        await supervise(
            self.settings,
            self._session,
            stop=stop,
            stats=self._link,
            backoff=self._backoff,
            identifier=client_id("labels"),
            watch=True,
            name=f"labels {self.topic}",
        )

    def _next_batch(self) -> list[tuple[Any, bytes]]:
        out = []
        for rec in self.store.unsent(self.batch + len(self._bad)):
            label_id = _field(rec, "id", "label_id")
            if label_id in self._bad:
                continue
            try:
                msg = message_from_record(
                    rec, self.store, user=self.user, device=self.device, screen_px=self.screen_px
                )
            except (UnsendableRecord, ValidationError, ValueError, TypeError) as e:
                # Left unsent (a fixed store could still send it) but not retried here, so
                # one bad row cannot hold up every label behind it.
                self._bad.add(label_id)
                log.error("label %s cannot be sent: %s", label_id, e)
                continue
            out.append((label_id, msg.model_dump_json(exclude_none=True).encode()))
            if len(out) == self.batch:
                break
        return out

    async def _session(self, client: aiomqtt.Client) -> None:
        assert self._wake is not None
        while True:
            batch = await asyncio.to_thread(self._next_batch)
            if not batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                continue
            results = await asyncio.gather(
                *(client.publish(self.topic, payload, qos=1) for _, payload in batch),
                return_exceptions=True,
            )
            acked = [i for (i, _), r in zip(batch, results, strict=True) if r is None]
            if acked:
                await asyncio.to_thread(self.store.mark_sent, acked)
                self._sent += len(acked)
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


class MalformedLabel(ValueError):
    pass


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:80] or "_"


def _decode_jpeg(b64: str) -> bytes:
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedLabel(f"jpeg_b64 is not base64: {e}") from e
    if len(data) > MAX_JPEG_BYTES:
        raise MalformedLabel(f"snapshot of {len(data)} bytes is over {MAX_JPEG_BYTES}")
    if data[:2] != b"\xff\xd8":
        raise MalformedLabel("snapshot is not a JPEG")
    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None:
        raise MalformedLabel("snapshot JPEG does not decode")
    return data


def default_collector_id(out_dir: Path) -> str:
    # Stable across restarts of the same collector (the broker keeps its session under
    # this id), distinct for two collectors writing to different folders or hosts.
    key = f"{socket.gethostname()}:{out_dir.resolve()}"
    return f"gazeloop-collect-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


class Collector:
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
    ) -> None:
        self.settings = MqttSettings.of(mqtt, ca_file=ca_file, insecure=insecure)
        self.out = Path(out_dir)
        self.topic = label_topic(user, device)
        self.screen_px = screen_px  # for labels whose laptop did not say
        self.identifier = identifier or default_collector_id(self.out)
        self._backoff = backoff or Backoff()
        self._link = LinkStats()
        self.counts: Counter[str] = Counter()
        self.malformed_reasons: Counter[str] = Counter()
        self._seen: set[str] = set()
        self._thread = LoopThread("label-collector")
        self._load_seen()

    @property
    def stats(self) -> CollectorStats:
        c, s = self.counts, self._link
        return CollectorStats(
            c["received"], c["written"], c["other"], c["duplicates"], c["malformed"],
            s.connected, s.reconnects, s.failures, s.last_error,
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

    def start(self) -> Collector:
        self._thread.start(self.run)
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._thread.stop(timeout)

    async def run(self, stop: asyncio.Event) -> None:
        await supervise(
            self.settings,
            self._session,
            stop=stop,
            stats=self._link,
            backoff=self._backoff,
            identifier=self.identifier,
            clean_session=False,
            manual_ack=True,
            name="collector",
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self.topic, qos=1)
        async for m in client.messages:
            payload = m.payload if isinstance(m.payload, bytes | bytearray) else b""
            await asyncio.to_thread(self.handle, m.topic.value, bytes(payload))
            # Acked only now that it is on disk (or judged a duplicate or malformed).
            ack = getattr(getattr(client, "_client", None), "ack", None)
            if m.qos > 0 and ack is not None:
                ack(m.mid, m.qos)

    # -- one message -------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> str:
        """Judge and (maybe) write one message; returns "written", "other", "duplicate" or
        "malformed: <why>". Never raises for bad input."""
        self.counts["received"] += 1
        try:
            msg, jpeg = self._parse(topic, payload)
        except MalformedLabel as e:
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
            first = e.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "payload"
            raise MalformedLabel(f"schema: {where}: {first['msg']}") from e
        if (msg.user, msg.device) != (parts[1], parts[2]):
            raise MalformedLabel(f"identity: payload says {msg.user}/{msg.device}")
        if msg.uid != make_uid(msg.user, msg.device, msg.label_id, msg.label):
            raise MalformedLabel("uid: does not match the label it names")
        obs = msg.label.observation
        if isinstance(obs, PointObservation) and not all(-0.5 <= v <= 1.5 for v in obs.xy):
            raise MalformedLabel(f"range: point {obs.xy} is far off the screen")
        if msg.screen_px is not None and min(msg.screen_px) <= 0:
            raise MalformedLabel(f"screen: screen_px {msg.screen_px} is not positive")
        jpeg = _decode_jpeg(msg.jpeg_b64) if msg.jpeg_b64 is not None else None
        return msg, jpeg

    def _folder(self, msg: LabelMessage, screen: tuple[int, int] | None) -> Path:
        name = f"{_safe(msg.user)}__{_safe(msg.device)}"
        if screen is not None:
            name += f"__{screen[0]}x{screen[1]}"
        folder = self.out / name
        if screen is not None and not (folder / MANIFEST_NAME).exists():
            write_manifest(
                folder,
                SessionManifest(
                    screen_px=screen, user=msg.user, device=msg.device, source="gazeloop collect"
                ),
            )
        return folder

    def _write(self, msg: LabelMessage, jpeg: bytes | None) -> str:
        screen = msg.screen_px or self.screen_px
        obs = msg.label.observation
        extra: dict[str, Any] = {
            "label_uid": msg.uid,
            "oracle": msg.label.oracle,
            "oracle_version": msg.label.oracle_version,
            "confidence": msg.label.confidence,
            "snapshot_id": msg.label.snapshot_id,
            "t_ns": msg.label.t_ns,
            "fast_xy": msg.fast_xy,
            "user": msg.user,
            "device": msg.device,
        }
        folder = self._folder(msg, screen)
        is_point = isinstance(obs, PointObservation) and screen is not None and jpeg is not None
        if is_point:
            assert isinstance(obs, PointObservation) and screen is not None
            x = min(max(obs.xy[0], 0.0), 1.0) * screen[0]
            y = min(max(obs.xy[1], 0.0), 1.0) * screen[1]
            t_ms = self._free_ms(folder, msg.wall_ms)
            record = SeedRecord.model_validate(
                {"timestamp": t_ms, "screen_x": x, "screen_y": y, **extra}
            )
            body = record.model_dump(mode="json", by_alias=True, exclude_unset=True)
            stem = folder / f"img_{t_ms}"
        else:
            # Not a seed record: kept whole, so a later exporter (or a line-aware trainer)
            # has everything the laptop sent.
            folder = folder / "other"
            folder.mkdir(parents=True, exist_ok=True)
            body = {**extra, "wall_ms": msg.wall_ms, "label": msg.label.model_dump(mode="json")}
            body["screen_px"] = screen
            body["decision"] = msg.decision
            stem = folder / f"{msg.wall_ms}_{hashlib.sha256(msg.uid.encode()).hexdigest()[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        # Image first, record second: a record on disk always has its image.
        if jpeg is not None:
            atomic_write_bytes(stem.with_suffix(".jpg"), jpeg)
        atomic_write_bytes(stem.with_suffix(".json"), json.dumps(body, indent=2).encode() + b"\n")
        return "written" if is_point else "other"

    @staticmethod
    def _free_ms(folder: Path, t_ms: int) -> int:
        # Two labels of one snapshot (two oracles) share its time; the name is a record's
        # identity, so the second moves on by a millisecond (`wall_ms` stays exact in the
        # record's uid-bearing twin `t_ns`).
        while (folder / f"img_{t_ms}.json").exists():
            t_ms += 1
        return t_ms


__all__ = [
    "Collector",
    "CollectorStats",
    "LabelMessage",
    "LabelSource",
    "LabelUplink",
    "UplinkStats",
    "label_topic",
    "make_uid",
    "message_from_record",
]
