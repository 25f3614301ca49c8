"""`gazeloop eval-sittings --plot PNG`: the sittings of a folder as one picture.

Per sitting, in order: its own calibration's error (nested leave-one-target-out, a black
bar) and the error of the person's previous sitting's profile on it (a dot, joined to the
bar): the length of the line is what users call drift between sittings. An open square is
the profile of all the person's earlier sittings pooled (`calibration.sittings`). With
`--history`, a green triangle is the sitting calibrated as `gazeloop calibrate` does with
the earlier sittings (alone or pooled, as its points favour), each point left out.
"""

from __future__ import annotations

import textwrap
from typing import Any


def plot_sittings_report(rep: dict[str, Any], path) -> None:
    """Draw `eval-sittings`' report (`summarise`) to `path` (a file name or a binary file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rep["sittings"]
    across = {p["to"]: p for p in rep["pairs"] if "mean_px" in p}
    history = {h["sitting"]: h for h in rep.get("with_history", [])}
    users = sorted({r["user"] for r in rows})
    colour = {u: plt.get_cmap("tab10")(i % 10) for i, u in enumerate(users)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.4 * len(rows) + 2) + 3.0, 4.6), dpi=110)
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
            ax.plot(i, history[r["sitting"]]["mean_px"], "^", color="tab:green", ms=6)
    ax.plot([], [], "_", color="k", ms=14, mew=2, label="its own calibration (nested LOTO)")
    for u in users:
        ax.plot([], [], "o", color=colour[u], label=f"{u}: the previous sitting's profile")
    ax.plot([], [], "s", mfc="none", mec="0.4", label="all earlier sittings pooled")
    if history:
        ax.plot([], [], "^", color="tab:green", label="calibrated with the earlier sittings")
    ax.set_xticks(range(len(rows)), [r["sitting"] for r in rows], rotation=70)
    w, a, pool = rep["within"], rep["across"], rep.get("across_pooled", {})
    title = (
        f"within a sitting: median {w['median_px']} px over {w['n']}; the previous sitting's "
        f"profile: median {a['median_px']} px over {a['n']} pairs; all earlier sittings "
        f"pooled: median {pool.get('median_px')} px"
        + (
            ""
            if "within_with_history" not in rep
            else f"; calibrated with the earlier sittings: median "
            f"{rep['within_with_history']['median_px']} px over "
            f"{rep['within_with_history']['n']} (the same alone "
            f"{rep['within_with_history']['alone']['median_px']})"
        )
    )
    # Wrapped to the figure's width (a few sittings make a narrow figure that cut it off),
    # and the legend beside the axes, where it hides no sitting's points.
    width_in = fig.get_size_inches()[0]
    ax.set_title(textwrap.fill(title, int(width_in * 11)), fontsize=9)
    ax.set_ylabel("mean error (px)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
