"""A user's label store as training data: its accepted labels, exported as a session folder
inside the run folder (`LabelStore.export_session`), which the session reader then reads like
any other session.

The store keeps labels in normalised screen units, and each run that stored them records its
screen (`LabelStore.begin_run`). The export needs one screen: given (`gazeloop train
--screen-px W H`), else the one the store's runs recorded, else (a store from before runs
were recorded) read from the user's profiles beside the store (a store at
`<home>/users/<user>/labels` has them in `<home>/users/<user>/profiles/`), as long as they
agree on one screen. Labels of a run on another screen are left out of the export, said in
its counts: their points are fractions of that screen. Only accepted point labels with an
image are exported (the store's own rule: a line label offers no point that is not
invented); a store without any is refused.

The export is the run's data: a resumed run trains on the labels exported when it started,
not on what the store holds by then. Its person id is `session:<user>`, the id the user's
calibration sessions get from their manifests (`user`), so the labels and those sessions are
one person to the trainer: calibrated on some of them, asked about the others, and split for
validation by target, never one of them left out as a "validation person".
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.profile import folder_user
from gazeloop.calibration.store.labelstore import (
    DB_NAME,
    LabelStore,
    LabelStoreError,
    StoredRun,
)
from gazeloop.calibration.store.session import MANIFEST_NAME
from gazeloop.trainer.datasets import real_path

EXPORTS = "labels"  # the exports' folder inside the run folder
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class LabelExportError(ValueError):
    """A label store that cannot be trained on (one line, naming the folder)."""


@dataclass(slots=True)
class LabelExport:
    """One store, exported for one run."""

    store: Path
    session: Path
    person: str
    screen: ScreenGeometry
    screen_from: str
    accepted: int | None = None  # None: not looked at (a resumed run keeps its export)
    exported: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    reused: bool = False  # a resumed run: the export of the run's start

    @property
    def user(self) -> str:
        """Whose labels these are (`store_user`)."""
        return self.person.removeprefix("session:")

    def summary(self, samples_by_unit: dict[str, int] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "store": str(self.store),
            "session": str(self.session),
            "screen_px": list(self.screen.px),
            "screen_from": self.screen_from,
            "accepted_labels": self.accepted,
            "exported_labels": self.exported,
            "skipped": dict(self.skipped),
        }
        if self.reused:
            out["reused_export"] = True
        out["person"] = self.person
        if samples_by_unit is not None:
            # Frames the fast path read (a face found, not settling), the run's validation
            # rows included.
            out["frames"] = int(samples_by_unit.get(str(self.session), 0))
        return out


def left_out(skipped: dict[str, int]) -> str:
    """The labels an export left out, by why: "97 recorded on another screen, 1 line label"."""
    return ", ".join(f"{n} {why}" for why, n in skipped.items())


def store_user(store: Path) -> str:
    """The person a store's labels are of, named as their sessions' manifests name them: for
    a store at `.../users/<folder>/labels`, the user its folder was made for, else the
    folder's name, as it is ("李雷" and "王芳" were both "store", and trained as one person).
    A name that is no plain folder name has a folder of its own spelling ("team/eve" in
    `team_eve-<hash>`): the profiles beside the store say it, or the labels of "team/eve"
    trained as another person than her sessions and went to validation whole."""
    p = real_path(store)
    if not _in_a_users_folder(p):
        return p.name
    return folder_user(p.parent) or p.parent.name


def layout_user(store: Path) -> str | None:
    """The user a store is of when its place says it (`users/<folder>/labels` of a data
    folder, `folder_user`); None for a store elsewhere (a copy in /data/alice-labels is
    anybody's, whatever its folder is called)."""
    p = real_path(store)
    return folder_user(p.parent) if _in_a_users_folder(p) else None


def _replayed(run: StoredRun, held_out: Sequence[Path]) -> str | None:
    """Why a run's labels must not be trained on, when it replayed a held-out recording (its
    recorded `source_path` is one, inside one or holds one): trained on, its frames would
    judge a model on what it saw. A run stored before runs kept their source's resolved
    path cannot be told apart: it is trained on, as it was."""
    recorded = run.settings.get("source_path")
    if not recorded or not held_out:
        return None
    src = Path(recorded)
    for h in held_out:
        if src == h or h in src.parents or src in h.parents:
            return f"from a run replaying the held-out {h}"
    return None


def _in_a_users_folder(store: Path) -> bool:
    return store.name == "labels" and store.parent.parent.name == "users"


def _folder_name(user: str) -> str:
    """A user's name made safe for a folder name (the export's)."""
    return _SAFE.sub("_", user).strip("._") or "store"


def profile_screen(store: Path) -> tuple[ScreenGeometry, str] | None:
    """The screen of the user's profiles beside the store, when they agree on one."""
    folder = Path(store).resolve().parent / "profiles"
    screens: dict[tuple[int, int], tuple[ScreenGeometry, Path]] = {}
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            doc = json.loads(f.read_text())
            screen = ScreenGeometry.model_validate(doc["screen"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        screens.setdefault(screen.px, (screen, f))
    found = _one_screen(
        screens,
        f"{store}: the user's profiles are for several screens ({{}}): give --screen-px W H "
        "for the labels",
    )
    return None if found is None else (found[0], f"profile {found[1]}")


def recorded_screen(store: Path) -> tuple[ScreenGeometry, str] | None:
    """The screen the store's runs with exportable labels recorded (`LabelStore.begin_run`),
    when they name one; None for a store whose runs named none (or made before runs were
    recorded). A run whose every label the loop rejected has nothing to export, whatever
    its screen."""
    try:
        with LabelStore(store, readonly=True) as ls:
            runs = [r for r in ls.runs(labelled=True) if r.screen is not None]
    except LabelStoreError as e:
        raise LabelExportError(f"{store}: {e}") from None
    found = _one_screen(
        {r.screen.px: r.screen for r in runs},
        f"{store}: labels were made on several screens ({{}}): give --screen-px W H for the "
        "ones to train on (the others are left out)",
    )
    return None if found is None else (found, f"the store's runs ({len(runs)})")


def _one_screen(by_size: dict[tuple[int, int], Any], several: str) -> Any:
    """The one value of `by_size` (keyed by screen size), None for none; several sizes are
    refused with `several`, its {} the sizes."""
    if len(by_size) > 1:
        raise LabelExportError(several.format(", ".join(f"{w}x{h}" for w, h in by_size)))
    return next(iter(by_size.values()), None)


def _screen(store: Path, screen_px: tuple[int, int] | None) -> tuple[ScreenGeometry, str]:
    if screen_px is not None:
        return ScreenGeometry(px=(int(screen_px[0]), int(screen_px[1]))), "--screen-px"
    found = recorded_screen(store) or profile_screen(store)
    if found is None:
        # Profiles there that say no screen could not be read: name them, the user may
        # rather mend one than type the screen.
        folder = Path(store).resolve().parent / "profiles"
        bad = sorted(f.name for f in folder.glob("*.json")) if folder.is_dir() else []
        why = f" ({folder}: {', '.join(bad)} unreadable)" if bad else ""
        raise LabelExportError(
            f"{store}: no run in the label store recorded its screen and no profile beside "
            f"it does{why}: give --screen-px W H"
        )
    return found


def export_store(
    store: Path,
    run_dir: Path,
    index: int,
    *,
    screen_px: tuple[int, int] | None = None,
    resume: bool = False,
    held_out: Sequence[Path] = (),
) -> LabelExport:
    """Export `store`'s labels the loop did not reject to `run_dir/labels/<index>-<name>/`
    (`LabelStore.export_session`). A resumed run
    keeps the export it started with; otherwise an earlier export there is replaced (the
    caller refuses a run folder holding another run's checkpoints before this). `held_out`:
    the gate's sessions, resolved; the labels of a run that replayed one stay out."""
    store = Path(store)
    user = store_user(store)
    out = Path(run_dir) / EXPORTS / f"{index}-{_folder_name(user)}"
    person = f"session:{user}"
    if resume and out.is_dir() and any(out.glob("img_*.json")):
        try:  # the screen it was exported for, whatever the store or the flags say now
            px = json.loads((out / MANIFEST_NAME).read_text())["screen_px"]
            screen = ScreenGeometry(px=(int(px[0]), int(px[1])))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise LabelExportError(f"{out}: the run's label export is damaged ({e})") from None
        exp = LabelExport(store, out, person, screen, f"the export {out}", reused=True)
        exp.exported = len(list(out.glob("img_*.json")))
        return exp
    if not store.is_dir():
        raise LabelExportError(f"{store}: no such label store folder")
    if not (store / DB_NAME).is_file():
        raise LabelExportError(f"{store}: not a label store (no {DB_NAME} in it)")
    screen, screen_from = _screen(store, screen_px)
    exp = LabelExport(store, out, person, screen, screen_from)
    if out.exists():
        shutil.rmtree(out)
    try:
        with LabelStore(store, readonly=True) as ls:
            exp.accepted = ls.count(accepted=True)
            stats = ls.export_session(out, screen, skip_run=lambda r: _replayed(r, held_out))
    except LabelStoreError as e:
        shutil.rmtree(out, ignore_errors=True)
        raise LabelExportError(f"{store}: {e}") from None
    exp.exported = int(stats["written"])
    exp.skipped = {str(k): int(v) for k, v in stats["skipped"].items()}
    if exp.exported == 0:
        shutil.rmtree(out, ignore_errors=True)
        why = left_out(exp.skipped) or "the store is empty"
        raise LabelExportError(
            f"{store}: no usable labels (point labels with an image the loop did not reject): "
            f"{exp.accepted} accepted; skipped: {why}"
        )
    return exp


__all__ = [
    "EXPORTS",
    "LabelExport",
    "LabelExportError",
    "export_store",
    "layout_user",
    "left_out",
    "store_user",
]
