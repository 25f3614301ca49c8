"""The train/validation split, fixed for a run, and the check that training can learn.

Validation is person-disjoint: held-out persons, each calibrated on `val_calib` of their
targets and scored on their other targets (`trainer.validation`). With a single person the
split falls back to held-out targets of that person, and its description says so. The split
draws from its own seed (`derive_seed(seed, 0x5A17)`), so a resumed run gets the same one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gazeloop.trainer.config import TrainConfig, TrainError
from gazeloop.trainer.readers.common import Samples
from gazeloop.trainer.seeds import derive_seed


@dataclass(slots=True)
class ValSet:
    """Fixed for the run: rows, which of them calibrate, and the rows for the angle metric."""

    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    calib: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    gaze_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def empty(self) -> bool:
        """Nothing to validate on: no screen rows and no gaze rows."""
        return not (len(self.rows) or len(self.gaze_rows))


@dataclass(slots=True)
class Split:
    train_rows: np.ndarray
    val: ValSet
    train_persons: list[str]
    val_persons: list[str]
    description: str
    notes: list[str] = field(default_factory=list)


def make_split(samples: Samples, cfg: TrainConfig) -> Split:
    """Person-disjoint train/validation; target-disjoint within the person if only one."""
    rng = np.random.default_rng(derive_seed(cfg.seed, 0x5A17))
    persons = sorted(set(samples.person.tolist()))
    if not persons:
        raise TrainError("no training samples")
    if cfg.val_fraction == 0:
        desc = "no validation (val_fraction = 0)"
        return Split(np.arange(len(samples)), ValSet(), persons, [], desc)
    if len(persons) == 1:
        return _split_targets(samples, cfg, persons[0], rng)
    return _split_persons(samples, cfg, persons, rng)


def _choose_val_targets(
    rows: np.ndarray, targets: np.ndarray, k: int, cap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """Calibration = k whole targets, queries = the others; frames capped per target.
    None when the person has too few targets to leave one out."""
    ids = np.unique(targets[rows])
    if len(ids) < 2:
        return None
    k = min(k, len(ids) - 1)
    per_target = max(1, math.ceil(cap / len(ids)))
    calib_ids = set(rng.choice(ids, size=k, replace=False).tolist())
    keep, calib = [], []
    for t in ids:
        r = rows[targets[rows] == t]
        if len(r) > per_target:
            r = np.sort(rng.choice(r, size=per_target, replace=False))
        keep.append(r)
        calib.append(np.full(len(r), t in calib_ids))
    return np.concatenate(keep), np.concatenate(calib)


def _split_targets(
    samples: Samples, cfg: TrainConfig, person: str, rng: np.random.Generator
) -> Split:
    """One person: some of its targets are held out; the calibration of the validation is
    drawn from the training targets (the person is the same, the screen points are new)."""
    has_screen = np.isfinite(samples.screen).all(1)
    rows = np.flatnonzero(has_screen)
    ids = np.unique(samples.target[rows])
    n_val = max(1, round(cfg.val_fraction * len(ids)))
    if len(ids) - n_val < 2:
        raise TrainError(
            f"only one person ({person}) with {len(ids)} screen target(s): too few to hold "
            "targets out for validation; add persons or set val_fraction = 0"
        )
    val_ids = rng.choice(ids, size=n_val, replace=False)
    is_val = np.isin(samples.target, val_ids) & has_screen
    val = ValSet()
    calib_pool = np.flatnonzero(has_screen & ~is_val)
    chosen = _choose_val_targets(calib_pool, samples.target, cfg.val_k, cfg.val_max_frames, rng)
    if chosen is not None:
        calib_rows = chosen[0][chosen[1]]
        q = np.flatnonzero(is_val)
        if len(q) > cfg.val_max_frames:
            q = np.sort(rng.choice(q, size=cfg.val_max_frames, replace=False))
        val.rows = np.concatenate([calib_rows, q])
        val.calib = np.concatenate([np.ones(len(calib_rows), bool), np.zeros(len(q), bool)])
    desc = (
        f"only one person ({person}): validation is TARGET-disjoint within that person "
        f"({n_val} of {len(ids)} targets held out), not person-disjoint, so it measures "
        "new screen points for this person, not new people"
    )
    seen = _points_trained_on(samples, val_ids, rows[~is_val[rows]])
    if seen:
        # Several sittings at the same grid: a held-out target's point is trained on in
        # another sitting, and the number says less about new points than it seems.
        desc += (
            f"; but {seen} of the {n_val} held-out targets are screen points also trained "
            "on (another session at the same point), so for those it measures a new sitting"
        )
    return Split(np.flatnonzero(~is_val), val, [person], [person], desc)


def _points_trained_on(samples: Samples, val_ids: np.ndarray, train_rows: np.ndarray) -> int:
    """How many of the held-out targets sit (within 2 % of the screen, normalised units) on
    the point of a target that trains."""
    trained = np.array(
        [
            samples.screen[train_rows[samples.target[train_rows] == t]].mean(0)
            for t in np.unique(samples.target[train_rows])
        ]
    ).reshape(-1, 2)
    if not len(trained):
        return 0
    n = 0
    for t in val_ids:
        p = samples.screen[samples.target == t].mean(0)
        n += bool((np.abs(trained - p).max(axis=1) < 0.02).any())
    return n


def _split_persons(
    samples: Samples, cfg: TrainConfig, persons: list[str], rng: np.random.Generator
) -> Split:
    """Held-out persons, each with calibration and query targets and capped gaze rows."""
    has_screen = np.isfinite(samples.screen).all(1)
    has_gaze = np.isfinite(samples.gaze).all(1)
    n_val = min(len(persons) - 1, max(1, round(cfg.val_fraction * len(persons))))
    val_persons = sorted(rng.choice(persons, size=n_val, replace=False).tolist())
    train_persons = [p for p in persons if p not in val_persons]
    notes: list[str] = []
    val = ValSet()
    parts_rows, parts_calib, gaze_rows = [], [], []
    for p in val_persons:
        rows = np.flatnonzero((samples.person == p) & has_screen)
        if len(rows):
            chosen = _choose_val_targets(rows, samples.target, cfg.val_k, cfg.val_max_frames, rng)
            if chosen is None:
                notes.append(f"validation person {p} has one screen target: not scored")
            else:
                parts_rows.append(chosen[0])
                parts_calib.append(chosen[1])
        g = np.flatnonzero((samples.person == p) & has_gaze)
        if len(g) > cfg.val_max_frames:
            g = np.sort(rng.choice(g, size=cfg.val_max_frames, replace=False))
        gaze_rows.append(g)
    if parts_rows:
        val.rows, val.calib = np.concatenate(parts_rows), np.concatenate(parts_calib)
    val.gaze_rows = np.concatenate(gaze_rows) if gaze_rows else val.gaze_rows
    desc = f"person-disjoint: {len(train_persons)} training, {n_val} validation person(s)"
    is_val = np.isin(samples.person, val_persons)
    return Split(np.flatnonzero(~is_val), val, train_persons, val_persons, desc, notes)


def check_trainable(samples: Samples, split: Split, cfg: TrainConfig) -> list[str]:
    """Refuse a run in which no episode could ever have a loss; note persons that only the
    angle loss (or nothing) can use."""
    train = split.train_rows
    screen = np.isfinite(samples.screen[train]).all(1)
    gaze = np.isfinite(samples.gaze[train]).all(1)
    notes, ridge_ok = [], 0
    need = cfg.calib_min + 1
    reach = min(cfg.frames_per_person, need)
    for p in sorted(set(samples.person[train].tolist())):
        m = samples.person[train] == p
        n_t = len(np.unique(samples.target[train][m & screen]))
        if n_t >= need and cfg.frames_per_person >= need:
            ridge_ok += 1
        elif n_t and not (m & gaze).any():
            notes.append(
                f"{p}: {n_t} screen target(s) in training (an episode of {reach} frames "
                f"needs {need} for a {cfg.calib_min}-target calibration): no loss from it"
            )
    if ridge_ok == 0 and not (cfg.angular_weight > 0 and gaze.any()):
        raise TrainError(
            f"no training person has the {need} screen targets a calibration of calib_min="
            f"{cfg.calib_min} plus one query needs (within frames_per_person="
            f"{cfg.frames_per_person}), and there are no gaze labels: nothing to train on"
        )
    return notes
