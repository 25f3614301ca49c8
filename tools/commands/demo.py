"""`gazeloop demo`: the whole hybrid loop on the shared sample data, no camera, no window.

1. Import the 4-corner webcam recording (../shared/data/video-corners4) as a session.
2. Calibrate: fit a profile on its settled frames (leave-one-target-out error reported).
3. Replay the recording as a live stream, several passes, with a drift injected from the
   second pass on (as if the person had moved), through the real fast path, history,
   snapshot policy, oracle worker, drift loop and label store.
   The oracle is the recording's own target labels, replayed — said plainly: a replay of
   ground truth stands in for Moondream, whose weights are not on this machine.
4. Print a live-style line per second of stream time and a summary; write a report (HTML
   with plots) into the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.metrics.evaluate import evaluate_arrays, plot_report
from gazeloop.calibration.procedure import fit_profile
from gazeloop.calibration.profile import DEFAULT_FEATURES, ProfileMapper
from gazeloop.calibration.store.session import read_session
from gazeloop.fastpath.collect import collect_session, feature_matrix
from gazeloop.fastpath.pipeline import FastPath
from gazeloop.fastpath.sources import SessionSource
from gazeloop.oracle.policy import SnapshotPolicy
from gazeloop.oracle.simple import TargetOracle
from gazeloop.tools.commands._args import add_fastpath_args, fastpath_config
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.importers import import_corners4
from gazeloop.tools.runtime.live import Live
from gazeloop.tools.ui import report


def default_shared() -> Path:
    """The sample data: `$GAZELOOP_SHARED`, else `../shared` beside the working folder or
    beside the source checkout (the layout of development machines and CI)."""
    env = os.environ.get("GAZELOOP_SHARED")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]  # tools/commands/demo.py → the checkout
    for root in (Path.cwd(), checkout):
        if (root.parent / "shared").is_dir():
            return root.parent / "shared"
    return Path.cwd().parent / "shared"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole loop on the shared sample data (no camera, no window)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="report folder")
    p.add_argument("--passes", type=int, default=8, help="replays of the recording")
    p.add_argument("--drift-px", type=float, default=150.0, help="injected drift, screen px")
    p.add_argument("--snapshot-every", type=float, default=1.0, help="seconds between labels")
    p.add_argument("--data", type=Path, help="the 4-corner recording folder")
    add_fastpath_args(p)
    p.set_defaults(func=run)


class DriftingMapper(ProfileMapper):
    """The profile with a known drift added after `onset_ns`: what a person moving in their
    chair does to a calibration. The loop's offset is added on top, as in real use."""

    def __init__(self, base: ProfileMapper, drift_norm: np.ndarray, onset_ns: int):
        self.__dict__.update(base.__dict__)
        self.drift = drift_norm
        self.onset_ns = onset_ns

    def __call__(self, sample):
        xy = super().__call__(sample)
        if xy is None or sample.t_ns < self.onset_ns:
            return xy
        return np.clip(xy + self.drift, 0.0, 1.0)


def run(args: argparse.Namespace) -> int:
    src = args.data or default_shared() / "data" / "video-corners4"
    if not (src / "calibrate.mp4").is_file():
        raise UserError(
            f"{src}: the sample recording is not there; put the shared data beside the "
            "checkout (../shared) or set GAZELOOP_SHARED"
        )
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    session_dir = out / "session"
    print(f"gazeloop demo → {out}/")
    rep = import_corners4(src, session_dir, overwrite=True)
    print(
        f"1. imported {rep.n_records} frames of {src.name} ({len(rep.frames_per_target)} targets)"
    )

    cfg = fastpath_config(args)
    fp = FastPath(cfg)
    session = read_session(session_dir)
    screen = ScreenGeometry(px=session.manifest.screen_px, mm=session.manifest.screen_mm)

    # 2. Calibrate on the settled frames.
    col = collect_session(session, fp)
    used = [ls for ls in col.samples if not ls.settling]
    names = list(DEFAULT_FEATURES)
    x = feature_matrix(used, names)
    labels = np.array([ls.label_px for ls in used])
    groups = np.array([ls.target for ls in used])
    ev = evaluate_arrays(
        x,
        labels,
        groups,
        session=str(session_dir),
        features=names,
        screen=screen,
        frames=col.frames,
        names=[ls.name for ls in used],
    )
    plot_report(ev, out / "calibration.png", title="calibration (4 corners)")
    prof = fit_profile(
        x,
        screen.to_norm(labels),
        groups,
        screen=screen,
        features=names,
        user="demo",
        device="corners4",
        gaze_model_id=fp.gaze.model_id,
        gaze_model_sha256=fp.gaze.sha256,
        calibration_session=str(session_dir),
    )
    prof.save(out / "profile.json")
    print(
        f"2. calibrated on {ev.report.targets} targets: leave-one-target-out mean "
        f"{ev.report.mean_px:.0f} px (constant predictor {ev.report.baseline_mean_px:.0f} px)"
    )

    # 3. Replay as a live stream with a drift from the second pass on.
    items = {it.name: it for it in session.items}
    span_ns = (session.items[-1].t_ms - session.items[0].t_ms) * 1_000_000
    onset = session.items[0].t_ms * 1_000_000 + span_ns  # roughly the second pass
    drift = np.array([args.drift_px / screen.px[0], 0.0])
    mapper = DriftingMapper(ProfileMapper(prof), drift, onset)

    def with_target(snap, frame):
        it = items.get(frame.name)
        extra = (it.record.model_extra or {}) if it else {}
        if it is None or extra.get("settling"):
            return None  # the eyes are still moving to the target: no label to give
        snap.target_xy = tuple(float(v) for v in screen.to_norm(np.array(it.label_px)))
        return snap

    store, store_note = _label_store(out)
    live = Live(
        fp,
        mapper=mapper,
        oracle=TargetOracle(),
        policy=SnapshotPolicy(min_interval_s=args.snapshot_every),
        store=store,
        snapshot_hook=with_target,
    )
    print(
        f"3. replaying {args.passes} passes, drift of {args.drift_px:.0f} px from t="
        f"{(onset - session.items[0].t_ms * 1_000_000) / 1e9:.1f} s; oracle: the recording's "
        "own target labels (ground truth replayed, not a model)"
    )
    trace = _replay(live, session_dir, items, screen, args.passes, onset)
    live.close()
    summary = _summarise(trace, ev, args, live, store_note)
    _plots(trace, drift * screen.px[0], out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _html(out, summary, ev)
    print("4. summary:")
    for k, v in summary.items():
        print(f"   {k:28s} {v}")
    print(f"   report: {out / 'report.html'}")
    return 0


def _label_store(out: Path):
    try:
        from gazeloop.calibration.store.labelstore import LabelStore
    except ImportError:  # the store is optional for the demo's numbers
        return None, "label store not available"
    return LabelStore(out / "labels"), f"labels kept in {out / 'labels'}"


def _replay(live: Live, session_dir, items, screen, passes, onset) -> dict:
    t, err, off, labelled = [], [], [], []
    last_print = None
    window_err: list[float] = []
    with SessionSource(session_dir, loop=True) as src:
        n = len(items) * passes
        for k, frame in enumerate(src):
            if k >= n:
                break
            s = live.process(frame)
            it = items[frame.name]
            extra = it.record.model_extra or {}
            e = np.nan
            if s.screen_px is not None and not extra.get("settling"):
                e = float(np.hypot(*(s.screen_px - np.array(frame.label_px))))
            t.append(frame.t_ns)
            err.append(e)
            off.append(live.loop.offset * screen.px)
            labelled.append(len(live.decisions))
            if np.isfinite(e):
                window_err.append(e)
            if last_print is None:
                last_print = frame.t_ns
            if frame.t_ns - last_print >= 1_000_000_000:
                st = live.status()
                o = live.loop.offset * screen.px
                mean = np.mean(window_err) if window_err else float("nan")
                drifted = "drifted" if frame.t_ns >= onset else "       "
                print(
                    f"   t={(frame.t_ns - t[0]) / 1e9:5.1f}s {drifted} error {mean:6.0f} px  "
                    f"offset ({o[0]:+6.0f}, {o[1]:+6.0f}) px  labels "
                    f"{st['labels']['accepted']} accepted / {st['labels']['rejected']} rejected",
                    flush=True,
                )
                last_print, window_err = frame.t_ns, []
    # Labels still in flight when the stream ends are waited for, so the trace is complete.
    if live.worker is not None:
        live.worker.close()
    return {
        "t": np.array(t),
        "err": np.array(err),
        "offset": np.array(off),
        "labels": np.array(labelled),
        "onset": onset,
    }


def _summarise(tr, ev, args, live: Live, store_note: str) -> dict:
    t, err, onset = tr["t"], tr["err"], tr["onset"]
    before = err[(t < onset) & np.isfinite(err)]
    after_onset = (t >= onset) & np.isfinite(err)
    # The last two passes: has the loop brought the error back?
    tail = t >= t[-1] - 2 * (onset - t[0])
    end = err[tail & after_onset]
    first_after = err[after_onset][: max(1, len(before))]
    acc = sum(d.accepted for d in live.decisions)
    return {
        "oracle": "replay of the recording's own target labels (ground truth, not a model)",
        "calibration_loto_mean_px": ev.report.mean_px,
        "constant_predictor_px": ev.report.baseline_mean_px,
        "injected_drift_px": args.drift_px,
        "error_before_drift_px": round(float(before.mean()), 1) if before.size else None,
        "error_just_after_drift_px": round(float(first_after.mean()), 1),
        "error_last_two_passes_px": round(float(end.mean()), 1) if end.size else None,
        "final_offset_px": [round(float(v), 1) for v in tr["offset"][-1]],
        "labels_accepted": acc,
        "labels_rejected": len(live.decisions) - acc,
        "frames": int(len(t)),
        "label_store": store_note,
    }


def _plots(tr, drift_px, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = (tr["t"] - tr["t"][0]) / 1e9
    onset = (tr["onset"] - tr["t"][0]) / 1e9
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, dpi=110)
    ok = np.isfinite(tr["err"])
    a.plot(t[ok], tr["err"][ok], ".", ms=3, color="tab:red", label="fast path + loop")
    a.axvline(onset, color="0.4", ls="--", label="drift injected")
    a.set_ylabel("error (px)")
    a.legend(loc="upper right", fontsize=8)
    a.set_title("gazeloop demo: error and drift correction over the replayed stream", fontsize=10)
    b.plot(t, tr["offset"][:, 0], color="tab:blue", label="loop offset Cx")
    b.plot(t, tr["offset"][:, 1], color="tab:green", label="loop offset Cy")
    b.step(
        t,
        np.where(t >= onset, -drift_px[0], 0.0),
        color="0.4",
        ls="--",
        label="− injected drift (the ideal Cx)",
    )
    b.set_xlabel("stream time (s)")
    b.set_ylabel("px")
    b.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loop.png")
    plt.close(fig)


def _html(out: Path, summary: dict, ev) -> None:
    report.write(
        out / "report.html",
        report.page(
            "gazeloop demo",
            "The 4-corner webcam recording, calibrated, then replayed as a live stream with a "
            "drift injected; the oracle replays the recording's own target labels (ground "
            "truth, not a model).",
            [
                (None, report.key_values(summary)),
                ("Drift correction", report.image("loop.png", "error and loop offset over time")),
                (
                    "Calibration (leave-one-target-out)",
                    report.image("calibration.png", "calibration"),
                ),
                ("Calibration per target", report.per_target_table(ev.report)),
            ],
        ),
    )
