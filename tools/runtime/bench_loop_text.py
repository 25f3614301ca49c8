"""`gazeloop bench loop` without `--json`: the report as a person reads it.

The JSON carries every field and the notes on how each was measured; this is the few lines
that answer "does the loop bring the error back, how fast, and does it move when nothing
changed", in the same words as the README's table.
"""

from __future__ import annotations

from typing import Any


def _n(v: Any, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def over_told(loop: float | None, told: float | None) -> str:
    """The loop's figure as a multiple of the estimator told the onset ("loop/told 1.45×";
    issue 13's criteria are such multiples); "-" when either is missing (a median stream
    that never recovered) or the told one is 0."""
    return f"loop/told {'-' if loop is None or not told else format(loop / told, '.2f')}×"


def _source(out: dict[str, Any]) -> str:
    if out.get("noise_px") is None:
        return out["oracle"].split(":")[0]
    rate = out.get("outlier_rate") or 0.0
    junk = f", {rate * 100:.0f} % junk" if rate else ""
    return f"simulated oracle, σ {out['noise_px']:g} px per axis{junk}"


def _drift_line(name: str, r: dict[str, Any], told: dict[str, Any] | None) -> str:
    line = (
        f"  {name:<18}{_n(r['error_before_px']):>8}{_n(r['error_drifted_px']):>9}"
        f"{_n(r['error_after_px']):>8}   {_n(r['labels_to_recover'], '.0f'):>4} "
        f"(p90 {_n(r['labels_to_recover_p90'], '.0f')})"
    )
    if told:
        line += (
            f"   told the onset: {_n(told['labels_to_recover'], '.0f')} "
            f"(p90 {_n(told['labels_to_recover_p90'], '.0f')})"
        )
        line += f"; {over_told(r['labels_to_recover'], told['labels_to_recover'])}"
    return line


def _after_15_line(out: dict[str, Any]) -> str:
    """The error 15 labels into the step, beside the estimator told the onset and over it
    (issue 13 asks for at most 1.05×)."""
    e15 = out["error_after_15_labels_over_before"]
    t15 = out["known_onset_reference"]["error_after_15_labels_over_before"]
    return (
        f"  15 labels into the step: {_n(e15, '.2f')}× the error before (told the onset: "
        f"{_n(t15, '.2f')}×; {over_told(e15, t15)})"
    )


def injected_text(out: dict[str, Any]) -> list[str]:
    step, nd = out["step"], out["no_drift"]
    lines = [
        f"calibration: {out['calibration']}",
        f"{out['seeds']} streams of {out['n_labels']} labels; drift {step['px']:g} px from "
        f"label {step['at_label']}",
        f"  {'':<18}{'before':>8}{'drifted':>9}{'after':>8}   labels to recover",
        _drift_line("step", out, out.get("known_onset_reference")),
        _drift_line(f"ramp ({out['ramp']['drift']['over_labels']} labels)", out["ramp"], None),
        _after_15_line(out),
        f"no drift ({nd['streams']} streams of {nd['labels_per_stream']} labels): the offset "
        f"moved over 100 px in {nd['false_change_share'] * 100:.0f} % of them; RMS "
        f"{nd['rms_offset_px']:.0f} px, largest {nd['max_offset_px']:.0f} px",
    ]
    c = out.get("clicks")
    if c:
        why = ", ".join(f"{k} {v}" for k, v in c["verdicts"].items())
        taken = c["accepted_share"] * 100
        lines.append(f"clicks replayed: {c['clicks']}, {taken:.0f} % taken ({why})")
    return lines


def transfer_text(out: dict[str, Any]) -> list[str]:
    return [
        f"calibrated on {out['calibrated_on']}: {out['calibration']}",
        f"labels on targets {out['label_targets']} ({out['labels_fed']} fed), errors on "
        f"targets {out['eval_targets']} ({out['eval_frames']} frames)",
        f"  this session's own calibration  {_n(out['error_before_px']):>7} px",
        f"  the earlier profile (drifted)    {_n(out['error_drifted_px']):>7} px",
        f"  with the loop                    {_n(out['error_after_px']):>7} px",
        f"  plus the labels' mean offset     {_n(out['error_told_offset_px']):>7} px",
        f"  best offset, in hindsight        {_n(out['error_best_offset_px']):>7} px",
    ]


def sittings_text(out: dict[str, Any]) -> list[str]:
    lines = [
        f"{'earlier':<10}{'later':<10}{'own':>7}{'drifted':>9}{'loop':>7}{'mean':>7}"
        f"{'best':>7}{'labels':>8}",
    ]
    for p in out["pairs"]:
        lines.append(
            f"{p['calibrated_on']:<10}{p['session']:<10}{_n(p['error_before_px']):>7}"
            f"{_n(p['error_drifted_px']):>9}{_n(p['error_after_px']):>7}"
            f"{_n(p['error_told_offset_px']):>7}{_n(p['error_best_offset_px']):>7}"
            f"{p['labels_fed']:>8}"
        )
    s = out["summary"]
    lines += [
        "(px on the unlabelled targets: own = the later sitting's leave-one-target-out; "
        "mean = the labels' mean offset; best = the best offset in hindsight)",
        f"the loop closes {_n(s['gap_closed_median'], '.2f')} of the gap (median over the "
        f"{s['pairs_with_gap']} pairs whose drift exceeds their own error by 10 px); "
        f"{s['pairs_over_5pct_worse']} of {s['pairs']} pairs end over 5 % worse "
        f"({s.get('gap_pairs_over_5pct_worse', '-')} of the {s['pairs_with_gap']} with a gap; "
        f"the labels' mean: {s.get('told_offset_pairs_over_5pct_worse', '-')})",
    ]
    md = s.get("median_px")
    if md is not None:
        lines.append(
            f"median over the pairs: own {_n(md['before'])}, drifted {_n(md['drifted'])}, "
            f"with the loop {_n(md['after'])} px"
        )
    if out.get("start"):
        lines.append(f"start: {out['start']}")
    lines += [f"{sk['sitting']}: {sk['reason']}" for sk in out.get("skipped", [])]
    return lines


def loop_text(out: dict[str, Any]) -> str:
    """The report of any `bench loop` mode, as text."""
    mode = out["mode"]
    if mode == "sittings":
        head = [f"bench loop over the sittings in {out['folder']}: {_source(out)}"]
        return "\n".join(head + sittings_text(out))
    head = [
        f"bench loop on {out['session']}: {out['frames_used']} of {out['frames']} frames, "
        f"{out['targets']} targets; {_source(out)}"
    ]
    body = transfer_text(out) if mode == "calibrate-on-other" else injected_text(out)
    return "\n".join(head + body + ["(--json for every field and how each was measured)"])


def _sittings_data(out: dict[str, Any]) -> str:
    """The data behind the pairs: the clicks fed (real ones, said so) and the stills the
    loop is judged on."""
    pairs = out["pairs"]
    fed = sum(p["labels_fed"] for p in pairs)
    judged = sum(p["eval_frames"] for p in pairs)
    return (
        f"{out['folder']}, {len(pairs)} pairs of sittings; {_source(out)}: {fed} clicks fed, "
        f"errors on {judged} other stills ({fed + judged} stills)"
    )


def plot_sittings(out: dict[str, Any], path) -> None:
    """`bench loop --sittings --plot PNG`: per pair of sittings, the earlier profile's error
    (drifted) with an arrow to where the loop left it, beside the sitting's own calibration
    and the best offset in hindsight; pairs that end over 5 % worse are named in red."""
    from gazeloop.calibration.metrics.plotting import drawable, pyplot

    plt = pyplot()

    pairs = out["pairs"]
    n = len(pairs)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * n + 2), 4.8), dpi=110)
    for i, p in enumerate(pairs):
        worse = p["error_after_px"] > 1.05 * p["error_drifted_px"]
        c = "tab:red" if worse else "tab:blue"
        ax.annotate(
            "",
            xy=(i, p["error_after_px"]),
            xytext=(i, p["error_drifted_px"]),
            arrowprops=dict(arrowstyle="->", color=c, lw=1.8),
        )
        ax.plot(i, p["error_drifted_px"], "o", color=c, ms=5)
        ax.plot(i, p["error_after_px"], "x", color=c, ms=7, mew=2)
    x = range(n)
    own = [float("nan") if p["error_before_px"] is None else p["error_before_px"] for p in pairs]
    ax.plot(x, own, "_", color="k", ms=14, mew=2, label="own calibration (LOTO)")
    ax.plot(x, [p["error_best_offset_px"] for p in pairs], ".", color="0.5", label="best offset")
    ax.plot([], [], "o", color="tab:blue", label="earlier profile (drifted)")
    ax.plot([], [], "x", color="tab:blue", mew=2, label="with the loop (red: over 5 % worse)")
    names = [drawable(f"{p['calibrated_on']}→{p['session']}") for p in pairs]
    ax.set_xticks(list(x), names, rotation=70)
    for tick, p in zip(ax.get_xticklabels(), pairs, strict=True):
        if p["error_after_px"] > 1.05 * p["error_drifted_px"]:
            tick.set_color("tab:red")
    s = out["summary"]
    gap = s["gap_closed_median"]
    ax.set_title(
        drawable(f"{_sittings_data(out)}")
        + f"\nthe loop closes {'-' if gap is None else f'{gap:.2f}'} of "
        f"the gap ({s['pairs_with_gap']} pairs with one); {s['pairs_over_5pct_worse']} of {n} "
        f"pairs over 5 % worse ({s.get('gap_pairs_over_5pct_worse', '-')} with a gap)",
        fontsize=10,
    )
    ax.set_ylabel("mean error on the unlabelled targets (px)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_injected(out: dict[str, Any], path) -> None:
    """`bench loop --session S --plot PNG`: the error after each label, median over the
    streams with the 10-90 % band, for the step and the ramp; beside the loop, the estimator
    told the onset on the same labels (step). The lines: the error before the drift, the
    recovery band (within `RECOVER_TOLERANCE` of it) and the error left uncorrected."""
    from gazeloop.calibration.metrics.plotting import drawable, pyplot

    plt = pyplot()

    from gazeloop.calibration.drift.simulation import RECOVER_TOLERANCE

    cases = [("step", out, out.get("known_onset_reference")), ("ramp", out["ramp"], None)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharey=True)
    for ax, (name, r, told) in zip(axes, cases, strict=True):
        curve = r["error_by_label_px"]
        x = range(1, len(curve["median"]) + 1)
        ax.fill_between(x, curve["p10"], curve["p90"], color="tab:blue", alpha=0.2, lw=0)
        ax.plot(x, curve["median"], color="tab:blue", lw=2, label="the loop (median, 10-90 %)")
        if told:
            ax.plot(
                x, told["error_by_label_px"]["median"], "--", color="k", lw=1.3,
                label="estimator told the onset (median)",
            )  # fmt: skip
        before = r["error_before_px"]
        ax.plot(x, curve["uncorrected"], ":", color="tab:red", label="drift left uncorrected")
        ax.axhspan(before, before * (1 + RECOVER_TOLERANCE), color="tab:green", alpha=0.15)
        ax.axhline(before, color="tab:green", ls=":", label="before the drift (and its band)")
        drift = out["step"] if name == "step" else r["drift"]
        ax.axvline(drift["at_label"] + 0.5, color="0.4", lw=0.8)
        told_txt = f", told the onset {_n(told['labels_to_recover'], '.0f')}" if told else ""
        ax.set_title(
            f"{drift['px']:g} px {name}: labels until a stream is back for good, median "
            f"{_n(r['labels_to_recover'], '.0f')}{told_txt}",
            fontsize=9,
        )
        ax.set_xlabel("labels")
    axes[0].set_ylabel("mean error over the session (px)")
    # Below the panels: inside, it covered the red line of the drift left uncorrected.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(
        drawable(
            f"{out['session']}: {out['frames_used']} of {out['frames']} frames, "
            f"{out['targets']} targets; {_source(out)}; {out['seeds']} streams"
        ),
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path)
    plt.close(fig)
