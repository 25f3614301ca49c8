"""The profile of a user's sittings: every calibration session kept under the user's folder
for one device and screen, pooled into one profile (`calibration.sittings`), which `gazeloop
run` starts a new sitting with.

Why only a new sitting. On the evit sittings (`gazeloop eval-sittings`, `across_pooled`) the
profile of all earlier sittings pooled was the better one to start the next sitting with
than the last sitting's own, for both people (median 105 px against 115; p1 86 against 104,
p2 200 against 209). Right after a calibration the sitting's own profile stays: within the
sitting just calibrated the pool helped one person and hurt the other (README,
"Calibrating on screen").

`gazeloop run` fits it when it starts a new sitting and the saved one does not pool every
session there is (from two sessions on; features come through the feature cache, so only
new sessions run through the networks). The fit is nested selection among the candidates
pooled sittings are offered, the winner refitted on all of them; its reported error is that
winner's own leave-one-point-out (a point left out of every sitting), not the outer loop
over the whole choice, which would cost minutes on thousands of frames.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.procedure import fit_profile
from gazeloop.calibration.profile import Profile, ProfileError, data_dir, profile_path
from gazeloop.calibration.sittings import Pooled, choose_pooled, pool_sittings
from gazeloop.calibration.store.session import SessionError, read_session
from gazeloop.fastpath.collect import LazyFastPath
from gazeloop.fastpath.views import NoUsableFrames, Views, session_views

SUFFIX = ".sittings.json"


def sittings_path(user: str, device: str) -> Path:
    """Beside the user's profile for the device: `<device>.sittings.json`."""
    p = profile_path(user, device)
    return p.with_name(p.name.removesuffix(".json") + SUFFIX)


def calibration_sessions(user: str, device: str, screen_px: tuple[int, int]) -> list[Path]:
    """The user's calibration sessions on this device and screen, oldest first (their
    folder names are time stamps); a folder that does not read is left out."""
    root = data_dir() / "users" / user / "sessions"
    out = []
    for folder in sorted(root.glob("calibration-*")):
        try:
            m = read_session(folder).manifest
        except (SessionError, OSError):
            continue
        if m is not None and m.device == device and tuple(m.screen_px) == tuple(screen_px):
            out.append(folder)
    return out


def pool_views(views: list[Views]) -> Pooled:
    """`calibration.sittings.pool_sittings` of sessions' views."""
    return pool_sittings([(v.views, v.labels_px, v.groups) for v in views])


def fit_pooled_mapping(
    pool: Pooled, mapping: str, features: list[str], read: str = "as read", **profile
) -> Profile:
    """One mapping on named columns of the pooled frames, outliers judged within a target of
    one sitting; `profile`: `procedure.fit_profile`'s keywords (screen, user, device, gaze
    model, calibration_session)."""
    view = pool.views[read]
    missing = [f for f in features if f not in view]
    if missing:
        raise ValueError(f"unknown feature(s) {', '.join(missing)}; known: {', '.join(view)}")
    return fit_profile(
        np.column_stack([view[f] for f in features]),
        profile["screen"].to_norm(pool.labels_px),
        pool.groups,
        outlier_groups=pool.cells,
        features=list(features),
        mapping=mapping,
        **profile,
    )


def fit_sittings(
    folders: list[Path], screen: ScreenGeometry, fp: LazyFastPath, *, user: str, device: str
) -> Profile | None:
    """The pooled profile of `folders` (None with fewer than two usable ones)."""
    views, used = [], []
    for folder in folders:
        try:
            views.append(session_views(read_session(folder), fp, both_reads=False))
        except (SessionError, NoUsableFrames, OSError):
            continue
        used.append(str(Path(folder).resolve()))
    if len(views) < 2:
        return None
    pool = pool_views(views)
    c = choose_pooled(pool, screen).candidate
    gaze = fp.get().gaze
    prof = fit_pooled_mapping(
        pool,
        c.mapping,
        list(c.features),
        c.read,
        screen=screen,
        user=user,
        device=device,
        gaze_model_id=gaze.model_id,
        gaze_model_sha256=gaze.sha256,
        gaze_read=gaze.read,
        calibration_session=used[-1],
    )
    return prof.model_copy(update={"calibration_sessions": used})


def stale(prof: Profile, folders: list[Path]) -> bool:
    """Whether `prof` no longer pools what `folders` hold: a session it pooled is gone, or
    one it does not pool was written after it was fitted. A session that was there and left
    out (no usable frames) does not count: it would be left out again, so a refit would
    only cost the time of one on every run."""
    want = {str(Path(f).resolve()): Path(f) for f in folders}
    if set(prof.calibration_sessions) - set(want):
        return True
    made = datetime.fromisoformat(prof.created).timestamp()
    return any(
        _written(f) >= made for key, f in want.items() if key not in prof.calibration_sessions
    )


def _written(folder: Path) -> float:
    try:
        return (folder / "session.json").stat().st_mtime
    except OSError:
        return float("inf")


def current(user: str, device: str, screen: ScreenGeometry, fp_cfg) -> Path | None:
    """The user's sittings profile for this device and screen, fitted again and saved when
    it is `stale`; None with fewer than two sessions."""
    folders = calibration_sessions(user, device, screen.px)
    if len(folders) < 2:
        return None
    path = sittings_path(user, device)
    try:
        if not stale(Profile.load(path), folders):
            return path
    except ProfileError:
        pass  # none yet, or unreadable: fitted anew
    print(f"profile: pooling {len(folders)} calibration sessions of {user}/{device}", flush=True)
    fp = LazyFastPath(fp_cfg)
    try:
        prof = fit_sittings(folders, screen, fp, user=user, device=device)
    finally:
        fp.close()
    return None if prof is None else prof.save(path)
