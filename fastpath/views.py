"""A session's usable frames as named feature columns, per read of the frames: what nested
selection (`calibration.metrics.evaluate.evaluate_candidates`) compares its candidates on.

`gazeloop eval`, `eval-sittings`, `head-shift`, `bench loop` and the trainer's promotion
gate all score a session this way, so a model, a mapping and a loop are judged on the frames
and columns the product itself would calibrate on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from gazeloop.calibration.frames import LabelledFrames
from gazeloop.calibration.store.session import Session
from gazeloop.fastpath.collect import Collected, LazyFastPath, collect_session
from gazeloop.fastpath.pipeline import FastPath


class NoUsableFrames(ValueError):
    """Not one frame of the session has a usable gaze in every read."""


def none_usable(folder, rejected: list[tuple[str, str]]) -> str:
    """The one line for a session with no usable frame: how many were left out and the
    commonest reason (a settling frame alone, or no frame at all, said so)."""
    if not rejected:
        return f"{folder}: no usable frames (no labelled frame in it)"
    reasons = Counter(why for _, why in rejected)
    why, n = reasons.most_common(1)[0]
    most = why if n == len(rejected) else f"{n} of them: {why}"
    return f"{folder}: no usable frames ({len(rejected)} rejected; {most})"


@dataclass(slots=True)
class Views:
    """A session's usable frames, per read of the frames: the same rows in the same order,
    with the features each read gave (`reads["other"]` whenever nothing stated the mirroring)."""

    col: Collected
    reads: dict[str, LabelledFrames]
    rejected: list[tuple[str, str]]

    @property
    def frames(self) -> LabelledFrames:
        return self.reads["as read"]


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
    rejected = rejected_frames(col)
    rejected += [
        (ls.name, "no gaze in the other read of the frames")
        for ls in col.samples
        if not ls.settling and ls.name not in common
    ]
    # Rows picked before the columns are made: a feature only a left-out frame lacks stays.
    kept = {
        k: LabelledFrames.from_samples(ls for ls in c.samples if ls.name in common)
        for k, c in reads.items()
    }
    if not len(kept["as read"]):
        raise NoUsableFrames(none_usable(session.folder, rejected))
    return Views(col=col, reads=kept, rejected=rejected)


def rejected_frames(col: Collected) -> list[tuple[str, str]]:
    """Every frame left out of a collected session, each with why: the files the reader or
    the fast path refused, then the frames recorded while the eyes were on their way."""
    return [(r.file, r.why) for r in col.rejected] + settling_rejected(col)


def settling_rejected(col: Collected) -> list[tuple[str, str]]:
    """The frames left out because the eyes were still on their way, each with why."""
    why = "settling: eyes still moving to the target"
    return [(ls.name, why) for ls in col.samples if ls.settling]
