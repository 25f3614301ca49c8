"""The profile of a user's sittings: every calibration session kept under the user's folder
for one device and screen, pooled into one profile (`calibration.sittings`), which `gazeloop
run` starts a new sitting with.

Why a new sitting starts pooled. On the evit sittings (`gazeloop eval-sittings`,
`across_pooled`) the profile of all earlier sittings pooled was the better one to start the
next sitting with than the last sitting's own, for both people (median 105 px against 115;
p1 86 against 104, p2 200 against 209). A calibration chooses between its sitting alone and
pooled with the earlier ones on that sitting's own points (`at_calibration`): within the
sitting just calibrated the pool helped one evit person and hurt the other.

`gazeloop run` fits it when it starts a new sitting and the saved one does not pool every
session there is (from two sessions on; features come through the feature cache, so only
new sessions run through the networks). The fit is nested selection among the candidates
pooled sittings are offered, the winner refitted on all of them; its reported error is that
winner's own leave-one-point-out (a point left out of every sitting), not the outer loop
over the whole choice, which would cost minutes on thousands of frames.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from gazeloop.calibration.frames import Reads
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping.candidates import Candidate
from gazeloop.calibration.procedure import chosen_candidate, fit_profile
from gazeloop.calibration.profile import (
    HistoryReport,
    Profile,
    ProfileError,
    profile_path,
    read_with_changes,
    user_dir,
)
from gazeloop.calibration.sittings import (
    Pooled,
    choose_pooled,
    choose_with_history,
    pool_sittings,
)
from gazeloop.calibration.store.session import SessionError, read_session
from gazeloop.fastpath.collect import LazyFastPath
from gazeloop.fastpath.views import NoUsableFrames, Views, session_views
from gazeloop.tools.runtime.made_by import made_by

log = logging.getLogger(__name__)


def sittings_path(user: str, device: str, screen_px: tuple[int, int]) -> Path:
    """Beside the user's profile for the device: `<device>.sittings-<W>x<H>.json`, one per
    screen size (one file for every size was fitted again, and the other's pool lost, each
    time `run --screen-px` switched between them)."""
    p = profile_path(user, device)
    w, h = screen_px
    return p.with_name(f"{p.name.removesuffix('.json')}.sittings-{int(w)}x{int(h)}.json")


def calibration_sessions(user: str, device: str, screen_px: tuple[int, int]) -> list[Path]:
    """The user's calibration sessions on this device and screen, oldest first (their
    folder names are time stamps). Left out: a folder that does not read (said), and a
    calibration that made no profile (cancelled, too few targets, no better than guessing:
    its `report/calibration.json` is missing or names none), which the product refused."""
    root = user_dir(user) / "sessions"
    out = []
    for folder in sorted(root.glob("calibration-*")):
        try:
            m = read_session(folder).manifest
        except (SessionError, OSError) as e:
            log.warning("calibration session %s left out of the pool: %s", folder, e)
            continue
        same = m is not None and m.device == device and tuple(m.screen_px) == tuple(screen_px)
        if same and _made_a_profile(folder):
            out.append(folder)
    return out


def _made_a_profile(folder: Path) -> bool:
    try:
        report = json.loads((folder / "report" / "calibration.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and report.get("profile") is not None


def pool_views(views: list[Views]) -> Pooled:
    """`calibration.sittings.pool_sittings` of sessions' views."""
    return pool_sittings([v.reads for v in views])


def fit_pooled_mapping(
    pool: Pooled, mapping: str, features: list[str], read: str = "as read", **profile
) -> Profile:
    """One mapping on named columns of the pooled frames (their outliers dropped by the pool,
    within a target of one sitting); `profile`: `procedure.fit_profile`'s keywords (screen,
    user, device, gaze model and `read_with`, calibration_session)."""
    frames = pool.reads[read]
    try:
        x = frames.matrix(features)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    return fit_profile(
        x,
        profile["screen"].to_norm(frames.labels_px),
        frames.groups,
        drop_outliers=False,
        features=frames.expand(features),  # a profile names columns: `embedding` is emb_<i>
        mapping=mapping,
        **profile,
    )


# Whose profile it is, which gaze model's read it maps and the settings its frames were
# read with (`Profile` fields).
_IDS = ("user", "device", "gaze_model_id", "gaze_model_sha256", "gaze_read", "read_with")


def _fit_candidate(
    pool: Pooled, c: Candidate, screen: ScreenGeometry, session: str, **ids
) -> Profile:
    """The candidate a selection chose, fitted on the whole pool (`ids`: `_IDS`)."""
    return fit_pooled_mapping(
        pool, c.mapping, list(c.features), c.read, screen=screen, calibration_session=session, **ids
    )


def _usable_views(folders: list[Path], fp, say=None) -> tuple[list[Views], list[str]]:
    """The views of every folder that has usable frames, and those folders (resolved).
    `say`: told of each session the feature cache lacks, before the networks read it."""
    views, used = [], []
    for i, folder in enumerate(folders, 1):

        def reading(_session, name=Path(folder).name, i=i) -> None:
            say(
                f"calibration: reading earlier sitting {name} ({i} of {len(folders)}) "
                "through the networks, once (then cached)"
            )

        try:
            session = read_session(folder)
            got = session_views(
                session, fp, both_reads=False, reading=None if say is None else reading
            )
        except (SessionError, NoUsableFrames, OSError) as e:
            # Said: a pool quietly a sitting short looks like a calibration that forgot one.
            log.warning("%s: left out of the pooled profile: %s", folder, e)
            continue
        views.append(got)
        used.append(str(Path(folder).resolve()))
    return views, used


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def at_calibration(
    prof: Profile, now: Reads, screen: ScreenGeometry, session_dir: Path, fp
) -> Profile:
    """The profile a calibration saves, given the user's earlier calibration sessions on
    this device and screen: `prof` (this sitting's own, chosen by nested selection on
    `now`, its frames per read) or the pool of this sitting and the
    earlier ones, whichever this sitting's own points favour
    (`calibration.sittings.choose_with_history`); the comparison is kept in `fit.history`.
    Without earlier sessions, `prof` unchanged."""
    this = str(Path(session_dir).resolve())
    folders = [
        f
        for f in calibration_sessions(prof.user, prof.device, screen.px)
        if str(f.resolve()) != this
    ]
    if not folders:
        return prof
    # progress on stderr: `calibrate --json` keeps stdout for the report
    _say(
        f"calibration: weighing this sitting against {len(folders)} earlier one"
        f"{'s' * (len(folders) != 1)} on this screen"
    )
    earlier, used = _usable_views(folders, fp, _say)
    if not earlier:
        return prof
    h = choose_with_history(now, [v.reads for v in earlier], screen)
    history = HistoryReport(
        earlier_sittings=len(earlier),
        chosen="pooled" if h.use_pool else "alone",
        alone_px=round(h.alone_px, 1),
        pooled_px=round(h.pooled_px, 1),
        pooled_candidate=h.pooled.candidate.label,
    )
    if not h.use_pool:
        return prof.model_copy(update={"fit": prof.fit.model_copy(update={"history": history})})
    ids = prof.model_dump(include=set(_IDS))
    pooled = _fit_candidate(h.pool, h.pooled.candidate, screen, this, **ids)
    fit = pooled.fit.model_copy(update={"chosen": chosen_candidate(h.pooled), "history": history})
    return pooled.model_copy(update={"calibration_sessions": [*used, this], "fit": fit})


def fit_sittings(
    folders: list[Path], screen: ScreenGeometry, fp: LazyFastPath, *, user: str, device: str
) -> Profile | None:
    """The pooled profile of `folders` (None with fewer than two usable ones)."""
    views, used = _usable_views(folders, fp)
    if len(views) < 2:
        return None
    pool = pool_views(views)
    ids = {"user": user, "device": device, **made_by(fp.get())}
    prof = _fit_candidate(pool, choose_pooled(pool, screen).candidate, screen, used[-1], **ids)
    unusable = [str(Path(f).resolve()) for f in folders if str(Path(f).resolve()) not in used]
    return prof.model_copy(update={"calibration_sessions": used, "unusable_sessions": unusable})


def stale(prof: Profile, folders: list[Path], settings: dict[str, Any]) -> bool:
    """Whether `prof` no longer pools what `folders` hold: the sessions it pooled and those
    it left out as unusable are not exactly these, or it read their frames with other
    fast-path `settings` (`FastPathConfig.feature_settings`) than these. A pool is
    gazeloop's own file: made again, not noted at every start as a user's profile is."""
    want = {str(Path(f).resolve()) for f in folders}
    pooled = set(prof.calibration_sessions) | set(prof.unusable_sessions)
    return want != pooled or bool(read_with_changes(prof, settings))


def current(user: str, device: str, screen: ScreenGeometry, fp_cfg) -> Path | None:
    """The user's sittings profile for this device and screen, fitted again and saved when
    it is `stale`; None with fewer than two sessions."""
    folders = calibration_sessions(user, device, screen.px)
    if len(folders) < 2:
        return None
    path = sittings_path(user, device, screen.px)
    try:
        if not stale(Profile.load(path), folders, fp_cfg.feature_settings()):
            return path
    except ProfileError:
        pass  # none yet, or unreadable: fitted anew
    print(f"profile: pooling {len(folders)} calibration sessions of {user}/{device}", flush=True)
    fp = LazyFastPath(fp_cfg)
    try:
        prof = fit_sittings(folders, screen, fp, user=user, device=device)
    finally:
        fp.close()
    if prof is None:
        print("profile: fewer than two of them are usable; nothing pooled", flush=True)
        return None
    return prof.save(path)
