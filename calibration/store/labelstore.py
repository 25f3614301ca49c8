"""Every oracle label, kept: a SQLite table beside a folder of snapshot JPEGs.

Layout of a store (one per user, see `profile.data_dir`):

    root/labels.sqlite3   one row per label (schema below, versioned in `meta`)
    root/images/*.jpg     the snapshot each label is about
    root/orphans/*.jpg    pictures found without a row, moved aside (never deleted)

Durability, in the order things happen in `add`:
1. the JPEG is written atomically (temp file, fsync, rename, fsync of the folder);
2. the row is inserted and committed in one transaction.
A crash between 1 and 2 leaves an image without a row: an orphan, moved to `orphans/` the
next time a store is opened by the only process using it (a database restored from an older
backup has orphans too: the pictures of the labels it lost). A crash inside 2 leaves no row
(SQLite's transaction). So every committed row has its image, and a crash loses at most the
label being written.

`PRAGMA synchronous=FULL` (with WAL): each commit waits for the WAL to reach the disk. NORMAL
would survive a killed process just as well, but a power cut could then drop the last
commits, rows whose images are already on disk. A label costs seconds of oracle time; one
fsync per label is nothing next to that, so we take the stronger guarantee.

The store keeps labels and nothing about where they went: rows are never changed or deleted
after `add`, and ids only grow, so a reader that remembers the last id it saw follows the
store with `ids_after` (the MQTT uplink keeps what it has sent in its own outbox,
`tools.runtime.mqtt.outbox`). Schema 1 stores also carried the uplink's delivery flag, a
`sent` column; they open as they are, nothing writes the column any more, and
`legacy_sent_ids` reads it once for the uplink to take over.

Runs. A label's point is a fraction of the screen the run mapped to, and the fast estimate
beside it came from that run's model, profile and settings. `begin_run` records them (the
screen and the resolved settings, as JSON) and `add(..., run_id=)` ties a label to its run,
so an export turns each label into the pixels of its own screen and a trainer knows how every
label was made (pytorch_mpiigaze's "the resolved config beside every run's output", for a
run whose output is labels). The two tables are additive: a store of schema 1 or 2 gains them
when opened, its labels table untouched, so an older gazeloop still reads and writes it
(recording no runs); a label without a run (stored by such a gazeloop, or by a caller that
began none) says so with `run_id` None. An older store whose database file cannot be written
(its folder can: SQLite keeps its write-ahead log beside it) opens without the tables: its
labels read with `run_id` None and no runs.

Several processes may open one store (the tracker writing, an MQTT uplink reading): SQLite
serialises them, and an advisory lock on `root/.lock` tells the opener whether it is alone,
which is the only time moving orphans aside is safe (an image without a row may otherwise
be another process's label halfway through `add`). A reader that must change nothing opens
with `readonly=True`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.labels import LineObservation, Observation, OracleLabel, PointObservation
from gazeloop.calibration.problems import one_line
from gazeloop.calibration.store.atomic import atomic_write_bytes
from gazeloop.calibration.store.session import JPEG_QUALITY, SeedRecord, SessionManifest
from gazeloop.calibration.store.writer import write_manifest

try:  # POSIX only; without it a store never moves orphans aside (safe, just untidy)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# Why a label the loop never judged (no loop then: no profile) is stored as not accepted.
NOT_PROCESSED = "not processed by the loop"
SCHEMA_VERSION = 2  # 2: without schema 1's `sent` column (the uplink keeps its own)
DB_NAME = "labels.sqlite3"
IMAGES = "images"
ORPHANS = "orphans"  # pictures found without a row (`LabelStore._clean_orphans`)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_OBSERVATION = TypeAdapter(Observation)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t_ns INTEGER NOT NULL,             -- the snapshot's time (monotonic clock of the source)
    snapshot_id TEXT NOT NULL UNIQUE,
    oracle TEXT NOT NULL,
    oracle_version TEXT NOT NULL,
    observation TEXT,                  -- JSON (PointObservation | LineObservation) or NULL
    confidence REAL NOT NULL,
    in_frame INTEGER,                  -- NULL unknown, 0, 1
    latency_s REAL,
    details TEXT NOT NULL,             -- JSON: the oracle's raw answers
    fast_x REAL, fast_y REAL,          -- fast estimate at t (normalised), NULL if none
    accepted INTEGER NOT NULL,
    why TEXT NOT NULL,
    residual_x REAL, residual_y REAL,  -- normalised, NULL if none
    offset_x REAL, offset_y REAL,      -- the loop's offset after this label
    image TEXT,                        -- file name in images/, NULL if none
    snapshot_ms INTEGER NOT NULL,      -- wall clock of the snapshot, unix ms
    created_ms INTEGER NOT NULL        -- wall clock of the insert, unix ms
);
"""
# Created in stores of every schema version (module doc: additive).
_RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_ms INTEGER NOT NULL,       -- wall clock, unix ms
    screen TEXT,                       -- JSON ScreenGeometry its points are fractions of
    settings TEXT NOT NULL             -- JSON: what the run used (config, source, models)
);
CREATE TABLE IF NOT EXISTS label_runs (
    label_id INTEGER PRIMARY KEY REFERENCES labels(id),
    run_id INTEGER NOT NULL REFERENCES runs(id)
);
"""


class LabelStoreError(RuntimeError):
    """The store cannot be opened or written: read-only or full disk, newer schema, ..."""


class DuplicateLabelError(LabelStoreError):
    """The snapshot is stored already (a recording replayed twice): kept once, not lost."""


class StoredLabel(BaseModel):
    """One row, typed."""

    model_config = ConfigDict(frozen=True)

    id: int
    t_ns: int
    snapshot_id: str
    oracle: str
    oracle_version: str
    observation: Observation | None
    confidence: float
    in_frame: bool | None
    latency_s: float | None
    details: dict[str, Any]
    fast_xy: tuple[float, float] | None
    accepted: bool
    why: str
    residual: tuple[float, float] | None
    offset: tuple[float, float] | None
    image: str | None
    snapshot_ms: int
    created_ms: int
    run_id: int | None = None  # the run that stored it (`begin_run`); None: not recorded

    @property
    def verdict(self) -> bool | None:
        """The loop's word on it: accepted, rejected as an outlier, or None when no loop
        judged it (no profile then). Export, the uplink and `runs(labelled=True)` treat a
        label with no verdict as one to keep, not as an outlier."""
        return None if self.why == NOT_PROCESSED else self.accepted

    def to_label(self) -> OracleLabel:
        return OracleLabel(
            t_ns=self.t_ns,
            snapshot_id=self.snapshot_id,
            oracle=self.oracle,
            oracle_version=self.oracle_version,
            observation=self.observation,
            confidence=self.confidence,
            in_frame=self.in_frame,
            latency_s=self.latency_s,
            details=self.details,
        )


class StoredRun(BaseModel):
    """One run that stored labels: when, on which screen, with what (`begin_run`)."""

    model_config = ConfigDict(frozen=True)

    id: int
    started_ms: int
    screen: ScreenGeometry | None  # what the run's label points are fractions of
    settings: dict[str, Any]


def _json_default(o: Any) -> Any:
    # Oracle details are the backend's raw answers: numpy values and odd objects must not
    # cost us the label, so they are stored as lists, numbers or their text.
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def _pair(a: Any) -> tuple[float, float] | None:
    if a is None:
        return None
    v = np.asarray(a, dtype=np.float64).reshape(-1)
    if v.size < 2 or not np.isfinite(v[:2]).all():
        return None
    return (float(v[0]), float(v[1]))


def _connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro",
        uri=True,
        timeout=10.0,
        isolation_level=None,
        check_same_thread=False,
    )


def _describe_os_error(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the location is read-only (permission denied)"
    text = str(e).lower()
    if "disk is full" in text or "disk full" in text:
        return "the disk is full"
    if "readonly" in text or "read-only" in text or "permission" in text:
        return "the location is read-only"
    return str(e) or type(e).__name__


def _label_row(
    label: OracleLabel,
    fast_xy: Any,
    decision: Any,
    image: str | None,
    snapshot_ms: int,
    now_ms: int,
) -> tuple:
    """One label as the values of `_insert`'s INSERT, in its column order. A label the loop
    never judged is stored as rejected, with that as the reason, so no row lacks one."""
    obs = label.observation
    fast = _pair(fast_xy)
    if decision is not None:
        accepted, why = bool(decision.accepted), str(decision.why)
        resid, off = _pair(decision.residual), _pair(decision.offset)
    else:
        accepted, why, resid, off = False, NOT_PROCESSED, None, None
    return (
        int(label.t_ns),
        label.snapshot_id,
        label.oracle,
        label.oracle_version,
        None if obs is None else obs.model_dump_json(),
        float(label.confidence),
        None if label.in_frame is None else int(bool(label.in_frame)),
        label.latency_s,
        json.dumps(label.details, default=_json_default),
        *(fast or (None, None)),
        int(accepted),
        why,
        *(resid or (None, None)),
        *(off or (None, None)),
        image,
        int(snapshot_ms),
        now_ms,
    )


class LabelStore:
    """A label store at `root` (created if missing). Thread-safe: one connection, one lock.

    `readonly=True` opens an existing store to read it and changes nothing: no schema
    step, no clean-up, no lock file (`gazeloop labels`, the trainer's export)."""

    def __init__(self, root: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.root = Path(root)
        self.images = self.root / IMAGES
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._run_tables = True  # False: an older, read-only store without them
        self._readonly = readonly
        if readonly:
            self._open_readonly()
            return
        try:
            self.images.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LabelStoreError(
                f"cannot create label store at {self.root}: {_describe_os_error(e)}"
            ) from e
        alone = self._take_lock()
        try:
            self._db = sqlite3.connect(
                self.root / DB_NAME, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            self._release_lock()
            raise LabelStoreError(
                f"cannot open label store {self.root / DB_NAME}: {_describe_os_error(e)}"
            ) from e
        try:
            self._init_schema()
            if alone:
                self._clean_orphans()
        except BaseException:
            self.close()
            raise
        self._share_lock()

    # --- opening ---------------------------------------------------------------------------

    def _open_readonly(self) -> None:
        path = self.root / DB_NAME
        if not path.is_file():
            raise LabelStoreError(f"{self.root}: no label store here (no {DB_NAME})")
        # Read-only, never `immutable`: a writer may open the store after us (a `run` while
        # `labels` reads), and an immutable reader then reads pages it changed (and ignores
        # the write-ahead log). SQLite may leave empty -wal/-shm files beside the database:
        # its own, removed by the next writer. In a folder this reader may not write to (a
        # read-only mount, a backup, another user's) SQLite cannot make the -shm file a WAL
        # reader needs and refused to read the store at all: there the database and its log
        # are copied into a private folder and read as they stood.
        try:
            try:
                self._db = _connect_ro(path)
                version = self._schema_version()
            except sqlite3.OperationalError:
                if os.access(self.root, os.W_OK):
                    raise
                self.close()
                self._db = _connect_ro(self._private_copy(path))
                version = self._schema_version()
            if version is None or version > SCHEMA_VERSION:
                why = "no tables" if version is None else f"schema version {version}, newer"
                raise LabelStoreError(f"label store {path}: {why}; not read")
            self._run_tables = self._has_runs()
        except sqlite3.Error as e:
            self.close()
            raise LabelStoreError(f"cannot read label store {path}: {_describe_os_error(e)}") from e
        except BaseException:
            self.close()
            raise

    def _private_copy(self, path: Path) -> Path:
        """The database and its write-ahead log, copied into a folder of our own (removed
        on close): a snapshot of the store as it stood."""
        self._copy = tempfile.TemporaryDirectory(prefix="gazeloop-labels-")
        for src in (path, path.with_name(path.name + "-wal")):
            if src.is_file():
                shutil.copyfile(src, Path(self._copy.name) / src.name)
        return Path(self._copy.name) / path.name

    def _take_lock(self) -> bool:
        """The lock file, held exclusively while we open the store when nobody else holds
        it (→ True: the clean-up of orphans is ours to do), else shared (→ False). Shared
        lasts our lifetime (`_share_lock`). An opener that finds the lock held waits for
        its shared share, which an exclusive holder grants only once its schema step and
        clean-up are done: a second process that went on at once stored labels whose
        pictures the first one's clean-up, walking `images/`, then moved to `orphans/`."""
        if fcntl is None:
            return False
        try:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return False  # a read-only store: the schema step will say so clearly
        self._lock_fd = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits while an opener holds it exclusively
            return False

    def _share_lock(self) -> None:
        """Down to a shared lock once opened: other processes may now open the store too."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _init_schema(self) -> None:
        db = self._db
        try:
            # Judged before anything is written: a database refused here stays as it was.
            version = self._schema_version()
            if version is not None and version > SCHEMA_VERSION:
                raise LabelStoreError(
                    f"label store {self.root} has schema version {version}, newer than the "
                    f"{SCHEMA_VERSION} this gazeloop reads; upgrade gazeloop to open it"
                )
            if version is None:
                self._refuse_lost_database()
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("%s: journal mode is %s, not WAL", self.root, mode)
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            # Schema 1 opens as it is: it differs only by its `sent` column, which inserts
            # leave at its default and nothing else writes.
            # One script, one transaction: a crash leaves no half-made schema.
            if version is None:
                db.executescript(
                    "BEGIN IMMEDIATE;"
                    + _SCHEMA
                    + _RUNS_SCHEMA
                    + "INSERT OR IGNORE INTO meta (key, value) VALUES "
                    + f"('schema_version', '{SCHEMA_VERSION}');"
                    + "COMMIT;"
                )
            elif not self._has_runs():
                self._add_run_tables()
        except sqlite3.Error as e:
            raise LabelStoreError(
                f"cannot initialise label store {self.root / DB_NAME}: {_describe_os_error(e)}"
            ) from e

    def _add_run_tables(self) -> None:
        """The run tables in an older store (module doc); a store that cannot be written
        still opens, without them."""
        try:
            self._db.executescript("BEGIN IMMEDIATE;" + _RUNS_SCHEMA + "COMMIT;")
        except sqlite3.OperationalError as e:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if "readonly" not in str(e).lower():
                raise
            self._run_tables = False
            log.info("%s: read-only, opened without run records", self.root)

    def _has_runs(self) -> bool:
        tables = {
            r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        return {"runs", "label_runs"} <= tables

    def _schema_version(self) -> int | None:
        """The store's schema version; None for a database with no tables at all (a new
        store). Any other database is refused: writing our schema into it, or cleaning
        "orphans" against its tables, would damage what it holds."""
        db, path = self._db, self.root / DB_NAME
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return None
        if "meta" not in tables or "labels" not in tables:
            raise LabelStoreError(
                f"{path} is not a gazeloop label store (tables: {sorted(tables)})"
            )
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        try:
            return int(row[0])
        except (TypeError, ValueError):
            raise LabelStoreError(
                f"{path} has no readable schema_version in its meta table: not opened, so "
                "nothing in it is changed"
            ) from None

    def _refuse_lost_database(self) -> None:
        """A database with no tables next to stored pictures is a lost database (emptied,
        truncated, replaced), not a new store: every picture would look like an orphan of a
        crash and be deleted."""
        pictures = sum(1 for p in self.images.glob("*.jpg"))
        if pictures:
            raise LabelStoreError(
                f"{self.root / DB_NAME} is empty but {self.images} holds {pictures} "
                "picture(s): the database was lost or truncated; restore it from a backup "
                "(nothing was changed), or move the pictures away to start a new store"
            )

    def _clean_orphans(self) -> None:
        """Our temp files go; images without a row are moved to `orphans/`, not deleted: a
        crash between image and commit makes one, but so does a database restored from an
        older backup, whose pictures are the labels it lost."""
        with self._lock:
            known = {r[0] for r in self._db.execute("SELECT image FROM labels") if r[0]}
        removed = moved = 0
        for p in self.images.iterdir():
            name = p.name
            with contextlib.suppress(OSError):
                if name.startswith(".") and name.endswith(".tmp"):
                    p.unlink()
                    removed += 1
                elif name.endswith(".jpg") and name not in known:
                    (self.root / ORPHANS).mkdir(exist_ok=True)
                    p.rename(self.root / ORPHANS / name)
                    moved += 1
        if removed:
            log.info("%s: removed %d temporary file(s)", self.root, removed)
        if moved:
            log.warning(
                "%s: %d picture(s) without a label row moved to %s",
                self.root,
                moved,
                self.root / ORPHANS,
            )

    def close(self) -> None:
        with self._lock:
            db = getattr(self, "_db", None)
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
                self._db = None  # type: ignore[assignment]
            copy, self._copy = getattr(self, "_copy", None), None
            if copy is not None:
                copy.cleanup()
            self._release_lock()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ---------------------------------------------------------------------------

    def begin_run(self, settings: dict[str, Any], screen: ScreenGeometry | None = None) -> int:
        """Record a run that is about to store labels: the screen its label points are
        fractions of (None: unknown) and what it runs with (JSON-able: the resolved config,
        the source, the models). → its id, for `add(..., run_id=)`."""
        self._check_writable()
        try:
            text = json.dumps(settings, default=_json_default, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"run settings are not JSON: {e}") from None
        screen_json = None if screen is None else screen.model_dump_json()
        with self._lock:
            self._check_open()
            if not self._run_tables:
                raise LabelStoreError(f"{self.root}: read-only, no run can be recorded")
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                cur = db.execute(
                    "INSERT INTO runs (started_ms, screen, settings) VALUES (?, ?, ?)",
                    (int(time.time() * 1000), screen_json, text),
                )
                db.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise LabelStoreError(
                    f"cannot record a run in {self.root / DB_NAME}: {_describe_os_error(e)}"
                ) from e
            return int(cur.lastrowid)

    def add(
        self,
        label: OracleLabel,
        snapshot_image: np.ndarray | bytes | None,
        fast_xy: Any = None,
        decision: Any = None,
        snapshot_ms: int | None = None,
        run_id: int | None = None,
    ) -> int:
        """Store one label with its snapshot; returns the row id.

        `snapshot_image`: HxWx3 uint8 BGR (encoded as JPEG here), JPEG bytes, or None.
        `decision`: the loop's `LoopDecision` (None: stored as not processed).
        `snapshot_ms`: the snapshot's wall-clock time; default now − the oracle's latency.
        `run_id`: the run it belongs to (`begin_run`), stored in the same transaction.
        """
        self._check_writable()  # before the picture is written
        now_ms = int(time.time() * 1000)
        if snapshot_ms is None:
            lat = label.latency_s if label.latency_s is not None else 0.0
            snapshot_ms = now_ms - int(round(1000 * lat)) if math.isfinite(lat) else now_ms
        jpeg = self._encode(snapshot_image)
        with self._lock:
            self._check_open()
            if self._db.execute(
                "SELECT 1 FROM labels WHERE snapshot_id = ?", (label.snapshot_id,)
            ).fetchone():
                raise DuplicateLabelError(f"snapshot {label.snapshot_id!r} is already stored")
            if run_id is not None and not self._run_exists(run_id):
                raise LabelStoreError(f"{self.root}: no run {run_id} (begin_run makes one)")
            name = None
            if jpeg is not None:
                # A unique suffix: a retried add can never overwrite another row's image.
                stem = _SAFE.sub("_", label.snapshot_id)[:48]
                name = f"{stem}-{uuid.uuid4().hex[:12]}.jpg"
                try:
                    self._write_image(self.images / name, jpeg)
                except OSError as e:
                    raise LabelStoreError(
                        f"cannot write the image of label {label.snapshot_id!r} to "
                        f"{self.images}: {_describe_os_error(e)}"
                    ) from e
            try:
                row = _label_row(label, fast_xy, decision, name, snapshot_ms, now_ms)
                return self._insert(row, run_id)
            except BaseException as e:
                if name is not None:
                    with contextlib.suppress(OSError):
                        (self.images / name).unlink()
                if isinstance(e, sqlite3.IntegrityError) and "snapshot_id" in str(e):
                    raise DuplicateLabelError(
                        f"snapshot {label.snapshot_id!r} is already stored"
                    ) from e
                if isinstance(e, sqlite3.Error):
                    raise LabelStoreError(
                        f"cannot store label {label.snapshot_id!r} in {self.root / DB_NAME}: "
                        f"{_describe_os_error(e)}"
                    ) from e
                raise

    @staticmethod
    def _encode(image: np.ndarray | bytes | None) -> bytes | None:
        if image is None:
            return None
        if isinstance(image, bytes | bytearray | memoryview):
            data = bytes(image)
            if data[:2] != b"\xff\xd8":
                raise ValueError("snapshot_image bytes are not a JPEG")
            return data
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
            raise ValueError(f"snapshot_image must be HxW[x3] uint8, got {arr.dtype} {arr.shape}")
        ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ValueError(f"cannot encode an image of shape {arr.shape} as JPEG")
        return buf.tobytes()

    def _write_image(self, path: Path, data: bytes) -> None:
        atomic_write_bytes(path, data)

    def _insert(self, row: tuple, run_id: int | None) -> int:
        """The label's row (`_label_row`) and its run, in one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(
                "INSERT INTO labels (t_ns, snapshot_id, oracle, oracle_version, observation, "
                "confidence, in_frame, latency_s, details, fast_x, fast_y, accepted, why, "
                "residual_x, residual_y, offset_x, offset_y, image, snapshot_ms, created_ms) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            if run_id is not None:
                db.execute(
                    "INSERT INTO label_runs (label_id, run_id) VALUES (?, ?)",
                    (cur.lastrowid, int(run_id)),
                )
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        return int(cur.lastrowid)

    # --- reading ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if getattr(self, "_db", None) is None:
            raise LabelStoreError(f"label store {self.root} is closed")

    def _check_writable(self) -> None:
        if self._readonly:
            raise LabelStoreError(f"label store {self.root} is open read-only")

    _COLS = (
        "id, t_ns, snapshot_id, oracle, oracle_version, observation, confidence, in_frame, "
        "latency_s, details, fast_x, fast_y, accepted, why, residual_x, residual_y, "
        "offset_x, offset_y, image, snapshot_ms, created_ms, run_id"
    )

    @staticmethod
    def _row(r: tuple) -> StoredLabel:
        def xy(a: Any, b: Any) -> tuple[float, float] | None:
            return None if a is None or b is None else (float(a), float(b))

        return StoredLabel(
            id=r[0],
            t_ns=r[1],
            snapshot_id=r[2],
            oracle=r[3],
            oracle_version=r[4],
            observation=None if r[5] is None else _OBSERVATION.validate_json(r[5]),
            confidence=r[6],
            in_frame=None if r[7] is None else bool(r[7]),
            latency_s=r[8],
            details=json.loads(r[9]),
            fast_xy=xy(r[10], r[11]),
            accepted=bool(r[12]),
            why=r[13],
            residual=xy(r[14], r[15]),
            offset=xy(r[16], r[17]),
            image=r[18],
            snapshot_ms=r[19],
            created_ms=r[20],
            run_id=r[21],
        )

    def _query(self, sql: str, args: tuple = ()) -> list[StoredLabel]:
        if self._run_tables:
            src, cols = "labels LEFT JOIN label_runs ON label_runs.label_id = labels.id", self._COLS
        else:  # an older read-only store (module doc): no run is known
            src, cols = "labels", self._COLS.replace(", run_id", ", NULL")
        rows = self._read(f"SELECT {cols} FROM {src} {sql}", args)
        try:
            return [self._row(r) for r in rows]
        except (ValidationError, ValueError) as e:
            raise LabelStoreError(f"{self.root}: a stored row is invalid: {one_line(e)}") from e

    def _run_exists(self, run_id: int) -> bool:
        return self._run_tables and bool(
            self._read("SELECT 1 FROM runs WHERE id = ?", (int(run_id),))
        )

    def run(self, run_id: int) -> StoredRun | None:
        if not self._run_tables:
            return None
        rows = self._read(
            "SELECT id, started_ms, screen, settings FROM runs WHERE id = ?", (int(run_id),)
        )
        return self._run_row(rows[0]) if rows else None

    def runs(self, *, labelled: bool = False) -> list[StoredRun]:
        """Every recorded run, oldest first; `labelled`: only those with a label the loop did
        not reject (what an export is made of: `StoredLabel.verdict` not False)."""
        if not self._run_tables:
            return []
        where = (
            " WHERE id IN (SELECT run_id FROM label_runs JOIN labels ON labels.id = "
            "label_runs.label_id WHERE labels.accepted = 1 OR labels.why = ?)"
            if labelled
            else ""
        )
        rows = self._read(
            f"SELECT id, started_ms, screen, settings FROM runs{where} ORDER BY id",
            (NOT_PROCESSED,) if labelled else (),
        )
        return [self._run_row(r) for r in rows]

    def _run_row(self, r: tuple) -> StoredRun:
        try:
            screen = None if r[2] is None else ScreenGeometry.model_validate_json(r[2])
            return StoredRun(id=r[0], started_ms=r[1], screen=screen, settings=json.loads(r[3]))
        except (ValidationError, ValueError) as e:
            raise LabelStoreError(f"{self.root}: run {r[0]} is invalid: {one_line(e)}") from e

    def has(self, snapshot_id: str) -> bool:
        """Whether a label of this snapshot is stored (`add` refuses a second one)."""
        return bool(self._read("SELECT 1 FROM labels WHERE snapshot_id = ?", (snapshot_id,)))

    def get(self, label_id: int) -> StoredLabel | None:
        rows = self._query("WHERE id = ?", (int(label_id),))
        return rows[0] if rows else None

    def iter(self, accepted: bool | None = None, batch: int = 500) -> Iterator[StoredLabel]:
        """All rows in id order (optionally only accepted / only rejected), in batches so a
        large store is never loaded at once."""
        last = 0
        while True:
            if accepted is None:
                rows = self._query("WHERE id > ? ORDER BY id LIMIT ?", (last, batch))
            else:
                rows = self._query(
                    "WHERE id > ? AND accepted = ? ORDER BY id LIMIT ?",
                    (last, int(accepted), batch),
                )
            if not rows:
                return
            yield from rows
            last = rows[-1].id

    def __iter__(self) -> Iterator[StoredLabel]:
        return self.iter()

    def count(self, accepted: bool | None = None) -> int:
        if accepted is None:
            return int(self._read("SELECT COUNT(*) FROM labels")[0][0])
        return int(
            self._read("SELECT COUNT(*) FROM labels WHERE accepted = ?", (int(accepted),))[0][0]
        )

    def ids_after(self, label_id: int, limit: int | None = None) -> list[int]:
        """The ids above `label_id`, oldest first (all of them without `limit`): how a reader
        that remembers where it stopped follows the store."""
        sql, args = "SELECT id FROM labels WHERE id > ? ORDER BY id", (int(label_id),)
        if limit is not None:
            sql, args = sql + " LIMIT ?", (*args, max(0, int(limit)))
        return [int(r[0]) for r in self._read(sql, args)]

    def legacy_sent_ids(self) -> list[int]:
        """The rows a schema 1 store's `sent` column marks as delivered by the MQTT uplink,
        for the uplink's own bookkeeping to take over once; empty for a store without it."""
        cols = {r[1] for r in self._read("PRAGMA table_info(labels)")}
        if "sent" not in cols:
            return []
        return [int(r[0]) for r in self._read("SELECT id FROM labels WHERE sent != 0 ORDER BY id")]

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            self._check_open()
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise LabelStoreError(f"cannot read {self.root}: {_describe_os_error(e)}") from e

    def image_path(self, row: StoredLabel) -> Path | None:
        return None if row.image is None else self.images / row.image

    def integrity_check(self) -> str:
        with self._lock:
            self._check_open()
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    # --- export ----------------------------------------------------------------------------

    def export_session(
        self,
        out_dir: str | os.PathLike[str],
        screen: ScreenGeometry,
        *,
        accepted_only: bool = True,
        lines: str = "skip",
        skip_run: Callable[[StoredRun], str | None] | None = None,
    ) -> dict[str, Any]:
        """Write a session folder in the seed format (img_<ms>.jpg + .json + session.json)
        for the trainer; returns counts of what was written and skipped, by reason. With
        `accepted_only` the labels the loop rejected as outliers are skipped; a label no
        loop judged is written.

        Point labels become `screen_x`/`screen_y` in pixels of `screen`. Line labels are
        skipped by default: a seed record's screen point is read as ground truth, and the
        only point a line offers is one we would invent (the fast estimate's projection onto
        the line), which would teach the trainer the fast path's own error along the line.
        `lines="pseudo"` writes that projection anyway, marked `"pseudo": true` with the line
        itself in `"line"` (origin, direction, normalised), for a trainer that uses the
        constraint and not the point. Labels off the screen are skipped (the session reader
        would reject them), and so are labels of a run recorded on a screen of another size:
        their points are fractions of that screen, and in this one's pixels they would be
        places the person never looked at. The record's name is the snapshot's wall-clock
        ms, moved on by 1 ms when two labels share a millisecond. Images are copied, not
        re-encoded. The folder must be new or empty.

        `skip_run`: why a recorded run's labels stay out (counted under that reason), or
        None to keep them: the caller's rule (the trainer leaves out replays of what its
        gate judges on).
        """
        if lines not in ("skip", "pseudo"):
            raise ValueError(f"lines must be 'skip' or 'pseudo', got {lines!r}")
        out = Path(out_dir)
        size = np.asarray(screen.px, dtype=np.float64)
        stats: dict[str, Any] = {"written": 0, "skipped": {}}
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            # Exporting twice into one folder would write every label twice under two names.
            raise LabelStoreError(f"export folder {out} exists and is not empty")
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_manifest(out, self._export_manifest(screen))
            used: set[int] = set()
            # Each run's screen read when its first label comes: a run another process
            # records while this reads is known too (read at the start, its labels went out
            # in this screen's pixels).
            screens: dict[int, ScreenGeometry | None] = {}
            left_out: dict[int, str | None] = {}
            for row in self.iter():
                # Only the loop's outliers stay out: a label no loop judged (no profile yet)
                # is a click or a dot like any other (`gazeloop collect` files it too).
                rejected = row.verdict is False
                why = "rejected by the loop" if accepted_only and rejected else None
                if row.run_id is not None and row.run_id not in screens:
                    run = self.run(row.run_id)
                    screens[row.run_id] = None if run is None else run.screen
                    skipped = None if run is None or skip_run is None else skip_run(run)
                    left_out[row.run_id] = skipped
                why = why or left_out.get(row.run_id)
                why = why or _other_screen(screens.get(row.run_id), screen)
                why = why or self._export_row(row, out, size, lines, used)
                if why is None:
                    stats["written"] += 1
                else:
                    stats["skipped"][why] = stats["skipped"].get(why, 0) + 1
        except OSError as e:
            raise LabelStoreError(f"cannot export labels to {out}: {_describe_os_error(e)}") from e
        return stats

    def _export_manifest(self, screen: ScreenGeometry) -> SessionManifest:
        """What the pairs of an export cannot say: the screen their pixels are on, and that
        the snapshots are not mirrored."""
        cam = screen.camera_mm
        return SessionManifest(
            screen_px=screen.px,
            screen_mm=screen.mm,
            camera_mm=None if cam is None else (cam[0], cam[1]),
            mirrored=False,  # snapshots are stored as the camera gave them
            source="gazeloop label store export",
            notes=f"exported from {self.root}",
        )

    def _export_row(
        self, row: StoredLabel, out: Path, size: np.ndarray, lines: str, used: set[int]
    ) -> str | None:
        """Write one row as a seed pair in `out`; returns why it was skipped, or None once
        written. `used` holds the milliseconds taken so far, so no two records share a name."""
        if row.image is None:
            return "no image"
        point = _export_point(row, lines)
        if isinstance(point, str):
            return point
        xy, extra = point
        px = xy * size
        if not (np.isfinite(px).all() and (px >= 0).all() and (px <= size).all()):
            return "off the screen"
        try:
            jpeg = (self.images / row.image).read_bytes()
        except OSError:
            return "image missing"
        t_ms = int(row.snapshot_ms)
        while t_ms in used:
            t_ms += 1
        used.add(t_ms)
        record = _export_record(row, t_ms, px, size, extra)
        stem = f"img_{t_ms}"
        atomic_write_bytes(out / f"{stem}.jpg", jpeg)
        body = record.model_dump(mode="json", by_alias=True, exclude_unset=True)
        atomic_write_bytes(out / f"{stem}.json", json.dumps(body, indent=2).encode())
        return None


def _other_screen(recorded: ScreenGeometry | None, screen: ScreenGeometry) -> str | None:
    """Why a label of a run on `recorded` cannot be exported onto `screen`, or None."""
    if recorded is None or tuple(recorded.px) == tuple(screen.px):
        return None
    return f"recorded on another screen ({recorded.px[0]}x{recorded.px[1]})"


def _export_point(row: StoredLabel, lines: str) -> tuple[np.ndarray, dict[str, Any]] | str:
    """The normalised screen point a row exports as, with the record's extra fields; or why
    it has none. A line's point is the fast estimate projected onto it, so it is written
    only on request (`lines="pseudo"`) and marked as invented, with the line beside it."""
    obs = row.observation
    if isinstance(obs, PointObservation):
        return np.asarray(obs.xy), {}
    if not isinstance(obs, LineObservation):
        return "no observation"
    if lines == "skip" or row.fast_xy is None:
        return "line label" if lines == "skip" else "line without estimate"
    o, d = np.asarray(obs.origin), np.asarray(obs.direction)
    f = np.asarray(row.fast_xy)
    xy = o + max(0.0, float(np.dot(f - o, d))) * d
    extra = {
        "pseudo": True,
        "line": {"origin": list(obs.origin), "direction": list(obs.direction)},
    }
    return xy, extra


def _export_record(
    row: StoredLabel, t_ms: int, px: np.ndarray, size: np.ndarray, extra: dict[str, Any]
) -> SeedRecord:
    """The seed record of an exported row (`seed_record`)."""
    fast = None if row.fast_xy is None else (np.asarray(row.fast_xy) * size).tolist()
    return seed_record(
        t_ms,
        px,
        row.to_label(),
        label_id=row.id,
        verdict=row.verdict,
        why=row.why,
        fast_xy_px=fast,
        **extra,
    )


def seed_record(
    t_ms: int,
    px,
    label: OracleLabel,
    *,
    label_id: int,
    verdict: bool | None,
    why: str | None,
    fast_xy_px: list[float] | None,
    **extra: Any,
) -> SeedRecord:
    """A label as a seed record, for `export_session` and `gazeloop collect` alike: the
    label in pixels plus, under `oracle`, where it came from and the loop's verdict (None:
    no loop judged it), so a trainer can weigh or trace every label it learns from."""
    return SeedRecord.model_validate(
        {
            "timestamp": t_ms,
            "screen_x": float(px[0]),
            "screen_y": float(px[1]),
            **extra,
            "oracle": {
                "name": label.oracle,
                "version": label.oracle_version,
                "confidence": label.confidence,
                "label_id": label_id,
                "snapshot_id": label.snapshot_id,
                "accepted": verdict,
                "why": None if verdict is None else why,
                "fast_xy_px": fast_xy_px,
            },
        }
    )
