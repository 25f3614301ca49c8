"""What a profile records of the fast path that read its frames: the gaze model (its id and
content), the network's read, and the other settings that decide a feature
(`FastPathConfig.feature_settings`). One place, so that every command that fits a profile
records the same things (`profile fit`, `calibrate`, `eval --save-profile`, a refit for a
new model, the demo, the pooled sittings)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gazeloop.calibration.profile import Profile, read_with_changes
from gazeloop.fastpath.pipeline import FastPath


def made_by(fp: FastPath) -> dict[str, Any]:
    """`Profile` fields of the fast path `fp` (its gaze model loaded; it may be closed
    since: they are what it read with)."""
    return {
        "gaze_model_id": fp.gaze.model_id,
        "gaze_model_sha256": fp.gaze.sha256,
        "gaze_read": fp.gaze.read,
        "read_with": fp.cfg.feature_settings(),
    }


def read_otherwise(path: Path, prof: Profile, fp: FastPath) -> str | None:
    """One line when `fp` reads frames with other feature settings than the profile at
    `path` was fitted on (`read_with_changes`); None when they agree or it recorded none.
    A note, not an error: the points are still of the same model and read."""
    changes = read_with_changes(prof, fp.cfg.feature_settings())
    if not changes:
        return None
    return (
        f"note: {path} was fitted on frames read with other settings ({'; '.join(changes)}): "
        "its points may be off; refit it with these (`gazeloop profile fit` on its "
        "calibration session) or read as it was fitted (--config)"
    )
