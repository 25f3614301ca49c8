"""The calibration procedure as a reusable core: targets, collection, cleaning, fit, report.

A program (the on-screen grid) shows `current` to the user and feeds every fast-path sample
to `feed`; the run decides when a target has settled, what to keep, and when it is done. A
replay of a recording (whose frames already say which target was shown and whether the eyes
were still settling) feeds `feed_replay` instead and calls `finish`; both end in the same
`arrays()` and `fit_profile_report`. Samples are duck-typed: anything with `feature_dict()` and a
`quality` carrying `usable` works, so this module does not depend on the fast path.

By default (`ProcedureConfig.select`) the profile is fitted as `gazeloop eval` chooses a
mapping: the candidates (feature sets, mapping families) compete by nested
leave-one-target-out (`calibration.mapping.candidates`), the winner on all targets is saved,
and the profile records which one it was (`FitReport.chosen`) and the leave-one-target-out
error of the whole choice (`fit_profile_selected`, `profile_from_choice`). A fixed mapping on
fixed features (`select=False`) is what a refit of an existing profile for a new gaze model
uses (`fit_profile_report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gazeloop.calibration.frames import LabelledFrames, Reads, rows_of
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping import fit_select
from gazeloop.calibration.mapping.candidates import Candidate, Choice, columns_for
from gazeloop.calibration.metrics.evaluate import (
    EvalReport,
    Evaluated,
    as_shown,
    evaluate_arrays,
    evaluate_candidates,
    fixed_keep,
    mapping_options,
)
from gazeloop.calibration.profile import (
    DEFAULT_FEATURES,
    ChosenCandidate,
    FitReport,
    GazeRead,
    MappingSpec,
    Profile,
)

LAYOUTS = (9, 16, 25)


def grid_targets(n: int = 25, margin: float = 0.08) -> np.ndarray:
    """n targets (9, 16 or 25) on a square grid inside `margin` of each edge, normalised,
    in serpentine order so the eye never jumps across the whole screen between targets."""
    if n not in LAYOUTS:
        raise ValueError(f"a calibration grid has {', '.join(map(str, LAYOUTS))} targets, not {n}")
    k = int(round(np.sqrt(n)))
    ticks = np.linspace(margin, 1 - margin, k)
    pts = []
    for r, y in enumerate(ticks):
        row = ticks if r % 2 == 0 else ticks[::-1]
        pts.extend((x, y) for x in row)
    return np.array(pts, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class ProcedureConfig:
    n_targets: int = 25
    margin: float = 0.08
    settle_s: float = 0.8  # after the dot arrives: a saccade plus the eye's settling
    collect_s: float = 1.0  # then frames are kept for this long
    min_frames: int = 8  # a target with fewer usable frames is retried once, then skipped
    # Capture this many usable frames per target and move on (collect_s then only bounds
    # the capture: a slow camera or blinks must not hold the dot forever). None: collect_s.
    frames: int | None = None
    # True: the mapping and its features are chosen as `gazeloop eval` chooses them (nested
    # selection among the candidates); `features` and `mapping` then only name the fixed
    # choice used when False.
    select: bool = True
    features: tuple[str, ...] = tuple(DEFAULT_FEATURES)
    mapping: str = "ridge"


@dataclass
class TargetLog:
    xy: np.ndarray
    # every feature of each kept frame, for the candidates of a selection or a fixed mapping
    features: list[dict[str, float]] = field(default_factory=list)
    t_ns: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # the kept frames' names, for reports
    dropped: dict[str, int] = field(default_factory=dict)
    tries: int = 0

    @property
    def n_kept(self) -> int:
        return len(self.features)


class CalibrationRun:
    """Feed samples in time order; read `current` (normalised target or None when done)."""

    def __init__(self, cfg: ProcedureConfig | None = None, targets: np.ndarray | None = None):
        self.cfg = cfg or ProcedureConfig()
        pts = grid_targets(self.cfg.n_targets, self.cfg.margin) if targets is None else targets
        self.targets = [TargetLog(np.asarray(p, dtype=np.float64)) for p in pts]
        self._i = 0
        self._t0: int | None = None  # when the current target appeared
        self.skipped: list[int] = []

    @property
    def done(self) -> bool:
        return self._i >= len(self.targets)

    @property
    def current(self) -> np.ndarray | None:
        return None if self.done else self.targets[self._i].xy

    @property
    def index(self) -> int:
        return self._i

    @property
    def previous(self) -> np.ndarray | None:
        """The target shown before `current` (where the eye comes from), None at the start."""
        return None if self._i == 0 or self.done else self.targets[self._i - 1].xy

    def elapsed_s(self, t_ns: int) -> float:
        """Seconds since the current target appeared (0 before its first frame)."""
        return 0.0 if self._t0 is None else (t_ns - self._t0) / 1e9

    def phase(self, t_ns: int) -> str:
        """ "settle" (dot shown, nothing kept yet), "collect", or "done" — for the display."""
        if self.done:
            return "done"
        if self._t0 is None or t_ns - self._t0 < self.cfg.settle_s * 1e9:
            return "settle"
        return "collect"

    def feed(self, t_ns: int, sample, name: str = "") -> str:
        """One frame, timed by its own `t_ns`. Returns what happened to it: "settle" (the eye
        is still on its way), "kept", "dropped" (blink, no face...: counted in the target's
        `dropped`) or "done". A frame past the capture window moves to the next target and
        is not used (the dot it was taken under has gone)."""
        if self.done:
            return "done"
        if self._t0 is None:
            self._t0 = t_ns
        elapsed = (t_ns - self._t0) / 1e9
        if elapsed < self.cfg.settle_s:
            return "settle"
        if elapsed > self.cfg.settle_s + self.cfg.collect_s:
            self._next(t_ns)
            return "done" if self.done else "settle"
        status = self._take(self.targets[self._i], t_ns, sample, name)
        n = self.cfg.frames
        if n is not None and self.targets[self._i].n_kept >= n:
            self._next(t_ns)
        return status

    def feed_replay(
        self, t_ns: int, sample, target: int, *, settling: bool = False, name: str = ""
    ) -> str:
        """One frame of a recording that says which target was on screen and whether the eyes
        were still moving to it. The recording's timing replaces the run's clock: settling
        frames are skipped, every other frame is offered to its target. Call `finish` after
        the last frame."""
        if not 0 <= target < len(self.targets):
            raise ValueError(f"target {target} is not one of the {len(self.targets)} targets")
        if settling:
            return "settle"
        return self._take(self.targets[target], t_ns, sample, name)

    def finish(self) -> None:
        """End a replay: targets with fewer than `min_frames` usable frames are skipped."""
        for i, t in enumerate(self.targets):
            if t.n_kept < self.cfg.min_frames and i not in self.skipped:
                self.skipped.append(i)
        self._i = len(self.targets)

    def _take(self, tgt: TargetLog, t_ns: int, sample, name: str) -> str:
        d, why = self._read(sample)
        if why:
            tgt.dropped[why] = tgt.dropped.get(why, 0) + 1
            return "dropped"
        tgt.features.append(dict(d))
        tgt.t_ns.append(t_ns)
        tgt.names.append(name)
        return "kept"

    def _read(self, sample) -> tuple[dict[str, float], str]:
        """The frame's features, or why it is dropped ("" when it is not): a frame without
        the eyes on the target says nothing about where they look, and a fixed mapping
        cannot use a frame that lacks one of its features."""
        q = sample.quality
        if not q.face:
            return {}, "no face"
        if q.blink:
            return {}, "blink"
        if not q.usable:
            return {}, q.error or "unusable"
        d = sample.feature_dict()
        if not d:
            return {}, "no gaze"
        if not self.cfg.select:
            missing = [n for n in self.cfg.features if n not in d]
            if missing:
                return d, f"no {', '.join(missing)}"
        return d, ""

    def _next(self, t_ns: int) -> None:
        tgt = self.targets[self._i]
        tgt.tries += 1
        if tgt.n_kept < self.cfg.min_frames and tgt.tries < 2:
            tgt.features.clear()
            tgt.t_ns.clear()
            tgt.names.clear()
        else:
            if tgt.n_kept < self.cfg.min_frames:
                self.skipped.append(self._i)
            self._i += 1
        self._t0 = t_ns

    def used(self) -> list[int]:
        """Targets whose frames go into the fit."""
        return [i for i, t in enumerate(self.targets) if i not in self.skipped and t.features]

    def labelled(self, screen: ScreenGeometry) -> LabelledFrames:
        """What was kept, skipped targets left out, as one set of columns: the features
        every kept frame has, the targets in pixels of `screen`, a target's index its group."""
        used = [(i, self.targets[i]) for i in self.used()]
        return LabelledFrames.from_dicts(
            (d for _, t in used for d in t.features),
            labels_px=screen.to_px(
                np.array([t.xy for _, t in used for _ in t.features]).reshape(-1, 2)
            ),
            groups=np.array([i for i, t in used for _ in t.features], dtype=np.int64),
            names=[n for _, t in used for n in t.names],
            t_ns=np.array([x for _, t in used for x in t.t_ns], dtype=np.int64),
        )


def fit_profile(x: np.ndarray, y_norm: np.ndarray, groups: np.ndarray, **kwargs) -> Profile:
    """Clean (per-target outliers), fit with nested selection, and report the honest
    leave-one-target-out error in the profile itself. Keywords as `fit_profile_report`."""
    return fit_profile_report(x, y_norm, groups, **kwargs)[0]


def fit_report(r, hyper: dict[str, float], **more) -> FitReport:
    """What a profile records of its fit, from the leave-one-target-out report `r` of the
    mapping it saves (`more`: what a selection adds, e.g. `selection`, `mirrored`)."""
    return FitReport(
        targets=r.targets,
        frames=r.frames_used,
        mean_px=r.mean_px,
        median_px=r.median_px,
        baseline_mean_px=r.baseline_mean_px,
        hyper={k: float(v) for k, v in hyper.items()},
        **more,
    )


def fit_profile_report(
    x: np.ndarray,
    y_norm: np.ndarray,
    groups: np.ndarray,
    *,
    screen: ScreenGeometry,
    features: list[str],
    user: str,
    device: str,
    gaze_model_id: str,
    gaze_model_sha256: str,
    gaze_read: GazeRead = "single",
    read_with: dict[str, Any] | None = None,
    mapping: str = "ridge",
    calibration_session: str | None = None,
    frame_names: list[str] | None = None,
    outlier_groups: np.ndarray | None = None,
    drop_outliers: bool = True,
) -> tuple[Profile, Evaluated]:
    """`fit_profile`, also returning the leave-one-target-out evaluation it reports (with
    the held-out predictions a plot needs), so a program shows the very numbers saved.
    `outlier_groups`: what per-target outliers are judged within (default `groups`; pooled
    sittings: a target of one sitting, since across sittings a point's frames differ on
    purpose, `calibration.sittings`). `drop_outliers` False: the caller dropped them already
    (`calibration.sittings.pool_sittings`), as `evaluate_candidates` takes it; judged again
    on what was kept, a tighter spread made outliers of frames that were none."""
    cells = groups if outlier_groups is None else np.asarray(outlier_groups)
    keep = fixed_keep(x, features, cells) if drop_outliers else np.ones(len(x), dtype=bool)
    aspect = screen.px[0] / screen.px[1]
    opts = mapping_options(mapping, screen)
    m, hyper, _ = fit_select(
        mapping, x[keep], y_norm[keep], groups[keep], aspect=aspect, options=opts
    )
    # All the frames and the fit's own outlier mask: the evaluation names the frames it
    # drops, where given the kept frames only it dropped outliers of those a second time.
    ev = evaluate_arrays(
        x,
        screen.to_px(y_norm),
        groups,
        session=calibration_session or "calibration",
        features=features,
        screen=screen,
        mapping=mapping,
        names=frame_names,
        keep=keep,
    )
    r = ev.report
    prof = Profile(
        user=user,
        device=device,
        screen=screen,
        features=list(features),
        gaze_model_id=gaze_model_id,
        gaze_model_sha256=gaze_model_sha256,
        gaze_read=gaze_read,
        read_with=read_with,
        mapping=MappingSpec(name=mapping, params=m.params()),
        fit=fit_report(r, hyper),
        calibration_session=calibration_session,
    )
    return prof, ev


def chosen_candidate(
    choice: Choice, *, mirrored: bool | None = None, in_sample_px: float | None = None
) -> ChosenCandidate:
    """What a profile records of the candidate a selection chose."""
    c: Candidate = choice.candidate
    return ChosenCandidate(
        label=c.label,
        mapping=c.mapping,
        feature_set=c.feature_set,
        features=list(c.features),
        read=c.read,
        mirrored=mirrored,
        hyper={k: float(v) for k, v in choice.hyper.items()},
        in_sample_mean_px=None if in_sample_px is None else round(float(in_sample_px), 2),
    )


def in_sample_error_px(choice: Choice, reads: Reads, screen: ScreenGeometry) -> float:
    """Mean distance (px) of the chosen mapping, fitted on all targets, to the targets of
    the very frames it was fitted on (every frame given, outliers included), each where the
    cursor would show it (`as_shown`): in-sample, so optimistic, and the number `gazeloop
    eval SESSION --profile P` gives on the same session and frames."""
    pred = screen.to_px(choice.mapping.predict(columns_for(reads, choice.candidate)))
    pred, _ = as_shown(pred, screen)
    err = np.linalg.norm(pred - rows_of(reads).labels_px, axis=1)
    return float(np.mean(err[np.isfinite(err)]))


def profile_from_choice(
    ev: Evaluated,
    choice: Choice,
    *,
    screen: ScreenGeometry,
    user: str,
    device: str,
    gaze_model_id: str,
    gaze_model_sha256: str,
    gaze_read: GazeRead = "single",
    read_with: dict[str, Any] | None = None,
    calibration_session: str | None = None,
    in_sample_px: float | None = None,
) -> Profile:
    """The profile a selection makes: the choice refitted on all targets, with the
    leave-one-target-out figures of the whole choice (`ev`), what selection saw, and which
    candidate won (`fit.chosen`)."""
    r = ev.report
    return Profile(
        user=user,
        device=device,
        screen=screen,
        features=list(choice.candidate.features),
        gaze_model_id=gaze_model_id,
        gaze_model_sha256=gaze_model_sha256,
        gaze_read=gaze_read,
        read_with=read_with,
        mapping=MappingSpec(name=choice.candidate.mapping, params=choice.mapping.params()),
        fit=fit_report(
            r,
            choice.hyper,
            selection=r.selection.model_dump() if r.selection else None,
            mirrored=r.mirrored,
            chosen=chosen_candidate(choice, mirrored=r.mirrored, in_sample_px=in_sample_px),
        ),
        calibration_session=calibration_session,
    )


def record_mirroring(
    report: EvalReport, choice: Choice, mirrored: bool | None, basis: str | None = None
) -> None:
    """Record in `report` whether the frames were selfie views. `mirrored` is what was
    known of the frames as read; when the other read (the frames flipped) won the
    selection, the winning candidate saw the opposite, and that is what a profile made
    from the choice must say. `basis` (who said so) gets the same note. Unknown
    (`mirrored` None) leaves the report as it is."""
    if mirrored is None:
        return
    other = choice.candidate.read == "other"
    report.mirrored = not mirrored if other else mirrored
    if basis is not None:
        report.mirrored_basis = basis + ("; the other read won the selection" if other else "")


def fit_profile_selected(
    reads: Reads,
    *,
    screen: ScreenGeometry,
    user: str,
    device: str,
    gaze_model_id: str,
    gaze_model_sha256: str,
    gaze_read: GazeRead = "single",
    read_with: dict[str, Any] | None = None,
    calibration_session: str | None = None,
    mirrored: bool | None = None,
    candidates: list | None = None,
    drop_outliers: bool = True,
) -> tuple[Profile, Evaluated, Choice]:
    """A profile by nested selection, as `gazeloop eval` chooses: per-target outliers
    dropped, the candidates compared by nested leave-one-target-out (the honest error of
    the whole choice is the one reported), the winner on all targets saved. `reads`: the
    frames per read ("as read", and "other" when the mirroring is unknown). `candidates`
    and `drop_outliers` as `evaluate_candidates` takes them (pooled sittings,
    `calibration.sittings`). → (profile, its evaluation, the choice)."""
    ev, choice = evaluate_candidates(
        reads,
        session=calibration_session or "calibration",
        screen=screen,
        candidates=candidates,
        drop_outliers=drop_outliers,
    )
    record_mirroring(ev.report, choice, mirrored)
    prof = profile_from_choice(
        ev,
        choice,
        screen=screen,
        user=user,
        device=device,
        gaze_model_id=gaze_model_id,
        gaze_model_sha256=gaze_model_sha256,
        gaze_read=gaze_read,
        read_with=read_with,
        calibration_session=calibration_session,
        in_sample_px=in_sample_error_px(choice, reads, screen),
    )
    return prof, ev, choice
