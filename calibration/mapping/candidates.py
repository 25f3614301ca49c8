"""Choosing what to model, not only how much to regularise: candidates (a read of the frames,
a feature set, a mapping family) compared by nested leave-one-target-out.

A candidate is scored by `fit_select`'s inner LOTO error on the training targets (each
family choosing its own hyper-parameters inside), and `loto_predict_candidates` is the outer
loop: the held-out target never reaches the choice. A candidate that cannot run on these
targets (too few for its family, geometry that cannot be solved) drops out with the reason,
and the others still compete.

A prior first: candidates are listed from the geometric mapping (the one that knows where
the head is; `default_candidates` says why) through ridge on the simplest features (gaze
angles) to the richest, and a later one replaces the current choice only if it is better
target by target
by more than the noise of that comparison: the mean of the paired per-target differences of
inner LOTO error must be below minus one standard error of it (the one-standard-error rule,
Breiman et al. 1984, applied to paired differences). With 8 targets the winner of ten noisy
inner scores is often a fluke; with many targets a real gain passes. Within one sitting LOTO
cannot see what a richer model costs in the next sitting (head-pose terms helped within a
sitting and hurt across sittings on the evit data, DESIGN.md "Measuring"), so a tie goes to
the model with fewer ways to drift, and the geometric mapping drifts least when the head
moves.

What it bought, measured once (2026-12, `gazeloop eval-sittings` on the 28 evit sittings):
median of sitting means 142.5 px within a sitting, against 140.1 for ridge on gaze angles
alone, and 162 px across sittings against 161 (p1 alone: 135 / 139 px against 127 / 143).
With 8-16 targets the choice is noisy enough to cost what it gains; the head-shift check, not
LOTO, is where the geometric mapping earns its place (it follows a head moving in depth), which
is why it now comes first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gazeloop.calibration.frames import Reads, rows_of
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping.families import NotEnoughTargets, ScreenMapping, mapping_class
from gazeloop.calibration.mapping.selection import fit_select_detail
from gazeloop.calibration.mirroring import yaw_follows_x

HEAD = ("head_yaw", "head_pitch")
IRIS = ("iris_lx", "iris_ly", "iris_rx", "iris_ry")
EYES = IRIS + ("aperture_l", "aperture_r")
GAZE = ("gaze_yaw", "gaze_pitch")
GAZE_RAY = ("gaze_ray_yaw", "gaze_ray_pitch")
# Named feature sets for the mappings that take any columns, simplest first. The iris
# offsets in the eye (landmarks, not the network) are a second, independent reading of the
# same eye rotation; head pose is what changes between sittings, so it comes last. The gaze
# measured from the eyes-camera line (`gaze_ray`) turns less when the head sits elsewhere in
# the image next sitting: across the evit sittings ridge on it, with and without the iris,
# had the lowest errors of all candidates (`gazeloop eval-sittings`, across_by_candidate).
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "gaze": GAZE,
    "gaze_ray": GAZE_RAY,
    "gaze+iris": GAZE + IRIS,
    "gaze_ray+iris": GAZE_RAY + IRIS,
    "gaze+head": GAZE + HEAD,
    "gaze+head+eyes": GAZE + HEAD + EYES,
}
# What selection offers a calibration made in one sitting: no head-pose terms. Within one
# sitting LOTO rewards them, and across sittings they cost most (DESIGN, Measuring): on
# the evit sittings (`gazeloop eval-sittings`) ridge on gaze + head had a median error of
# 206 px on the next sitting against 155 for gaze alone, and dropping both head sets from
# selection took the chosen profiles' cross-sitting median from 153 to 137 px (mean 192 ->
# 173), at a within-sitting median of 145 instead of 132 px (mean 152 instead of 154).
# They pay once calibration data spans several sittings: `calibration.sittings` offers them
# to pooled sittings, and `--features` still asks for them.
SITTING_FEATURE_SETS: tuple[str, ...] = ("gaze", "gaze_ray", "gaze+iris", "gaze_ray+iris")


@dataclass(frozen=True, slots=True)
class Candidate:
    mapping: str
    features: tuple[str, ...]
    feature_set: str  # a FEATURE_SETS name, or the mapping's name for its own features
    read: str = "as read"  # which read of the frames: "as read" or "other" (mirrored back)

    @property
    def label(self) -> str:
        return f"{self.mapping}:{self.feature_set}" + ("" if self.read == "as read" else ":other")


def default_candidates(
    reads: tuple[str, ...] = ("as read",),
    mappings: tuple[str, ...] = ("geometric", "ridge"),
    feature_sets: tuple[str, ...] = SITTING_FEATURE_SETS,
) -> list[Candidate]:
    """The geometric mapping, then ridge on each feature set, for each read of the frames.

    The order is the prior `choose` keeps unless a later candidate `beats` it: the geometric
    mapping first, because it is the one that knows where the head is. Within one sitting the
    head barely moves, so leave-one-target-out cannot see what a ridge on angles costs when
    it does; the head-shift check can (`gazeloop head-shift`): on grid9 the geometric mapping
    follows a head moved closer or farther to within a tenth of the shift, ridge on angles
    follows none of it. Measured once against ridge first (2026-12, mirror-averaged ray-frame
    reads, leave-one-target-out means): grid9 85 -> 84 px, corners4 99 -> 75 px; evit
    within-sitting median 117 -> 116 px, next-sitting median 116 -> 115 px (mean 141 ->
    144)."""
    out = []
    for read in reads:
        for m in mappings:
            own = mapping_class(m).features
            if own is not None:
                out.append(Candidate(m, tuple(own), m, read))
                continue
            out.extend(Candidate(m, FEATURE_SETS[fs], fs, read) for fs in feature_sets)
    return out


@dataclass(slots=True)
class Choice:
    candidate: Candidate
    mapping: ScreenMapping
    hyper: dict[str, float]
    scores: dict[str, float]  # inner LOTO error per candidate label (NaN: no spare target)
    dropped: dict[str, str]  # candidate label → why it could not compete
    # every candidate that could be fitted, by label: (candidate, mapping fitted on all rows)
    fitted: dict[str, tuple[Candidate, ScreenMapping]] | None = None


def columns_for(reads: Reads, c: Candidate) -> np.ndarray:
    """The candidate's feature columns from its read of the frames; a KeyError naming every
    one of them the fast path did not produce (the reason a report gives for dropping it)."""
    frames = reads[c.read]
    missing = frames.lacks(c.features)
    if missing:
        raise KeyError(f"feature(s) {missing} not produced by this fast path")
    return frames.matrix(c.features)


def beats(new: np.ndarray | None, current: np.ndarray | None) -> bool:
    """Whether per-target errors `new` beat `current` by more than one standard error of
    their paired differences. Without scores (no target to spare) nothing can be compared
    and the earlier (simpler) candidate stays."""
    if new is None or current is None:
        return False
    d = np.asarray(new, dtype=np.float64) - np.asarray(current, dtype=np.float64)
    if len(d) < 2 or not np.isfinite(d).all():
        return False
    se = float(d.std(ddof=1)) / math.sqrt(len(d))
    return float(d.mean()) + se < 0


def _options(c: Candidate, options: dict[str, dict]) -> dict:
    return dict(options.get(c.mapping, {}))


def same_as(
    c: Candidate, X: np.ndarray, seen: list[tuple[Candidate, np.ndarray]], options: dict
) -> Candidate | None:
    """An earlier candidate of the same family and options whose columns equal `X` exactly
    (then the two fits are one), or None."""
    for other, Xo in seen:
        if (
            other.mapping == c.mapping
            and _options(other, options) == _options(c, options)
            and Xo.shape == X.shape
            and np.array_equal(Xo, X, equal_nan=True)
        ):
            return other
    return None


def reads_ruled_out(reads: Reads, rows: np.ndarray) -> dict[str, str]:
    """The reads of the frames a choice made on `rows` may not take, each with why. When
    nothing stated the mirroring, a session comes with both reads (`fastpath.collect`), and
    the one its frames say is right (the gaze yaw falling as the target moves right,
    decisively) is decided again on the rows a fold trains on: decided once on every target,
    a held-out target's label would choose how its own frames are read. When no read is
    decisive, both compete; with one read there is nothing to decide."""
    if len(reads) < 2 or any("gaze_yaw" not in f.features for f in reads.values()):
        return {}
    frames = rows_of(reads)
    x, groups = frames.labels_px[rows, 0], frames.groups[rows]
    r = {k: yaw_follows_x(f.features["gaze_yaw"][rows], x, groups) for k, f in reads.items()}
    if not any(v is not None and v < 0 for v in r.values()):
        return {}
    why = "the other read is right on these targets"
    return {
        k: why if v is None else f"{why} (this one's gaze yaw vs target x r={v:+.2f})"
        for k, v in r.items()
        if v is None or v > 0
    }


def choose(
    candidates: list[Candidate],
    reads: Reads,
    screen: ScreenGeometry,
    *,
    options: dict[str, dict] | None = None,
    rows: np.ndarray | None = None,
) -> Choice:
    """Fit every candidate with nested selection on the frames `rows` (all by default) of
    `reads`, their targets in the units of `screen`, and keep the simplest that no later one
    `beats`. With no target to spare no candidate can be scored, and the first one that
    fits is kept (said in `scores` as NaN)."""
    frames = rows_of(reads)
    Y, groups = screen.to_norm(frames.labels_px), frames.groups
    aspect = screen.px[0] / screen.px[1]
    options = options or {}
    rows = np.arange(len(Y)) if rows is None else rows
    fitted, scores, dropped = [], {}, {}
    seen: list[tuple[Candidate, np.ndarray]] = []
    wrong = reads_ruled_out(reads, rows)
    for c in candidates:
        if c.read in wrong:
            dropped[c.label] = wrong[c.read]
            continue
        try:
            X = columns_for(reads, c)[rows]
            twin = same_as(c, X, seen, options)
            if twin is not None:
                # Told the ray-frame pose, the network answers in that frame, so its gaze
                # columns *are* the ray-frame ones: the same fit twice would only spend time
                # and, on a tie, let a duplicate look like a second opinion.
                dropped[c.label] = f"the same columns as {twin.label}"
                continue
            seen.append((c, X))
            m, hyper, score, per = fit_select_detail(
                c.mapping, X, Y[rows], groups[rows], aspect=aspect, options=_options(c, options)
            )
        except NotEnoughTargets as e:
            dropped[c.label] = f"needs {e.needed} targets, has {e.given}"
            continue
        except (KeyError, ValueError, np.linalg.LinAlgError) as e:
            dropped[c.label] = str(e.args[0]) if e.args else type(e).__name__
            continue
        scores[c.label] = score
        fitted.append((c, m, hyper, per))
    if not fitted:
        reasons = "; ".join(f"{k}: {v}" for k, v in dropped.items())
        raise ValueError(f"no mapping candidate can be fitted ({reasons})")
    best = fitted[0]
    for f in fitted[1:]:
        if beats(f[3], best[3]):
            best = f
    every = {f[0].label: (f[0], f[1]) for f in fitted}
    return Choice(best[0], best[1], best[2], scores, dropped, every)


def _placed(ch: Choice, reads: Reads, rows: np.ndarray) -> np.ndarray:
    """The chosen mapping's points for `rows`; a frame it cannot place (the geometric
    mapping: eyes nearer the camera than it allows, a ray that misses the screen) goes to the
    next candidate fitted on the same targets that can, in the prior's order: features only,
    never the held-out label. A frame none can place stays NaN."""
    out = ch.mapping.predict(columns_for(reads, ch.candidate)[rows])
    for c, m in (ch.fitted or {}).values():
        bad = ~np.isfinite(out).all(axis=1)
        if not bad.any():
            break
        out[bad] = m.predict(columns_for(reads, c)[rows][bad])
    return out


def loto_predict_candidates(
    candidates: list[Candidate],
    reads: Reads,
    screen: ScreenGeometry,
    *,
    options: dict[str, dict] | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """The outer loop: each target predicted by the candidate `choose` picks on the other
    targets. → (predictions (n, 2) in `screen`'s normalised units, how often each candidate
    was picked)."""
    groups = rows_of(reads).groups
    pred = np.empty((len(groups), 2))
    picked: dict[str, int] = {}
    for g in np.unique(groups):
        out = groups == g
        ch = choose(candidates, reads, screen, options=options, rows=np.flatnonzero(~out))
        pred[out] = _placed(ch, reads, out)
        picked[ch.candidate.label] = picked.get(ch.candidate.label, 0) + 1
    return pred, picked
