"""Training data: every source the trainer reads, preprocessed by the fast path, cached.

Sources (each reader documents its layout and the fields it uses):

- `session`     session folders in the seed format, with or without `session.json`, and
                label-store exports (session folders too)      → `trainer.readers.sessions`
- `mpii`        MPIIFaceGaze (pXX/pXX.txt, Calibration/screenSize.mat) → `readers.mpii`
- `mpii_normalized` MPIIFaceGaze's normalised pXX.mat (MPIIGaze's is refused, with why)
                                                                → `readers.mpii_normalized`
- `xgaze`       ETH-XGaze from its root (train_test_split.json, train/*.h5) → `readers.xgaze`
- `gazecapture` GazeCapture recording folders of one info.json split → `readers.gazecapture`
- `jspsych`     the jspsych eye-strip TFRecords, read without TensorFlow → `readers.tfrecord`

`load_data` turns a list of `DataSource`s into one `GazeData`: the sample columns of
`trainer.readers.common.Samples` (crops in the model's input convention), what was skipped
and why, and the persons excluded and why. Bad input never stops a load: a damaged file,
line or record is skipped with the reason; a unit that cannot be read at all is skipped as
a whole with the reason. Each unit's preprocessed arrays are cached as `.npz`
(`allow_pickle=False`), keyed by its files' paths, sizes and times, the reader's parameters
and the preprocessing tag, so changing the fast-path crop settings recomputes them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gazeloop.trainer.readers.common import (
    LazyFastPath,
    Preprocessor,
    Reader,
    Samples,
    Skipped,
    cache_path,
    load_cache,
    save_cache,
    source_key,
)
from gazeloop.trainer.readers.gazecapture import GazeCaptureReader
from gazeloop.trainer.readers.mpii import MPIIFaceGazeReader
from gazeloop.trainer.readers.mpii_normalized import MPIINormalizedReader, is_normalized_layout
from gazeloop.trainer.readers.sessions import SessionReader
from gazeloop.trainer.readers.tfrecord import JsPsychTFRecordReader
from gazeloop.trainer.readers.xgaze import RELEASE_DIR, SPLIT_FILE, XGazeReader

log = logging.getLogger(__name__)

Kind = Literal["auto", "session", "mpii", "mpii_normalized", "xgaze", "gazecapture", "jspsych"]
KINDS = ("session", "mpii", "mpii_normalized", "xgaze", "gazecapture", "jspsych")

# A person needs a calibration (8 points by default) plus at least one point to predict.
DEFAULT_MIN_SCREEN_SAMPLES = 9


class DataSource(BaseModel):
    """One dataset on disk. Options apply to the readers that use them."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    kind: Kind = "auto"
    screen_px: tuple[int, int] | None = Field(
        None, description="session without a manifest: screen size (nothing else uses it)"
    )
    mirrored: bool | None = Field(None, description="session/gazecapture: selfie-view images")
    person: str | None = Field(None, description="session: person id override")
    aspect: float | None = Field(None, gt=0, description="jspsych: frame width / height")
    weight: float = Field(1.0, ge=0, description="multiplies every sample weight")
    split: Literal["train", "val", "test"] | None = Field(
        None, description="gazecapture/xgaze: the release's split to read (default train)"
    )
    exclude: list[Path] = Field(
        default_factory=list,
        description="session folders inside this folder that are not read (the gate's holdout)",
    )


def real_path(path: str | Path) -> Path:
    """`path` with its links followed; absolute as given when they loop (the source then
    fails to read, in its reader's words)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def detect_kind(path: Path) -> str:
    """Which reader a path is for, from its published layout."""
    p = Path(path)
    if p.is_file():
        if p.suffix == ".h5":
            return "xgaze"
        if p.suffix == ".mat":
            return "mpii_normalized"
        if ".tfrecord" in p.name:
            return "jspsych"
        raise ValueError(f"{p}: a file that is neither .h5 (ETH-XGaze) nor .tfrecord(s)")
    if not p.is_dir():
        raise ValueError(f"{p}: does not exist")
    children = [c for c in p.iterdir() if not c.name.startswith(".")]
    dirs = [c for c in children if c.is_dir()]

    def has(folder: Path) -> str | None:
        if (folder / "session.json").is_file() or any(folder.glob("img_*.json")):
            return "session"
        if (folder / f"{folder.name}.txt").is_file():
            return "mpii"
        if (folder / "dotInfo.json").is_file():
            return "gazecapture"
        return None

    kind = has(p)
    if kind:
        return kind
    if (p / SPLIT_FILE).is_file() or (p / RELEASE_DIR / SPLIT_FILE).is_file():
        return "xgaze"
    if is_normalized_layout(p):
        return "mpii_normalized"
    if any(c.suffix == ".h5" for c in children):
        return "xgaze"
    if any(".tfrecord" in c.name for c in children if c.is_file()):
        return "jspsych"
    for d in dirs:
        kind = has(d)
        if kind:
            return kind
    raise ValueError(
        f"{p}: no known layout (img_*.json sessions, pXX/pXX.txt, *.h5, dotInfo.json, "
        "*.tfrecords); set the source's kind"
    )


def make_reader(src: DataSource) -> Reader:
    kind = detect_kind(src.path) if src.kind == "auto" else src.kind
    if kind == "session":
        return SessionReader(
            src.path,
            screen_px=src.screen_px,
            mirrored=src.mirrored,
            person=src.person,
            exclude=src.exclude,
        )
    if kind == "mpii":
        return MPIIFaceGazeReader(src.path)  # its own screenSize.mat, never src.screen_px
    if kind == "mpii_normalized":
        return MPIINormalizedReader(src.path)
    if kind == "xgaze":
        return XGazeReader(src.path, split=src.split or "train")
    if kind == "gazecapture":
        return GazeCaptureReader(src.path, mirrored=bool(src.mirrored), split=src.split or "train")
    if kind == "jspsych":
        return JsPsychTFRecordReader(src.path, aspect=src.aspect or 4 / 3)
    raise ValueError(f"unknown data kind {kind!r}; known: {', '.join(KINDS)}")


def screen_px_notes(sources: Sequence[DataSource]) -> list[str]:
    """Where a given screen size is NOT used, one line each (for stderr): it only labels
    session folders without a manifest; a manifest, MPIIFaceGaze's screenSize.mat and the
    other datasets' own screens always win, so mixing datasets keeps each one's screen."""
    notes = []
    for src in sources:
        if src.screen_px is None:
            continue
        w, h = src.screen_px
        try:
            kind = detect_kind(src.path) if src.kind == "auto" else src.kind
        except ValueError:
            continue  # the load reports the bad path itself
        if kind != "session":
            notes.append(f"--screen-px {w} {h} ignored for {src.path}: {kind} data has its own")
            continue
        folders = [src.path, *sorted(p for p in Path(src.path).iterdir() if p.is_dir())]
        for f in folders:
            if (f / "session.json").is_file():
                why = "its session.json manifest gives the screen"
                notes.append(f"--screen-px {w} {h} ignored for {f}: {why}")
    return notes


@dataclass(slots=True)
class UnitReport:
    kind: str
    unit: str
    samples: int
    skipped: int
    cached: bool
    error: str | None = None
    targets: int = 0  # distinct screen targets among the samples (what a calibration needs)


@dataclass(slots=True)
class GazeData:
    """Everything loaded. `samples.target` ids are unique across the whole set."""

    samples: Samples
    skipped: list[Skipped] = field(default_factory=list)
    excluded: list[Skipped] = field(default_factory=list)  # whole persons
    units: list[UnitReport] = field(default_factory=list)

    @property
    def persons(self) -> list[str]:
        return sorted(set(self.samples.person.tolist()))

    def report(self) -> dict[str, Any]:
        s = self.samples
        return {
            "samples": len(s),
            "persons": len(self.persons),
            "with_screen": int(np.isfinite(s.screen).all(1).sum()),
            "with_gaze": int(np.isfinite(s.gaze).all(1).sum()),
            "skipped": len(self.skipped),
            "skipped_reasons": _count_reasons(self.skipped),
            "excluded_persons": [str(e) for e in self.excluded],
            "units": [
                {
                    k: getattr(u, k)
                    for k in ("kind", "unit", "samples", "skipped", "cached", "error")
                }
                for u in self.units
            ],
        }


def _count_reasons(skipped: Sequence[Skipped]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in skipped:
        out[s.why] = out.get(s.why, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _default_fastpath(config: Any) -> Callable[[], Preprocessor]:
    def make() -> Preprocessor:
        from gazeloop.fastpath.pipeline import FastPath

        return FastPath(config)

    return make


def exclude_small_persons(
    samples: Samples, min_screen_samples: int
) -> tuple[Samples, list[Skipped]]:
    """Drop persons who can train nothing: fewer screen-labelled samples than a calibration
    plus one query, and no gaze labels either. A person with gaze labels stays (the angle
    loss uses them) even when too few screen labels leave the ridge head without them."""
    has_screen = np.isfinite(samples.screen).all(1)
    has_gaze = np.isfinite(samples.gaze).all(1)
    keep = np.ones(len(samples), bool)
    excluded: list[Skipped] = []
    for p in sorted(set(samples.person.tolist())):
        rows = samples.person == p
        n_screen, n_gaze = int(has_screen[rows].sum()), int(has_gaze[rows].sum())
        if n_screen >= min_screen_samples or n_gaze > 0:
            continue
        keep &= ~rows
        excluded.append(
            Skipped(
                p,
                "",
                f"{n_screen} sample(s) with a screen target, fewer than the "
                f"{min_screen_samples} a calibration plus one query needs, and no gaze labels",
            )
        )
    return samples.subset(np.flatnonzero(keep)), excluded


def load_data(
    sources: Sequence[DataSource | str | Path],
    *,
    cache_dir: str | Path | None = None,
    fastpath_config: Any | None = None,
    preprocessor: Preprocessor | None = None,
    min_screen_samples: int = DEFAULT_MIN_SCREEN_SAMPLES,
    progress: Callable[[str], None] | None = None,
) -> GazeData:
    """Read, preprocess (fast path) and cache every source; never raises for bad data.
    `progress` is told about each unit as it is done (preprocessed or from the cache).

    By default a `FastPath(fastpath_config)` is created when the first unit is not cached,
    and closed at the end. A caller's `preprocessor` (a running FastPath, or a stand-in in
    tests) is used as is and left open; `fastpath_config` must then describe it, since it
    keys the cache (None for a stand-in)."""
    pre = _lazy_preprocessor(preprocessor, fastpath_config)
    parts: list[Samples] = []
    skipped: list[Skipped] = []
    units: list[UnitReport] = []
    next_target = 0
    try:
        for src in sources:
            src = src if isinstance(src, DataSource) else DataSource(path=Path(src))
            try:
                reader = make_reader(src)
                found, listing = reader.units()
            except (ValueError, OSError) as e:
                skipped.append(Skipped(str(src.path), "", str(e)))
                continue
            skipped.extend(listing)
            for unit in found:
                t0 = time.monotonic()
                part, unit_skipped, report = _read_unit(reader, unit, pre, cache_dir)
                if progress is not None:
                    progress(_progress_line(len(units) + 1, report, t0))
                skipped.extend(unit_skipped)
                units.append(report)
                if not len(part):
                    continue
                report.targets = _screen_targets(part)
                part.weight = (part.weight * np.float32(src.weight)).astype(np.float32)
                next_target += _renumber_targets(part, next_target)
                parts.append(part)
    finally:
        pre.close()
    samples, excluded = exclude_small_persons(Samples.concat(parts), min_screen_samples)
    for s in excluded:
        log.warning("excluded person %s", s)
    return GazeData(samples=samples, skipped=skipped, excluded=excluded, units=units)


def _lazy_preprocessor(preprocessor: Preprocessor | None, fastpath_config: Any) -> LazyFastPath:
    """The preprocessor, created on first use so a load whose every unit is cached never
    starts the fast path; a caller's own is used as is and left open."""
    if preprocessor is not None:
        return LazyFastPath(lambda: preprocessor, fastpath_config, owned=False)
    if fastpath_config is None:
        from gazeloop.fastpath.pipeline import FastPathConfig

        fastpath_config = FastPathConfig()
    return LazyFastPath(_default_fastpath(fastpath_config), fastpath_config)


def _progress_line(n: int, report: UnitReport, t0: float) -> str:
    """What `progress` is told about the n-th unit done: a long load shows it is moving,
    and which units came from the cache."""
    how = "cache" if report.cached else "preprocessed"
    return (
        f"data: unit {n} done, {report.unit}: {report.samples} "
        f"samples ({how}, {time.monotonic() - t0:.1f} s)"
    )


def _renumber_targets(part: Samples, next_target: int) -> int:
    """Give `part`'s targets ids from `next_target` on and return how many it used: a
    target id means something only within a unit and person, and training groups frames by
    it across all units."""
    keys = list(zip(part.person.tolist(), part.target.tolist(), strict=True))
    ids: dict[tuple[str, int], int] = {}
    new = np.empty(len(part), np.int64)
    for i, (person, t) in enumerate(keys):
        if t < 0:  # no target: every frame its own group
            new[i] = next_target + len(ids)
            ids[(person, -1 - i)] = new[i]
        else:
            new[i] = ids.setdefault((person, t), next_target + len(ids))
    part.target = new
    return len(ids)


def _screen_targets(part: Samples) -> int:
    """Distinct screen points among a unit's samples: a unit's target ids may be -1 (each
    frame its own), its labels never are."""
    screen = part.screen[np.isfinite(part.screen).all(1)]
    return len(np.unique(screen, axis=0))


def _read_unit(
    reader: Reader, unit: Any, pre: LazyFastPath, cache_dir: str | Path | None
) -> tuple[Samples, list[Skipped], UnitReport]:
    path = None
    if cache_dir is not None:
        key = source_key(unit.files, reader.kind, str(unit.path), unit.params, pre.tag)
        path = cache_path(Path(cache_dir), reader.kind, unit.path.name, key)
        if path.is_file():
            try:
                samples, skipped = load_cache(path)
                return (
                    samples,
                    skipped,
                    UnitReport(reader.kind, unit.id, len(samples), len(skipped), True),
                )
            except Exception as e:  # a damaged cache is rebuilt, never trusted
                log.warning("cache %s unusable (%s); rebuilding", path, e)
    try:
        samples, skipped = reader.read(unit, pre)
    except Exception as e:  # bad input must not stop the load; the reason is kept
        why = str(e) if isinstance(e, ValueError | OSError) else f"{type(e).__name__}: {e}"
        log.warning("skipped %s: %s", unit.id, why)
        return (
            Samples.empty(),
            [Skipped(unit.id, "", why)],
            UnitReport(reader.kind, unit.id, 0, 1, False, why),
        )
    if path is not None:
        try:
            save_cache(path, samples, skipped)
        except OSError as e:
            log.warning("cannot write cache %s: %s", path, e)
    return samples, skipped, UnitReport(reader.kind, unit.id, len(samples), len(skipped), False)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m trainer.datasets PATH... [--cache DIR]`: preprocess and report as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--kind", default="auto", choices=("auto", *KINDS))
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--screen-px", type=int, nargs=2, default=None)
    ap.add_argument("--mirrored", action="store_true", default=None)
    ap.add_argument("--split", choices=("train", "val", "test"), default=None)
    ap.add_argument("--min-screen-samples", type=int, default=DEFAULT_MIN_SCREEN_SAMPLES)
    args = ap.parse_args(argv)
    sources = [
        DataSource(
            path=p,
            kind=args.kind,
            screen_px=args.screen_px,
            mirrored=args.mirrored,
            split=args.split,
        )
        for p in args.paths
    ]
    for note in screen_px_notes(sources):
        print(f"note: {note}", file=sys.stderr)
    data = load_data(sources, cache_dir=args.cache, min_screen_samples=args.min_screen_samples)
    json.dump(data.report(), sys.stdout, indent=2)
    print()
    return 0 if len(data.samples) else 1


if __name__ == "__main__":
    raise SystemExit(main())
