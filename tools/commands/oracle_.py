"""`gazeloop oracle eval SESSION --oracle moondream|clicks|targets`: an oracle measured
against a labelled session (see `tools.runtime.oracle_eval`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gazeloop.calibration.store.atomic import write_plot
from gazeloop.tools.commands._args import (
    add_fastpath_args,
    add_moondream_pin_args,
    check_plot_path,
    fastpath_config,
    moondream_config,
    non_negative_int,
    positive_int,
)
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime import oracle_eval
from gazeloop.tools.runtime.oracle_eval_plot import plot_oracle_eval


def add_parser(sub) -> None:
    p = sub.add_parser("oracle", help="measure an oracle against a labelled session")
    osub = p.add_subparsers(dest="oracle_command", required=True, metavar="ACTION")
    e = osub.add_parser(
        "eval",
        help="per label: returned or not, error against the truth, latency (JSON)",
        description=oracle_eval.__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("session", type=Path, help="session folder (img_<ms>.jpg + .json pairs)")
    e.add_argument(
        "--oracle",
        choices=("moondream", "clicks", "targets"),
        required=True,
        help="the labeller measured",
    )
    e.add_argument(
        "--screen-px",
        type=positive_int,
        nargs=2,
        metavar=("W", "H"),
        help="the screen of a session without a session.json",
    )
    e.add_argument(
        "--mirrored",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="clicks: the images are selfie views (default: the manifest's word, else told by "
        "the frames; the other oracles do not map the frames)",
    )
    e.add_argument(
        "--clicks-per-target", type=positive_int, default=5, help="clicks: looks per target (5)"
    )
    e.add_argument(
        "--seed", type=non_negative_int, default=0, help="clicks: the replay's seed (default 0)"
    )
    e.add_argument(
        "--weights",
        action="store_true",
        help="moondream: load the real model from the local Hugging Face cache (default: "
        "the API-shaped double, which has no weights and says so)",
    )
    add_moondream_pin_args(e)
    e.add_argument("--json", action="store_true", help="the JSON on one line (default: indented)")
    e.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="a picture: each label on the screen beside its target, and the errors' spread",
    )
    add_fastpath_args(e)
    e.set_defaults(func=run_eval)


def _check(args) -> None:
    if args.session.is_file():
        raise UserError(f"{args.session}: a file; oracle eval reads a labelled session folder")
    if not args.session.is_dir():
        raise UserError(f"{args.session}: no such folder")
    if args.oracle != "moondream" and (args.weights or args.code_commit or args.moondream_unpinned):
        raise UserError(
            "--weights, --code-commit and --moondream-unpinned are for --oracle moondream"
        )
    if not args.weights and (args.code_commit or args.moondream_unpinned):
        raise UserError(
            "--code-commit and --moondream-unpinned choose the remote code the real Moondream "
            "loads: they go with --weights (without it the API-shaped double runs, no remote code)"
        )


def run_eval(args: argparse.Namespace) -> int:
    _check(args)
    if args.plot is not None:
        check_plot_path(args.plot)
    px = tuple(args.screen_px) if args.screen_px else None
    session, screen, basis = oracle_eval.session_and_screen(args.session, px, args.mirrored)
    out: dict[str, Any] = {"session": str(args.session), "oracle": args.oracle}
    not_scored: dict[str, int] = {}  # clicks draw on settled frames only (`collect_points`)
    if args.oracle == "targets":
        from gazeloop.oracle.simple import TargetOracle

        out["oracle_note"] = "the session's own targets (TargetOracle): distance 0 by construction"
        results, not_scored = oracle_eval.label_frames(
            TargetOracle(), session, screen, give_target=True
        )
    elif args.oracle == "moondream":
        cfg = moondream_config(args, loads_weights=args.weights)
        oracle, note = oracle_eval.moondream_oracle(screen, cfg, args.weights)
        out["oracle_note"] = note
        try:
            results, not_scored = oracle_eval.label_frames(
                oracle, session, screen, give_target=False
            )
        finally:
            oracle.close()
    else:
        results = _clicks(args, screen.px)
        out["oracle_note"] = oracle_eval.CLICKS_EVAL_NOTE
    out.update(screen_px=list(screen.px), screen_basis=basis)
    out["summary"] = oracle_eval.summarise(results, not_scored)
    out["labels"] = oracle_eval.as_dicts(results)
    print(json.dumps(out) if args.json else json.dumps(out, indent=1), flush=True)
    if args.plot is not None:  # after the report: a failed picture loses no results
        write_plot(lambda f: plot_oracle_eval(out, f), args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _clicks(args, screen_px):
    from gazeloop.fastpath.pipeline import FastPath
    from gazeloop.tools.runtime.bench_loop import collect_points

    fp = FastPath(fastpath_config(args))
    try:
        pts = collect_points(args.session, fp, screen_px, args.mirrored)
    finally:
        fp.close()
    return oracle_eval.eval_clicks(pts, screen_px, args.clicks_per_target, args.seed)
