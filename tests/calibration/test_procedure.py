"""`fit_profile_report`: the evaluation it reports is of the frames the profile was fitted on."""

from __future__ import annotations

import numpy as np

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.metrics.evaluate import fixed_keep
from gazeloop.calibration.procedure import fit_profile_report


def test_the_report_drops_the_fits_outliers_once_and_names_them():
    """The report was computed on the frames already trimmed, and trimmed them again: its
    error and frame count were of fewer frames than the profile's fit, and the frames the
    fit dropped were named nowhere."""
    rng = np.random.default_rng(3)
    screen = ScreenGeometry(px=(1600, 1000))
    targets = np.array([[x, y] for y in (0.15, 0.5, 0.85) for x in (0.15, 0.5, 0.85)])
    groups = np.repeat(np.arange(len(targets)), 12)
    y_norm = targets[groups]
    # gaze angles linear in the screen point, with a heavy tail: trimming twice drops more
    x = (y_norm - 0.5) * [0.6, 0.4] + rng.standard_t(2, size=(len(groups), 2)) * 0.01
    names = [f"f{i}.jpg" for i in range(len(groups))]
    features = ["gaze_yaw", "gaze_pitch"]
    keep = fixed_keep(x, features, groups)
    assert (~keep).sum() > 0 and (~fixed_keep(x[keep], features, groups[keep])).sum() > 0
    prof, ev = fit_profile_report(
        x,
        y_norm,
        groups,
        screen=screen,
        features=features,
        user="u",
        device="d",
        gaze_model_id="m",
        gaze_model_sha256="0" * 64,
        frame_names=names,
    )
    r = ev.report
    assert r.frames == len(groups) and r.frames_used == int(keep.sum())
    dropped = {f.file for f in r.rejected if f.why == "outlier within its target"}
    assert dropped == {n for n, k in zip(names, keep, strict=True) if not k}
    assert prof.fit.frames == int(keep.sum())
