"""A versioned model registry on disk: `root/<model_id>/v0001/{model.onnx, card.json}`.

The fast path watches this tree for hot reload, so a version directory must never be seen
half-written: each version is assembled in a hidden temp directory beside the others and
renamed into place (a rename of a directory onto an existing non-empty one fails, which is
also what keeps two concurrent registrations from taking the same number). Numbers only go
up: the next one is above every `vNNNN` present, valid or not.

A version directory whose files are missing or whose card does not match them (an
interrupted copy by hand, a disk error) is skipped with a warning, never served.

Every candidate is kept, with the promotion gate's evaluation in its card; what the fast path
serves is the *promoted* version, named by `root/<model_id>/promoted.json` (rewritten
atomically under the lock `root/.promote.lock`, with the history of promotions and
rollbacks, appended to and never cut, so that `rollback` can go back one step and a person's
override stays on record; `version` is null once everything promoted was rolled back). A
version that is registered is not served until
something promotes it: the gate (`trainer.gate`), a fetch of a model its source promoted,
or a person (`gazeloop models promote`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from gazeloop.calibration.problems import first_problem
from gazeloop.calibration.profile import data_dir, folder_user, user_dir
from gazeloop.calibration.store.atomic import (
    WriteError,
    atomic_path,
    atomic_write_bytes,
    fsync_dir,
)
from gazeloop.fastpath.models import sha256_file

try:  # macOS and Linux; elsewhere promotions are not serialised between processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from gazeloop.trainer.card import ModelCard

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
PROMOTED_FILE = "promoted.json"
LOCK_FILE = ".promote.lock"  # in the root: held while a promotion pointer is rewritten
_VERSION_DIR = re.compile(r"^v(\d{4,})$")


class RegistryError(RuntimeError):
    """A model cannot be registered, or a requested version is not available."""


class ServedChanged(RegistryError):
    """A promotion refused because another version was promoted (or rolled back) since the
    caller judged its candidate against the one served then."""


_ANY = object()  # `promote(expected=...)` not given: promote whatever is served now


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    model_id: str
    version: int
    path: Path  # the version directory
    card: ModelCard

    @property
    def onnx_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def card_path(self) -> Path:
        return self.path / CARD_FILE


def default_registry_root(user: str = "default") -> Path:
    """Where `gazeloop train`, `export` and `fetch` register a user's models and `gazeloop
    run` watches for new ones: `models/` in the user's folder, beside their profiles and
    labels (`$GAZELOOP_HOME` moves it). One registry for all users served alice's personal
    model to bob, and a promotion by one changed the other's cursor."""
    return user_dir(user) / "models"


def registry_user(path: str | Path) -> str | None:
    """The user whose registry `path` is or lies in (`users/<folder>/models/...` of the
    data folder, `folder_user`); None elsewhere, or when the folder cannot say."""
    users = (data_dir() / "users").resolve()
    p = Path(path).resolve()
    if users not in p.parents:
        return None
    folder, *rest = p.relative_to(users).parts
    return folder_user(users / folder) if rest and rest[0] == "models" else None


def unmoved_registry_note(root: Path) -> str | None:
    """What to do with models registered before each user had a registry, when `root` (a
    user's) is still missing and the old shared one holds some; else None. Nothing moves
    them on its own: whose they are is the person's call."""
    old = data_dir() / "models"
    try:
        if root.exists() or not ModelRegistry(old).model_ids():
            return None
    except OSError:  # an old folder that cannot be read is no reason to stop a start
        return None
    return (
        f"{old} holds models registered before each user had a registry, anyone's: move "
        f"those trained for you to {root}"
    )


def _version_dirname(version: int) -> str:
    return f"v{version:04d}"


def _copy_into(src: Path, dest: Path) -> None:
    """`src`'s bytes into `dest`. Not `shutil.copyfile`: a full disk under `dest` came out
    of it as an error naming `src` (the model file, on a disk with room), so `export` and
    `fetch` blamed the wrong file."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def _in_registry(e: OSError, model_dir: Path) -> WriteError:
    """A write into the registry that failed, named as the registry's folder, not as the
    hidden temporary one in it."""
    return WriteError(e.errno or errno.EIO, e.strerror or str(e), str(model_dir))


class ModelRegistry:
    """Registered ONNX gaze models under `root`, one folder per model id and version."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._warned: set[tuple[str, float]] = set()
        from gazeloop.trainer import card  # no torch: a laptop without the trainer extra

        self._cards = card

    # -- writing ---------------------------------------------------------------------------

    def register(
        self,
        onnx_path: str | Path,
        card: ModelCard | dict | None = None,
        *,
        promote: bool = False,
        reason: str = "",
    ) -> RegistryEntry:
        """Copy a single-file ONNX model and its card in as the next version of the card's
        model id. `card` defaults to the one `export_onnx` wrote beside the model. The
        version is served only once promoted (`promote=True` here, or `promote()`)."""
        entry = self._register(onnx_path, card)
        if promote:
            self.promote(entry.version, entry.model_id, reason=reason or "promoted on register")
        return entry

    def _register(self, onnx_path: str | Path, card: ModelCard | dict | None) -> RegistryEntry:
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise RegistryError(f"model file not found: {onnx_path}")
        if card is None:
            cp = self._cards.card_path_for(onnx_path)
            if not cp.is_file():
                raise RegistryError(f"no card given and none beside the model at {cp}")
            card = self._cards.read_card(cp)
        elif isinstance(card, dict):
            card = self._cards.ModelCard.model_validate(card)
        self._inspect(onnx_path, card)
        digest = sha256_file(onnx_path)
        if card.onnx_sha256 is not None and card.onnx_sha256 != digest:
            raise RegistryError(
                f"{onnx_path}: its sha256 differs from the card's: card and model do not belong "
                "together"
            )
        size = onnx_path.stat().st_size

        model_dir = self.root / card.model_id
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        try:
            tmp.mkdir(parents=True)
        except OSError as e:
            raise _in_registry(e, model_dir) from e
        try:
            try:
                with atomic_path(tmp / MODEL_FILE) as copy:
                    _copy_into(onnx_path, copy)
            except WriteError as e:  # the source's own read errors stay as they are
                raise _in_registry(e, model_dir) from e
            if sha256_file(tmp / MODEL_FILE) != digest:
                raise RegistryError(f"copy of {onnx_path} changed on the way (was it rewritten?)")
            for _ in range(1000):
                version = self._next_version(model_dir)
                final = card.model_copy(
                    update={"version": version, "onnx_sha256": digest, "onnx_bytes": size}
                )
                # The card is written (file and folder fsynced) before the folder is renamed.
                atomic_write_bytes(tmp / CARD_FILE, final.model_dump_json(indent=2).encode())
                dest = model_dir / _version_dirname(version)
                try:
                    os.rename(tmp, dest)
                except OSError as exc:
                    # Someone else took this number between our look and our rename.
                    if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) or dest.exists():
                        continue
                    raise
                fsync_dir(model_dir)
                log.info("registered %s %s", card.model_id, dest.name)
                return RegistryEntry(card.model_id, version, dest, final)
            raise RegistryError(f"could not claim a version number under {model_dir}")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _inspect(onnx_path: Path, card: ModelCard) -> None:
        """Refuse what the fast path could not load or would mislabel."""
        import onnx  # only registering reads a graph

        try:
            proto = onnx.load(str(onnx_path), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and others
            raise RegistryError(f"{onnx_path} is not a readable ONNX model: {exc}") from exc
        external = [
            t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
        ]
        if external:
            raise RegistryError(
                f"{onnx_path} keeps {len(external)} tensors in external data files; the fast "
                "path loads models from one file (re-export with trainer.export.export_onnx)"
            )
        meta = {p.key: p.value for p in proto.metadata_props}
        for key, want in (
            ("gazeloop.model_id", card.model_id),
            ("gazeloop.io_convention", card.io_convention),
        ):
            if meta.get(key) != want:
                raise RegistryError(
                    f"{onnx_path}: metadata {key}={meta.get(key)!r} but the card says {want!r}"
                )

    def _next_version(self, model_dir: Path) -> int:
        return max(self._numbers(model_dir), default=0) + 1

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def _numbers(model_dir: Path) -> list[int]:
        if not model_dir.is_dir():
            return []
        out = []
        for p in model_dir.iterdir():
            m = _VERSION_DIR.match(p.name)
            if m and p.is_dir():
                out.append(int(m.group(1)))
        return sorted(out)

    def model_ids(self) -> list[str]:
        """The model-id folders; a version folder copied to the top (`vNNNN`) is none."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and not _VERSION_DIR.match(p.name)
        )

    def _resolve_id(self, model_id: str | None) -> str | None:
        if model_id is not None:
            return model_id
        ids = self.model_ids()
        stray = self.stray_versions()
        if stray and not ids:
            raise RegistryError(
                f"{self.root / stray[0]} is a version folder at the registry's top; it goes "
                f"inside its model id's folder: {self.root}/<model-id>/{stray[0]} (the "
                "trainer's model id is gazeloop-gazenet)"
            )
        if len(ids) > 1:
            raise RegistryError(
                f"{self.root} holds several models ({', '.join(ids)}); say which model_id"
            )
        return ids[0] if ids else None

    def stray_versions(self) -> list[str]:
        """Names at the registry's top that look like versions (`v0001`): a version folder
        copied one level too high."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if _VERSION_DIR.match(p.name))

    def _skip(self, path: Path, reason: str) -> None:
        try:
            key = (str(path), path.stat().st_mtime)
        except OSError:
            key = (str(path), 0.0)
        if key not in self._warned:  # once per state: a watcher polls every second
            self._warned.add(key)
            log.warning("skipping registry version %s: %s", path, reason)

    def _load(self, model_id: str, version: int, *, verify_hash: bool) -> RegistryEntry | None:
        path = self.root / model_id / _version_dirname(version)
        model, card_file = path / MODEL_FILE, path / CARD_FILE
        if not model.is_file() or not card_file.is_file():
            self._skip(path, f"missing {MODEL_FILE if not model.is_file() else CARD_FILE}")
            return None
        try:
            card = self._cards.read_card(card_file)
        except ValidationError as exc:
            self._skip(path, f"unreadable card {card_file}: {first_problem(exc)}")
            return None
        except (ValueError, OSError) as exc:
            self._skip(path, f"unreadable card {card_file}: {' '.join(str(exc).split())}")
            return None
        if card.model_id != model_id or card.version != version:
            self._skip(path, f"card says {card.model_id} v{card.version}")
            return None
        if card.onnx_bytes is not None and model.stat().st_size != card.onnx_bytes:
            self._skip(path, "model size differs from the card (incomplete copy?)")
            return None
        if verify_hash and card.onnx_sha256 != sha256_file(model):
            self._skip(path, "model sha256 differs from the card")
            return None
        return RegistryEntry(model_id, version, path, card)

    def list(
        self, model_id: str | None = None, *, verify_hash: bool = False
    ) -> list[RegistryEntry]:
        """Valid versions, oldest first; every model's when `model_id` is None. Cheap checks
        only unless `verify_hash` (which reads every model file)."""
        ids = [model_id] if model_id is not None else self.model_ids()
        out = []
        for mid in ids:
            for v in self._numbers(self.root / mid):
                entry = self._load(mid, v, verify_hash=verify_hash)
                if entry is not None:
                    out.append(entry)
        return out

    def holding(self, model_id: str, onnx_sha256: str) -> RegistryEntry | None:
        """The newest version of `model_id` whose model is these bytes, whole: a copy gone
        bad is not held (fetching or exporting it again repairs it). Reads every version's
        model once."""
        same = [
            e for e in self.list(model_id, verify_hash=True) if e.card.onnx_sha256 == onnx_sha256
        ]
        return same[-1] if same else None

    def latest(self, model_id: str | None = None) -> RegistryEntry | None:
        """The newest valid version (hash verified), or None. `model_id` may be omitted when
        the registry holds one model."""
        mid = self._resolve_id(model_id)
        if mid is None:
            return None
        for v in reversed(self._numbers(self.root / mid)):
            entry = self._load(mid, v, verify_hash=True)
            if entry is not None:
                return entry
        return None

    def get(self, version: int, model_id: str | None = None) -> RegistryEntry:
        """One version (hash verified); RegistryError if absent or damaged."""
        mid = self._resolve_id(model_id)
        if mid is None:
            raise RegistryError(f"{self.root} holds no models")
        path = self.root / mid / _version_dirname(int(version))
        entry = self._load(mid, int(version), verify_hash=True) if path.is_dir() else None
        if entry is None:
            raise RegistryError(f"{mid} v{int(version)} is not a valid version in {self.root}")
        return entry

    # -- promotion ---------------------------------------------------------------------------

    def _pointer(self, model_id: str) -> dict:
        path = self.root / model_id / PROMOTED_FILE
        if not path.is_file():
            return {"version": None, "history": []}
        try:
            data = json.loads(path.read_text())
            version = None if data["version"] is None else int(data["version"])
            history = data.get("history", [])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"{path}: unreadable promotion pointer: {exc}") from exc
        # Every record is read as a dict with a version (`promotions`, rollback's stack): a
        # list of numbers was a traceback in `models list` and `rollback`.
        if not isinstance(history, list) or not all(
            isinstance(h, dict) and "version" in h and isinstance(h["version"], int | None)
            for h in history
        ):
            raise RegistryError(
                f"{path}: unreadable promotion pointer: history is not a list of records "
                "(each a version, or none after a rollback to nothing)"
            )
        return {"version": version, "history": history}

    def promoted(self, model_id: str | None = None) -> RegistryEntry | None:
        """The version the fast path serves (hash verified), or None when nothing is
        promoted. A promoted version that has gone bad is skipped with a warning (None)."""
        mid = self._resolve_id(model_id)
        if mid is None:
            return None
        version = self._pointer(mid)["version"]
        if version is None:
            return None
        return self._load(mid, version, verify_hash=True)

    def last_promotion(self, model_id: str | None = None) -> dict | None:
        """The served version's promotion record (version, at, reason), or None."""
        mid = self._resolve_id(model_id)
        pointer = self._pointer(mid) if mid is not None else {"version": None, "history": []}
        history = pointer["history"]
        return dict(history[-1]) if history and pointer["version"] is not None else None

    def promotions(self, model_id: str | None = None) -> list[dict]:
        """Every promotion and rollback of the model, oldest first (rollbacks carry
        `"rollback": true` and the version they undid)."""
        mid = self._resolve_id(model_id)
        return [dict(h) for h in self._pointer(mid)["history"]] if mid is not None else []

    @contextlib.contextmanager
    def _pointer_lock(self) -> Iterator[None]:
        """Held from reading a promotion pointer to writing it back: two processes promoting
        at once (the gate, a fetch, a person) would each write the history they had read,
        and one promotion would vanish from it. flock, not fcntl's record locks, which a
        process loses when it closes any other descriptor of the file."""
        if fcntl is None:
            yield
            return
        try:  # read-only: flock needs no write access, and a shared registry's lock file
            # belongs to whoever promoted first
            fd = os.open(self.root / LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as e:
            raise RegistryError(f"{self.root / LOCK_FILE}: cannot take the lock: {e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # and with it the lock

    def promote(
        self,
        version: int,
        model_id: str | None = None,
        *,
        reason: str = "",
        expected: object = _ANY,
    ) -> bool:
        """Make `version` the served one; the previous promotion stays in the history.
        → False when it was served already (nothing recorded), True when promoted now.
        `expected`: the version (None: nothing) the caller judged `version` against; if
        another is served by now, nothing changes and `ServedChanged` says so. A gate runs
        for minutes, and a fetch or a person may promote meanwhile: the gate's candidate
        then replaced a model it was never compared with."""
        entry = self.get(version, model_id)  # refuses an absent or damaged version
        with self._pointer_lock():
            pointer = self._pointer(entry.model_id)
            if expected is not _ANY and pointer["version"] != expected:
                was = "nothing" if expected is None else f"v{expected}"
                now = "nothing" if pointer["version"] is None else f"v{pointer['version']}"
                raise ServedChanged(
                    f"{entry.model_id} v{entry.version} not promoted: it was judged against "
                    f"{was}, and {now} is served now"
                )
            if pointer["version"] == entry.version:
                # Served already: a second record of it would make the next rollback undo
                # this one and serve the same version again ("rolled back", nothing changed).
                log.info("%s v%d is served already", entry.model_id, entry.version)
                return False
            history = pointer["history"] + [
                {
                    "version": entry.version,
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "reason": reason,
                }
            ]
            self._write_pointer(entry.model_id, entry.version, history)
        log.info("promoted %s v%d (%s)", entry.model_id, entry.version, reason)
        return True

    def rollback(self, model_id: str | None = None, *, reason: str = "") -> RegistryEntry | None:
        """Serve the version promoted before the current one again; None when the current
        one was the first promotion (then nothing is promoted: the fast path serves the
        stock model)."""
        mid = self._resolve_id(model_id)
        if mid is None:
            raise RegistryError(f"{self.root} holds no models")
        with self._pointer_lock():
            return self._rollback(mid, reason)

    def _rollback(self, mid: str, reason: str) -> RegistryEntry | None:
        pointer = self._pointer(mid)
        stack = _served_stack(pointer["history"])
        if pointer["version"] is None or not stack:
            raise RegistryError(f"{mid}: nothing is promoted, so nothing to roll back")
        previous = self.get(stack[-2], mid) if len(stack) > 1 else None
        back = {
            "version": None if previous is None else previous.version,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "reason": reason or f"rollback from v{pointer['version']}",
            "rollback": True,
            "undone": pointer["version"],
        }
        # Appended, never cut: the record of who promoted what (a person overriding the
        # gate, say) outlives its rollback, even of the first promotion.
        self._write_pointer(mid, back["version"], pointer["history"] + [back])
        if previous is None:
            log.info("rolled back %s: nothing promoted", mid)
        return previous

    def _write_pointer(self, model_id: str, version: int, history: list[dict]) -> None:
        path = self.root / model_id / PROMOTED_FILE
        payload = {"model_id": model_id, "version": version, "history": history}
        atomic_write_bytes(path, json.dumps(payload, indent=2).encode())


def _served_stack(history: list[dict]) -> list[int]:
    """The versions a rollback goes back through, replayed from the history: a promotion
    pushes its version, a rollback pops the one it undid. (Histories written before
    rollbacks were appended hold the stack itself, with no rollback records.)"""
    stack: list[int] = []
    for h in history:
        if h.get("rollback"):
            if stack:
                stack.pop()
        elif h.get("version") is not None:
            stack.append(int(h["version"]))
    return stack


__all__ = [
    "CARD_FILE",
    "LOCK_FILE",
    "PROMOTED_FILE",
    "MODEL_FILE",
    "ModelRegistry",
    "RegistryEntry",
    "RegistryError",
    "ServedChanged",
    "default_registry_root",
    "registry_user",
    "unmoved_registry_note",
]
