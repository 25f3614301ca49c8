"""What `gazeloop eval` (without a fixed mapping), `eval --profile`, `eval-sittings` and
`head-shift` share: a session's cached features as named columns per read of the frames,
nested selection among the candidates (feature sets, mapping families, and both reads of
frames whose mirroring nothing stated, decided again in every fold), the profile that
choice makes, and a saved profile applied unchanged to another session.

Features come through the feature cache (`fastpath.feature_cache`), so running over a folder
of sittings a second time does not run the networks again.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.metrics.evaluate import Evaluated, evaluate_candidates, evaluate_fixed
from gazeloop.calibration.procedure import (
    in_sample_error_px,
    record_mirroring,
)
from gazeloop.calibration.procedure import profile_from_choice as procedure_profile
from gazeloop.calibration.profile import Profile, ProfileError
from gazeloop.calibration.store.session import Session, frame_times
from gazeloop.fastpath.collect import Collected, LazyFastPath
from gazeloop.fastpath.pipeline import FastPathConfig
from gazeloop.fastpath.views import NoUsableFrames, Views
from gazeloop.fastpath.views import session_views as views_of
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.labelled import read_as_fitted
from gazeloop.tools.runtime.made_by import made_by, read_otherwise


def session_views(
    session: Session, fp: LazyFastPath, *, both_reads: bool = True, cache: bool = True
) -> Views:
    """`fastpath.views.session_views`, its refusal as a one-line error for the user."""
    try:
        return views_of(session, fp, both_reads=both_reads, cache=cache)
    except NoUsableFrames as e:
        raise UserError(str(e)) from None


def evaluate_session(
    session: Session, fp: LazyFastPath, screen: ScreenGeometry | None, *, cache: bool = True
) -> tuple[Evaluated, object, Views]:
    """Nested LOTO of the whole choice on one session → (evaluation, final choice, views)."""
    v = session_views(session, fp, cache=cache)
    try:
        ev, choice = evaluate_candidates(
            v.reads,
            session=str(session.folder),
            screen=screen,
            frames=v.col.frames,
            rejected=v.rejected,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    record_mirroring(ev.report, choice, v.col.session.mirrored, v.col.mirror_basis)
    return ev, choice, v


def profile_from_choice(
    ev: Evaluated,
    choice,
    screen: ScreenGeometry,
    session: Session,
    fp,
    v: Views | None = None,
    *,
    user: str | None = None,
    device: str | None = None,
) -> Profile:
    """The profile a calibration on this session would save: the choice refitted on all
    targets, with its leave-one-target-out figures, what selection saw and which candidate
    won (`procedure.profile_from_choice`); with the session's `v`iews, also the chosen
    mapping's in-sample error on them. The user and device default to the manifest's."""
    m = session.manifest
    in_sample = None if v is None else in_sample_error_px(choice, v.reads, screen)
    return procedure_profile(
        ev,
        choice,
        screen=screen,
        user=user or (m.user if m and m.user else "unknown"),
        device=device or (m.device if m and m.device else "unknown"),
        **made_by(fp.get()),
        # Absolute: a refit for a new model (hot reload) reads it from wherever `run` runs.
        calibration_session=str(Path(session.folder).resolve()),
        in_sample_px=in_sample,
    )


def apply_profile(
    prof: Profile,
    session: Session,
    fp: LazyFastPath,
    screen: ScreenGeometry | None,
    *,
    cache: bool = True,
) -> Evaluated:
    """The profile's mapping on this session's frames, unchanged (no refit). Its screen
    stands in when the session names none (`run_selected` tells of another size). When
    nobody stated whether this session's frames are selfie views, they are read as the
    profile's were (its chosen candidate records it): the same camera and person, and a
    mapping fitted on one read means nothing on the other."""
    from gazeloop.calibration.mapping import mapping_from_params

    basis = None
    unmirror = read_as_fitted(session.mirrored_stated, prof)
    if unmirror is not None:
        session = replace(session, mirrored=unmirror, mirrored_stated=True)
        basis = "not stated; read as the profile's frames were"
    v = session_views(session, fp, both_reads=False, cache=cache)
    missing = v.frames.lacks(prof.features)
    if missing:
        raise UserError(f"{session.folder}: frames lack the profile's features {missing}")
    if screen is None:
        _note_targets_beyond(session, prof, v.frames.labels_px)
    x = v.frames.matrix(prof.features)
    mapping = mapping_from_params(prof.mapping.name, prof.mapping.params)
    targets = len(np.unique(v.frames.groups))
    if targets < 2:  # the error stands beside the constant predictor's, which needs two
        raise UserError(
            f"{session.folder}: {targets} target with usable frames; a profile is scored "
            "against the constant predictor (the mean of the other targets), which needs 2"
        )
    try:
        ev = evaluate_fixed(
            mapping,
            x,
            v.frames.labels_px,
            v.frames.groups,
            session=str(session.folder),
            screen=screen or prof.screen,
            mapping_name=prof.mapping.name,
            features=list(prof.features),
            frames=v.col.frames,
            rejected=v.rejected,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    ev.report.mirrored = v.col.session.mirrored
    ev.report.mirrored_basis = basis or v.col.mirror_basis
    return ev


def _note_other_screen(path: Path, prof: Profile, screen: ScreenGeometry | None) -> None:
    """A mapping gives fractions of the screen it was fitted on: applied to a session on
    another size, a point lands at the same fraction of this one, which only means the same
    place on the same monitor at another resolution. Allowed, but said (stderr: --json
    keeps stdout to the report)."""
    if screen is not None and tuple(screen.px) != tuple(prof.screen.px):
        (w, h), (pw, ph) = screen.px, prof.screen.px
        print(
            f"note: {path} was fitted on a {pw}x{ph} screen and this session is {w}x{h}: its "
            "points are read as the same fractions of this screen",
            file=sys.stderr,
        )


def _note_targets_beyond(session: Session, prof: Profile, labels_px) -> None:
    """A session without session.json is taken to be on the profile's screen; targets
    beyond that screen say it was another one, and every point shown there is clamped to
    the profile's edge (a 2560-wide session on a 1512-wide profile read 644 px with no
    word). Said (stderr), since only the person knows the screen."""
    w, h = prof.screen.px
    far = labels_px.max(axis=0) if len(labels_px) else None
    if far is None or (far[0] <= w + 1 and far[1] <= h + 1):
        return
    print(
        f"note: {session.folder} has no session.json and targets up to "
        f"({far[0]:.0f}, {far[1]:.0f}) px, beyond the profile's {w}x{h} screen: points are "
        "shown clamped to it; give --screen-px W H if this session was on another screen",
        file=sys.stderr,
    )


def load_profile(path: Path, fp: LazyFastPath) -> Profile:
    started = fp.get()
    try:
        gaze = started.gaze
        prof = Profile.load(path, gaze_model_sha256=gaze.sha256, gaze_read=gaze.read)
    except ProfileError as e:
        raise UserError(str(e)) from None
    if (note := read_otherwise(path, prof, started)) is not None:
        print(note, file=sys.stderr)
    return prof


def _fitted_on(prof: Profile, session: Session) -> bool:
    """Whether the profile was fitted on any of this session's frames: its error there is
    in-sample, not what a new point or a new sitting sees. A copy of a calibration session
    (a subset gathered to compare sittings) read as a fair test by its path alone: frames
    are told by their names too (`img_<unix-ms>`, when they were taken), while the
    calibration sessions are still there to list."""
    own = [Path(p) for p in (prof.calibration_session, *prof.calibration_sessions) if p]
    here = Path(session.folder).resolve()
    if any(p.resolve() == here for p in own):
        return True
    taken = {item.t_ms for item in session.items}
    return any(taken & frame_times(p) for p in own)


def run_selected(
    session: Session,
    screen: ScreenGeometry | None,
    cfg: FastPathConfig,
    *,
    profile: Path | None = None,
    save_profile: Path | None = None,
    cache: bool = True,
) -> tuple[Evaluated, Collected | None]:
    """`eval` with the candidates, or with a saved `profile` applied unchanged; writes
    `save_profile`. → (evaluation, the collected read the chosen candidate used)."""
    fp = LazyFastPath(cfg)
    try:
        if profile is not None:
            prof = load_profile(profile, fp)
            _note_other_screen(profile, prof, screen)
            ev = apply_profile(prof, session, fp, screen, cache=cache)
            ev.report.profile = str(profile)
            ev.report.in_sample = _fitted_on(prof, session)
            return ev, None
        ev, choice, v = evaluate_session(session, fp, screen, cache=cache)
        if save_profile is not None:
            geo = screen or ScreenGeometry.from_targets(v.frames.labels_px)
            prof = profile_from_choice(ev, choice, geo, session, fp, v)
            try:
                prof.save(save_profile)
            except OSError as e:
                raise UserError(f"{save_profile}: cannot write the profile: {e}") from None
        read = ev.report.selection.read if ev.report.selection else "as read"
        return ev, (v.col.other if read == "other" else v.col)
    finally:
        fp.close()


def selection_text(sel) -> str:
    """What nested selection chose and how each candidate scored (`EvalReport.selection`),
    as `gazeloop eval` and `gazeloop profile fit` print it."""
    lines = [
        f"  chosen by nested selection: {sel.chosen} (hyper {sel.hyper}); outer folds "
        + ", ".join(f"{k} ×{v}" for k, v in sel.picked_per_fold.items())
    ]
    for k, v in sel.inner_px.items():
        lines.append(
            f"    {k:28s} inner LOTO " + ("no spare target" if v is None else f"{v:.1f} px")
        )
    for k, why in sel.dropped.items():
        lines.append(f"    {k:28s} not a candidate: {why}")
    return "\n".join(lines)
