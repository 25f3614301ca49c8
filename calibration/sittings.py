"""Several sittings as one calibration: the frames of a person's earlier sittings on one
screen, pooled, and the candidates that such data can judge.

Why. Within one sitting the head barely moves, so leave-one-target-out rewards head-pose
terms it cannot test, and a profile with them does worst on the next sitting; that is why a
one-sitting calibration is offered no head-pose features (`SITTING_FEATURE_SETS`). Frames
from several sittings do contain the head in different places, and then leave-one-point-out
can judge those terms (DESIGN.md, "Measuring": one held-out session pooling three sittings
went from 462 to 378 px with head pose). So pooled data is offered every feature set.

How a pool is scored. The same screen point in two sittings is one target: a fold leaves the
point out of every sitting, so a score says how the mapping does on a point it never saw,
not on a point it saw in another sitting. Per-target outliers are removed within each
sitting first, as one sitting's evaluation does: across sittings a point's gaze angles
differ because the head moved, and that difference is what the pool is for.

Measured on the evit sittings (2026-12-05, `gazeloop eval-sittings ../shared/data/evit`,
`across_pooled`): each sitting's profile from all the person's earlier sittings on the same
screen, against the profile from the previous sitting alone, over the same 25 pairs: median
104.7 px against 115.5 (mean 127.5 against 142.5; p1 86.0 against 103.8; p2, with two
laptops and at most five sittings on one, 200.5 against 208.6). From the third sitting on,
selection chose ridge on gaze + head pose + eyes for p1 every time. The last three
sittings alone (gaze-only feature sets, as one sitting gets) gave 127.0, all earlier sittings
with those sets 119.0: the head-pose terms, not the number of frames, are the gain.

At calibration (`choose_with_history`) the sitting just calibrated is offered alone and pooled
with the earlier ones, and its own points, each left out, decide; `loto_with_history` is the
honest error of that whole choice (`gazeloop eval-sittings --history`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from gazeloop.calibration.frames import LabelledFrames, Reads, pick, rows_of
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping.candidates import (
    FEATURE_SETS,
    SITTING_FEATURE_SETS,
    Candidate,
    Choice,
    choose,
    columns_for,
    default_candidates,
)
from gazeloop.calibration.mapping.families import mapping_class
from gazeloop.calibration.metrics.evaluate import geometric_options, mapping_options, outlier_mask


@dataclass(slots=True)
class Pooled:
    """Sittings' frames as one calibration set (per-target outliers already removed)."""

    reads: dict[str, LabelledFrames]  # groups: one id per screen point, shared by the sittings
    sitting: np.ndarray  # index into the pooled sittings, per row
    cells: np.ndarray  # one id per target of one sitting: what outliers are judged within
    n_sittings: int
    dropped: int  # frames removed as outliers within their own sitting's target

    @property
    def frames(self) -> LabelledFrames:
        return rows_of(self.reads)


def pool_sittings(parts: Sequence[Reads]) -> Pooled:
    """Concatenate sittings (each one's frames per read): the reads every sitting has, its
    per-target outliers dropped, and the targets regrouped by screen point (labels rounded
    to the pixel)."""
    if not parts:
        raise ValueError("no sittings to pool")
    names = [r for r in parts[0] if all(r in p for p in parts)]
    keep = [outlier_mask(p) for p in parts]
    kept = [pick({r: p[r] for r in names}, k) for p, k in zip(parts, keep, strict=True)]
    joined = {r: LabelledFrames.concat([k[r] for k in kept]) for r in names}
    first = joined[names[0]]
    groups = point_groups(first.labels_px)
    sitting = np.concatenate([np.full(int(k.sum()), i) for i, k in enumerate(keep)])
    return Pooled(
        reads={r: replace(f, groups=groups) for r, f in joined.items()},
        sitting=sitting,
        cells=cell_ids(sitting, first.groups),
        n_sittings=len(parts),
        dropped=int(sum((~k).sum() for k in keep)),
    )


def point_groups(labels_px: np.ndarray) -> np.ndarray:
    """One target id per screen point (labels rounded to the pixel), whichever sitting."""
    _, ids = np.unique(np.round(labels_px).astype(np.int64), axis=0, return_inverse=True)
    return ids.ravel()


def cell_ids(sitting: np.ndarray, target: np.ndarray) -> np.ndarray:
    """One id per (sitting, target of that sitting)."""
    pairs = np.column_stack([np.asarray(sitting), np.asarray(target)])
    return np.unique(pairs, axis=0, return_inverse=True)[1].ravel()


def pooled_candidates(reads: tuple[str, ...], n_sittings: int) -> list[Candidate]:
    """Every feature set once the data spans two sittings or more; one sitting's candidates
    otherwise (see the module docstring)."""
    sets = tuple(FEATURE_SETS) if n_sittings >= 2 else SITTING_FEATURE_SETS
    return default_candidates(reads, feature_sets=sets)


def choose_pooled(pool: Pooled, screen: ScreenGeometry) -> Choice:
    """Nested selection on the pool (leave one screen point out of every sitting), the
    winner fitted on all of it: the profile the pooled sittings make, without the outer
    leave-one-out that only reports its error."""
    return choose(
        pooled_candidates(tuple(pool.reads), pool.n_sittings),
        pool.reads,
        screen,
        options={"geometric": geometric_options(screen)},
    )


@dataclass(slots=True)
class WithHistory:
    """The sitting just calibrated alone, or pooled with the person's earlier sittings:
    which one its own points favour (`choose_with_history`)."""

    use_pool: bool
    alone_px: float  # mean over this sitting's points, each left out (see below)
    pooled_px: float
    alone: Choice  # nested selection on this sitting alone
    pooled: Choice  # nested selection on the pool
    pool: Pooled  # the earlier sittings and this one, this one last

    @property
    def chosen(self) -> Choice:
        return self.pooled if self.use_pool else self.alone


def point_errors_px(
    pool: Pooled,
    on: np.ndarray,
    candidate: Candidate,
    hyper: dict[str, float],
    screen: ScreenGeometry,
) -> np.ndarray:
    """Per screen point of the rows `on` (a mask), sorted by point: the candidate with its
    hyper-parameters fitted on every row but that point's (in every sitting), its mean error
    in px on that point's rows in `on`, where the cursor shows them. Pure."""
    cls = mapping_class(candidate.mapping)
    opts = mapping_options(candidate.mapping, screen) or {}
    frames = pool.frames
    groups, labels_px = frames.groups, frames.labels_px
    X, Y = columns_for(pool.reads, candidate), screen.to_norm(labels_px)
    out = []
    for g in np.unique(groups[on]):
        fit, test = groups != g, on & (groups == g)
        m = cls(**opts, **hyper).fit(X[fit], Y[fit], None, groups[fit])
        out.append(_shown_error_px(m.predict(X[test]), labels_px[test], screen))
    return np.array(out)


def _shown_error_px(pred_norm: np.ndarray, labels_px: np.ndarray, screen: ScreenGeometry) -> float:
    """Mean error where the cursor shows the predictions: on the screen, as `gazeloop eval`
    scores them (`metrics.evaluate.as_shown`)."""
    err = screen.to_px(screen.clamp_norm(pred_norm)) - labels_px
    return float(np.mean(np.hypot(*err.T)))


def choose_with_history(
    now: Reads, earlier: Sequence[Reads], screen: ScreenGeometry
) -> WithHistory:
    """This sitting's profile from its own frames (nested selection on them, as a
    calibration makes it), or from the pool of it and the earlier sittings
    (`choose_pooled`): the one with the lower mean error over this sitting's points, each
    point left out of the fit (of every sitting) and scored on this sitting's frames only.
    Both are judged alike, the chosen candidate with its chosen hyper-parameters, so each
    score carries the same optimism of having been chosen on these points.

    Why choose. Within the sitting just calibrated the pool helps one evit person and hurts
    the other (leave-one-point-out, medians over the sittings: p1 90 against 110 px, p2 182
    against 161): one person's sittings agree, the other's (two laptops, glasses) do not.
    Which holds for a person is what this sitting's own points can tell. Chosen so and
    judged by `loto_with_history` (`gazeloop eval-sittings ../shared/data/evit --history`,
    2026-12-05): median 98 px over 25 later sittings against 113 alone, p1 88 against 100,
    p2 174 against 176."""
    mine = pool_sittings([now])
    alone = choose_pooled(mine, screen)
    a = point_errors_px(
        mine, np.ones(len(mine.sitting), dtype=bool), alone.candidate, alone.hyper, screen
    )
    pool = pool_sittings([*earlier, now])
    pooled = choose_pooled(pool, screen)
    on = pool.sitting == pool.n_sittings - 1
    p = point_errors_px(pool, on, pooled.candidate, pooled.hyper, screen)
    a_px, p_px = float(np.mean(a)), float(np.mean(p))
    return WithHistory(p_px < a_px, a_px, p_px, alone, pooled, pool)


def without_point(part: Reads, label_px: np.ndarray) -> dict[str, LabelledFrames]:
    """A sitting's frames but those of one screen point (labels compared to the pixel)."""
    labels = rows_of(part).labels_px
    return pick(part, np.any(np.round(labels) != np.round(label_px), axis=1))


def loto_with_history(
    now: Reads, earlier: Sequence[Reads], screen: ScreenGeometry
) -> tuple[np.ndarray, int]:
    """The honest error of `choose_with_history`: each of this sitting's points left out of
    every sitting, the whole choice (both selections and the decision between them) made
    on the rest, the point's frames predicted by the winner. → (mean error per point in px,
    sorted by point; how many points the pool won). Pure."""
    mine = pool_sittings([now])
    frames = mine.frames
    groups, labels_px = frames.groups, frames.labels_px
    errs, pooled = [], 0
    for g in np.unique(groups):
        test = groups == g
        label = labels_px[test][0]
        h = choose_with_history(
            without_point(now, label), [without_point(e, label) for e in earlier], screen
        )
        c = h.chosen
        pred = c.mapping.predict(columns_for(mine.reads, c.candidate)[test])
        errs.append(_shown_error_px(pred, labels_px[test], screen))
        pooled += h.use_pool
    return np.array(errs), pooled
