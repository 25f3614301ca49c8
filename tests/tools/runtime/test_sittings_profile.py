"""Fitting one named mapping on pooled sittings (`profile fit S1 S2 --mapping/--features`)."""

from __future__ import annotations

import numpy as np
import pytest

from gazeloop.calibration.frames import LabelledFrames
from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.sittings import pool_sittings
from gazeloop.tools.runtime.sittings_profile import fit_pooled_mapping

SCREEN = ScreenGeometry(px=(1000, 800))
GRID = np.array([(x, y) for y in (100, 400, 700) for x in (100, 500, 900)], float)
IDS = dict(user="u", device="d", gaze_model_id="m", gaze_model_sha256="0" * 64)


def _sitting(rng, shift: float) -> dict[str, LabelledFrames]:
    """Two frames per grid point; the network's embedding sees the target, shifted a little
    from sitting to sitting."""
    labels = np.repeat(GRID, 2, axis=0)
    emb = labels / 1000.0 + shift + rng.normal(0, 1e-3, labels.shape)
    cols = {"emb_0": emb[:, 0], "emb_1": emb[:, 1], "gaze_yaw": emb[:, 0], "gaze_pitch": emb[:, 1]}
    names = [f"f{i}" for i in range(len(labels))]
    return {"as read": LabelledFrames(cols, labels, np.repeat(np.arange(9), 2), names)}


def test_the_embedding_by_its_short_name_is_saved_as_its_columns():
    rng = np.random.default_rng(0)
    pool = pool_sittings([_sitting(rng, 0.0), _sitting(rng, 0.01)])
    prof = fit_pooled_mapping(pool, "ridge", ["embedding"], screen=SCREEN, **IDS)
    assert prof.features == ["emb_0", "emb_1"]
    assert prof.fit.targets == 9 and prof.fit.mean_px < 30


def test_a_feature_the_pool_lacks_is_one_line_naming_it():
    rng = np.random.default_rng(1)
    pool = pool_sittings([_sitting(rng, 0.0), _sitting(rng, 0.01)])
    with pytest.raises(ValueError, match="feature 'head_yaw' is not produced") as e:
        fit_pooled_mapping(pool, "ridge", ["gaze_yaw", "head_yaw"], screen=SCREEN, **IDS)
    assert "\n" not in str(e.value)
