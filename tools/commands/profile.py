"""`gazeloop profile ...`: fit a calibration profile from a session, and inspect one."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from gazeloop.calibration.mapping import MAPPINGS
from gazeloop.calibration.procedure import fit_profile, fit_profile_selected
from gazeloop.calibration.profile import (
    DEFAULT_FEATURES,
    Profile,
    ProfileError,
    profile_path,
    shown_setting,
)
from gazeloop.calibration.sittings import pooled_candidates
from gazeloop.calibration.store.atomic import check_writable
from gazeloop.calibration.store.session import read_session
from gazeloop.fastpath.collect import LazyFastPath
from gazeloop.tools.commands._args import (
    add_fastpath_args,
    add_mirrored_arg,
    add_model_id_arg,
    add_no_cache_arg,
    add_screen_size_args,
    add_user_args,
    collect_frames,
    distinct_paths,
    fastpath_config,
    feature_columns,
    fixed_mapping,
    positive_float,
    screen_for,
    serve_users_model,
)
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.calibration import history_line
from gazeloop.tools.runtime.made_by import made_by
from gazeloop.tools.runtime.progress import Progress
from gazeloop.tools.runtime.selection import (
    evaluate_session,
    profile_from_choice,
    selection_text,
    session_views,
)
from gazeloop.tools.runtime.sittings_profile import fit_pooled_mapping, pool_views


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="fit or show calibration profiles")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    f = psub.add_parser(
        "fit",
        help="fit a profile from a labelled session (e.g. a calibration recording)",
        description="Runs the fast path over the session, drops blinks, lost faces, settling "
        "frames and per-target outliers, chooses the mapping as `gazeloop eval` does (feature "
        "sets, ridge and geometric, and both reads of frames whose mirroring nobody stated, "
        "compete by nested leave-one-target-out), and saves the winner refitted on all targets "
        "with the honest error of the whole choice and which candidate it was. --mapping or "
        "--features fit that one mapping instead. Several sessions (the same person's "
        "sittings on the same screen, oldest first) are pooled into one profile: a screen "
        "point is left out of every sitting at once, and head-pose features, which one "
        "sitting cannot judge, compete too (calibration.sittings).",
    )
    f.add_argument("session", type=Path, nargs="+", help="session folder(s)")
    add_user_args(f)
    add_model_id_arg(f)
    f.add_argument("--out", type=Path, help="profile file (default: the user's profile folder)")
    add_screen_size_args(f, "the session's; a session without session.json needs it")
    f.add_argument("--distance-mm", type=positive_float, help="viewing distance")
    add_mirrored_arg(f)
    f.add_argument(
        "--mapping",
        choices=sorted(MAPPINGS),
        help="fit this mapping only (default: chosen by nested selection, as `eval` does)",
    )
    f.add_argument(
        "--features",
        help=f"comma-separated features of a fixed mapping (default {','.join(DEFAULT_FEATURES)}"
        " with --mapping; without either, chosen by nested selection)",
    )
    add_no_cache_arg(f)
    add_fastpath_args(f)
    f.set_defaults(func=run_fit)
    s = psub.add_parser("show", help="print a profile's summary")
    s.add_argument("path", type=Path, help="a profile file (users/<u>/profiles/<device>.json)")
    s.set_defaults(func=run_show)


def run_fit(args: argparse.Namespace) -> int:
    out = args.out or profile_path(args.user, args.device)
    check_writable(out, folder=False)  # before the fast path runs over the session
    # Pooled with itself, every target would be left out of one copy only and predicted from
    # its twin: a calibration that grades itself on its own frames.
    distinct_paths(args.session, "session", "one sitting each")
    sessions = [
        read_session(
            folder,
            screen_px=tuple(args.screen_px) if args.screen_px else None,
            mirrored=args.mirrored,
        )
        for folder in args.session
    ]
    screen = _one_screen(args, sessions)
    fixed = fixed_mapping(args)
    serve_users_model(args)
    if len(sessions) > 1:
        prof, ev = _fit_pooled(args, sessions, screen, fixed)
    elif fixed is None:
        prof, ev = _fit_selected(args, sessions[0], screen)
    else:
        prof, ev = _fit_fixed(args, sessions[0], screen, *fixed), None
    out = prof.save(out)
    print(f"profile saved: {out}")
    print(summary(prof))
    if ev is not None and ev.report.selection is not None:
        # the candidates' scores (the choice itself is in the summary above)
        print("\n".join(selection_text(ev.report.selection).splitlines()[1:]))
    return 0


def _one_screen(args, sessions):
    """The screen every session was recorded on (a profile maps onto one screen)."""
    screens = [screen_for(args, s) for s in sessions]
    for s, screen in zip(sessions, screens, strict=True):
        if screen is None:
            raise UserError(
                f"{s.folder}: the screen size is unknown (no session.json); give --screen-px"
            )
        if screen.px != screens[0].px:
            raise UserError(
                f"{s.folder}: recorded on a {screen.px[0]}x{screen.px[1]} px screen, "
                f"{sessions[0].folder} on {screens[0].px[0]}x{screens[0].px[1]}: a profile "
                "pools sittings on one screen only"
            )
    return screens[-1]


def _fit_pooled(args, sessions, screen, fixed):
    """Several sittings as one calibration (`calibration.sittings`): selection among every
    feature set, or the asked mapping, on the pooled frames."""
    fp = LazyFastPath(fastpath_config(args))
    n = sum(len(s.items) for s in sessions)
    try:
        with Progress(f"profile fit, {len(sessions)} sessions, {n} frames through the fast path"):
            pool = pool_views([session_views(s, fp, cache=not args.no_cache) for s in sessions])
        ids = made_by(fp.get())
    finally:
        fp.close()
    names = [str(Path(s.folder).resolve()) for s in sessions]
    common = dict(
        screen=screen, user=args.user, device=args.device, calibration_session=names[-1], **ids
    )
    try:
        if fixed is None:
            prof, ev, _ = fit_profile_selected(
                pool.reads,
                candidates=pooled_candidates(tuple(pool.reads), pool.n_sittings),
                drop_outliers=False,
                mirrored=sessions[-1].mirrored,
                **common,
            )
        else:
            prof, ev = fit_pooled_mapping(pool, *fixed, **common), None
    except ValueError as e:
        raise UserError(str(e)) from None
    return prof.model_copy(update={"calibration_sessions": names}), ev


def _fit_selected(args, session, screen):
    """The candidates compete by nested selection, as in `gazeloop eval --save-profile`."""
    fp = LazyFastPath(fastpath_config(args))
    try:
        with Progress(f"profile fit, {len(session.items)} frames through the fast path"):
            ev, choice, v = evaluate_session(session, fp, screen, cache=not args.no_cache)
        prof = profile_from_choice(
            ev, choice, screen, session, fp, v, user=args.user, device=args.device
        )
    finally:
        fp.close()
    prof.calibration_session = str(Path(session.folder).resolve())
    return prof, ev


def _fit_fixed(args, session, screen, mapping: str, names: list[str]) -> Profile:
    """One mapping on named features, as asked."""
    col, ids = collect_frames(args, session, "profile fit")
    used = col.labelled()
    if not len(used):
        raise UserError(f"{session.folder}: no usable frames")
    names, x = feature_columns(used, names)
    try:
        return fit_profile(
            x,
            screen.to_norm(used.labels_px),
            used.groups,
            screen=screen,
            features=names,
            user=args.user,
            device=args.device,
            mapping=mapping,
            calibration_session=str(Path(session.folder).resolve()),
            **ids,
        )
    except ValueError as e:
        raise UserError(str(e)) from None


def summary(p: Profile) -> str:
    f = p.fit
    return (
        f"  user {p.user}, device {p.device}, screen {p.screen.px[0]}x{p.screen.px[1]} px\n"
        f"  {p.mapping.name} on {', '.join(p.features)} ({f.hyper}), gaze model {p.gaze_model_id}\n"
        + _read_with_text(p)
        + f"  fitted on {f.targets} targets / {f.frames} frames{_pooled_text(p)}; "
        "leave-one-target-out mean "
        f"{_px(f.mean_px)}, median {_px(f.median_px)} (constant predictor "
        f"{_px(f.baseline_mean_px)})\n"
        f"  drift offset {p.offset[0]:+.4f}, {p.offset[1]:+.4f} (normalised)"
        + ("" if f.chosen is None else "\n" + chosen_text(f.chosen))
        + ("" if f.history is None else "\n  " + history_line(f.history))
    )


def _read_with_text(p: Profile) -> str:
    """The fast-path settings its frames were read with, when it recorded them."""
    if p.read_with is None:
        return ""
    shown = ", ".join(f"{k} {shown_setting(v)}" for k, v in sorted(p.read_with.items()))
    return f"  read with {shown}\n"


def _pooled_text(p: Profile) -> str:
    n = len(p.calibration_sessions)
    return f" of {n} sittings pooled (a target is a screen point)" if n > 1 else ""


def chosen_text(c) -> str:
    """What nested selection chose, in one line (a profile's `fit.chosen`)."""
    mirror = {True: "mirrored", False: "not mirrored", None: "mirroring unknown"}[c.mirrored]
    hyper = ", ".join(f"{k} {v:.4g}" for k, v in c.hyper.items()) or "no hyper-parameters"
    in_sample = (
        ""
        if c.in_sample_mean_px is None
        else f"; in-sample mean {c.in_sample_mean_px:.1f} px (on its own frames)"
    )
    return (
        f"  chosen by nested selection: {c.label} — {c.mapping} on the '{c.feature_set}' "
        f"features, frames {c.read} ({mirror}), {hyper}{in_sample}"
    )


def _px(v: float | None) -> str:
    return "not recorded" if v is None else f"{v:.1f} px"


def run_show(args: argparse.Namespace) -> int:
    try:
        p = Profile.load(args.path)
    except ProfileError as e:
        raise UserError(str(e)) from None
    wrong = problems(p)
    if wrong:
        # A profile that would put the gaze nowhere must not read as healthy.
        raise UserError(f"{args.path}: not a usable profile: {'; '.join(wrong)}")
    print(f"{args.path}:")
    print(summary(p))
    return 0


def problems(p: Profile) -> list[str]:
    """What makes a loaded profile's report implausible, each said plainly (empty when it is
    fine); a mapping's non-finite numbers and an offset that is no drift are refused by the
    load itself (`Profile.load`), for every command."""
    out = []
    f = p.fit
    for name in ("mean_px", "median_px", "baseline_mean_px"):
        v = getattr(f, name)
        if v is not None and not (math.isfinite(v) and v >= 0):
            out.append(f"fit.{name} {v} is not a distance")
    if f.targets < 1 or f.frames < f.targets:
        out.append(f"fit on {f.targets} targets / {f.frames} frames")
    return out
