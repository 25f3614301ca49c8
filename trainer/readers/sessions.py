"""Session folders (and label-store exports, which are session folders) as training samples.

Layout (DESIGN.md, "Data on disk"; read by `calibration.store.session.read_session`):

    <session>/img_<unix-ms>.jpg + img_<unix-ms>.json   # the seed format
    <session>/session.json                             # optional manifest

Fields used: `screen_x`, `screen_y` (screen pixels, the label); from the manifest
`screen_px` (else the caller's `screen_px`), `mirrored`, `user`; optional record extras
written by importers and the label store: `target` (int: frames of one target), `settling`
(bool: the eyes were still moving, dropped), `weight` or `confidence` (float ≥ 0). The
`inference` block is another tracker's output and is never used.

`path` is one session or a folder whose sub-folders are sessions (a label-store root). The
frames go through `fastpath.collect.collect_session`, the same function evaluation and
profile fitting use, so a training sample is exactly what the product computes for that
frame. Person id: `session:<user>` from the manifest, else `session:<folder name>`; the
caller's `person` overrides both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gazeloop.calibration.store.session import MANIFEST_NAME, SessionError, read_session
from gazeloop.fastpath.collect import LabelledSample, collect_session
from gazeloop.trainer.readers.common import (
    LazyFastPath,
    Samples,
    Skip,
    Skipped,
    Unit,
    gather,
    gaze_frame,
    model_inputs,
    sample_fields,
    unit_files,
)


def is_one_session(folder: Path) -> bool:
    """One session folder (not a folder of them, nor a dataset)."""
    return (folder / MANIFEST_NAME).is_file() or any(folder.glob("img_*.json"))


def session_folders(path: Path) -> list[Path]:
    """The session folders `path` reads: itself, or the sessions directly inside a folder
    of them, in name order (what `SessionsReader` reads and the gate holds out from)."""
    if is_one_session(path):
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and is_one_session(p))


def _weight(extra: dict) -> float | None:
    """The record's own weight, if it states one; None means "unusable weight"."""
    for key in ("weight", "confidence"):
        if key in extra:
            v = extra[key]
            if isinstance(v, bool) or not isinstance(v, int | float):
                return None
            return float(v) if math.isfinite(v) and v >= 0 else None
    return 1.0


class SessionReader:
    kind = "session"

    def __init__(
        self,
        path: str | Path,
        *,
        screen_px: tuple[int, int] | None = None,
        mirrored: bool | None = None,
        person: str | None = None,
        exclude: Sequence[str | Path] = (),
    ) -> None:
        self.path = Path(path)
        # Resolved, as the gate names them: a holdout inside this folder is never read.
        self.exclude = {Path(p).resolve() for p in exclude}
        self.screen_px = None if screen_px is None else (int(screen_px[0]), int(screen_px[1]))
        self.mirrored = mirrored
        self.person = person

    def units(self) -> tuple[list[Unit], list[Skipped]]:
        if not self.path.is_dir():
            return [], [Skipped(str(self.path), "", "not a folder")]
        folders = session_folders(self.path)
        if folders != [self.path]:
            kept = [p for p in folders if p.resolve() not in self.exclude]
            if folders and not kept:
                why = "every session folder in it is held out for the gate"
                return [], [Skipped(str(self.path), "", why)]
            folders = kept
        if not folders:
            why = "no session folders (img_<unix-ms>.jpg + .json pairs) found"
            return [], [Skipped(str(self.path), "", why)]
        params = json.dumps(
            {"screen_px": self.screen_px, "mirrored": self.mirrored, "person": self.person}
        )
        units = [
            Unit(
                id=str(f),
                path=f,
                files=tuple(unit_files(f, ("img_*", MANIFEST_NAME))),
                params=params,
            )
            for f in folders
        ]
        return units, []

    def read(self, unit: Unit, pre: LazyFastPath) -> tuple[Samples, list[Skipped]]:
        try:
            session = read_session(unit.path, screen_px=self.screen_px, mirrored=self.mirrored)
        except SessionError as e:
            raise ValueError(str(e)) from e
        if session.screen_px is None:
            raise ValueError(
                "screen size unknown: the folder has no session.json manifest and no "
                "screen_px was given (labels are pixels of that screen)"
            )
        sw, sh = session.screen_px
        user = session.manifest.user if session.manifest is not None else None
        person = self.person or f"session:{user or unit.path.name}"

        collected = collect_session(session, pre.fp)
        frame = gaze_frame(pre.config)
        skipped = [Skipped(unit.id, r.file, r.why) for r in collected.rejected]
        records = {it.name: it.record for it in session.items}

        def to_sample(ls: LabelledSample) -> dict[str, Any]:
            if ls.settling:
                raise Skip("recorded while the eyes were settling")
            w = _weight(records[ls.name].model_extra or {})
            if w is None:
                raise Skip("weight/confidence is not a number ≥ 0")
            return sample_fields(
                model_inputs(ls.sample, frame),
                person=person,
                target=ls.target,
                screen=np.array(ls.label_px) / (sw, sh),
                screen_px=(sw, sh),
                weight=w,
            )

        return gather(unit.id, ((ls.name, ls) for ls in collected.samples), to_sample, skipped)
