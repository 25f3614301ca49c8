"""`gazeloop eval-sittings --plot PNG`: the sittings of a folder as one picture.

Per sitting, in order: its own calibration's error (nested leave-one-target-out, a black
bar) and the error of the person's previous sitting's profile on it (a dot, joined to the
bar): the length of the line is what users call drift between sittings. An open square is
the profile of all the person's earlier sittings pooled (`calibration.sittings`). With
`--history`, a green triangle is the sitting calibrated as `gazeloop calibrate` does with
the earlier sittings (alone or pooled, as its points favour), each point left out.
"""

from __future__ import annotations

from typing import Any

# The marker of a sitting calibrated with the earlier ones: no person's colour is it.
HISTORY_GREEN = "#2ca02c"


def plot_sittings_report(rep: dict[str, Any], path) -> None:
    """Draw `eval-sittings`' report (`summarise`) to `path` (a file name or a binary file)."""
    from gazeloop.calibration.metrics.plotting import drawable, pyplot, strong_colours

    plt = pyplot()
    rows = rep["sittings"]
    across = {p["to"]: p for p in rep["pairs"] if "mean_px" in p}
    history = {h["sitting"]: h for h in rep.get("with_history", [])}
    users = sorted({r["user"] for r in rows})
    people = strong_colours(reserved=(HISTORY_GREEN,))
    colour = {u: people[i % len(people)] for i, u in enumerate(users)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.4 * len(rows) + 2) + 3.0, 4.8), dpi=110)
    for i, r in enumerate(rows):
        ax.plot(i, r["mean_px"], "_", color="k", ms=14, mew=2)
        p = across.get(r["sitting"])
        if p is not None:
            c = colour[r["user"]]
            ax.plot([i, i], [r["mean_px"], p["mean_px"]], "-", color=c, lw=1.2, alpha=0.7)
            ax.plot(i, p["mean_px"], "o", color=c, ms=5)
            if "mean_px" in p.get("pooled", {}):
                ax.plot(i, p["pooled"]["mean_px"], "s", mfc="none", mec=c, ms=6)
        if r["sitting"] in history:
            ax.plot(i, history[r["sitting"]]["mean_px"], "^", color=HISTORY_GREEN, ms=6)
    ax.plot([], [], "_", color="k", ms=14, mew=2, label="its own calibration (nested LOTO)")
    for u in users:
        ax.plot(
            [], [], "o", color=colour[u], label=drawable(f"{u}: the previous sitting's profile")
        )
    ax.plot([], [], "s", mfc="none", mec="0.4", label="all earlier sittings pooled")
    if history:
        ax.plot([], [], "^", color=HISTORY_GREEN, label="calibrated with the earlier sittings")
    ax.set_xticks(range(len(rows)), [drawable(r["sitting"]) for r in rows], rotation=70)
    # Wrapped to the figure's width (a few sittings make a narrow figure that cut it off),
    # and the legend beside the axes, where it hides no sitting's points.
    width = int(fig.get_size_inches()[0] * 11)
    ax.set_title(drawable(_title(rep, len(users), width)), fontsize=9)
    ax.set_ylabel("mean error (px)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _px(stats: dict | None) -> str:
    m = (stats or {}).get("median_px")
    return "- (none)" if m is None else f"{m:.0f} px"


def _title(rep: dict[str, Any], people: int, width: int) -> str:
    """What stands behind the figures (folder, sittings, people, stills), then the medians."""
    rows, skipped = rep["sittings"], rep.get("skipped", [])
    used = sum(r["frames_used"] for r in rows)
    stills = sum(r.get("frames", r["frames_used"]) for r in rows)
    head = (
        f"{rep['folder']}: {len(rows)} sitting{'' if len(rows) == 1 else 's'} of {people} "
        f"{'person' if people == 1 else 'people'}, {used} of {stills} stills used"
        + (f", {len(skipped)} sittings skipped" if skipped else "")
    )
    w, a, h = rep["within"], rep["across"], rep.get("within_with_history")
    body = (
        f"within a sitting: median {_px(w)} over {w['n']}; the previous sitting's profile: "
        f"median {_px(a)} over {a['n']} pairs; all earlier sittings pooled: median "
        f"{_px(rep.get('across_pooled'))}"
        + (
            ""
            if h is None
            else f"; calibrated with the earlier sittings: median {_px(h)} over {h['n']} "
            f"(the same alone {_px(h['alone'])})"
        )
    )
    from gazeloop.calibration.metrics.plotting import wrap

    return wrap(head, width) + "\n" + wrap(body, width)
