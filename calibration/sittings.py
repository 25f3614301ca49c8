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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping.candidates import (
    FEATURE_SETS,
    SITTING_FEATURE_SETS,
    Candidate,
    Choice,
    choose,
    default_candidates,
)
from gazeloop.calibration.metrics.evaluate import geometric_options, outlier_mask

# The views, screen labels (px) and target ids of one sitting.
Sitting = tuple[dict[str, dict[str, np.ndarray]], np.ndarray, np.ndarray]


@dataclass(slots=True)
class Pooled:
    """Sittings' frames as one calibration set (per-target outliers already removed)."""

    views: dict[str, dict[str, np.ndarray]]
    labels_px: np.ndarray
    groups: np.ndarray  # one id per screen point, shared by the sittings
    sitting: np.ndarray  # index into the pooled sittings, per row
    cells: np.ndarray  # one id per target of one sitting: what outliers are judged within
    n_sittings: int
    dropped: int  # frames removed as outliers within their own sitting's target


def pool_sittings(parts: Sequence[Sitting]) -> Pooled:
    """Concatenate sittings: the reads every sitting has, its per-target outliers dropped,
    and the targets regrouped by screen point (labels rounded to the pixel)."""
    if not parts:
        raise ValueError("no sittings to pool")
    reads = [r for r in parts[0][0] if all(r in p[0] for p in parts)]
    cols = {r: [c for c in parts[0][0][r] if all(c in p[0][r] for p in parts)] for r in reads}
    keep = [outlier_mask(v, np.asarray(g)) for v, _, g in parts]
    views = {
        r: {
            c: np.concatenate([p[0][r][c][k] for p, k in zip(parts, keep, strict=True)])
            for c in cols[r]
        }
        for r in reads
    }
    labels = np.concatenate(
        [np.asarray(p[1], np.float64)[k] for p, k in zip(parts, keep, strict=True)]
    )
    sitting = np.concatenate([np.full(int(k.sum()), i) for i, k in enumerate(keep)])
    target = np.concatenate([np.asarray(p[2])[k] for p, k in zip(parts, keep, strict=True)])
    return Pooled(
        views=views,
        labels_px=labels,
        groups=point_groups(labels),
        sitting=sitting,
        cells=cell_ids(sitting, target),
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
        pooled_candidates(tuple(pool.views), pool.n_sittings),
        pool.views,
        screen.to_norm(pool.labels_px),
        pool.groups,
        aspect=screen.px[0] / screen.px[1],
        options={"geometric": geometric_options(screen)},
    )
