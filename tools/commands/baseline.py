"""`gazeloop baseline update|check|readme`: the README's non-timing numbers, kept as files.

Each number the README quotes (accuracy per session, the demo, the drift loop) is written by
its own command into docs/baselines/<name>.json with its command line, what it says, how many
frames and targets stand behind it, the command's JSON output and a tolerance per number.
`update` runs the commands and writes the files; `check` runs them again and exits 1 when a
number moved beyond its tolerance; `readme` rewrites the README's table between
<!-- baselines:begin --> and <!-- baselines:end --> from the files. Timings are not here:
they move with the host and are quoted with their date and machine, never asserted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime import baselines as bl


def add_parser(sub) -> None:
    p = sub.add_parser(
        "baseline",
        help="the README's measured numbers: write, recompute, render",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    names = ", ".join(b.name for b in bl.REGISTRY)
    for action, help_, func in (
        ("update", "run the commands and write the baseline files", run_update),
        ("check", "run the commands and compare with the files (exit 1 when moved)", run_check),
    ):
        a = bsub.add_parser(action, help=help_)
        a.add_argument("names", nargs="*", metavar="NAME", help=f"default: all ({names})")
        _common(a)
        a.set_defaults(func=func)
    r = bsub.add_parser("readme", help="rewrite the README's measured table from the files")
    r.add_argument(
        "--check", action="store_true", help="only say whether the README is current (exit 1)"
    )
    _common(r)
    r.set_defaults(func=run_readme)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root",
        type=Path,
        default=bl.checkout(),
        help="the checkout: docs/baselines and README.md are there, commands run there",
    )
    p.add_argument(
        "--shared",
        type=Path,
        help="the shared data folder when it is not ../shared beside the checkout",
    )


def _select(args) -> list[bl.Baseline]:
    try:
        return bl.select(getattr(args, "names", None))
    except bl.BaselineError as e:
        raise UserError(str(e)) from None


def run_update(args: argparse.Namespace) -> int:
    for b in _select(args):
        print(f"{b.name}:", flush=True)
        try:
            path = bl.update(b, args.root, shared=args.shared, log=_say)
        except bl.BaselineError as e:
            raise UserError(str(e)) from None
        doc = bl.load(b, args.root)
        print(f"  wrote {path} ({doc['behind']}; {doc['made']['seconds']:.0f} s)", flush=True)
    return 0


def run_check(args: argparse.Namespace) -> int:
    moved = 0
    for b in _select(args):
        print(f"{b.name}:", flush=True)
        try:
            doc = bl.load(b, args.root)
            stale = bl.registry_mismatch(b, doc)
            out, seconds = bl.run(b, args.root, shared=args.shared, log=_say)
        except bl.BaselineError as e:
            raise UserError(str(e)) from None
        for problem in stale:
            print(f"  the file is stale (run `gazeloop baseline update {b.name}`): {problem}")
        rows = bl.compare(doc, out)
        for row in rows:
            print(row.line())
        bad = sum(not r.ok for r in rows) + len(stale)
        moved += bad
        made = doc["made"]
        print(
            f"  {'MOVED' if bad else 'ok'} against {made['date']} on {made['machine']} "
            f"({seconds:.0f} s)",
            flush=True,
        )
    if moved:
        print(f"{moved} number(s) moved beyond tolerance")
        return 1
    return 0


def run_readme(args: argparse.Namespace) -> int:
    readme = args.root / "README.md"
    try:
        changed = bl.rewrite_readme(readme, args.root, dry_run=args.check)
    except OSError as e:
        raise UserError(f"{readme}: {e}") from None
    except bl.BaselineError as e:
        raise UserError(str(e)) from None
    if not changed:
        print(f"{readme}: the measured table is current")
        return 0
    if args.check:
        print(f"{readme}: the measured table differs from the files; `gazeloop baseline readme`")
        return 1
    print(f"{readme}: measured table rewritten from {bl.FOLDER}/")
    return 0


def _say(line: str) -> None:
    print(line, flush=True)
