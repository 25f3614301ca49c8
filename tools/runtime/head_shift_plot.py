"""`gazeloop head-shift --plot PNG`: one panel per head move, the mean displacement of the
gaze point on the screen that the move demands beside the one each mapping predicted.

An arrow that matches the black one follows the head; a ridge on gaze angles, which cannot
know where the head is, draws an arrow of its own whatever the move (the network's answer
changes a little when the face moves in the image). Screen coordinates: x right, y down.
"""

from __future__ import annotations

import math
from typing import Any


def plot_head_shift(report: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    moves = report["moves"]
    labels = sorted({c for per in moves.values() for c in per["by_candidate"]})
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(labels)}
    fig, axes = plt.subplots(1, len(moves), figsize=(3.4 * len(moves), 4.4), dpi=110, squeeze=False)
    for ax, (name, per) in zip(axes[0], moves.items(), strict=True):
        arrows = [("expected", per["expected_px"])]
        arrows += [(c, st["predicted_px"]) for c, st in per["by_candidate"].items()]
        reach = max(1.0, *(math.hypot(*v) for _, v in arrows)) * 1.25
        for label, (dx, dy) in arrows:
            chosen = label == report["chosen"]
            colour = "k" if label == "expected" else colours[label]
            ax.annotate(
                "",
                xy=(dx, dy),
                xytext=(0, 0),
                arrowprops=dict(arrowstyle="->", color=colour, lw=3.0 if chosen else 1.6),
            )
        ax.set_xlim(-reach, reach)
        ax.set_ylim(reach, -reach)  # screen y grows downwards
        ax.set_aspect("equal")
        ax.axhline(0, color="0.85", lw=0.8)
        ax.axvline(0, color="0.85", lw=0.8)
        ax.set_title(
            f"head {name}: {math.hypot(*per['expected_px']):.0f} px expected\n"
            f"({per['frames']} frames)",
            fontsize=9,
        )
        ax.set_xlabel("screen x (px)")
        ax.set_ylabel("screen y (px, down)")
    handles = [plt.Line2D([], [], color="k", lw=2, label="where the gaze point must go")]
    handles += [
        plt.Line2D(
            [],
            [],
            color=colours[c],
            lw=3.0 if c == report["chosen"] else 1.6,
            label=c + (" (chosen)" if c == report["chosen"] else ""),
        )
        for c in labels
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8)
    fig.suptitle(
        f"{report['session']}: {report['targets']} targets, {report['frames']} frames; "
        "mean move of the gaze point on the screen (right, down: in the camera image)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 0.93))
    fig.savefig(path)
    plt.close(fig)
