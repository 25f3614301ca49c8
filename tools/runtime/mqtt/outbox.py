"""What the label uplink has still to send: its own bookkeeping, beside the store it reads.

The label store keeps labels; which of them the broker has acknowledged is the uplink's
business, kept in a small SQLite file of its own (by default `mqtt-outbox.sqlite3` in the
store's folder, so the two go together when the folder is copied or deleted):

    meta(key, value)      schema_version; seen_up_to, the highest store id taken in, and
                          seen_snapshot, that label's snapshot id; anchor_id and
                          anchor_snapshot, the first label taken in
    pending(label_id)     taken in, not yet acknowledged by the broker

The outbox follows the store by id (`LabelStore.ids_after(seen_up_to)`): ids only grow and
rows are never deleted, so each label is taken in once, in the transaction that moves
`seen_up_to` past it. It leaves `pending` in the transaction that records the broker's
PUBACK; a crash between the PUBACK and that commit sends it again, which the collector drops
by its uid (at least once on the wire, exactly once in the dataset).

Stores of schema 1 kept this flag themselves, in a `sent` column. The first take-in from
such a store takes the column over, in one transaction: what it marks sent is not pending,
everything else is. Nothing reads the column after that.

A store made anew in the same folder (its database deleted by hand) would restart its ids
below `seen_up_to` and its labels would never be taken in. The anchor notices: when the
first label taken in is gone or is another label, the outbox starts over on the new store.
A store restored from an older copy keeps its first label but goes back in ids, and the
labels stored after the restore take ids the outbox had passed: when the label at
`seen_up_to` is gone or is another, every label is taken in again (the collector drops the
ones it has by their uid) and nothing pending is forgotten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
OUTBOX_NAME = "mqtt-outbox.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (label_id INTEGER PRIMARY KEY);
"""
_CHUNK = 500  # SQLite's bound-parameter limit, with room to spare


class OutboxError(RuntimeError):
    """The outbox cannot be opened, read or written (read-only or full disk, newer schema)."""


class FollowedStore(Protocol):
    """What the outbox reads of `calibration.store.labelstore.LabelStore`."""

    def ids_after(self, label_id: int, limit: int | None = None) -> list[int]: ...

    def legacy_sent_ids(self) -> list[int]: ...

    def get(self, label_id: int): ...


def outbox_path(store_root: str | os.PathLike[str]) -> Path:
    """The outbox of the store at `store_root`, unless the uplink is given another."""
    return Path(store_root) / OUTBOX_NAME


class Outbox:
    """The uplink's bookkeeping at `path` (created if missing). Thread-safe: one connection,
    one lock; several processes may share it (SQLite serialises their transactions)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            # FULL: one fsync per acknowledged batch, so a power cut cannot resend it.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        except sqlite3.Error as e:
            self.close()
            raise OutboxError(f"cannot open the MQTT outbox {self.path}: {e}") from e
        try:
            self._check_version()
        except BaseException:
            self.close()
            raise

    def _check_version(self) -> None:
        with self._transaction():
            v = self._meta("schema_version")
            if v is None:
                self._set("schema_version", SCHEMA_VERSION)
            elif v > SCHEMA_VERSION:
                raise OutboxError(
                    f"MQTT outbox {self.path} has schema version {v}, newer than the "
                    f"{SCHEMA_VERSION} this gazeloop reads; upgrade gazeloop"
                )

    def close(self) -> None:
        with self._lock:
            db = getattr(self, "_db", None)
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
                self._db = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- following the store -----------------------------------------------------------------

    def take_in(self, store: FollowedStore) -> int:
        """The store's labels not seen yet become pending; returns how many did."""
        with self._lock:
            self._check_anchor(store)
            self._check_tip(store)
            first = self._meta("anchor_id") is None
            seen = self._meta("seen_up_to") or 0
            ids = store.ids_after(seen)
            if not ids:
                return 0
            # Read before the transaction: the store is another database.
            sent = set(store.legacy_sent_ids()) if first else set()
            anchor = store.get(ids[0]) if first else None
            tip = store.get(ids[-1])
            with self._transaction():
                seen = self._meta("seen_up_to") or 0  # another process may have moved on
                new = [i for i in ids if i > seen and i not in sent]
                for k in range(0, len(new), _CHUNK):
                    chunk = new[k : k + _CHUNK]
                    self._db.executemany(
                        "INSERT OR IGNORE INTO pending (label_id) VALUES (?)", [(i,) for i in chunk]
                    )
                if ids[-1] > seen:
                    self._set("seen_up_to", ids[-1])
                    if tip is not None:
                        self._set("seen_snapshot", tip.snapshot_id)
                if anchor is not None:
                    self._set("anchor_id", anchor.id)
                    self._set("anchor_snapshot", anchor.snapshot_id)
            return len(new)

    def _check_anchor(self, store: FollowedStore) -> None:
        anchor_id = self._meta("anchor_id")
        if anchor_id is None:
            return
        row = store.get(anchor_id)
        if row is not None and row.snapshot_id == self._meta_text("anchor_snapshot"):
            return  # nearly always: no write transaction on every take-in
        with self._transaction():
            snap = self._meta_text("anchor_snapshot")
            if row is not None and row.snapshot_id == snap:
                return
            log.warning(
                "%s: the label store is not the one this outbox followed (label %d is gone or "
                "another); starting over with its labels",
                self.path,
                anchor_id,
            )
            self._db.execute("DELETE FROM pending")
            self._db.execute(
                "DELETE FROM meta WHERE key IN "
                "('seen_up_to', 'seen_snapshot', 'anchor_id', 'anchor_snapshot')"
            )

    def _check_tip(self, store: FollowedStore) -> None:
        """The label at `seen_up_to` still the one taken in, or every label is taken in
        again: a store restored from an older copy reuses the ids after its last label."""
        seen = self._meta("seen_up_to")
        if seen is None:
            return
        row = store.get(seen)
        snap = self._meta_text("seen_snapshot")
        if snap is None or (row is not None and row.snapshot_id == snap):
            return  # nearly always: no write transaction on every take-in
        with self._transaction():
            if self._meta("seen_up_to") != seen:
                return  # another uplink on this file took labels in since: its tip now
            snap = self._meta_text("seen_snapshot")
            if snap is None or (row is not None and row.snapshot_id == snap):
                return
            log.warning(
                "%s: the label store went back (label %d is gone or another: restored from "
                "an older copy?); taking in all its labels again",
                self.path,
                seen,
            )
            self._db.execute("DELETE FROM meta WHERE key IN ('seen_up_to', 'seen_snapshot')")

    # --- the uplink's side ---------------------------------------------------------------------

    def pending(self, limit: int = 100) -> list[int]:
        """The oldest labels not yet acknowledged."""
        with self._lock:
            self._check_open()
            try:
                rows = self._db.execute(
                    "SELECT label_id FROM pending ORDER BY label_id LIMIT ?", (max(0, int(limit)),)
                ).fetchall()
            except sqlite3.Error as e:
                raise OutboxError(f"cannot read the MQTT outbox {self.path}: {e}") from e
        return [int(r[0]) for r in rows]

    def count(self) -> int:
        """How many labels are pending."""
        with self._lock:
            self._check_open()
            try:
                return int(self._db.execute("SELECT COUNT(*) FROM pending").fetchone()[0])
            except sqlite3.Error as e:
                raise OutboxError(f"cannot read the MQTT outbox {self.path}: {e}") from e

    def mark_sent(self, ids: Iterable[int]) -> int:
        """Acknowledged by the broker: no longer pending (one transaction); returns how many
        were pending, so a label sent twice is counted once."""
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        with self._lock, self._transaction():
            n = 0
            for k in range(0, len(ids), _CHUNK):
                chunk = ids[k : k + _CHUNK]
                marks = ",".join("?" * len(chunk))
                n += self._db.execute(
                    f"DELETE FROM pending WHERE label_id IN ({marks})", chunk
                ).rowcount
            return n

    # --- SQLite --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if getattr(self, "_db", None) is None:
            raise OutboxError(f"MQTT outbox {self.path} is closed")

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction under the lock; any SQLite error rolls it back and becomes
        an OutboxError."""
        with self._lock:
            self._check_open()
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                yield
                db.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise OutboxError(f"cannot write the MQTT outbox {self.path}: {e}") from e
                raise

    def _meta_text(self, key: str) -> str | None:
        self._check_open()
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as e:
            raise OutboxError(f"cannot read the MQTT outbox {self.path}: {e}") from e
        return None if row is None else str(row[0])

    def _meta(self, key: str) -> int | None:
        v = self._meta_text(key)
        try:
            return None if v is None else int(v)
        except ValueError:  # was a traceback from the uplink's thread and from `run`
            raise OutboxError(
                f"the MQTT outbox {self.path} is damaged: its {key} is {v!r}, not a number; "
                "move it away (the labels stay in the label store and are sent again)"
            ) from None

    def _set(self, key: str, value: int | str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, str(value)),
        )


__all__ = ["OUTBOX_NAME", "Outbox", "OutboxError", "outbox_path"]
