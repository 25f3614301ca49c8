"""New models from the training box to the laptops: a retained announcement plus the ONNX
file in retained chunks, each chunk and the whole checked by SHA-256.

Why chunks: a model is ~7.5 MB. MQTT allows 256 MB per message, but brokers cap it (often
1–10 MB, some hosted brokers 128 KB), and one huge message holds the connection for its whole
transfer. 128 KiB chunks pass every broker we know of and cost ~60 messages per model.

Why retained: a laptop that is asleep when the trainer announces still gets the model when
it next connects, without the announcer staying online. Order matters: every chunk is acked
by the broker before the announcement is published, so an announcement never points at
chunks that are not there. Chunk topics carry the model's hash, so two models never mix; the
announcer clears the previous model's chunks once the new announcement is out, so the broker
holds one model's worth of retained bytes, not every model ever trained.

Topics: `gazeloop/models/announce/<user>` (JSON, `ModelAnnouncement`; one per user) and
`gazeloop/models/<model_id>/<sha256[:16]>/<index>` (raw bytes).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gazeloop.calibration.problems import first_problem, one_line
from gazeloop.tools.runtime.mqtt.conn import (
    TOPIC_ROOT,
    Backoff,
    MqttSettings,
    Supervised,
    client_id,
    connected,
    first_of,
    topic_part,
)
from gazeloop.trainer.card import MODEL_ID_PATTERN

if TYPE_CHECKING:
    from gazeloop.trainer.registry import ModelRegistry, RegistryEntry

log = logging.getLogger(__name__)
# The reason a fetcher promotes with: a serving that came by fetch follows its source.
_BY_FETCH = "fetched"

MODELS_ROOT = f"{TOPIC_ROOT}/models"
CHUNK_SIZE = 128 * 1024
MAX_MODEL_BYTES = 256 * 1024 * 1024
_SHA = r"^[0-9a-f]{64}$"


class ModelAnnouncement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["gazeloop.model_announce"] = "gazeloop.model_announce"
    schema_version: Literal[1] = 1
    model_id: str = Field(pattern=MODEL_ID_PATTERN)
    version: int = Field(ge=1)  # the trainer registry's number; the laptop numbers its own
    sha256: str = Field(pattern=_SHA)
    size: int = Field(ge=1, le=MAX_MODEL_BYTES)
    chunk_size: int = Field(ge=1024, le=MAX_MODEL_BYTES)
    chunk_sha256: list[str]
    chunk_topic: str
    card: dict[str, Any]  # the model card (trainer.card.ModelCard as JSON)
    announced_ms: int

    @model_validator(mode="after")
    def _consistent(self) -> ModelAnnouncement:
        if len(self.chunk_sha256) != math.ceil(self.size / self.chunk_size):
            raise ValueError("chunk count does not match size / chunk_size")
        if not all(re.match(_SHA, h) for h in self.chunk_sha256):
            raise ValueError("chunk_sha256 entries must be hex SHA-256")
        # The fetcher subscribes to this: it must not be a wildcard or outside our tree.
        if self.chunk_topic != chunk_topic(self.model_id, self.sha256):
            raise ValueError(f"chunk_topic must be {chunk_topic(self.model_id, self.sha256)}")
        return self


def announce_topic(user: str = "default") -> str:
    """Where a user's served model is announced, retained: one topic per user, so a laptop
    fetching for bob never takes alice's personal model, and an announcement for one does
    not replace the other's while a laptop sleeps."""
    return f"{MODELS_ROOT}/announce/{topic_part(user)}"


def chunk_topic(model_id: str, sha256: str) -> str:
    return f"{MODELS_ROOT}/{model_id}/{sha256[:16]}"


class AnnounceError(RuntimeError):
    """The model to announce cannot be found or does not match its card."""


# -- finding the model to announce -----------------------------------------------------------


def resolve_model(path: str | Path, model_id: str | None = None) -> tuple[Path, dict[str, Any]]:
    """(onnx file, card as a dict) from an exported `<name>.onnx` with `<name>.card.json`, a
    registry version folder (`model.onnx` + `card.json`), or a registry root (its promoted
    version of `model_id`, or of its only model: what that machine's fast path serves)."""
    p = Path(path)
    if p.is_file():
        for card in (p.with_name(p.stem + ".card.json"), p.with_name("card.json")):
            if card.is_file():
                return p, _read_card(card)
        raise AnnounceError(f"{p}: no {p.stem}.card.json or card.json beside the model")
    if (p / "model.onnx").is_file() and (p / "card.json").is_file():
        return p / "model.onnx", _read_card(p / "card.json")
    if p.is_dir():
        from gazeloop.trainer.registry import ModelRegistry, RegistryError

        try:
            reg = ModelRegistry(p)
            entry = reg.promoted(model_id)
            promotion = None if entry is None else reg.last_promotion(entry.model_id)
        except RegistryError as e:
            raise AnnounceError(str(e)) from e
        if entry is None:
            raise AnnounceError(
                f"{p}: nothing promoted in this registry (`gazeloop models promote VERSION`)"
            )
        return entry.onnx_path, _as_served(entry.card.model_dump(mode="json"), promotion)
    raise AnnounceError(f"{p}: not a model file, a registry version or a registry")


def _as_served(card: dict[str, Any], promotion: dict[str, Any] | None) -> dict[str, Any]:
    """The card of a version this registry serves: promoted, so the fetcher promotes it on
    arrival. When the gate had not promoted it (refused, or never judged), a person did
    (`models promote`): said in `promoted_by_hand` with their reason, so the laptop does not
    show it as the gate's."""
    ev = dict(card.get("evaluation") or {})
    if ev.get("promoted") is not True:
        ev["promoted_by_hand"] = str((promotion or {}).get("reason") or "")
    ev["promoted"] = True
    return {**card, "evaluation": ev}


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise AnnounceError(f"{path}: unreadable card: {e}") from e
    if not isinstance(card, dict) or not isinstance(card.get("model_id"), str):
        raise AnnounceError(f"{path}: not a model card (no model_id)")
    return card


def _served_at_source(card: dict[str, Any]) -> bool:
    """Only what its source promoted (or a hand export no gate judged) is served here."""
    ev = card.get("evaluation")
    return ev is None or ev.get("promoted") is True


def card_problem(card: dict[str, Any]) -> str | None:
    """Why `card` is not a `trainer.card.ModelCard` (what a registry takes), in one line;
    None when it is one."""
    from gazeloop.trainer.card import ModelCard  # no torch: a laptop fetches too

    try:
        ModelCard.model_validate(card)
    except ValidationError as e:
        return first_problem(e)
    return None


# -- announcing -------------------------------------------------------------------------------


def build_announcement(
    data: bytes, card: dict[str, Any], *, chunk_size: int = CHUNK_SIZE
) -> tuple[ModelAnnouncement, list[bytes]]:
    digest = hashlib.sha256(data).hexdigest()
    if card.get("onnx_sha256") not in (None, digest):
        raise AnnounceError(
            f"its SHA-256 {digest[:16]}... differs from its card's onnx_sha256 "
            f"{str(card.get('onnx_sha256'))[:16]}...: the model and the card do not belong together"
        )
    card = {**card, "onnx_sha256": digest, "onnx_bytes": len(data)}
    # Checked here, not only by each laptop's registry: a retained card that every laptop
    # refuses would be announced to all of them until the next model.
    problem = card_problem(card)
    if problem is not None:
        raise AnnounceError(f"its card is not a valid model card: {problem}")
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    model_id = str(card["model_id"])
    ann = ModelAnnouncement(
        model_id=model_id,
        version=int(card.get("version") or 1),
        sha256=digest,
        size=len(data),
        chunk_size=chunk_size,
        chunk_sha256=[hashlib.sha256(c).hexdigest() for c in chunks],
        chunk_topic=chunk_topic(model_id, digest),
        card=card,
        announced_ms=time.time_ns() // 1_000_000,
    )
    return ann, chunks


async def _retained(client: aiomqtt.Client, topic: str, wait_s: float) -> bytes | None:
    """The retained message on `topic`, if the broker has one (it sends it on subscribe)."""
    await client.subscribe(topic, qos=1)
    try:
        async with asyncio.timeout(wait_s):
            async for m in client.messages:
                if m.topic.matches(topic):
                    return bytes(m.payload) if isinstance(m.payload, bytes | bytearray) else None
    except TimeoutError:
        return None
    finally:
        await client.unsubscribe(topic)
    return None


class ModelAnnouncer:
    """Publishes a model (chunks, then the announcement) on one connection; broker errors
    raise aiomqtt.MqttError (a CLI run is retried by the person or the scheduler)."""

    def __init__(
        self,
        mqtt: str | MqttSettings,
        *,
        user: str = "default",
        chunk_size: int = CHUNK_SIZE,
        in_flight: int = 8,
        ca_file: str | None = None,
        insecure: bool = False,
    ) -> None:
        self.settings = MqttSettings.of(mqtt, ca_file=ca_file, insecure=insecure)
        self.user = user
        self.topic = announce_topic(user)
        self.chunk_size = chunk_size
        self.in_flight = in_flight

    async def announce(
        self, onnx_path: str | Path, card: dict[str, Any], *, clear_previous: bool = True
    ) -> ModelAnnouncement:
        try:
            ann, chunks = build_announcement(
                Path(onnx_path).read_bytes(), card, chunk_size=self.chunk_size
            )
        except AnnounceError as e:
            raise AnnounceError(f"{onnx_path}: {e}") from None
        async with connected(self.settings, identifier=client_id("announce")) as c:
            previous = await self._previous(c) if clear_previous else None
            gate = asyncio.Semaphore(self.in_flight)

            async def put(topic: str, payload: bytes) -> None:
                async with gate:
                    await c.publish(topic, payload, qos=1, retain=True)

            await asyncio.gather(*(put(f"{ann.chunk_topic}/{i}", b) for i, b in enumerate(chunks)))
            await c.publish(self.topic, ann.model_dump_json().encode(), qos=1, retain=True)
            if previous is not None and previous.chunk_topic != ann.chunk_topic:
                # An empty retained message deletes the broker's retained copy.
                n = len(previous.chunk_sha256)
                await asyncio.gather(*(put(f"{previous.chunk_topic}/{i}", b"") for i in range(n)))
        log.info(
            "announced %s v%d (%d bytes, %d chunks)",
            ann.model_id,
            ann.version,
            ann.size,
            len(chunks),
        )
        return ann

    async def _previous(self, c: aiomqtt.Client) -> ModelAnnouncement | None:
        raw = await _retained(c, self.topic, wait_s=min(1.0, self.settings.timeout_s))
        if not raw:
            return None
        try:
            return ModelAnnouncement.model_validate_json(raw)
        except ValidationError:
            return None

    def announce_path(self, path: str | Path, *, model_id: str | None = None) -> ModelAnnouncement:
        onnx_path, card = resolve_model(path, model_id)
        return asyncio.run(self.announce(onnx_path, card))


# -- fetching ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetcherStats:
    fetched: int  # models registered
    already_had: int  # announcements of a model the registry holds
    failed: int  # transfers that timed out, failed the hash check or the registry refused
    malformed: int  # announcements that are not ModelAnnouncement, and bad chunks
    connected: bool
    reconnects: int
    last_error: str | None
    connects: int = 0  # connections made at all: 0 is a broker never reached

    @property
    def outcomes(self) -> bool:
        """Whether any announcement came to an end: fetched, already had, failed, refused
        or malformed (`fetch --once` stops on the first)."""
        return self.fetched + self.already_had + self.failed + self.malformed > 0


class _Transfer:
    def __init__(self, ann: ModelAnnouncement, timeout_s: float) -> None:
        self.ann = ann
        self.parts: dict[int, bytes] = {}
        self.deadline = time.monotonic() + timeout_s

    def add(self, index: int, data: bytes) -> bool:
        """Keep a chunk if it is the one announced; False for a wrong one."""
        if not 0 <= index < len(self.ann.chunk_sha256):
            return False
        if hashlib.sha256(data).hexdigest() != self.ann.chunk_sha256[index]:
            return False
        self.parts[index] = data
        return True

    @property
    def complete(self) -> bool:
        return len(self.parts) == len(self.ann.chunk_sha256)

    def data(self) -> bytes:
        return b"".join(self.parts[i] for i in range(len(self.ann.chunk_sha256)))


class ModelFetcher(Supervised):
    """Listens for announcements and brings each new model into a `ModelRegistry`. Runs in
    its own thread (`start`/`close`) or inside a running loop (`await run(stop)`)."""

    def __init__(
        self,
        mqtt: str | MqttSettings,
        registry: ModelRegistry | str | Path,
        *,
        user: str = "default",
        model_id: str | None = None,
        fetch_timeout_s: float = 120.0,
        retry_s: float = 30.0,
        on_model: Callable[[RegistryEntry], None] | None = None,
        backoff: Backoff | None = None,
        ca_file: str | None = None,
        insecure: bool = False,
    ) -> None:
        if isinstance(registry, str | Path):
            from gazeloop.trainer.registry import ModelRegistry

            registry = ModelRegistry(registry)
        self.settings = MqttSettings.of(mqtt, ca_file=ca_file, insecure=insecure)
        self.registry = registry
        self.topic = announce_topic(user)
        self.model_id = model_id
        self.fetch_timeout_s = fetch_timeout_s
        self.retry_s = retry_s
        self.on_model = on_model
        self._own_loop("model-fetcher", backoff)
        kinds = ("fetched", "already_had", "failed", "malformed")
        self._counts = dict.fromkeys(kinds, 0)
        self._refused: set[str] = set()  # hashes the registry refused: never fetched again
        self.last_entry: RegistryEntry | None = None
        self._transfer: _Transfer | None = None

    @property
    def stats(self) -> FetcherStats:
        c, s = self._counts, self._link
        return FetcherStats(
            c["fetched"], c["already_had"], c["failed"], c["malformed"],
            s.connected, s.reconnects, s.last_error, s.connects,
        )  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        await self._supervise(stop, identifier=client_id("fetch"), name="model fetcher")

    def _follow_source(self, ann: ModelAnnouncement, held: RegistryEntry) -> None:
        """A model held here already, announced as the one its source serves (the source
        rolled back to it, or promoted it by hand): served here too. A laptop kept the
        withdrawn model, counted the announcement as `already_had` and nothing else. What a
        person chose here by hand (`models promote`, `models rollback`) is left alone; only
        a serving that came by fetch follows the source."""
        from gazeloop.trainer.registry import RegistryError

        if not _served_at_source(ann.card):
            return
        try:
            served = self.registry.promoted(ann.model_id)
            if served is not None and served.version == held.version:
                return
            # The last promotion or rollback here, to nothing included: a person's stays.
            history = self.registry.promotions(ann.model_id)
            last = str(history[-1].get("reason") or "by hand") if history else _BY_FETCH
            if not last.startswith(_BY_FETCH):
                log.info(
                    "%s v%d is served at its source; kept here as chosen (%s)",
                    ann.model_id, held.version, last,
                )  # fmt: skip
                return
            reason = f"{_BY_FETCH}: served at its source"
            self.registry.promote(held.version, ann.model_id, reason=reason)
        except RegistryError as e:  # an unreadable pointer: said, the fetcher goes on
            self._failed(ann, f"cannot serve the copy held here: {one_line(e)}")
            log.warning("%s: cannot serve the copy held here: %s", ann.model_id, one_line(e))
            return
        log.warning("%s v%d served again: its source serves it", ann.model_id, held.version)

    async def _session(self, client: aiomqtt.Client) -> None:
        self._transfer: _Transfer | None = None
        await client.subscribe(self.topic, qos=1)
        # The deadline is watched beside the receive loop, not as a timeout on it:
        # cancelling a pending receive can drop the message it was just handed.
        await first_of(self._receive(client), self._watchdog(client))

    async def _watchdog(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(0.2)
            t = self._transfer
            if t is not None and time.monotonic() > t.deadline:
                self._transfer = None
                got, n = len(t.parts), len(t.ann.chunk_sha256)
                await self._fail(client, t, f"timed out with {got} of {n} chunks")

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else b""
            transfer = self._transfer
            if msg.topic.matches(self.topic):
                self._transfer = await self._on_announce(client, bytes(payload), transfer)
            elif transfer is not None and msg.topic.matches(f"{transfer.ann.chunk_topic}/+"):
                index = msg.topic.value.rsplit("/", 1)[1]
                if not payload:
                    continue  # the announcer clearing an older model's retained chunk
                if not (index.isdigit() and transfer.add(int(index), bytes(payload))):
                    # Chunks are retained: a wrong one stays until the model is announced
                    # again, so waiting out the deadline for the right one is waiting in vain.
                    self._counts["malformed"] += 1
                    self._transfer = None
                    why = f"chunk {index} is not the one announced ({len(payload)} bytes)"
                    await self._fail(client, transfer, why)
                    continue
                if transfer.complete:
                    self._transfer = None
                    await client.unsubscribe(f"{transfer.ann.chunk_topic}/+")
                    await self._register(transfer)

    async def _on_announce(
        self, client: aiomqtt.Client, payload: bytes, transfer: _Transfer | None
    ) -> _Transfer | None:
        if not payload:
            return transfer  # the retained announcement was cleared
        try:
            ann = ModelAnnouncement.model_validate_json(payload)
        except ValidationError as e:
            self._malformed("model announcement", first_problem(e))
            return transfer
        if self.model_id is not None and ann.model_id != self.model_id:
            return transfer
        if transfer is not None and transfer.ann.sha256 == ann.sha256:
            return transfer
        if ann.sha256 in self._refused:
            return transfer
        # Before any chunk comes: a card the registry would refuse is refused now, once.
        problem = await asyncio.to_thread(card_problem, ann.card)
        if problem is not None:
            self._refused.add(ann.sha256)
            self._malformed(f"{ann.model_id} announcement", f"card: {problem}")
            return transfer
        # The newest version held here of the announced model, whole: a damaged copy is
        # fetched again (the hash of every version of the id is read, once per announcement).
        held = await asyncio.to_thread(self.registry.holding, ann.model_id, ann.sha256)
        if held is not None:
            await asyncio.to_thread(self._follow_source, ann, held)
            self._counts["already_had"] += 1  # after: whoever reads the count sees the serving
            return transfer
        if transfer is not None:  # a newer model replaces the one still arriving
            await client.unsubscribe(f"{transfer.ann.chunk_topic}/+")
        log.info("fetching %s v%d (%d bytes)", ann.model_id, ann.version, ann.size)
        new = _Transfer(ann, self.fetch_timeout_s)
        await client.subscribe(f"{ann.chunk_topic}/+", qos=1)
        return new

    def _malformed(self, what: str, why: str) -> None:
        """An announcement no registry would take: one warning, and the fetcher goes on (a
        retained one comes again on every connection until the next model replaces it)."""
        self._counts["malformed"] += 1
        self._link.last_error = f"{what}: {why}"
        log.warning("%s ignored: %s", what, why)

    def _failed(self, ann: ModelAnnouncement, why: str) -> None:
        self._counts["failed"] += 1
        self._link.last_error = f"{ann.model_id}: {why}"

    async def _fail(self, client: aiomqtt.Client, transfer: _Transfer, why: str) -> None:
        self._failed(transfer.ann, why)
        log.warning("model fetch failed: %s; retrying in %.0f s", why, self.retry_s)
        await client.unsubscribe(f"{transfer.ann.chunk_topic}/+")
        # Re-subscribing makes the broker send the retained announcement again.
        await client.unsubscribe(self.topic)
        await asyncio.sleep(self.retry_s)
        await client.subscribe(self.topic, qos=1)

    async def _register(self, transfer: _Transfer) -> None:
        from gazeloop.trainer.registry import RegistryError

        ann = transfer.ann
        data = transfer.data()
        if len(data) != ann.size or hashlib.sha256(data).hexdigest() != ann.sha256:
            self._failed(ann, "the assembled file fails the SHA-256 check")
            log.warning("model %s: assembled file fails the hash check", ann.model_id)
            return

        def put() -> RegistryEntry:
            with tempfile.TemporaryDirectory(prefix="gazeloop-fetch-") as tmp:
                path = Path(tmp) / "model.onnx"
                path.write_bytes(data)
                ok = _served_at_source(ann.card)
                return self.registry.register(path, ann.card, promote=ok, reason=_BY_FETCH)

        try:
            entry = await asyncio.to_thread(put)
        except (RegistryError, ValidationError, ValueError) as e:
            self._failed(ann, f"refused by the registry: {one_line(e)}")
            self._refused.add(ann.sha256)
            log.warning("model %s refused by the registry: %s", ann.model_id, one_line(e))
            return
        self._counts["fetched"] += 1
        self.last_entry = entry
        log.info("fetched %s as local v%d", entry.model_id, entry.version)
        if self.on_model is not None:
            try:
                self.on_model(entry)
            except Exception:  # the caller's hook must not stop the fetcher
                log.exception("on_model hook failed for %s v%d", entry.model_id, entry.version)


__all__ = [
    "announce_topic",
    "CHUNK_SIZE",
    "AnnounceError",
    "FetcherStats",
    "ModelAnnouncement",
    "ModelAnnouncer",
    "ModelFetcher",
    "build_announcement",
    "card_problem",
    "chunk_topic",
    "resolve_model",
]
