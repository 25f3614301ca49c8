"""The drift loop's statistics over many simulated label streams (the issue-4 criteria).

    python -m gazeloop.tools.commands.loop_stats [--seeds 300] [--base 0]
        [--session synthetic|grid9] [--loop-module FILE.py] [--config JSON|FILE] [--jobs 2]

Per seed, `labels_to_recover` as `calibration.drift.simulation` defines it (150 px step
after label 10, label noise 100 px per axis, fast-path noise 80 px per axis, 60 labels; back
within 10 % of the pre-drift error from that label to the end of the stream); reported as
median and p90 over seeds, next to the estimator told the onset. Also: with 30 % junk labels
the error after the last label over the drifted error (worst and mean over seeds); with no
drift at all, the offset the loop holds from label 20 to 100 (RMS, p99, and the share of
runs in which it ever exceeds 100 px: a false walk). `--loop-module` runs another
implementation of `DriftLoop` / `LoopConfig` (e.g. an earlier version:
`git show REV:calibration/drift/loop.py > old.py`). `--config` takes `LoopConfig` fields as
a JSON object, inline or in a file.
Seeds: step streams BASE+s, junk streams BASE+100000+s, no-drift streams BASE+200000+s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from multiprocessing import Pool

import numpy as np
from pydantic import ValidationError

import gazeloop.calibration.drift.simulation as ls
from gazeloop.calibration.problems import first_problem

_STATE: dict = {}


def _setup(session: str, loop_module: str | None, config: dict) -> None:
    if loop_module:
        spec = importlib.util.spec_from_file_location("_loop_under_test", loop_module)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["_loop_under_test"] = mod
        spec.loader.exec_module(mod)
        ls.DriftLoop, ls.LoopConfig = mod.DriftLoop, mod.LoopConfig
    if session == "grid9":
        from gazeloop.calibration.store.session import read_session
        from gazeloop.tools.runtime.sample_data import default_shared

        items = read_session(default_shared() / "data/sessions/grid9").items
        targets = np.array([it.label_px for it in items])
        scr = ls.screen_from_targets(targets)
        pred, truth, _ = ls.frames_around(
            targets / np.asarray(scr), scr, 30, 80.0, 0.0, np.random.default_rng(0)
        )
    else:
        scr = (1728, 1080)
        pred, truth, _ = ls.synthetic_session(scr, grid=(5, 5), frames_per_target=30, seed=1)
    cfg = ls.LoopConfig(**{"aspect": scr[0] / scr[1], **config})
    _STATE.update(pred=pred, truth=truth, scr=scr, cfg=cfg)


def _job(a: tuple[str, int]):
    kind, seed = a
    pred, truth, scr, cfg = (_STATE[k] for k in ("pred", "truth", "scr", "cfg"))
    if kind == "step":
        r = ls.simulate_drift(pred, truth, scr, stream=ls.LabelStream(seed=seed), cfg=cfg)
        return r.summary["labels_to_recover"], r.err_px
    if kind == "ref":
        r = ls.known_onset_reference(pred, truth, scr, stream=ls.LabelStream(seed=seed))
        return r.summary["labels_to_recover"], r.err_px
    if kind == "junk":
        stream = ls.LabelStream(seed=seed, outlier_fraction=0.3)
        s = ls.simulate_drift(pred, truth, scr, stream=stream, cfg=cfg).summary
        return s["error_after_px"] / s["error_drifted_px"], None
    stream = ls.LabelStream(seed=seed, n_labels=100)
    r = ls.simulate_drift(pred, truth, scr, ls.DriftSchedule(kind="none"), stream, cfg)
    off = r.offset[20:] * np.asarray(scr)
    return np.hypot(off[:, 0], off[:, 1]), None


def _read_config(arg: str, p: argparse.ArgumentParser) -> dict:
    """`--config` as a dict of `LoopConfig` fields, checked here: a bad field would otherwise
    surface as a traceback from inside each worker process."""
    text = arg
    if not arg.lstrip().startswith("{"):
        try:
            with open(arg, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            p.error(f"--config {arg}: not a JSON object and not a readable file ({e.strerror})")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        p.error(f"--config {arg}: not valid JSON ({e.msg}, line {e.lineno})")
    if not isinstance(config, dict):
        p.error(f"--config {arg}: a JSON object of LoopConfig fields is needed")
    try:
        ls.LoopConfig(**config)
    except ValidationError as e:
        p.error(f"--config {arg}: {first_problem(e)}")
    except TypeError as e:
        p.error(f"--config {arg}: {e}")
    return config


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    config = _read_config(args.config, p)
    init = (args.session, args.loop_module, config)
    b, n = args.base, args.seeds
    with Pool(args.jobs, initializer=_setup, initargs=init) as pool:
        step = pool.map(_job, [("step", b + s) for s in range(n)])
        ref = pool.map(_job, [("ref", b + s) for s in range(n)])
        junk = pool.map(_job, [("junk", b + 100000 + s) for s in range(n)])
        quiet = pool.map(_job, [("none", b + 200000 + s) for s in range(n)])
    _setup(*init)
    print(json.dumps(_report(args, config, step, ref, junk, quiet), indent=1))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gazeloop.tools.commands.loop_stats", description=__doc__
    )
    p.add_argument("--seeds", type=int, default=300)
    p.add_argument("--base", type=int, default=0)
    p.add_argument("--session", choices=("synthetic", "grid9"), default="synthetic")
    p.add_argument("--loop-module", help="a file defining DriftLoop and LoopConfig")
    p.add_argument("--config", default="{}", help="LoopConfig fields: a JSON object or file")
    p.add_argument("--jobs", type=int, default=2)
    return p


def _report(args, config: dict, step, ref, junk, quiet) -> dict:
    """The streams' results as the issue-4 criteria read them (`_setup` has run in this
    process: the pre-drift error is of the same session the workers used)."""
    b, n = args.base, args.seeds
    before = ls.mean_error_px(_STATE["pred"], _STATE["truth"], _STATE["scr"])
    onset = ls.DriftSchedule().at_label
    mean_trace = np.mean([e for _, e in step], axis=0)
    ratios = np.array([r for r, _ in junk])
    offs = np.concatenate([o for o, _ in quiet])
    return {
        "loop": args.loop_module or "gazeloop.calibration.drift.loop",
        "config": config,
        "session": args.session,
        "seeds": f"{b}..{b + n - 1}",
        "labels_to_recover_per_seed": ls.recovery_summary([m for m, _ in step]),
        "known_onset_reference_per_seed": ls.recovery_summary([m for m, _ in ref]),
        "labels_to_recover_of_seed_mean_trace": ls.labels_to_recover(mean_trace, before, onset),
        "junk30_after_over_drifted": {
            "worst": round(float(ratios.max()), 3),
            "mean": round(float(ratios.mean()), 3),
        },
        "no_drift_offset_px": {
            "rms": round(float(np.sqrt(np.mean(offs**2))), 1),
            "p99": round(float(np.percentile(offs, 99)), 1),
            "runs_ever_over_100px": round(float(np.mean([o.max() > 100 for o, _ in quiet])), 3),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
