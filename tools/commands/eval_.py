"""`gazeloop eval SESSION`: leave-one-target-out accuracy of a mapping on a recorded session."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from gazeloop.calibration.frames import LabelledFrames
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.mapping import MAPPINGS, fit_select
from gazeloop.calibration.metrics.evaluate import (
    evaluate_arrays,
    mapping_options,
    measured_as,
    plot_report,
)
from gazeloop.calibration.metrics.precision import (
    LAG_DEFINITION,
    deg_per_mm,
    lag_summary,
    precision_report,
    switch_lags,
)
from gazeloop.calibration.profile import DEFAULT_FEATURES
from gazeloop.calibration.store.atomic import check_writable, write_plot
from gazeloop.calibration.store.session import read_session
from gazeloop.fastpath.filters import make_filter
from gazeloop.fastpath.views import none_usable, rejected_frames
from gazeloop.tools.commands._args import (
    add_distance_arg,
    add_fastpath_args,
    add_mirrored_arg,
    add_no_cache_arg,
    add_screen_size_args,
    check_plot_path,
    collect_frames,
    fastpath_config,
    feature_columns,
    fixed_mapping,
    run_config,
    screen_for,
)
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.selection import run_selected, selection_text
from gazeloop.tools.ui import report


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="leave-one-target-out accuracy of a mapping on a session",
        description="Runs the fast path over a labelled session folder and reports the "
        "leave-one-target-out error of a screen mapping (never leave-one-frame-out), next to "
        "the constant predictor's. The screen comes from the session's session.json, or "
        "--screen-px; without either, errors are relative to the targets' bounding box.",
    )
    p.add_argument("session", type=Path, help="session folder (img_<ms>.jpg + .json pairs)")
    add_screen_size_args(p, "the session's, else errors relative to the targets' span")
    add_distance_arg(p)
    add_mirrored_arg(p)
    _add_mapping_args(p)
    _add_output_args(p)
    add_fastpath_args(p)
    p.set_defaults(func=run)


def _add_mapping_args(p: argparse.ArgumentParser) -> None:
    """What is evaluated: the selection among candidates unless a mapping, a saved profile or
    features are named (and whether the selected one is kept as a profile)."""
    p.add_argument(
        "--mapping",
        choices=sorted(MAPPINGS),
        help="evaluate this mapping only (default: feature sets, ridge and geometric, and "
        "both reads of frames whose mirroring nobody stated, compete by nested selection)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="apply this saved profile unchanged (no refit) and report its error here",
    )
    add_no_cache_arg(p)
    p.add_argument(
        "--save-profile",
        type=Path,
        metavar="PATH",
        help="also save the selected mapping, fitted on all targets, as a profile",
    )
    p.add_argument(
        "--features",
        help=f"comma-separated feature names (default {','.join(DEFAULT_FEATURES)}; for "
        "a mapping that models named features, those (geometric: gaze angles, eye position))",
    )


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """What is reported beside the error, and where: precision, JSON, a plot, a page."""
    p.add_argument("--precision", action="store_true", help="add precision per target")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", type=Path, help="write a PNG of targets, predictions and errors")
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="write DIR/report.html (summary, plot, per-target and precision tables) and "
        "DIR/report.json",
    )


def _filtered(raw: np.ndarray, t: np.ndarray, cfg) -> np.ndarray:
    """`raw` (in time order `t`) through the fast path's filter as it would run live:
    restarted after gaps longer than the fast path's `still_gap_s`."""
    gap_ns = int(cfg.still_gap_s * 1e9)
    out = np.empty_like(raw)
    f = make_filter(cfg.filter, **cfg.filter_kwargs())
    last = None
    for i in np.argsort(t, kind="stable"):
        if last is not None and t[i] - last > gap_ns:
            f.reset()
        out[i] = f(int(t[i]), raw[i])
        last = t[i]
    return out


def precision_for(
    used: LabelledFrames,
    x: np.ndarray,
    ev,
    screen,
    mapping,
    cfg,
    stream: LabelledFrames | None = None,
) -> dict:
    """RMS sample-to-sample and STD per target, raw and after the fast path's filter, and
    the filter's lag at each change of target.

    Precision is about the spread of the output, not its accuracy, so the mapping here is
    fitted on all targets; the filter runs over each target's settled frames in time order,
    as it would live, and restarts after gaps longer than half a second (so each fixation
    is filtered on its own: a spread within a fixation). The lag needs the movement between
    fixations, so it runs the same mapping and filter over `stream`, every frame with a gaze
    estimate (settling frames included), and measures `switch_lags` on it.

    Every settled frame counts: no outlier is dropped, because the cursor shows every frame
    and its jitter is what this measures (dropping per-target outliers, as accuracy does,
    once made the 4-corner figure look a third better than what a user saw)."""
    geo = screen or ScreenGeometry.from_targets(used.labels_px)
    y = geo.to_norm(used.labels_px)
    groups = used.groups
    why = _not_a_stream(used, cfg.still_gap_s)
    if why:
        # A spread needs several frames of one fixation; it printed nan and 0.00 px, and a
        # lag of 0 frames between stills seconds apart.
        return {"not_measured": why}
    opts = mapping_options(mapping, screen)
    m, _, _ = fit_select(mapping, x, y, groups, aspect=geo.px[0] / geo.px[1], options=opts)
    raw = m.predict(x)
    t = used.t_ns
    filt = _filtered(raw, t, cfg)
    by_t = {int(g): np.sort(np.flatnonzero(groups == g)) for g in np.unique(groups)}
    mm_per_px = None
    if screen is not None and screen.mm is not None:
        mm_per_px = (screen.mm[0] / screen.px[0], screen.mm[1] / screen.px[1])
    to_deg = None
    if screen is not None and screen.viewing_distance_mm:
        to_deg = deg_per_mm(screen.viewing_distance_mm)
    out = precision_report(
        {g: raw[i] for g, i in by_t.items()},
        filtered_by_target={g: filt[i] for g, i in by_t.items()},
        t_by_target={g: t[i] / 1e9 for g, i in by_t.items()},
        px_per_norm=(float(geo.px[0]), float(geo.px[1])),
        mm_per_px=mm_per_px,
        to_deg=to_deg,
    )
    if stream is not None and len(stream):
        out["lag"] = lag_for(stream, m, ev.report.features, geo, cfg)
    return out


def _not_a_stream(used: LabelledFrames, still_gap_s: float) -> str | None:
    """Why precision cannot be measured on these frames, or None: it needs several frames
    of each fixation, closer together than the fast path's still gap."""
    groups = used.groups
    if np.bincount(np.unique(groups, return_inverse=True)[1]).max() < 2:
        return (
            f"precision needs several frames per target; these are {len(groups)} stills, one "
            "per target"
        )
    gaps = [np.diff(np.sort(used.t_ns[groups == g])) for g in np.unique(groups)]
    gaps = np.concatenate([d for d in gaps if len(d)])
    if np.median(gaps) > still_gap_s * 1e9:
        return (
            f"precision needs a stream; these frames are stills {np.median(gaps) / 1e9:.1f} s "
            f"apart within a target (more than the {still_gap_s:g} s still gap)"
        )
    return None


def lag_stream(col, features: list[str]) -> LabelledFrames:
    """What the lag is measured on: every frame with a gaze estimate, settling ones
    included, that has the mapping's features (a settling frame without the eyes' position
    cannot be mapped, and must not take the feature from the others)."""
    return LabelledFrames.from_samples(col.samples, having=features)


def lag_for(stream: LabelledFrames, mapping, features, geo: ScreenGeometry, cfg) -> dict:
    """The filter's delay behind the raw output at each change of target (`switch_lags`),
    on every frame of `stream` in time order, in px of `geo`."""
    stream = stream[np.argsort(stream.t_ns, kind="stable")]
    t = stream.t_ns
    raw = mapping.predict(stream.matrix(features))
    filt = _filtered(raw, t, cfg)
    k = np.asarray(geo.px, dtype=np.float64)
    lags = switch_lags(raw * k, filt * k, stream.groups, t / 1e9)
    for x in lags:  # seconds -> ms, and rounded for reading
        lag_s = x.pop("lag")
        x["lag_ms"] = None if lag_s is None else round(lag_s * 1e3, 2)
        for key in ("jump", "noise", "lag_frames"):
            if x.get(key) is not None:
                x[key] = round(x[key], 3)
    period = float(np.median(np.diff(t))) / 1e6 if len(t) > 1 else None
    return {
        "definition": LAG_DEFINITION,
        "unit": "frames",
        "frames": len(stream),
        "frame_period_ms": None if period is None else round(period, 2),
        "filter": f"{cfg.filter} {cfg.filter_kwargs()}",
        "summary": lag_summary(lags),
        "per_switch": lags,
    }


def precision_text(p: dict) -> str:
    if "not_measured" in p:
        return f"  precision not measured: {p['not_measured']}"
    units = [u for u in ("px", "mm", "deg") if u in p.get("units", [])]
    lines = ["  precision (mean over targets; RMS sample-to-sample / STD):"]
    for kind in ("raw", "filtered"):
        if kind not in p:
            continue
        m = p[kind]["mean"]
        cells = [f"{m['rms_s2s'][u]:.2f} / {m['std'][u]:.2f} {u}" for u in units]
        lines.append(f"    {kind:8s} " + "   ".join(cells))
    lag = p.get("lag")
    if lag:
        s = lag["summary"]

        def fr(v):
            return "-" if v is None else f"{v:.2f}"

        lines.append(
            f"  filter lag at a change of target ({lag['filter']}; {s['measured']} of "
            f"{s['switches']} switches measured, frame period {lag['frame_period_ms']} ms): "
            f"median {fr(s['median_frames'])}, max {fr(s['max_frames'])} frames"
            + (f"; {s['not_reached']} never got half-way" if s["not_reached"] else "")
        )
        for x in lag["per_switch"]:
            lines.append(
                f"    target {x['from']} -> {x['to']} at sample {x['index']}: "
                + (
                    f"{x['lag_frames']:.2f} frames ({x['lag_ms']:.0f} ms), jump {x['jump']:.0f} px"
                    if x["lag_frames"] is not None
                    else f"not measured: {x['why']}"
                )
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.profile is not None and (args.mapping or args.features or args.save_profile):
        raise UserError("--profile applies a saved mapping: no --mapping/--features/--save-profile")
    if args.profile is not None and args.precision:  # it printed nothing, and null in JSON
        raise UserError(
            "--precision measures the fast path's own jitter on this session: without --profile"
        )
    fixed = fixed_mapping(args)
    if args.save_profile is not None and fixed:
        raise UserError("--save-profile saves the selected mapping: drop --mapping/--features")
    # Outputs checked before the fast path runs: a full disk is not news after a minute.
    if args.plot:
        check_plot_path(args.plot)
    if args.report:
        check_writable(args.report, folder=True)
        # Each file too: a folder named report.html stopped the report after eval.png and
        # report.json were written (and left them).
        for name in REPORT_FILES:
            check_writable(args.report / name, folder=False)
    if args.save_profile:
        check_writable(args.save_profile, folder=False)
    if fixed is not None:
        ev, col = _run_fixed(args, *fixed)
    else:
        session = _session(args)
        if args.save_profile and screen_for(args, session) is None:
            # A profile is in units of its screen: the targets' extent would stand in for a
            # screen nobody has (applied on the real one, grid9's 47 px became 155).
            raise UserError(
                f"{session.folder}: the screen size is unknown (no session.json); give "
                "--screen-px W H to save a profile"
            )
        ev, col = run_selected(
            session,
            screen_for(args, session),
            fastpath_config(args),
            profile=args.profile,
            save_profile=args.save_profile,
            cache=not args.no_cache,
        )
        if args.precision and col is not None:
            used = col.labelled()
            ev.report.precision = precision_for(
                used,
                used.matrix(ev.report.features),
                ev,
                screen_for(args, col.session),
                ev.report.mapping,
                fastpath_config(args),
                stream=lag_stream(col, ev.report.features),
            )
    return _output(args, ev)


def _session(args: argparse.Namespace):
    """The session as the flags read it: at --screen-px, mirrored as --mirrored says."""
    return read_session(
        args.session,
        screen_px=tuple(args.screen_px) if args.screen_px else None,
        mirrored=args.mirrored,
    )


def _run_fixed(args: argparse.Namespace, mapping: str, names: list[str]):
    """One mapping on named features, as asked: no selection among candidates."""
    session = _session(args)
    screen = screen_for(args, session)
    col, _ = collect_frames(args, session, "eval")
    used = col.labelled()
    rejected = rejected_frames(col)
    if not len(used):
        raise UserError(none_usable(args.session, rejected))
    names, x = feature_columns(used, names)
    try:
        ev = evaluate_arrays(
            x,
            used.labels_px,
            used.groups,
            session=str(args.session),
            features=names,
            screen=screen,
            mapping=mapping,
            frames=col.frames,
            rejected=rejected,
            names=used.names.tolist(),
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.precision:
        ev.report.precision = precision_for(
            used, x, ev, screen, mapping, fastpath_config(args), stream=lag_stream(col, names)
        )
    ev.report.mirrored, ev.report.mirrored_basis = col.session.mirrored, col.mirror_basis
    return ev, col


def gaze_model_identity(cfg) -> dict:
    """Which gaze network a command's numbers come from: the file it resolves to (the
    stock model unless --gaze-model or the config names another), its sha256 and how it
    was read."""
    from gazeloop.calibration.profile import read_name
    from gazeloop.fastpath.models import resolve_gaze_onnx, sha256_file

    path = resolve_gaze_onnx(cfg.gaze_model)
    return {
        "file": str(path),
        "sha256": sha256_file(path),
        "read": read_name(cfg.mirror_average, cfg.gaze_frame, cfg.crop_scale),
    }


def _output(args: argparse.Namespace, ev) -> int:
    ev.report.gaze_model = gaze_model_identity(fastpath_config(args))
    # The numbers first: a picture or report that fails to write (its folder gone, the disk
    # full) after minutes of work must not take them with it.
    _print(args, ev.report)
    sys.stdout.flush()  # before the error line of a write that fails, as they happened
    if args.report:
        write_report(ev, args.report)
        run_config(args).write(args.report)  # the settings the report was made with
        if not args.json:
            print(f"  report: {args.report / 'report.html'}")
    if args.plot:
        save_plot(ev, args.plot)
        if not args.json:
            print(f"  plot: {args.plot}")
    return 0


def _print(args: argparse.Namespace, r) -> None:
    if args.json:
        print(r.model_dump_json(indent=2))
        return
    print(
        f"{r.session}: {r.targets} targets, {r.frames_used} of {r.frames} frames used\n"
        + (
            f"  {r.mapping} on {', '.join(r.features)}, {measured_as(r)}:\n"
            if r.selection is None
            else f"  {measured_as(r)}, of the whole selection (chosen in each fold on the "
            f"other targets; on all targets: {r.selection.chosen}):\n"
        )
        + f"  mean {r.mean_px:.1f} px  median {r.median_px:.1f} px  "
        f"{r.mean_pct_diag:.2f}% of the {r.diag_basis} diagonal"
        + (f"  {r.mean_deg:.2f}°" if r.mean_deg is not None else "")
        + f"\n  constant predictor: {r.baseline_mean_px:.1f} px"
        + f"\n  frames {'mirrored' if r.mirrored else 'not mirrored'}: {r.mirrored_basis}"
        + f"\n  gaze model: {r.gaze_model['file']} (sha256 {r.gaze_model['sha256'][:12]}, "
        f"{r.gaze_model['read']} read)"
        + (f"\n  profile applied unchanged: {r.profile}" if r.profile else "")
        + (
            f"\n  {r.clamped} {_predictions(r)} off the screen, scored at its edge"
            if r.clamped
            else ""
        )
    )
    if r.selection:
        print(selection_text(r.selection))
    for t in r.per_target:
        print(
            f"    target {t.target:2d} at ({t.label_px[0]:7.1f}, {t.label_px[1]:7.1f}): "
            f"{t.mean_px:7.1f} px over {t.frames} frames"
        )
    for rej in r.rejected:
        print(f"  rejected {rej.file}: {rej.why}")
    if r.precision:
        print(precision_text(r.precision))


def save_plot(ev, path: Path) -> None:
    """The plot, written atomically: a disk that fills while matplotlib writes leaves the
    previous plot there, not half a PNG."""
    write_plot(lambda f: plot_report(ev, f), path)


def _predictions(r) -> str:
    """What the points are: held out by leave-one-target-out, or a saved profile's own (no
    point is held out then; the report said "held-out" all the same)."""
    return "predictions" if r.profile is not None else "held-out predictions"


# What `--report DIR` writes: `write_report`'s three and the resolved settings.
REPORT_FILES = ("eval.png", "report.json", "report.html", "config.json")


def write_report(ev, folder: Path) -> Path:
    """The evaluation as a page a person opens: numbers, the plot, and the tables."""
    r = ev.report
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create report folder {folder}: {e}") from None
    plot_name, json_name, html_name, _ = REPORT_FILES
    save_plot(ev, folder / plot_name)
    report.write(folder / json_name, r.model_dump_json(indent=2))
    summary = {
        "session": r.session,
        "targets / frames used": f"{r.targets} / {r.frames_used} of {r.frames}",
        "mapping, features": f"{r.mapping} on {', '.join(r.features)}",
        "measured as": measured_as(r),
        "mean / median error": f"{r.mean_px:.1f} / {r.median_px:.1f} px",
        f"mean, % of the {r.diag_basis} diagonal": f"{r.mean_pct_diag:.2f} %",
        "constant predictor (mean of the other targets)": f"{r.baseline_mean_px:.1f} px",
    }
    if r.clamped:
        summary[f"{_predictions(r)} off the screen"] = f"{r.clamped}, scored at its edge"
    if r.selection is not None:
        summary["chosen on all targets"] = r.selection.chosen
    if r.gaze_model:
        summary["gaze model"] = f"{r.gaze_model['file']} (sha256 {r.gaze_model['sha256'][:12]})"
    if r.mean_deg is not None:
        summary["mean, degrees"] = f"{r.mean_deg:.2f}°"
    if r.precision and "not_measured" in r.precision:
        summary["precision"] = f"not measured: {r.precision['not_measured']}"
    sections = [
        (None, report.key_values(summary)),
        (f"Targets and {_predictions(r)}", report.image(plot_name, "targets and errors")),
        ("Per target", report.per_target_table(r)),
    ]
    if r.precision and "not_measured" not in r.precision:
        sections.append(("Precision (mean over targets)", report.precision_table(r.precision)))
    if r.rejected:
        sections.append(
            (
                "Frames left out",
                report.table([(x.file, x.why) for x in r.rejected], ["file", "why"]),
            )
        )
    intro = (
        "Leave-one-target-out: each target's frames are predicted by a mapping fitted on the "
        "other targets only, so the error is what a new point on the screen would see."
        if r.profile is None
        else f"The saved profile {r.profile}, applied unchanged (no refit)."
    )
    intro += f" Measured as: {measured_as(r)}."
    return report.write(folder / html_name, report.page("gazeloop eval", intro, sections))
