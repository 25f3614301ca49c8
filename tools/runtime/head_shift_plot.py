"""`gazeloop head-shift --plot PNG`: one panel per head move, the mean displacement of the
gaze point on the screen that the move demands beside the one each mapping predicted.

An arrow that matches the black one follows the head; a ridge on gaze angles, which cannot
know where the head is, draws an arrow of its own whatever the move (the network's answer
changes a little when the face moves in the image). Screen coordinates: x right, y down.
Every panel has the same scale, so an 8 px move looks smaller than an 81 px one.
"""

from __future__ import annotations

import math
from typing import Any

# A translated image is the head turned about the camera (`calibration.metrics.head_shift`),
# not a step sideways: the panels say so, in the image's directions.
_MOVE_TITLES = {
    "right": "head turned about the camera,\nface right in the image",
    "down": "head turned about the camera,\nface down in the image",
    "closer": "head closer",
    "farther": "head farther",
}


def _arrows(report: dict[str, Any], per: dict[str, Any]) -> list[tuple[str, list[float]]]:
    arrows = [("expected", per["expected_px"])]
    return arrows + [(c, st["predicted_px"]) for c, st in per["by_candidate"].items()]


def _reach(report: dict[str, Any]) -> float:
    """Half the side of every panel: the longest arrow of any move, with a margin."""
    lengths = [math.hypot(*v) for per in report["moves"].values() for _, v in _arrows(report, per)]
    return max(1.0, *lengths) * 1.25


def _draw_move(ax, report, name: str, per: dict[str, Any], colours, reach: float) -> None:
    for label, (dx, dy) in _arrows(report, per):
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
        f"{_MOVE_TITLES.get(name, f'head {name}')}: "
        f"{math.hypot(*per['expected_px']):.0f} px expected ({per['frames']} frames)",
        fontsize=9,
    )
    ax.set_xlabel("screen x (px)")
    ax.set_ylabel("screen y (px, down)")


def _legend_label(report: dict[str, Any], c: str) -> str:
    """A mapping's name and its miss on each move, in panel order."""
    misses = []
    for per in report["moves"].values():
        miss = per["by_candidate"].get(c, {}).get("miss_px")
        misses.append("-" if miss is None else f"{miss:.0f}")
    chosen = " (chosen)" if c == report["chosen"] else ""
    return f"{c}{chosen}: miss {', '.join(misses)} px"


def plot_head_shift(report: dict[str, Any], path) -> None:
    from gazeloop.calibration.metrics.plotting import STRONG, drawable, pyplot

    plt = pyplot()

    moves = report["moves"]
    labels = sorted({c for per in moves.values() for c in per["by_candidate"]})
    colours = {c: STRONG[i % len(STRONG)] for i, c in enumerate(labels)}
    fig, axes = plt.subplots(1, len(moves), figsize=(3.4 * len(moves), 4.4), dpi=110, squeeze=False)
    reach = _reach(report)
    for ax, (name, per) in zip(axes[0], moves.items(), strict=True):
        _draw_move(ax, report, name, per, colours, reach)
    handles = [plt.Line2D([], [], color="k", lw=2, label="where the gaze point must go")]
    handles += [
        plt.Line2D(
            [], [], color=colours[c], lw=3.0 if c == report["chosen"] else 1.6,
            label=_legend_label(report, c),
        )
        for c in labels
    ]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    w, h = report["screen_mm"]
    fig.suptitle(
        drawable(
            f"{report['session']}: {report['targets']} targets, {report['frames']} frames; "
            f"screen taken as {w:g}×{h:g} mm\nmean move of the gaze point on the screen, "
            "one scale for all panels; misses in panel order"
        ),
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.92))
    fig.savefig(path)
    plt.close(fig)
