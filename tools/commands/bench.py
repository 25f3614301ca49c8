"""`gazeloop bench ...`: speed measurements with JSON output (never timed assertions), and
the drift loop on real sessions with a simulated oracle (`bench loop`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from gazeloop.calibration.store.atomic import write_plot
from gazeloop.tools.commands._args import (
    add_broker_args,
    add_fastpath_args,
    add_mirrored_arg,
    broker_settings,
    check_plot_path,
    fastpath_config,
    finite_float,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    real_path,
    resolved_settings,
    run_config,
)
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime import bench_loop
from gazeloop.tools.runtime.bench_fastpath import bench_fastpath, pool_runs, single_thread
from gazeloop.tools.runtime.bench_loop import LoopBenchOptions, bench_sessions
from gazeloop.tools.runtime.bench_loop_text import loop_text, plot_injected, plot_sittings
from gazeloop.tools.runtime.progress import Progress
from gazeloop.tools.runtime.provenance import measured_on

# The JSON benchmarks print JSON either way; --json makes it one line for a pipe.
ONE_LINE = "the JSON on one line (default: indented)"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="benchmarks: JSON (fastpath, eyetrax, mapping, mqtt) or text (loop)"
    )
    bsub = p.add_subparsers(dest="bench", required=True, metavar="WHAT")
    _add_fastpath_parser(bsub)
    _add_eyetrax_parser(bsub)
    _add_mapping_parser(bsub)
    _add_mqtt_parser(bsub)
    _add_loop_parser(bsub)
    _add_loop_update_parser(bsub)
    _add_clicks_parser(bsub)


def _add_fastpath_parser(sub) -> None:
    f = sub.add_parser(
        "fastpath",
        help="per-stage latency of the fast path",
        description="Per-frame latency percentiles of each fast-path stage on one thread, "
        "frames resized to 640x480, looping the source if it is short.",
    )
    f.add_argument("--source", required=True, help="video file, session folder or camera index")
    f.add_argument("--frames", type=positive_int, default=300, help="frames measured (default 300)")
    f.add_argument("--json", action="store_true", help=ONE_LINE)
    f.add_argument(
        "--oracle-load",
        action="store_true",
        help="oracle worker idle (present, nothing submitted) vs busy on a CPU-heavy backend, "
        "alternating; report both",
    )
    f.add_argument(
        "--oracle-in",
        choices=("process", "thread"),
        default="process",
        help="where the busy oracle runs: a child process (what `gazeloop run` does) or a "
        "thread of this process (default: process)",
    )
    f.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="with --oracle-load: idle/busy alternations, each of --frames (default 3)",
    )
    add_fastpath_args(f)
    f.set_defaults(func=run_fastpath)


def _add_eyetrax_parser(sub) -> None:
    e = sub.add_parser(
        "eyetrax",
        help="the whole fast path beside EyeTrax's extract_features, same frames, interleaved",
        description="Per-frame milliseconds (decode excluded) of gazeloop's fast path and of "
        "EyeTrax's GazeEstimator.extract_features on the same 640x480 frames, alternating "
        "which goes first; reports both and our p50/p99 over theirs. Needs `pip install "
        "eyetrax` (it pins numpy<2: use a separate environment).",
    )
    e.add_argument("--source", required=True, help="video file or session folder")
    e.add_argument("--frames", type=positive_int, default=300, help="frames measured (default 300)")
    e.add_argument("--json", action="store_true", help=ONE_LINE)
    add_fastpath_args(e)
    e.set_defaults(func=run_eyetrax)


def _add_mapping_parser(sub) -> None:
    m = sub.add_parser(
        "mapping",
        help="time of fitting a calibration mapping (nested leave-one-target-out included)",
    )
    m.add_argument("--targets", type=positive_int, default=25, help="targets (default 25)")
    m.add_argument("--frames", type=positive_int, default=30, help="frames per target (default 30)")
    m.add_argument("--features", type=positive_int, default=11, help="feature count (default 11)")
    m.add_argument(
        "--repeats", type=positive_int, default=20, help="fits timed per mapping (default 20)"
    )
    m.add_argument("--mapping", action="append", help="mapping(s) to time (default: all)")
    m.add_argument("--json", action="store_true", help=ONE_LINE)
    m.set_defaults(func=run_mapping)


def _add_loop_update_parser(sub) -> None:
    u = sub.add_parser(
        "loop-update",
        help="time of one drift-loop label update by the labels the loop holds (JSON)",
        description="Every label update of the drift loop timed on one thread, as percentiles "
        "by how many labels the loop held: the 7 key's dot is judged on the frame thread, so "
        "this is what it costs a frame (clicks are judged on a thread of their own; "
        "click_poll is what one costs the frame thread). Simulated point labels on a "
        "synthetic session: streams with no drift and with a 150 px step half way.",
    )
    u.add_argument(
        "--labels", type=positive_int, default=400, help="labels per stream (default 400)"
    )
    u.add_argument(
        "--streams",
        type=positive_int,
        default=3,
        help="pairs of streams, no drift and a step (default 3)",
    )
    u.add_argument(
        "--interval-s",
        type=positive_float,
        default=1.0,
        help="seconds between labels; the loop drops labels older than its window_s, so "
        "this sets how many it can hold (default 1.0: a busy clicker)",
    )
    u.add_argument("--json", action="store_true", help=ONE_LINE)
    u.set_defaults(func=run_loop_update)


def _add_clicks_parser(sub) -> None:
    c = sub.add_parser(
        "clicks",
        help="the frame thread's time with clicks judged on it or on the label judge (JSON)",
        description="The real fast path and a profile on a recording's frames, paced at --hz, "
        "a click label near the estimate every --every frames (a synthetic load): each "
        "frame's time with the drift loop's update on the frame thread, and with the label "
        "posted to the label judge's thread as `gazeloop run` does; the two alternate "
        "--rounds times.",
    )
    c.add_argument("--profile", type=real_path, required=True, help="a profile (profile fit)")
    c.add_argument("--source", required=True, help="video file or session folder")
    c.add_argument("--frames", type=positive_int, default=3000, help="frames per run (3000)")
    c.add_argument("--every", type=positive_int, default=10, help="a click every N frames (10)")
    c.add_argument("--hz", type=positive_float, default=60.0, help="frame rate paced (60)")
    c.add_argument("--rounds", type=positive_int, default=2, help="runs of each mode (2)")
    c.add_argument("--json", action="store_true", help=ONE_LINE)
    add_fastpath_args(c)
    c.set_defaults(func=run_clicks)


def _add_mqtt_parser(sub) -> None:
    b = sub.add_parser("mqtt", help="gaze stream latency through a broker (JSON)")
    add_broker_args(b)
    b.add_argument(
        "--rate", type=positive_float, default=60.0, help="samples per second (default 60)"
    )
    b.add_argument(
        "--seconds", type=positive_float, default=5.0, help="how long to stream (default 5)"
    )
    # Every benchmark takes --json; this one prints JSON either way.
    b.add_argument("--json", action="store_true", help="one JSON object (the default output)")
    b.set_defaults(func=run_mqtt)


def run_mqtt(args: argparse.Namespace) -> int:
    from gazeloop.tools.runtime.mqtt.bench import bench_mqtt

    settings = broker_settings(args)
    try:
        result = bench_mqtt(settings, rate_hz=args.rate, seconds=args.seconds)
    except RuntimeError as e:
        raise UserError(str(e)) from e
    json.dump(result, sys.stdout)
    print()
    return 0


def _add_loop_parser(bsub) -> None:
    p = bsub.add_parser(
        "loop",
        help="the drift loop on a real session: simulated oracle or clicks (text, or --json)",
        description=bench_loop.__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_loop_session_args(p)
    _add_loop_stream_args(p)
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="a picture: with --session alone, the error after each label for the step and "
        "the ramp (the loop beside the estimator told the onset); with --sittings, every pair "
        "(drifted, with the loop, the sitting's own calibration, the best offset)",
    )
    _add_loop_labeller_args(p)
    p.add_argument(
        "--screen-px",
        type=positive_int,
        nargs=2,
        metavar=("W", "H"),
        help="the screen of a session without a session.json",
    )
    add_mirrored_arg(p)
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    add_fastpath_args(p)
    p.set_defaults(func=run_loop)


def _add_loop_session_args(p: argparse.ArgumentParser) -> None:
    """Which recordings the loop runs on: one session, one calibrated on another, or every
    consecutive pair of sittings in a folder."""
    p.add_argument("--session", type=Path, help="a labelled session folder")
    p.add_argument(
        "--sittings",
        type=Path,
        metavar="FOLDER",
        help="instead of --session: every consecutive pair of sittings in FOLDER (same user "
        "and screen), as --calibrate-on PREV --session NEXT, and a summary",
    )
    p.add_argument(
        "--start",
        choices=("previous", "pooled"),
        default="previous",
        help="with --sittings: each pair starts from the previous sitting's profile "
        "(default), or from all the person's earlier sittings on that screen pooled, as "
        "gazeloop run starts a new sitting",
    )
    p.add_argument(
        "--calibrate-on",
        type=Path,
        metavar="OTHER_DIR",
        help="fit the mapping on this other session (same person and screen); no injected "
        "drift, labels from some of --session's targets, errors on the others",
    )


def _add_loop_stream_args(p: argparse.ArgumentParser) -> None:
    """The simulated label streams (their noise, length and seeds, and the processes they
    run on) and the drift injected into them."""
    p.add_argument(
        "--noise-px", type=non_negative_float, default=100.0, help="label noise σ per axis (100)"
    )
    p.add_argument(
        "--bias-px",
        type=finite_float,
        nargs=2,
        default=(0.0, 0.0),
        metavar=("X", "Y"),
        help="a constant error of every label (0 0)",
    )
    p.add_argument("--outlier-rate", type=fraction, default=0.0, help="share of junk labels (0)")
    p.add_argument("--labels", type=positive_int, default=60, help="labels per stream (60)")
    p.add_argument(
        "--seeds", type=positive_int, default=100, help="label streams (100); results are medians"
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="first stream's seed")
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=2,
        help="processes the label streams (with --sittings: the sittings) run on (2); the "
        "numbers do not depend on it",
    )
    p.add_argument(
        "--drift-px", type=non_negative_float, default=150.0, help="injected drift (150 px)"
    )
    p.add_argument(
        "--onset", type=non_negative_int, default=10, help="label at which the drift starts"
    )
    p.add_argument(
        "--ramp-labels", type=positive_int, default=20, help="labels the ramp takes (20)"
    )


def _add_loop_labeller_args(p: argparse.ArgumentParser) -> None:
    """Where the loop's labels come from: which targets, the calibration they correct, and
    whether a simulated oracle or clicks give them."""
    p.add_argument(
        "--label-targets",
        help="with --calibrate-on: comma-separated target ids the oracle labels (default: "
        "half the targets, a checkerboard over their columns and rows, so both halves "
        "cover the screen alike)",
    )
    p.add_argument(
        "--calibration",
        choices=("loto", "split"),
        default="loto",
        help="without --calibrate-on: loto (default) predicts each target's frames with a "
        "mapping fitted on the other targets; split fits on the first half of every "
        "target's frames and runs the loop on the second halves (as calibrating and then "
        "tracking would)",
    )
    p.add_argument(
        "--oracle",
        choices=("simulated", "clicks"),
        default="simulated",
        help="simulated (default): the target plus --noise-px noise; clicks: clicks at the "
        "targets with human timing, judged by the click rules (label noise and outliers "
        "flags do not apply)",
    )


def _loop_options(args: argparse.Namespace) -> LoopBenchOptions:
    targets = None
    if args.label_targets:
        try:
            targets = tuple(int(t) for t in args.label_targets.split(",") if t.strip())
        except ValueError:
            raise UserError(f"--label-targets {args.label_targets!r}: not integers") from None
    try:
        return LoopBenchOptions(
            noise_px=args.noise_px,
            bias_px=tuple(args.bias_px),
            outlier_rate=args.outlier_rate,
            labels=args.labels,
            oracle=args.oracle,
            seeds=args.seeds,
            seed=args.seed,
            jobs=args.jobs,
            drift_px=args.drift_px,
            onset=args.onset,
            ramp_labels=args.ramp_labels,
            label_targets=targets,
            calibration=args.calibration,
            start=args.start,
            loop=run_config(args).loop,
        )
    except ValidationError as e:
        bad = "; ".join(f"--{'-'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise UserError(f"bench loop: {bad.replace('_', '-')}") from None


def run_loop_update(args: argparse.Namespace) -> int:
    from gazeloop.tools.runtime.bench_loop_update import bench_loop_update

    with Progress(f"bench loop-update, {2 * args.streams} streams of {args.labels} labels"):
        out = bench_loop_update(args.labels, args.streams, args.interval_s)
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


def run_mapping(args: argparse.Namespace) -> int:
    from gazeloop.calibration.mapping import MAPPINGS, benchmark_fit, min_targets

    single_thread()
    out = {
        "data": "synthetic: random features and targets, no recording",
        "targets": args.targets,
        "frames_per_target": args.frames,
        "features": args.features,
        "repeats": args.repeats,
        "repeats_rbf": max(3, args.repeats // 5),  # an rbf fit takes ~0.6 s
        "measured_on": measured_on(),
        "fits": {},
    }
    # The synthetic calibration is a bare feature matrix: mappings of named features (the
    # geometric one needs eye positions and angles) have nothing to read in it.
    timed = sorted(n for n, m in MAPPINGS.items() if m.features is None)
    names = args.mapping or timed
    unknown = [n for n in names if n not in MAPPINGS]
    if unknown:
        raise UserError(f"--mapping: unknown {unknown}; this benchmark times {', '.join(timed)}")
    own = [n for n in names if n not in timed]
    if own:
        raise UserError(
            f"--mapping {own[0]}: it reads named features (eye positions and angles) that the "
            f"synthetic calibration has not got; this benchmark times {', '.join(timed)}"
        )
    too_few = {n: min_targets(n) for n in names if args.targets < min_targets(n)}
    if too_few and args.mapping:
        n, k = next(iter(too_few.items()))
        raise UserError(f"--targets {args.targets}: mapping {n!r} needs at least {k}")
    out["skipped"] = {n: f"needs at least {k} targets" for n, k in too_few.items()}
    for name in (n for n in names if n not in too_few):
        r = benchmark_fit(
            n_targets=args.targets,
            frames=args.frames,
            d=args.features,
            name=name,
            repeats=args.repeats if name != "rbf" else out["repeats_rbf"],
        )
        out["fits"][name] = {k: round(r[k], 3) for k in ("p50_ms", "p95_ms") if k in r}
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


def run_fastpath(args: argparse.Namespace) -> int:
    if args.frames < 1:
        raise UserError("--frames must be at least 1")
    cfg = fastpath_config(args)
    if args.oracle_load:
        if args.rounds < 1:
            raise UserError("--rounds must be at least 1")
        # Idle and busy alternate so that whatever else the machine does in the meantime
        # falls on both sides, not on one.
        runs: dict[str, list[dict]] = {"idle": [], "busy": []}
        for _ in range(args.rounds):
            for mode in ("idle", "busy"):
                runs[mode].append(
                    bench_fastpath(
                        args.source,
                        args.frames,
                        cfg,
                        oracle=mode,
                        oracle_in=args.oracle_in,
                        raw=True,
                    )
                )
        idle, busy = pool_runs(runs["idle"]), pool_runs(runs["busy"])
        out = {
            "rounds": args.rounds,
            "idle": idle,
            "busy": busy,
            "p99_ratio": round(busy["total"]["p99_ms"] / idle["total"]["p99_ms"], 3),
            "p50_ratio": round(busy["total"]["p50_ms"] / idle["total"]["p50_ms"], 3),
        }
    else:
        out = bench_fastpath(args.source, args.frames, cfg)
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


def run_clicks(args: argparse.Namespace) -> int:
    from gazeloop.calibration.profile import Profile, ProfileMapper
    from gazeloop.tools.runtime.bench_clicks import bench_clicks
    from gazeloop.tools.runtime.hotreload import profile_for_model

    if args.frames < args.every:
        raise UserError(f"--frames {args.frames}: fewer than one click (--every {args.every})")
    Profile.load(args.profile)  # a profile that cannot be read is said before the video is
    out = bench_clicks(
        args.source,
        fastpath_config(args),
        # as `run` maps: the profile's fit for this fast path's gaze model
        lambda fp: ProfileMapper(profile_for_model(Path(args.profile), fp)[0]),
        frames=args.frames,
        every=args.every,
        hz=args.hz,
        rounds=args.rounds,
    )
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


def run_eyetrax(args: argparse.Namespace) -> int:
    if args.threads not in (None, 1):
        raise UserError(
            f"--threads {args.threads}: the comparison runs both trackers on one thread each"
        )
    from gazeloop.fastpath import models
    from gazeloop.tools.runtime.bench_eyetrax import bench_eyetrax, eyetrax_estimator

    cfg = fastpath_config(args)
    estimator = eyetrax_estimator(str(models.resolve(models.FACE_LANDMARKER, cfg.face_model)))
    out = bench_eyetrax(args.source, args.frames, cfg, estimator)
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


def _check_folder(folder: Path, flag: str) -> None:
    if not folder.exists():
        raise UserError(f"{flag} {folder}: no such folder")
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: not a folder")


def run_loop(args: argparse.Namespace) -> int:
    opts = _loop_options(args)
    if (args.session is None) == (args.sittings is None):
        raise UserError("bench loop: give --session or --sittings (one of them)")
    if args.sittings is not None:
        return _run_sittings(args, opts)
    if args.plot is not None:
        if args.calibrate_on is not None:
            raise UserError(
                "bench loop: --plot draws an injected drift (--session alone) or the pairs of "
                "--sittings, not --calibrate-on"
            )
        check_plot_path(args.plot)
    if args.start != "previous":
        raise UserError("bench loop: --start chooses what pairs of --sittings start from")
    _check_folder(args.session, "--session")
    if args.calibrate_on is not None:
        _check_folder(args.calibrate_on, "--calibrate-on")
        if real_path(args.calibrate_on) == real_path(args.session):
            raise UserError(
                "bench loop: --calibrate-on is --session itself: the loop would be judged on the "
                "frames it was fitted on; drop --calibrate-on (leave-one-target-out)"
            )
    elif args.label_targets:
        raise UserError(
            "bench loop: --label-targets picks the targets that feed a loop calibrated on "
            "another sitting; give --calibrate-on (or --sittings)"
        )
    real = args.calibrate_on is not None and opts.oracle == "clicks"
    streams = "its recorded clicks, one stream" if real else f"{opts.seeds} label streams per case"
    with Progress(f"bench loop, {streams}"):
        out = bench_sessions(
            args.session,
            args.calibrate_on,
            fastpath_config(args),
            opts,
            screen_px=tuple(args.screen_px) if args.screen_px else None,
            mirrored=args.mirrored,
        )
    out["settings"] = resolved_settings(args)
    # The report first: a picture that cannot be written must not lose minutes of results.
    print(json.dumps(out) if args.json else loop_text(out), flush=True)
    if args.plot is not None:
        write_plot(lambda f: plot_injected(out, f), args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _run_sittings(args: argparse.Namespace, opts: LoopBenchOptions) -> int:
    _check_folder(args.sittings, "--sittings")
    if args.calibrate_on is not None:
        raise UserError("bench loop: --sittings pairs the sittings itself; drop --calibrate-on")
    if args.plot is not None:
        check_plot_path(args.plot)
    with Progress("bench loop over consecutive sittings"):
        out = bench_loop.bench_sittings(args.sittings, fastpath_config(args), opts)
    out["settings"] = resolved_settings(args)
    # The report first: a picture that cannot be written must not lose minutes of results.
    print(json.dumps(out) if args.json else loop_text(out), flush=True)
    if args.plot is not None:
        write_plot(lambda f: plot_sittings(out, f), args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
