"""`gazeloop labels`: what a user's label store holds, before it is trained on or sent.

Every label `run` judged is kept (accepted or not) with the run that made it
(`LabelStore.runs`): the screen its point is a fraction of and the settings it ran with. This
command reads the store (it never writes a label) and says how many labels each source gave,
how many the loop accepted, how many carry the picture a trainer needs, and, per run, when,
on which screen and with which labeller and gaze model they were made. Labels on several
screens are why `train --labels` asks for `--screen-px`: this is where a user sees that.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from gazeloop.calibration.profile import user_dir
from gazeloop.calibration.store.labelstore import DB_NAME, LabelStore, LabelStoreError, StoredRun
from gazeloop.tools.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "labels",
        help="what a user's label store holds: labels by source and by run",
        description="Counts the labels in a user's label store (the clicks, glances and "
        "oracle labels `gazeloop run` keeps, accepted or not) by source and by run: when each "
        "run started, the screen its points are fractions of, its labeller and gaze model. "
        "Reads the store, writes nothing.",
    )
    p.add_argument("--user", default="default", help="whose store (default: default)")
    p.add_argument("--store", type=Path, help="a label store folder instead of the user's")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = args.store or user_dir(args.user) / "labels"
    if not (root / DB_NAME).is_file():
        # Opening would create an empty store: a typo must not leave one behind.
        raise UserError(f"{root}: no label store there (no {DB_NAME}); `gazeloop run` makes one")
    try:
        with LabelStore(root, readonly=True) as store:
            summary = store_summary(store)
    except LabelStoreError as e:
        raise UserError(str(e)) from None
    summary = {"store": str(root), **summary}
    print(json.dumps(summary, indent=2) if args.json else summary_text(summary))
    return 0


_ZERO = {"labels": 0, "accepted": 0, "unjudged": 0, "with_image": 0}


def _count(d: dict, key: Any, verdict: bool | None, image: bool) -> None:
    """`unjudged`: stored with no loop's word on them (before any profile, a click that
    came first): `train --labels` keeps those beside the accepted ones."""
    c = d.setdefault(key, dict(_ZERO))
    c["labels"] += 1
    c["accepted"] += verdict is True
    c["unjudged"] += verdict is None
    c["with_image"] += image


def store_summary(store: LabelStore) -> dict[str, Any]:
    """Counts by source (the labeller) and by run, and every run that stored a label."""
    total: dict[Any, dict[str, int]] = {}
    by_source: dict[str, dict[str, int]] = {}
    by_run: dict[int | None, dict[str, int]] = {}
    for row in store.iter():
        # The file, not the column: a picture deleted or lost by hand is one the trainer
        # leaves out ("image missing"), and the count said it was there.
        path = store.image_path(row)
        image = path is not None and path.is_file()
        _count(total, "all", row.verdict, image)
        _count(by_source, row.oracle, row.verdict, image)
        _count(by_run, row.run_id, row.verdict, image)
    runs = [_run(r, by_run[r.id]) for r in store.runs() if r.id in by_run]
    return {
        **total.get("all", dict(_ZERO)),
        "by_source": dict(sorted(by_source.items())),
        "runs": runs,
        "without_run": by_run.get(None, dict(_ZERO)),
    }


def _run(r: StoredRun, counts: dict[str, int]) -> dict[str, Any]:
    s = r.settings
    model = s.get("gaze_model") or {}
    return {
        "id": r.id,
        "started": datetime.fromtimestamp(r.started_ms / 1000).isoformat(timespec="seconds"),
        "screen_px": None if r.screen is None else list(r.screen.px),
        "device": s.get("device"),  # None: a run from before runs recorded it
        "source": s.get("source"),
        "oracle": s.get("oracle"),
        "profile": s.get("profile"),
        "gaze_model": model.get("id"),
        **counts,
    }


def summary_text(s: dict[str, Any]) -> str:
    lines = [
        f"label store {s['store']}: {s['labels']} labels, {_kept(s)}, "
        f"{s['with_image']} with a picture"
    ]
    for name, c in s["by_source"].items():
        lines.append(f"  {name:10s} {c['labels']:5d} labels, {_kept(c)}")
    for r in s["runs"]:
        screen = "screen unknown" if r["screen_px"] is None else "{}x{}".format(*r["screen_px"])
        if r["device"] is not None:
            screen += f" of device {r['device']}"
        lines.append(
            f"  run {r['id']} from {r['started']} on {screen}: {r['labels']} labels "
            f"({_kept(r)}); source {r['source']}, oracle {r['oracle']}, "
            f"model {r['gaze_model']}"
        )
    if s["without_run"]["labels"]:
        lines.append(
            f"  {s['without_run']['labels']} labels from before runs were recorded (their "
            "screen is the profiles' or --screen-px's)"
        )
    kept = [r for r in s["runs"] if r["screen_px"] and r["accepted"] + r["unjudged"]]
    if len({tuple(r["screen_px"]) for r in kept}) > 1:
        lines.append(
            "  labels to train on from several screens: `gazeloop train --labels` needs "
            "--screen-px W H for the ones to train on"
        )
    return "\n".join(lines)


def _kept(c: dict[str, Any]) -> str:
    """The accepted, and the unjudged when there are any: both are what training takes."""
    out = f"{c['accepted']} accepted"
    return out + (f", {c['unjudged']} not judged by any loop" if c["unjudged"] else "")
