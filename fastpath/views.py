"""A session's usable frames as named feature columns, per read of the frames: what nested
selection (`calibration.metrics.evaluate.evaluate_candidates`) compares its candidates on.

`gazeloop eval`, `eval-sittings`, `head-shift`, `bench loop` and the trainer's promotion
gate all score a session this way, so a model, a mapping and a loop are judged on the frames
and columns the product itself would calibrate on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gazeloop.calibration.procedure import feature_columns
from gazeloop.calibration.store.session import Session
from gazeloop.fastpath.collect import Collected, LazyFastPath, collect_session
from gazeloop.fastpath.pipeline import FastPath


class NoUsableFrames(ValueError):
    """Not one frame of the session has a usable gaze in every read."""


@dataclass(slots=True)
class Views:
    """A session's usable frames as named feature columns, per read of the frames."""

    col: Collected
    views: dict[str, dict[str, np.ndarray]]
    labels_px: np.ndarray
    groups: np.ndarray
    names: list[str]
    rejected: list[tuple[str, str]]


def _columns(samples) -> dict[str, np.ndarray]:
    return feature_columns(ls.sample.feature_dict() for ls in samples)


def session_views(
    session: Session,
    fp: FastPath | LazyFastPath,
    *,
    both_reads: bool = True,
    cache: bool = True,
    reading=None,
) -> Views:
    """Collect (cached) and keep the frames usable in every read, so candidates of both
    reads are compared on the same frames. `reading`: as `collect_session` takes it."""
    col = collect_session(session, fp, cache=cache, both_reads=both_reads, reading=reading)
    reads = {"as read": col} | ({"other": col.other} if col.other is not None else {})
    usable = [{ls.name for ls in c.samples if not ls.settling} for c in reads.values()]
    common = set.intersection(*usable)
    rejected = [(r.file, r.why) for r in col.rejected]
    rejected += [
        (ls.name, "settling: eyes still moving to the target") for ls in col.samples if ls.settling
    ]
    rejected += [
        (ls.name, "no gaze in the other read of the frames")
        for ls in col.samples
        if not ls.settling and ls.name not in common
    ]
    views = {}
    for key, c in reads.items():
        kept = [ls for ls in c.samples if ls.name in common]
        views[key] = _columns(kept)
    used = [ls for ls in col.samples if ls.name in common]
    if not used:
        raise NoUsableFrames(f"{session.folder}: no usable frames ({len(rejected)} rejected)")
    return Views(
        col=col,
        views=views,
        labels_px=np.array([ls.label_px for ls in used], dtype=np.float64),
        groups=np.array([ls.target for ls in used]),
        names=[ls.name for ls in used],
        rejected=rejected,
    )
