"""`gazeloop oracle eval --plot PNG`: what an oracle said about each frame, on the screen.

Left, the screen as the session's targets lie on it: every returned point joined to the
target it should have hit, every returned line drawn across the screen (a gaze-following
model's answer for a screen behind the camera is at best such a line), every frame left
unlabelled a red cross beside its target, and at each target how many of its frames got a
label. Right, the spread of the errors of the returned labels: distance for points,
perpendicular distance for lines; for replayed clicks, whose kept labels sit on their
targets by construction, how far the fixation that vouched for each kept click was.
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from typing import Any

import numpy as np

# Errors past this many times the median are counted, not drawn: one far fixation or one
# wild line would otherwise squeeze every other label into one bar. The median, since a
# percentile of a few labels is pulled by the very value to be clipped.
_CLIP_OVER_MEDIAN = 4.0
# Refused frames are drawn this share of the screen width right of their target, so they
# do not hide the kept labels drawn on it.
_REFUSED_SHIFT = 0.018


def _errors(labels: list[dict[str, Any]]) -> tuple[list[float], str]:
    """The errors the histogram shows, and what they are: returned labels only, since a
    refused label's number (a click refused as `far`) is the reason it was refused."""
    kept = [r for r in labels if r["returned"]]
    dist = [r["distance_px"] for r in kept if r.get("distance_px") is not None]
    perp = [r["perpendicular_px"] for r in kept if r.get("perpendicular_px") is not None]
    fix = [r["fixation_px"] for r in kept if r.get("fixation_px") is not None]
    if dist and max(dist) > 0:
        return dist, "distance of a point label from its target (px)"
    if perp:
        return perp, "distance of the target from a line label (px)"
    if fix:
        return fix, "distance of the vouching fixation from the target (px)"
    return dist, "distance of a point label from its target (px)"


def _draw_labels(ax, out: dict[str, Any]) -> None:
    w, h = out["screen_px"]
    reach = 2.0 * math.hypot(w, h)
    for r in out["labels"]:
        tx, ty = r["truth_px"]
        if not r["returned"]:
            ax.plot(tx + _REFUSED_SHIFT * w, ty, "x", color="tab:red", ms=6, mew=1.5)
        elif r.get("line_px") is not None:
            ox, oy, ux, uy = r["line_px"]
            ax.plot([ox - reach * ux, ox + reach * ux], [oy - reach * uy, oy + reach * uy],
                    color="tab:purple", alpha=0.25, lw=1)  # fmt: skip
        elif r.get("point_px") is not None:
            px, py = r["point_px"]
            ax.plot([tx, px], [ty, py], color="tab:blue", lw=1, alpha=0.6)
            ax.plot(px, py, ".", color="tab:blue", ms=5)


def _draw_counts(ax, out: dict[str, Any]) -> None:
    """Beside each target, its returned labels of its frames: many frames share a target
    and their marks fall on one another."""
    w, h = out["screen_px"]
    asked = Counter(tuple(r["truth_px"]) for r in out["labels"])
    got = Counter(tuple(r["truth_px"]) for r in out["labels"] if r["returned"])
    for (tx, ty), n in asked.items():
        down = -11 if ty < 0.5 * h else 11  # points, display up: towards the screen's middle
        ax.annotate(
            f"{got[(tx, ty)]}/{n}", (tx, ty), xytext=(0, down),
            textcoords="offset points", ha="center", va="center", fontsize=7,
        )  # fmt: skip
    truths = np.array(list(asked))
    ax.plot(truths[:, 0], truths[:, 1], "o", mfc="none", color="k", ms=9, label="target")


def _draw_screen(ax, out: dict[str, Any]) -> None:
    w, h = out["screen_px"]
    ax.add_patch(_rect(w, h))
    _draw_labels(ax, out)
    _draw_counts(ax, out)
    ax.plot([], [], "-", color="tab:blue", label="point label (joined to its target)")
    ax.plot([], [], "-", color="tab:purple", label="line label")
    ax.plot([], [], "x", color="tab:red", label="no label (drawn right of its target)")
    ax.set_xlim(-0.05 * w, 1.05 * w)
    ax.set_ylim(1.05 * h, -0.05 * h)  # screen y grows downwards
    ax.set_aspect("equal")
    ax.set_xlabel("screen x (px)")
    ax.set_ylabel("screen y (px)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)


def _rect(w: float, h: float):
    import matplotlib.patches

    return matplotlib.patches.Rectangle((0, 0), w, h, fill=False, color="0.6", lw=1)


def _draw_errors(ax, labels: list[dict[str, Any]]) -> None:
    from matplotlib.ticker import MaxNLocator

    errs, what = _errors(labels)
    ax.set_xlabel(what, fontsize=8)
    ax.set_ylabel("labels")
    if not errs:
        ax.text(0.5, 0.5, "no returned label", ha="center", va="center")
        return
    med = float(np.median(errs))
    hi = max(_CLIP_OVER_MEDIAN * med, 1.0)
    if max(errs) <= hi:
        hi = max(1.05 * max(errs), 1.0)
    shown = [e for e in errs if e <= hi]
    beyond = len(errs) - len(shown)
    ax.hist(shown, bins=min(30, max(5, len(shown) // 2)), range=(0, hi), color="tab:gray")
    ax.axvline(med, color="k", ls="--", lw=1)
    ax.set_xlim(0, hi)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if beyond:
        ax.text(0.98, 0.95, f"{beyond} beyond {hi:.0f} px (max {max(errs):.0f})",
                transform=ax.transAxes, ha="right", va="top", fontsize=8)  # fmt: skip
    ax.set_title(f"median {med:.0f} px over {len(errs)} returned labels", fontsize=9)


def oracle_eval_figure(out: dict[str, Any]):
    """The picture as a matplotlib figure (the caller saves and closes it)."""
    from gazeloop.calibration.metrics.plotting import drawable, pyplot

    plt = pyplot()

    s = out["summary"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5.2), dpi=110)
    _draw_screen(left, out)
    why = ", ".join(f"{k} {v}" for k, v in s["why_not"].items())
    left.set_title(
        f"{out['oracle']}: {s['returned']} of {s['labels']} labels returned "
        "(k/n at a target: k of its n)" + (f"\n(not: {why})" if why else ""),
        fontsize=9,
    )
    _draw_errors(right, out["labels"])
    lines = textwrap.wrap(f"{out['session']}: {out['oracle_note']}", 150)
    fig.suptitle(drawable("\n".join(lines)), fontsize=8)
    # Each line of the note takes about 3 % of the height; the note is never cut short.
    fig.tight_layout(rect=(0, 0.03, 1, 1 - 0.03 * len(lines) - 0.01))
    return fig


def plot_oracle_eval(out: dict[str, Any], path) -> None:
    import matplotlib.pyplot as plt

    fig = oracle_eval_figure(out)
    fig.savefig(path)
    plt.close(fig)
