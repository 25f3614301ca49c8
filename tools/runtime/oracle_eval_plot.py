"""`gazeloop oracle eval --plot PNG`: what an oracle said about each frame, on the screen.

Left, the screen as the session's targets lie on it: every returned point joined to the
target it should have hit, every returned line drawn across the screen (a gaze-following
model's answer for a screen behind the camera is at best such a line), every frame left
unlabelled a red cross on its target. Right, the spread of the errors: distance for points,
perpendicular distance for lines; for replayed clicks, whose kept labels sit on their
targets by construction, how far the fixation that vouched for each click was.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np


def _errors(labels: list[dict[str, Any]]) -> tuple[list[float], str]:
    """The errors the histogram shows, and what they are."""
    dist = [r["distance_px"] for r in labels if r.get("distance_px") is not None]
    perp = [r["perpendicular_px"] for r in labels if r.get("perpendicular_px") is not None]
    fix = [r["fixation_px"] for r in labels if r.get("fixation_px") is not None]
    if dist and max(dist) > 0:
        return dist, "distance of a point label from its target (px)"
    if perp:
        return perp, "distance of the target from a line label (px)"
    if fix:
        return fix, "distance of the vouching fixation from the target (px)"
    return dist, "distance of a point label from its target (px)"


def _draw_screen(ax, out: dict[str, Any]) -> None:
    w, h = out["screen_px"]
    ax.add_patch(_rect(w, h))
    reach = 2.0 * math.hypot(w, h)
    for r in out["labels"]:
        tx, ty = r["truth_px"]
        if not r["returned"]:
            ax.plot(tx, ty, "x", color="tab:red", ms=7, mew=1.5)
        elif r.get("line_px") is not None:
            ox, oy, ux, uy = r["line_px"]
            ax.plot([ox - reach * ux, ox + reach * ux], [oy - reach * uy, oy + reach * uy],
                    color="tab:purple", alpha=0.25, lw=1)  # fmt: skip
        elif r.get("point_px") is not None:
            px, py = r["point_px"]
            ax.plot([tx, px], [ty, py], color="tab:blue", lw=1, alpha=0.6)
            ax.plot(px, py, ".", color="tab:blue", ms=5)
    truths = np.unique(np.array([r["truth_px"] for r in out["labels"]]), axis=0)
    ax.plot(truths[:, 0], truths[:, 1], "o", mfc="none", color="k", ms=9, label="target")
    ax.plot([], [], "-", color="tab:blue", label="point label (joined to its target)")
    ax.plot([], [], "-", color="tab:purple", label="line label")
    ax.plot([], [], "x", color="tab:red", label="no label")
    ax.set_xlim(-0.05 * w, 1.05 * w)
    ax.set_ylim(1.05 * h, -0.05 * h)  # screen y grows downwards
    ax.set_aspect("equal")
    ax.set_xlabel("screen x (px)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)


def _rect(w: float, h: float):
    import matplotlib.patches

    return matplotlib.patches.Rectangle((0, 0), w, h, fill=False, color="0.6", lw=1)


def plot_oracle_eval(out: dict[str, Any], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = out["summary"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5.2), dpi=110)
    _draw_screen(left, out)
    why = ", ".join(f"{k} {v}" for k, v in s["why_not"].items())
    left.set_title(
        f"{out['oracle']}: {s['returned']} of {s['labels']} labels returned"
        + (f"\n(not: {why})" if why else ""),
        fontsize=9,
    )
    errs, what = _errors(out["labels"])
    if errs:
        right.hist(errs, bins=min(30, max(5, len(errs) // 2)), color="tab:gray")
        right.axvline(float(np.median(errs)), color="k", ls="--", lw=1)
        right.set_title(f"median {np.median(errs):.0f} px over {len(errs)} labels", fontsize=9)
    else:
        right.text(0.5, 0.5, "no returned label", ha="center", va="center")
    right.set_xlabel(what, fontsize=8)
    right.set_ylabel("labels")
    note = textwrap.shorten(f"{out['session']}: {out['oracle_note']}", 300, placeholder=" ...")
    fig.suptitle("\n".join(textwrap.wrap(note, 150)), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path)
    plt.close(fig)
