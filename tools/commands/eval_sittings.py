"""`gazeloop eval-sittings FOLDER`: accuracy within and across the sittings in a folder.

Each sub-folder is one sitting (a session). Within a sitting: the nested leave-one-target-out
of `gazeloop eval` (candidates competing inside every fold). Across sittings: the profile
fitted on one sitting (all its targets, the candidate chosen there) applied unchanged to the
same person's next sitting on the same screen (the manifest's `user`, then the screen size in
px; sittings in folder-name order). What users call drift is the difference. Beside it,
`across_pooled`: each sitting judged with the profile of ALL the person's earlier sittings on
that screen pooled (`calibration.sittings`, what `gazeloop profile fit S1 S2 ...` makes).

Every candidate's profile is also applied to the next sitting, so a feature or mapping choice
is judged across sittings too, not only by within-sitting LOTO (DESIGN.md, "Measuring"):
`across_by_history` is the error when each pair uses the candidate that did best on the same
person's earlier pairs (past only). On the evit folder (2026-12) that took the median over
pairs from 162 to 148 px (p1 139 → 136; p2, with two laptops, 257 → 318).
Features come from the feature cache: a second run does not run the networks again. The
sittings are evaluated on `--jobs` processes (each with its own fast path; the across-sitting
part then reads the cache): the report is the same to the last digit, and on the evit folder
with an empty cache it took 43 s on two cores instead of 69 s on one (2026-12-05).

`--history` adds `within_with_history`: each sitting that has earlier ones of the person on
that screen, calibrated as `gazeloop calibrate` does then (alone or pooled with them, as its
own points favour: `calibration.sittings.choose_with_history`), judged by leaving each of its
points out of every sitting and making the whole choice again. It is most of a minute more
on the evit folder (each fold repeats the pooled selection).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from gazeloop.calibration.mapping import mapping_from_params
from gazeloop.calibration.mapping.candidates import Candidate
from gazeloop.calibration.metrics.evaluate import evaluate_fixed
from gazeloop.calibration.sittings import choose_pooled, loto_with_history
from gazeloop.calibration.store.atomic import write_plot
from gazeloop.calibration.store.session import SessionError, read_session
from gazeloop.fastpath.collect import LazyFastPath
from gazeloop.tools.commands._args import (
    add_fastpath_args,
    add_no_cache_arg,
    check_plot_path,
    fastpath_config,
    positive_float,
    positive_int,
    resolved_settings,
    screen_for,
)
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.selection import evaluate_session, session_views
from gazeloop.tools.runtime.sittings_plot import plot_sittings_report
from gazeloop.tools.runtime.sittings_profile import pool_views
from gazeloop.tools.runtime.workers import Skipped, default_jobs, map_sessions


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval-sittings",
        help="accuracy within each sitting of a folder and across consecutive sittings",
        description="For every session folder inside FOLDER: the leave-one-target-out error "
        "of `gazeloop eval`, and the error of the profile fitted on a person's sitting when "
        "applied unchanged to that person's next sitting on the same screen (the person is "
        "the session.json's user, the sittings in the folders' name order, so number them "
        "with leading zeros: s02 comes after s10). "
        "Progress on "
        "stderr; per-frame features are cached, so a rerun is fast.",
    )
    p.add_argument("folder", type=Path, help="a folder of session folders (one per sitting)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_no_cache_arg(p)
    p.add_argument(
        "--screen-mm",
        type=positive_float,
        nargs=2,
        metavar=("W", "H"),
        help="physical screen size for every sitting (over what its manifest says)",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=default_jobs(),
        help="sittings evaluated at once, each in its own process (default: the cores, at "
        "most 4); the numbers do not depend on it",
    )
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="a picture of every sitting: its own calibration's error and the previous "
        "sitting's profile on it",
    )
    p.add_argument(
        "--history",
        action="store_true",
        help="also calibrate each sitting as `gazeloop calibrate` does with the person's "
        "earlier sittings on that screen (alone or pooled, as its points favour), judged by "
        "leaving each point out of every sitting: within_with_history (about a minute more "
        "on the evit folder)",
    )
    add_fastpath_args(p)
    # No --distance-mm: the report has no degrees to give (it was taken and did nothing).
    p.set_defaults(func=run, distance_mm=None)


def _sittings(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subs:
        raise UserError(f"{folder}: no sitting folders inside")
    return subs


def _owner(session) -> tuple[str, tuple[int, int] | None]:
    m = session.manifest
    user = m.user if m is not None and m.user else session.folder.name
    return user, session.screen_px


def _summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "median_px": None, "mean_px": None}
    return {
        "n": len(values),
        "median_px": round(float(np.median(values)), 2),
        "mean_px": round(float(np.mean(values)), 2),
    }


def _across(prev, cur, v) -> dict:
    """Every candidate fitted on `prev` (the chosen one first), applied to `cur` unchanged
    (`v`: its views, one read)."""
    session, screen = prev["session"], prev["screen"]
    out = {"from": session.folder.name, "to": cur["session"].folder.name, "by_candidate": {}}
    for label, cand, params in prev["fitted"]:
        if cand.read != "as read" or v.frames.lacks(cand.features):
            continue
        # through the profile's own JSON form, as a saved profile would be read back
        m = mapping_from_params(cand.mapping, params)
        try:
            ev = _applied(m, cand, cur, v, screen)
        except ValueError:
            continue
        r = ev.report
        out["by_candidate"][label] = r.mean_px
        if label == prev["chosen"]:
            out.update(
                chosen=label,
                mean_px=r.mean_px,
                median_px=r.median_px,
                targets=r.targets,
                frames_used=r.frames_used,
            )
    return out


def _applied(m, cand: Candidate, cur: dict, v, screen):
    """Mapping `m` of candidate `cand`, applied unchanged to the sitting `cur` (`v`: its
    views; `screen`: the profile's, when the sitting's is unknown)."""
    return evaluate_fixed(
        m,
        v.reads[cand.read].matrix(cand.features),
        v.frames.labels_px,
        v.frames.groups,
        session=str(cur["session"].folder),
        screen=cur["screen"] or screen,
        mapping_name=cand.mapping,
        features=list(cand.features),
        frames=v.col.frames,
        rejected=v.rejected,
    )


def _pooled(earlier: list[dict], cur: dict, v) -> dict:
    """The profile of all `earlier` sittings pooled (`calibration.sittings`), applied to
    `cur` unchanged (`v`: its views, one read)."""
    pool = pool_views([e["views"] for e in earlier])
    screen = earlier[-1]["screen"] or cur["screen"]
    choice = choose_pooled(pool, screen)
    c = choice.candidate
    if c.read not in v.reads or v.reads[c.read].lacks(c.features):
        return {"sittings": len(earlier), "chosen": c.label}
    ev = _applied(choice.mapping, c, cur, v, screen)
    return {
        "sittings": len(earlier),
        "chosen": c.label,
        "mean_px": ev.report.mean_px,
        "median_px": ev.report.median_px,
    }


def within_sitting(session, screen, fp: LazyFastPath, cache: bool) -> dict:
    """One sitting's nested leave-one-target-out, as plain data: its report row, the chosen
    candidate's label and every fitted candidate as (label, candidate fields, params), the
    JSON form a saved profile holds, which is all the next sitting needs."""
    ev, choice, _ = evaluate_session(session, fp, screen, cache=cache)
    r = ev.report
    return {
        "row": {
            "sitting": session.folder.name,
            "mean_px": r.mean_px,
            "median_px": r.median_px,
            "baseline_mean_px": r.baseline_mean_px,
            "targets": r.targets,
            "frames_used": r.frames_used,
            "frames": r.frames,
            "chosen": r.selection.chosen if r.selection else r.mapping,
        },
        "chosen": choice.candidate.label,
        "fitted": [
            (label, asdict(cand), m.params()) for label, (cand, m) in (choice.fitted or {}).items()
        ],
    }


def _within(item: tuple, fp: LazyFastPath) -> dict:
    session, screen, cache = item
    return within_sitting(session, screen, fp, cache)


def _skip(skipped: list[dict], name: str, why: str, at: str = "") -> None:
    """A sitting left out of the report (one that cannot be read or evaluated, in a folder
    of many, is not the end of the report): said on stderr, kept with its reason."""
    skipped.append({"sitting": name, "reason": why})
    print(f"{at}{name}: {why}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    subs = _sittings(args.folder)
    if args.plot is not None:
        check_plot_path(args.plot)
    cfg = fastpath_config(args)
    fp = LazyFastPath(cfg)
    skipped: list[dict] = []
    sessions = _readable(subs, args, skipped)
    try:
        within, pairs, later = _evaluate(args, sessions, len(subs), cfg, fp, skipped)
        with_history = None
        if args.history:
            with_history = _calibrate_with_history(args, later, cfg, fp, skipped)
    finally:
        fp.close()
    if not within:
        raise UserError(f"{args.folder}: no sitting could be evaluated ({skipped[0]['reason']})")
    report = summarise(str(args.folder), within, pairs, with_history, skipped)
    report["settings"] = resolved_settings(args)
    # The numbers first: a picture that fails to write (its folder gone, the disk full)
    # after minutes of work must not take them with it.
    print(json.dumps(report, indent=2) if args.json else text(report), flush=True)
    if args.plot is not None:
        write_plot(lambda f: plot_sittings_report(report, f), args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _evaluate(args, sessions: list[tuple], n: int, cfg, fp: LazyFastPath, skipped: list[dict]):
    """Every sitting's own nested leave-one-target-out (on --jobs processes), then, in folder
    order, each judged with the person's earlier sittings on its screen: a pair needs the
    sittings before it, so the pairs are made here, one sitting at a time, as the results
    come. → (within rows, pairs, the sittings `--history` calibrates with earlier ones)."""
    cache = not args.no_cache
    within, pairs, history, later = [], [], {}, []
    items = [(session, screen, cache) for _, session, screen in sessions]
    done = map_sessions(_within, items, cfg, fp, args.jobs, keep_going=True)
    for (i, session, screen), res in zip(sessions, done, strict=True):
        if isinstance(res, Skipped):
            why = f"not evaluated: {res.reason}"
            _skip(skipped, session.folder.name, why, f"[{i}/{n}] ")
            continue
        cur = {
            "session": session,
            "screen": screen,
            "chosen": res["chosen"],
            "fitted": [(lb, Candidate(**c), p) for lb, c, p in res["fitted"]],
            "views": session_views(session, fp, both_reads=False, cache=cache),
        }
        owner = _owner(session)
        row = res["row"]
        named = session.manifest is not None and bool(session.manifest.user)
        within.append({"sitting": row["sitting"], "user": owner[0], "user_named": named} | row)
        msg = f"[{i}/{n}] {session.folder.name}: within {row['mean_px']:.1f} px"
        earlier = history.setdefault(owner, [])
        if earlier:
            pairs.append(_pair(earlier, cur, owner[0]))
            msg += _pair_text(pairs[-1], len(earlier))
            if args.history and (cur["screen"] or earlier[-1]["screen"]) is not None:
                later.append(_history_item(earlier, cur, owner[0]))
        earlier.append(cur)
        tf = f"({row['targets']} targets, {row['frames_used']} frames)"
        print(f"{msg} {tf}", file=sys.stderr)
    return within, pairs, later


def _calibrate_with_history(args, later: list[tuple], cfg, fp, skipped: list[dict]) -> list:
    """`--history`: the sittings that have earlier ones, each calibrated with them
    (`_with_history`, on --jobs processes); one that cannot be is said and skipped."""
    print(
        f"calibrating {len(later)} sittings with the earlier ones (each point left "
        "out of every sitting)",
        file=sys.stderr,
    )
    with_history = []
    done = map_sessions(_with_history, later, cfg, fp, args.jobs, keep_going=True)
    for item, res in zip(later, done, strict=True):
        if isinstance(res, Skipped):
            _skip(skipped, item[0], res.reason)
        else:
            with_history.append(res)
    return with_history


def _history_item(earlier: list[dict], cur: dict, user: str) -> tuple:
    """What `_with_history` needs of a sitting and the person's earlier ones: arrays only."""

    screen = cur["screen"] or earlier[-1]["screen"]
    now, before = cur["views"].reads, [e["views"].reads for e in earlier]
    return (cur["session"].folder.name, user, now, before, screen)


def _with_history(item: tuple, fp: LazyFastPath) -> dict:
    """A sitting calibrated as `gazeloop calibrate` does with earlier sittings on the screen
    (`calibration.sittings.choose_with_history`: this sitting alone or pooled with them,
    whichever its points favour), judged by leaving each of its points out of every sitting
    and making the whole choice again (`loto_with_history`). Pure arrays; `fp` unused."""
    name, user, now, earlier, screen = item
    try:
        errs, pooled = loto_with_history(now, earlier, screen)
    except ValueError as e:
        # a sitting of a few points: with one left out, a fold has too few to fit
        raise UserError(f"not calibrated with its history: {e}") from None
    return {
        "sitting": name,
        "user": user,
        "earlier": len(earlier),
        "mean_px": round(float(errs.mean()), 2),
        "points": len(errs),
        "pooled_points": int(pooled),
    }


def _readable(subs: list[Path], args, skipped: list[dict]) -> list[tuple]:
    """(number, session, screen) of every sitting folder that reads; the others are said,
    and added to `skipped`."""
    out = []
    for i, folder in enumerate(subs, 1):
        try:
            session = read_session(folder)
        except SessionError as e:
            _skip(skipped, folder.name, f"not read: {e}", f"[{i}/{len(subs)}] ")
            continue
        out.append((i, session, screen_for(args, session)))
    return out


def _pair(earlier: list[dict], cur: dict, user: str) -> dict:
    """`cur` judged with the previous sitting's profiles and with all earlier ones pooled."""
    pair = _across(earlier[-1], cur, cur["views"])
    pair["user"] = user
    pair["pooled"] = _pooled(earlier, cur, cur["views"])
    return pair


def _pair_text(pair: dict, n_earlier: int) -> str:
    nan = float("nan")
    return (
        f", from {pair['from']} {pair.get('mean_px', nan):.1f} px, from all {n_earlier} "
        f"earlier {pair['pooled'].get('mean_px', nan):.1f} px"
    )


def choose_by_history(pairs: list[dict]) -> list[dict]:
    """Feature and mapping choice judged across sittings, from the past only: for each pair,
    the candidate with the lowest mean cross-sitting error over that person's earlier pairs
    (every candidate applied to each next sitting, `by_candidate`), and its error on this
    pair; the first pair of a person keeps the within-sitting choice. No pair's own error
    reaches its choice, so this is as honest as nested selection, one sitting at a time."""
    out, seen = [], {}
    for p in pairs:
        if "mean_px" not in p:
            continue
        hist = seen.setdefault(p["user"], [])
        known = [c for c in p["by_candidate"] if hist and all(c in h for h in hist)]
        if known:
            best = min(known, key=lambda c: float(np.mean([h[c] for h in hist])))
            out.append({"user": p["user"], "chosen": best, "mean_px": p["by_candidate"][best]})
        else:
            out.append({"user": p["user"], "chosen": p["chosen"], "mean_px": p["mean_px"]})
        hist.append(p["by_candidate"])
    return out


def _pooled_px(pairs) -> list[float]:
    return [p["pooled"]["mean_px"] for p in pairs if "mean_px" in p.get("pooled", {})]


def _with_history_summary(within: list[dict], rows: list[dict], user: str | None) -> dict:
    """The sittings calibrated with earlier ones, and the same sittings alone (`within`)."""
    rows = [r for r in rows if user is None or r["user"] == user]
    names = {r["sitting"] for r in rows}
    alone = [w["mean_px"] for w in within if w["sitting"] in names]
    return _summary([r["mean_px"] for r in rows]) | {"alone": _summary(alone)}


def summarise(
    folder: str,
    within: list[dict],
    pairs: list[dict],
    with_history: list[dict] | None = None,
    skipped: list[dict] | None = None,
) -> dict:
    users = sorted({w["user"] for w in within})
    cands = sorted({k for p in pairs for k in p["by_candidate"]})
    hist = choose_by_history(pairs)
    rep = {
        "folder": folder,
        "within": _summary([w["mean_px"] for w in within]),
        "across": _summary([p["mean_px"] for p in pairs if "mean_px" in p]),
        "per_user": {
            u: {
                "within": _summary([w["mean_px"] for w in within if w["user"] == u]),
                "across": _summary(
                    [p["mean_px"] for p in pairs if p["user"] == u and "mean_px" in p]
                ),
                "across_by_history": _summary([h["mean_px"] for h in hist if h["user"] == u]),
                "across_pooled": _summary(_pooled_px(p for p in pairs if p["user"] == u)),
            }
            for u in users
        },
        # the candidate chosen on the person's earlier pairs (`choose_by_history`)
        "across_by_history": _summary([h["mean_px"] for h in hist]),
        # the profile of all the person's earlier sittings on that screen (`_pooled`)
        "across_pooled": _summary(_pooled_px(pairs)),
        "across_by_candidate": {
            c: _summary([p["by_candidate"][c] for p in pairs if c in p["by_candidate"]])
            for c in cands
        },
        "frames_used": int(sum(w["frames_used"] for w in within)),
        "targets": int(sum(w["targets"] for w in within)),
        "sittings": within,
        "pairs": pairs,
        # sittings that could not be evaluated, and why; a person's next sitting is then
        # paired with the one before (each pair names its two sittings)
        "skipped": list(skipped or []),
    }
    if with_history is not None:
        # each sitting calibrated with the person's earlier sittings (`_with_history`)
        rep["within_with_history"] = _with_history_summary(within, with_history, None)
        for u in users:
            rep["per_user"][u]["within_with_history"] = _with_history_summary(
                within, with_history, u
            )
        rep["with_history"] = with_history
    return rep


def _px(stats: dict) -> str:
    """A median in the text report; none (no sitting or pair behind it) said as such."""
    m = stats.get("median_px")
    return "- (none)" if m is None else f"{m} px"


def _no_pairs_why(rep: dict) -> list[str]:
    """Why several sittings made no pair (it printed "- (none)" everywhere, unexplained)."""
    rows = rep["sittings"]
    if rep["across"]["n"] or len(rows) < 2:
        return []
    unnamed = sum(1 for r in rows if not r.get("user_named", True))
    if unnamed:
        return [
            f"  no pairs: {unnamed} of {len(rows)} sittings name no user in their session.json "
            "(each is then a person of its own); a pair is one person's sittings on one screen"
        ]
    return ["  no pairs: no person has two sittings on one screen"]


def text(rep: dict) -> str:
    w, a = rep["within"], rep["across"]
    lines = [
        f"{rep['folder']}: {w['n']} sittings ({rep['targets']} targets, "
        f"{rep['frames_used']} frames), {a['n']} consecutive pairs",
        *_no_pairs_why(rep),
        f"  within a sitting (LOTO): median of sitting means {_px(w)}",
        f"  across sittings (profile from the previous sitting): median {_px(a)}",
    ]
    lines.append(
        "  across sittings, candidate chosen on the person's earlier pairs: median "
        f"{_px(rep['across_by_history'])}"
    )
    lines.append(
        "  across sittings, profile from all the person's earlier sittings pooled: median "
        f"{_px(rep['across_pooled'])}"
    )
    h = rep.get("within_with_history")
    if h and h["n"]:
        lines.append(
            "  within a sitting calibrated with the person's earlier sittings (pooled or "
            f"alone, as its points favour): median {_px(h)} over {h['n']} "
            f"sittings; the same sittings alone {_px(h['alone'])}"
        )
    for u, s in rep["per_user"].items():
        lines.append(
            f"    {u}: within {_px(s['within'])} over {s['within']['n']} sittings, "
            f"across {_px(s['across'])} over {s['across']['n']} pairs "
            f"({_px(s['across_by_history'])} chosen on earlier pairs, "
            f"{_px(s['across_pooled'])} from all earlier sittings)"
        )
    lines.append("  across sittings, each candidate's profile (median over pairs):")
    for c, s in rep["across_by_candidate"].items():
        lines.append(f"    {c:28s} {_px(s)} over {s['n']} pairs")
    for sk in rep.get("skipped", []):
        lines.append(f"  {sk['sitting']}: {sk['reason']}")
    return "\n".join(lines)
