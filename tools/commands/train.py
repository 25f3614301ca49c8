"""`gazeloop train` and `gazeloop export`: fine-tune the gaze network on sessions and labels,
and ship it as ONNX into the model registry the fast path watches.

On the CUDA box the same command scales with `accelerate launch -m gazeloop.tools.cli
train ...` (accelerate picks the GPUs; bf16 is used when CUDA is present); only the main
process exports and registers.

With --export the best checkpoint goes through the promotion gate (`trainer.gate`): it is
registered either way, and becomes the model the fast path serves only if it beats its
parent, by leave-one-target-out calibration error, on whole sessions it never trained on
(--holdout, or else held-out session folders of --data).

Personal retraining: --labels STORE exports a label store's accepted labels (with images) to
a session folder inside the run folder and trains on it beside any --data (the user's
calibration sessions); the exported labels are never what the gate judges on. --tune head
trains only the fully connected head (the backbone frozen), --tune last the last conv block
as well (trainer.tune).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import NamedTuple

from gazeloop.calibration.store.atomic import check_writable
from gazeloop.tools.commands._args import (
    add_registry_args,
    distinct_paths,
    non_negative_int,
    positive_float,
    positive_int,
    read_config_file,
    real_path,
    registry_root,
)
from gazeloop.tools.errors import UserError
from gazeloop.trainer.readers.sessions import is_one_session
from gazeloop.trainer.tune import TUNE_CHOICES


def add_parser(sub) -> None:
    _add_train_parser(sub)
    _add_export_parser(sub)


def _add_train_parser(sub) -> None:
    t = sub.add_parser(
        "train",
        help="fine-tune the gaze network (masked ridge head) and export it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_data_args(t)
    _add_training_args(t)
    _add_reading_args(t)
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--export", action="store_true", help="export the best model when done")
    add_registry_args(
        t,
        user_default=None,
        user_help="whose model registry the model goes to (default: the one person whose "
        "--labels it learns, else default)",
    )
    t.add_argument("--model-id", default="gazeloop-gazenet", help="registry model id")
    t.add_argument("--json", action="store_true", help="print the summary as JSON only")
    t.set_defaults(func=run_train)


def _add_data_args(t: argparse.ArgumentParser) -> None:
    """What is trained on, what the gate judges on, and which weights train."""
    t.add_argument("--data", type=Path, action="append", default=[], help="dataset (repeatable)")
    t.add_argument(
        "--holdout",
        type=Path,
        action="append",
        default=[],
        metavar="SESSION",
        help="session folder never trained on, judged by the promotion gate (repeatable)",
    )
    t.add_argument(
        "--labels",
        type=Path,
        action="append",
        default=[],
        metavar="STORE",
        help="a label store folder (e.g. ~/.local/share/gazeloop/users/<user>/labels): its "
        "accepted labels with images are exported into the run folder and trained on "
        "(repeatable); never held out for the gate",
    )
    t.add_argument(
        "--tune",
        choices=TUNE_CHOICES,
        help="what trains: all (default), last (the last conv block and the head) or head "
        "(the fully connected head; the backbone is frozen)",
    )


def _add_training_args(t: argparse.ArgumentParser) -> None:
    """The run folder and the training settings the flags override in --config."""
    t.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, metrics)")
    t.add_argument("--config", type=Path, help="a TrainConfig JSON; flags override it")
    t.add_argument("--epochs", type=positive_int, help="passes over the data (default 10)")
    t.add_argument("--max-steps", type=positive_int, help="stop after this many steps in all")
    t.add_argument("--lr", type=_learning_rate, help="learning rate (default 1e-5)")
    t.add_argument("--seed", type=_seed, help="seed of the split and the episodes (default 0)")
    t.add_argument(
        "--calib-min", type=positive_int, help="calibration targets per episode, at least"
    )
    t.add_argument("--calib-max", type=positive_int, help="... and at most")


def _add_reading_args(t: argparse.ArgumentParser) -> None:
    """How the data is read where it does not say so itself: its screen, split, mirroring."""
    t.add_argument(
        "--screen-px",
        type=positive_int,
        nargs=2,
        metavar=("W", "H"),
        help="screen of session folders without a session.json and of --labels stores "
        "(else read from the user's profiles beside the store); ignored elsewhere, said so",
    )
    t.add_argument(
        "--split",
        choices=("train", "val", "test"),
        default="train",
        help="which split of a released dataset to read (GazeCapture info.json Dataset, "
        "ETH-XGaze train_test_split.json); default train",
    )
    t.add_argument("--mirrored", action="store_true", help="session images are selfie views")


def _add_export_parser(sub) -> None:
    e = sub.add_parser("export", help="export a training checkpoint to ONNX and register it")
    e.add_argument("checkpoint", type=Path, help="model.safetensors of a training run")
    e.add_argument("--out", type=Path, help="ONNX file (default: beside the checkpoint)")
    add_registry_args(
        e,
        user_help="whose model registry (default: default; `train --export` registers into "
        "the one person's whose --labels it learnt)",
    )
    e.add_argument("--no-register", action="store_true", help="only write the ONNX file")
    e.add_argument(
        "--promote", action="store_true", help="serve it now (skips the gate: your decision)"
    )
    e.add_argument(
        "--model-id", default="gazeloop-gazenet", help="registry model id (gazeloop-gazenet)"
    )
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=run_export)


def _learning_rate(text: str) -> float:
    from gazeloop.trainer.config import MAX_LR  # why the bound: there

    v = positive_float(text)
    if v > MAX_LR:
        raise argparse.ArgumentTypeError(
            f"must be a positive number up to {MAX_LR:g}, got {text!r}"
        )
    return v


_learning_rate.__name__ = "a learning rate"  # argparse names the type in its messages


def _seed(text: str) -> int:
    from gazeloop.trainer.config import MAX_SEED

    v = non_negative_int(text)
    if v > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_SEED}, got {text!r}")
    return v


_seed.__name__ = "a seed"


def _config_doc(args) -> dict:
    return read_config_file(args.config, "training config", "TrainConfig") if args.config else {}


def _export_labels(args, doc: dict) -> list:
    """Each --labels store exported into the run folder (trainer.labels), before the
    config is built: the exports are training data like any --data session. Under several
    processes (`accelerate launch`, torchrun) the main process exports first and the others
    then read its export, as a resumed run does. `doc`: the --config file's contents."""
    stores = getattr(args, "labels", None) or []
    if not stores:
        return []
    from gazeloop.trainer.labels import LabelExportError, export_store

    resume = bool(args.resume or doc.get("resume"))
    screen = tuple(args.screen_px) if args.screen_px else None
    held_out = _judged_on(args, doc)

    def export_all(reuse: bool, say: bool) -> list:
        exports = []
        for i, store in enumerate(stores):
            try:
                exp = export_store(
                    store, args.out, i, screen_px=screen, resume=reuse, held_out=held_out
                )
            except LabelExportError as e:
                raise UserError(str(e)) from None
            how = "kept from the run's start" if exp.reused else f"of {exp.accepted} accepted"
            if say:
                print(
                    f"note: {store}: {exp.exported} labels {how} -> {exp.session} "
                    f"(screen {exp.screen.px[0]}x{exp.screen.px[1]} from {exp.screen_from})"
                    + _left_out(exp.skipped),
                    file=sys.stderr,
                )
            exports.append(exp)
        return exports

    return _main_process_first(lambda main: export_all(resume or not main, main))


def _judged_on(args, doc: dict) -> list[Path]:
    """What the gate may judge on, resolved, for the export to leave out labels of runs
    that replayed it: the named holdouts (--holdout, else the config's); with none named,
    every --data session, since the gate then holds out the last quarter of them (the
    others are trained on already: their replays add nothing but the same frames twice)."""
    named = args.holdout or [e["path"] for e in _listed(doc, "holdout")]
    return [real_path(p) for p in (named or args.data)]


def _main_process_first(work):
    """`work(main)` in this process; under several processes (`accelerate launch`,
    torchrun) the main process first, and the others then read what it wrote."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return work(True)
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # as trainer.train's Accelerator
    with state.main_process_first():
        return work(state.is_main_process)


def _refuse_earlier_run(args, doc: dict) -> dict | None:
    """The trainer's own refusal of an --out that holds another run, asked before anything
    is read or written (label exports would replace that run's data, preprocessing would
    fill its cache); a damaged checkpoint to resume is refused here too. → the config of
    the run a resume goes on with, or None."""
    try:
        from gazeloop.trainer.checkpoint import earlier_run, read_trainer_state
        from gazeloop.trainer.config import TrainError
        from gazeloop.trainer.model import CheckpointError
    except ImportError as e:
        raise UserError(
            f"training needs the trainer extra: pip install 'gazeloop[trainer]' ({e})"
        ) from e
    try:
        found = earlier_run(args.out, bool(args.resume or doc.get("resume")))
        return None if found is None else read_trainer_state(found).get("config")
    except (TrainError, CheckpointError) as e:
        raise UserError(str(e)) from None


def _config(
    args, exports: list | None = None, doc: dict | None = None, resumed: dict | None = None
):
    """The TrainConfig: the --config file's contents (`doc`, read here when not given)
    under the flags; `resumed`: the config of the run a resume goes on with."""
    try:
        from gazeloop.trainer.datasets import DataSource
        from gazeloop.trainer.train import TrainConfig
    except ImportError as e:
        raise UserError(
            f"training needs the trainer extra: pip install 'gazeloop[trainer]' ({e})"
        ) from e
    data: dict = _config_doc(args) if doc is None else doc
    exports = list(exports or [])
    labels = [DataSource(path=e.session, person=e.person) for e in exports]
    if args.data:
        data["data"] = _sources(args, args.data, split=getattr(args, "split", None))
        _screen_px_notes(data["data"])
    if args.holdout:
        data["holdout"] = _sources(args, args.holdout)
    data["out_dir"] = str(args.out)
    for k in ("epochs", "max_steps", "lr", "seed", "calib_min", "calib_max", "tune"):
        v = getattr(args, k, None)
        if v is not None:
            data[k] = v
    if args.resume:
        data["resume"] = True
    if not data.get("data") and not labels:
        raise UserError(
            "no training data: give --data PATH (a session folder, a dataset...) or --labels STORE"
        )
    holdout = _holdout_sources(data, args)
    _refuse_unjudgeable(data, holdout, args)
    _check_init(data)
    if "calib_min" not in data and data.get("resume") and "calib_min" in (resumed or {}):
        # A resumed run goes on with its own calib_min: fitting it again would preprocess
        # these sources into the run's cache before the trainer has judged them its own.
        data["calib_min"] = resumed["calib_min"]
    if "calib_min" not in data:
        # Validated with the smallest calib_min first: the fit needs the data, the cache and
        # the fast path's settings, and may lower the default below a given calib_max.
        cfg = _validated(TrainConfig, data | {"holdout": [], "calib_min": 1}, args)
        fitted = _fit_calib_min(cfg, holdout, labels)
        if fitted is not None:
            data["calib_min"] = fitted
    cfg = _validated(TrainConfig, data | {"holdout": []}, args)
    return _with_holdout(cfg, holdout, labels)


def _check_init(data: dict) -> None:
    """The model a fresh run starts from (`init`), read before any data is: a wrong path was
    said only after the sessions had been preprocessed into the run folder (to fit
    calib_min). A resume starts from its checkpoint, not from `init`."""
    from gazeloop.trainer.model import CheckpointError, read_checkpoint_info

    if data.get("init") and not data.get("resume"):
        try:
            read_checkpoint_info(data["init"])
        except CheckpointError as e:
            raise UserError(f"init: {e}") from None


def _sources(args, paths: list[Path], **split) -> list[dict]:
    """`paths` (--data, or --holdout) as the config's data sources, each read with the screen
    and mirroring the flags give; `split`: the released datasets' split, for --data only."""
    from gazeloop.trainer.datasets import DataSource

    return [
        DataSource(
            path=p,
            screen_px=tuple(args.screen_px) if args.screen_px else None,
            mirrored=True if args.mirrored else None,
            **split,
        ).model_dump(mode="json")
        for p in paths
    ]


def _validated(model, doc, args, where: str = ""):
    """`model.model_validate(doc)`, a bad field said in one line (the first of them)."""
    from pydantic import ValidationError

    from gazeloop.calibration.problems import first_problem

    try:
        return model.model_validate(doc)
    except ValidationError as e:
        source = f" ({args.config})" if getattr(args, "config", None) else ""
        raise UserError(f"invalid training config{source}: {where}{first_problem(e)}") from None


def _screen_px_notes(sources: list[dict]) -> None:
    """--screen-px labels only session folders without a manifest: say where it is not
    used (stderr: --json keeps stdout to the summary alone)."""
    from gazeloop.trainer.datasets import DataSource, screen_px_notes

    for note in screen_px_notes([DataSource.model_validate(s) for s in sources]):
        print(f"note: {note}", file=sys.stderr)


def _holdout_sources(data: dict, args) -> list:
    """The named holdouts (--holdout, else the config's `holdout`) as DataSources."""
    from gazeloop.trainer.datasets import DataSource

    named = data.get("holdout") or []
    if not isinstance(named, list):
        named = [named]  # a lone entry: its own validation says what is wrong with it
    return [_validated(DataSource, h, args, f"holdout.{i}.") for i, h in enumerate(named)]


NOTHING_TO_JUDGE = (
    "--export: the promotion gate has no session to judge on: name one with --holdout "
    "SESSION or give --data at least two sessions (or train without --export and promote by "
    "hand: gazeloop export --promote)"
)


def _refuse_unjudgeable(data: dict, holdout: list, args) -> None:
    """--export with no session for the gate: said before the data is preprocessed (the
    calib_min fit) and trained on, not after."""
    from gazeloop.trainer.datasets import DataSource
    from gazeloop.trainer.gate import choose_holdout

    if not getattr(args, "export", False) or holdout:
        return
    sources = [
        _validated(DataSource, d, args, f"data.{i}.") for i, d in enumerate(data.get("data") or [])
    ]
    if not choose_holdout(sources, []).holdout:
        raise UserError(NOTHING_TO_JUDGE)


def _with_holdout(cfg, named: list, labels: list | None = None):
    """The config with the gate's sessions out of the training data (trainer.gate). The
    label-store exports always train and are never held out: the gate judges on sessions
    (--holdout, or --data sessions, inside folders too) and not on the labels being trained
    on. (--export with no session to judge on was refused before: `_refuse_unjudgeable`.)"""
    from gazeloop.trainer.gate import choose_holdout

    labels = list(labels or [])
    choice = choose_holdout(cfg.data, named)
    if not choice.train and not labels:
        raise UserError("every --data source is also a --holdout: nothing left to train on")
    notes = list(choice.notes)
    if labels and not choice.holdout:
        notes.append(
            "the gate has no held-out session (the exported labels are never one): name a "
            "session with --holdout SESSION, or nothing is promoted"
        )
    for note in notes:  # stderr: --json keeps stdout to the summary alone
        print(f"note: {note}", file=sys.stderr)
    return cfg.model_copy(update={"data": choice.train + labels, "holdout": choice.holdout})


def _fit_calib_min(cfg, holdout: list, labels: list) -> int | None:
    """An episode calibrates on `calib_min` targets and asks about one more, so the default
    (8) needs 9 training targets per person, and a lone person also lends some targets to
    validation (`trainer.split`): a 4-corner or a 9-point session given as --data gets what
    its own targets allow instead, said on stderr (--json keeps stdout to the summary).
    What counts is the targets with a usable frame, not the label files: a folder whose
    stills show no face has labels and nothing to train on, and is left out, said so."""
    counts = _usable_targets(cfg, holdout, labels)
    if not counts:
        return None
    default = type(cfg).model_fields["calib_min"].default
    smallest, fewest = min(counts.items(), key=lambda kv: kv[1])
    held = max(1, round(cfg.val_fraction * fewest)) if cfg.val_fraction > 0 else 0
    fits = fewest - held - 1  # training targets, less the one an episode asks about
    if not 1 <= fits < default:
        return None
    print(
        f"note: --calib-min {fits}: the smallest --data session has {fewest} usable targets "
        f"({smallest}; {held} held out for validation), too few for the default {default} "
        "plus one",
        file=sys.stderr,
    )
    return fits


def _usable_targets(cfg, holdout: list, labels: list) -> dict[str, int]:
    """Usable targets per session folder that trains, as the trainer will prepare them:
    through its preprocessing cache, which the trainer then reads instead of running the
    fast path again. Empty when something other than session folders trains (datasets
    have their own targets and sizes)."""
    from gazeloop.trainer.datasets import load_data
    from gazeloop.trainer.gate import choose_holdout

    sources = choose_holdout(cfg.data, holdout).train + list(labels)
    if not sources or not all(is_one_session(s.path) for s in sources):
        return {}

    # The trainer reads the same units again (from the cache this pass fills): the prefix
    # says why each unit is reported twice.
    def say(m: str) -> None:
        print(f"calib-min {m}", file=sys.stderr, flush=True)

    loaded = _main_process_first(
        lambda main: load_data(
            sources,
            cache_dir=cfg.cache_dir or cfg.out_dir / "cache",
            fastpath_config=cfg.fastpath,
            min_screen_samples=1,  # every person counted here; the trainer excludes
            progress=say if main else None,
        )
    )
    counts = {}
    for unit in loaded.units:
        if unit.targets:
            counts[unit.unit] = unit.targets
            continue
        why = unit.error or _commonest(s.why for s in loaded.skipped if s.source == unit.unit)
        print(
            f"warning: {unit.unit}: no usable frames ({why or 'no labelled frame'}); left out "
            "of the --calib-min choice",
            file=sys.stderr,
        )
    return counts


def _commonest(reasons) -> str | None:
    from collections import Counter

    top = Counter(reasons).most_common(1)
    return top[0][0] if top else None


def run_train(args: argparse.Namespace) -> int:
    # The check below, the preprocessing and the gate (once per model) read the same
    # session folders: each rejected label file is said once, not once per read.
    with _each_message_once(logging.getLogger("gazeloop.calibration.store.session")):
        return _run_train(args)


@contextlib.contextmanager
def _each_message_once(logger: logging.Logger):
    seen: set[str] = set()

    def first_time(record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in seen:
            return False
        seen.add(text)
        return True

    logger.addFilter(first_time)
    try:
        yield
    finally:
        logger.removeFilter(first_time)


def _check_sources(args, doc: dict) -> None:
    """Every --data and --holdout read before anything trains, with the messages the
    trainer and the gate would give: a bad --holdout was found only after training and
    the ONNX export (hours), a bad --data folder left out with a warning among many. The
    flags' lists, else the --config file's (the flags replace them: `_config`)."""
    from gazeloop.calibration.store.session import SessionError, read_session
    from gazeloop.trainer.datasets import detect_kind

    data, holdout = _named_sources(args, doc, "data"), _named_sources(args, doc, "holdout")
    # The same frames twice: validation would grade the model on frames it trained on (51 px
    # against an honest 168, an evit sitting given as S and S/). A --data that is also a
    # --holdout is taken out of training (`trainer.gate.choose_holdout`).
    for named, why in ((data, "each source once"), (holdout, "each session once")):
        if named:
            distinct_paths([n.path for n in named], named[0].flag, why)
    sessions = []
    for n in data + holdout:
        try:
            if n.key == "data" and not is_one_session(Path(n.path)):
                detect_kind(Path(n.path))  # a dataset: its reader's checks come with the load
                continue
            session = read_session(Path(n.path), screen_px=n.screen_px, mirrored=n.mirrored)
        except (SessionError, ValueError) as e:
            raise UserError(f"{n.flag}: {e}") from None
        if n.key == "data":
            if session.screen_px is None:
                raise UserError(
                    f"{n.flag}: {n.path}: screen size unknown: no session.json manifest and "
                    "no --screen-px W H (its labels are pixels of that screen)"
                )
            sessions.append(n)
    _distinct_frames(sessions)


class _Named(NamedTuple):
    key: str  # "data" or "holdout"
    flag: str  # how the user gave it: --data, or "data in CONFIG"
    path: str | Path  # as given: a config's "S/" stays so in messages
    screen_px: tuple[int, int] | None
    mirrored: bool | None


def _named_sources(args, doc: dict, key: str) -> list[_Named]:
    """The run's `key` ("data" or "holdout") sources: the flag's, else the --config file's
    (an entry that is no path is the config check's to say)."""
    screen = tuple(args.screen_px) if args.screen_px else None
    flagged = getattr(args, key)
    if flagged:
        return [
            _Named(key, f"--{key}", Path(p), screen, True if args.mirrored else None)
            for p in flagged
        ]
    out = []
    for entry in _listed(doc, key):
        given = entry.get("screen_px")
        px = tuple(given) if isinstance(given, list) and len(given) == 2 else screen
        mirrored = entry.get("mirrored") if isinstance(entry.get("mirrored"), bool) else None
        out.append(_Named(key, f"{key} in {args.config}", entry["path"], px, mirrored))
    return out


def _listed(doc: dict, key: str) -> list[dict]:
    """The --config file's `key` entries that name a path, each as a dict (a bare path
    string is one too); what is no path is the config check's to say."""
    listed = doc.get(key) or []
    entries = (
        {"path": e} if isinstance(e, str) else e
        for e in (listed if isinstance(listed, list) else [listed])
    )
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("path"), str)]


def _distinct_frames(sessions: list[_Named]) -> None:
    """Refuse two --data sessions that hold the same frames (the same capture times): a
    copy is the same session twice, as a second spelling of its path is (`distinct_paths`)."""
    from gazeloop.calibration.store.session import copy_among, frame_times

    seen: list[tuple[_Named, set[int]]] = []
    for n in sessions:
        mine = frame_times(Path(n.path))
        copy = copy_among(mine, seen)
        if copy is not None:
            other, both = copy
            raise UserError(
                f"{n.flag} {n.path} holds {both} frames of {other.flag} {other.path} (the "
                "same capture times: a copy?): each source once"
            )
        seen.append((n, mine))


def _run_train(args: argparse.Namespace) -> int:
    from gazeloop.trainer.model import CheckpointError
    from gazeloop.trainer.train import TrainError, resumed_config, train

    check_writable(args.out, folder=True)  # before the data is read and the model built
    doc = _config_doc(args)
    resumed = _refuse_earlier_run(args, doc)
    _check_sources(args, doc)
    exports = _export_labels(args, doc)
    args.user = _registry_user(args, exports)
    cfg = _config(args, exports, doc, resumed)
    try:
        if resumed is not None:  # the saved settings win; the gate below judges with them
            cfg = resumed_config(cfg, resumed, args.out)
        summary = train(cfg)  # progress on stderr: --json's summary is stdout's alone
    except (TrainError, CheckpointError) as e:
        raise UserError(str(e)) from None
    out = _train_summary(summary, exports)
    ok = summary["stopped"] == "finished" or str(summary["stopped"]).startswith("early")
    if not summary.get("main_process", True):  # the main one exports, registers, reports
        # Every process says it was interrupted, as the main one. Out without the
        # interpreter's teardown (`cli.main`, after its own): there gloo's
        # threads meet a half-torn-down process now and then, even after the process group
        # was taken down (`train._end_processes`), and end in `terminate called without an
        # active exception` (SIGABRT), which torchrun reports as the whole run failing (seen
        # again on 2026-12-07, under load). Its work is done and its files are closed.
        args.leave_now = int(os.environ.get("WORLD_SIZE", "1")) > 1
        return 128 + int(summary["signal"]) if summary.get("signal") else 0 if ok else 1
    out["promoted"] = False
    if summary.get("signal"):  # interrupted: nothing to judge yet; the run says how to go on
        out["gate"] = {"promoted": False, "reason": "interrupted before the end; not exported"}
        print(json.dumps(out, default=str) if args.json else _readable(out))
        return 128 + int(summary["signal"])
    if args.export and summary.get("best_checkpoint"):
        out["export"] = _ship(cfg, summary, args)
        out["promoted"] = out["export"]["promoted"]
        out["gate"] = out["export"].pop("gate")
    elif args.export:
        out["gate"] = {"promoted": False, "reason": "no best checkpoint to export"}
    else:
        out["gate"] = {"promoted": False, "reason": "not exported (pass --export)"}
    print(json.dumps(out, default=str) if args.json else _readable(out))
    return 0 if ok else 1


def _registry_user(args, exports) -> str:
    """Whose registry a trained model goes to: --user, else the one person whose --labels
    it learnt (stores in a user's folder: one elsewhere says nothing of whose it is), else
    `default`. Refused before training: one person's labels registered for another (the
    default user, when --user was left out) served her model to him."""
    from gazeloop.trainer.labels import layout_user

    owners = sorted({u for u in (layout_user(e.store) for e in exports) if u is not None})
    if args.user is None:
        return owners[0] if len(owners) == 1 else "default"
    if len(owners) == 1 and owners[0] != args.user and args.registry is None:
        raise UserError(
            f"the --labels are {owners[0]}'s: --user {args.user} would serve a model trained "
            f"on them to {args.user}; give --user {owners[0]} (or --registry DIR)"
        )
    return args.user


def _train_summary(summary: dict, exports) -> dict:
    """What `train` prints (and `--json` writes) of the trainer's summary; the gate's verdict
    is added by the caller."""
    out = {
        "epochs": summary["epochs"],
        "steps": summary["steps"],
        "resumed_from_step": summary.get("resumed_from_step"),
        "losses": [round(float(v), 5) for v in summary["losses"]],
        "val_error_px": _num(summary["val_error_px"]),
        "val_error_pct_diag": _num(summary["val_error_pct_diag"]),
        "val_before": {k: _num(v) for k, v in (summary.get("val_before") or {}).items()},
        "wall_time_s": round(summary["wall_time_s"], 2),
        "samples_per_s": _num(summary["samples_per_s"]),
        # what the run was on: `--mixed-precision auto` resolves per machine
        "device": summary.get("device"),
        "mixed_precision": summary.get("mixed_precision"),
        "num_processes": summary.get("num_processes"),
        "stopped": summary["stopped"],
        "split": summary["split"],
        "best_checkpoint": summary["best_checkpoint"],
        "tune": summary.get("tune") or {},
    }
    if exports:
        by_unit = summary.get("samples_by_unit") or {}
        out["labels"] = [e.summary(by_unit) for e in exports]
        if summary.get("excluded_persons"):  # e.g. a store with too few targets to train
            out["excluded_persons"] = summary["excluded_persons"]
    return out


def _ship(cfg, summary, args) -> dict:
    from gazeloop.tools.runtime.interrupts import terminate_as_interrupt
    from gazeloop.tools.runtime.progress import Progress
    from gazeloop.trainer.export import ExportParityError
    from gazeloop.trainer.model import CheckpointError
    from gazeloop.trainer.registry import RegistryError
    from gazeloop.trainer.ship import ship

    brief = {k: summary[k] for k in ("samples", "train_persons", "steps", "split")}
    n = len(cfg.holdout)
    # Minutes on large holdouts, with nothing else said (stderr: --json keeps stdout).
    print(
        f"gate: exporting, then the parent and the new model through the fast path on {n} "
        f"held-out session{'s' if n != 1 else ''}",
        file=sys.stderr,
        flush=True,
    )
    try:
        with terminate_as_interrupt(), Progress("gazeloop train: gate"):
            return ship(
                cfg,
                Path(summary["best_checkpoint"]),
                registry_root(args),
                args.model_id,
                training_summary=brief,
            )
    except (ExportParityError, CheckpointError, RegistryError, ValueError) as e:
        raise UserError(f"export refused: {e}") from None
    except KeyboardInterrupt:
        # The registry takes a model whole or not at all; registered and passed but not yet
        # promoted, the relaunch promotes it (`ship._finish_promotion`).
        print(
            "gazeloop train: interrupted while exporting, judging or registering: the new "
            "model is not served; the same command with --resume --export goes on from where "
            "it stopped (exports and judges it again, or promotes what its gate passed)",
            file=sys.stderr,
        )
        raise


def _left_out(skipped: dict[str, int]) -> str:
    """Why labels of a store were not exported, for the lines a person reads (it was said
    in --json alone: '12 of 109 accepted', with 97 on another screen unsaid)."""
    from gazeloop.trainer.labels import left_out

    return f"; left out: {left_out(skipped)}" if skipped else ""


def _readable(out: dict) -> str:
    """The summary for a person: the run, then what the gate decided and why."""
    from gazeloop.trainer.gate import GateResult

    lines = [
        f"trained {out['steps']} steps ({out['epochs']} epochs) in {out['wall_time_s']} s on "
        f"{out['device']} ({out['num_processes']} process(es), precision "
        f"{out['mixed_precision']}); stopped: {out['stopped']}",
        f"split: {out['split']}",
        f"validation: {out['val_error_px']} px ({out['val_error_pct_diag']} % diag); before "
        f"training {out['val_before'].get('val_px')} px",
        f"best checkpoint: {out['best_checkpoint']}",
    ]
    tune = out.get("tune") or {}
    if tune:
        lines.append(
            f"tune {tune['tune']}: {tune['trained_parameters']} parameters trained, "
            f"{tune['frozen_parameters']} frozen"
        )
    for lab in out.get("labels", []):
        n = lab["accepted_labels"]
        accepted = f" ({n} accepted)" if n is not None else ""
        lines.append(
            f"labels: {lab['store']}: {lab['exported_labels']} exported{accepted}, "
            f"{lab.get('frames', 0)} frames read (validation included)"
            + _left_out(lab.get("skipped") or {})
        )
    gate = out.get("gate") or {}
    if "sessions" in gate:
        lines.append(GateResult.model_validate(gate).text())
        if gate.get("margin_px") is not None:
            lines.append(
                f"  margin (parent − candidate) {gate['margin_px']} ± {gate['margin_se_px']} px "
                f"(SE over {gate['se_basis']}); needed more than {gate['needed_px']} px; "
                f"parent: {gate['parent']}"
            )
    else:
        lines.append(f"gate: NOT promoted: {gate.get('reason')}")
    exp = out.get("export")
    if exp:
        if exp.get("not_promoted"):
            lines.append(f"NOT promoted after all: {exp['not_promoted']}")
        lines.append(
            f"registered v{exp['version']} at {exp['registered']}; the fast path serves "
            + (f"v{exp['served_version']}" if exp["served_version"] else "the stock model")
        )
    return "\n".join(lines)


def _num(v):
    """JSON has no NaN: unknown numbers are null."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return round(v, 3) if isinstance(v, float) else v


def _export(ckpt: Path, out: Path | None, registry, model_id: str, promote: bool = False):
    from gazeloop.trainer.export import ExportParityError, export_onnx
    from gazeloop.trainer.model import CheckpointError, load_checkpoint
    from gazeloop.trainer.registry import ModelRegistry, RegistryError

    try:
        model = load_checkpoint(ckpt)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    out = out or ckpt.with_suffix(".onnx")
    from gazeloop.trainer.ship import STOCK_ID, card_metrics

    card = {"model_id": model_id, "parent_model_id": STOCK_ID}
    # The checkpoint's own validation numbers (a run's best/ keeps them), not the last epoch's.
    card["metrics"] = card_metrics(ckpt)
    try:
        path = export_onnx(model, out, card=card)
    except ExportParityError as e:
        raise UserError(f"export refused: {e}") from None
    result = {"onnx": str(path)}
    if registry is not False:
        try:
            entry, again = _register_once(ModelRegistry(registry), path, model_id, promote)
        except RegistryError as e:
            raise UserError(str(e)) from None
        result["registered"] = str(entry.onnx_path)
        result["version"] = entry.version
        result["promoted"] = promote
        if again:
            result["already_registered"] = True
    return result


def _register_once(reg, onnx: Path, model_id: str, promote: bool):
    """Register the exported model, or find it registered already (the same bytes: the same
    checkpoint exported again), promoted when asked. → (entry, whether it was there). An
    export run twice made two versions of one model, as `train --resume --export` does not."""
    from gazeloop.fastpath.models import sha256_file

    entry = reg.holding(model_id, sha256_file(onnx))
    if entry is None:
        return reg.register(onnx, promote=promote, reason="gazeloop export --promote"), False
    print(f"note: {onnx} is already registered as v{entry.version}", file=sys.stderr)
    if promote:
        reg.promote(entry.version, model_id, reason="gazeloop export --promote")
    return entry, True


def run_export(args: argparse.Namespace) -> int:
    if args.promote and args.no_register:
        raise UserError(
            "export: --promote serves the model from the registry, --no-register keeps it out "
            "of it: give one of them"
        )
    check_writable(args.out or args.checkpoint.with_suffix(".onnx"), folder=False)
    reg = False if args.no_register else registry_root(args)
    res = _export(args.checkpoint, args.out, reg, args.model_id, args.promote)
    print(json.dumps(res) if args.json else "\n".join(f"{k}: {v}" for k, v in res.items()))
    return 0
