"""Whether a session's frames are a selfie view, as the frames themselves tell it: the sign of
the correlation between the gaze's yaw and the targets' x.

In an un-mirrored camera frame a person looking further right on the screen turns towards
image-left, so the gaze yaw falls as the target's x grows (DESIGN.md, Conventions); a selfie
view reverses it. Targets in a column, or a face the network barely follows, say nothing.
"""

from __future__ import annotations

import numpy as np

# |r| below this says nothing: targets in a column, or a face the model barely follows.
MIRROR_MIN_R = 0.5


def yaw_follows_x(yaw: np.ndarray, x_px: np.ndarray, groups: np.ndarray) -> float | None:
    """The correlation over target means (each target once) of the gaze yaw with the
    target's x when it is decisive (|r| ≥ `MIRROR_MIN_R`, 3 targets or more), else None."""
    ids = np.unique(groups)
    if len(ids) < 3:
        return None
    means = np.array([[yaw[groups == g].mean(), x_px[groups == g].mean()] for g in ids])
    if np.ptp(means[:, 1]) == 0 or np.ptp(means[:, 0]) == 0:
        return None
    r = float(np.corrcoef(means[:, 0], means[:, 1])[0, 1])
    return r if abs(r) >= MIRROR_MIN_R else None


def every_fold_agrees(yaw: np.ndarray, x_px: np.ndarray, groups: np.ndarray) -> bool:
    """Whether the frames say the same, decisively, with any one target left out: then a
    leave-one-target-out evaluation decides every fold as the whole session decides, and the
    other read of the frames (their mirror image, whose yaw runs the other way) would be
    ruled out in each; it need not be read at all."""
    r = yaw_follows_x(yaw, x_px, groups)
    if r is None:
        return False
    for g in np.unique(groups):
        keep = groups != g
        rf = yaw_follows_x(yaw[keep], x_px[keep], groups[keep])
        if rf is None or (rf > 0) != (r > 0):
            return False
    return True
