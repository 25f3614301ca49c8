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


def test_calibrations_that_made_no_profile_are_not_pooled(shared, tmp_path, monkeypatch):
    """A cancelled grid, one with too few targets, and one no better than guessing keep
    their sessions (nothing stored is lost) but made no profile: the pool of the next
    sitting took them all, a refused calibration included (358 px against 71 without)."""
    import json

    from gazeloop.tools.runtime.sittings_profile import calibration_sessions

    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    src = shared / "data/evit/p1_s01"
    manifest = json.loads((src / "session.json").read_text()) | {"device": "d"}
    reports = {"made": {"profile": "p.json"}, "refused": {"profile": None}, "cancelled": None}
    for i, (name, report) in enumerate(reports.items()):
        folder = tmp_path / "users/u/sessions" / f"calibration-2026120{i}-{name}"
        folder.mkdir(parents=True)
        (folder / "session.json").write_text(json.dumps(manifest))
        for f in sorted(src.glob("img_*"))[:4]:
            (folder / f.name).symlink_to(f)
        if report is not None:
            (folder / "report").mkdir()
            (folder / "report/calibration.json").write_text(json.dumps(report))
    found = calibration_sessions("u", "d", tuple(manifest["screen_px"]))
    assert [f.name for f in found] == ["calibration-20261200-made"]


def test_each_screen_size_keeps_its_own_pool(tmp_path, monkeypatch):
    """One file for every screen size was fitted again, and the other size's pool lost,
    each time `run --screen-px` switched between them."""
    from gazeloop.calibration.profile import profile_path
    from gazeloop.tools.runtime.sittings_profile import sittings_path

    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    laptop, monitor = (
        sittings_path("ada", "mac", (1512, 982)),
        sittings_path("ada", "mac", (2560, 1440)),
    )
    assert (
        laptop != monitor and laptop.parent == monitor.parent == profile_path("ada", "mac").parent
    )
    assert (laptop.name, monitor.name) == (
        "mac.sittings-1512x982.json",
        "mac.sittings-2560x1440.json",
    )


def test_a_pooled_profile_is_fitted_on_every_frame_the_pool_kept():
    """The pool drops each sitting's per-target outliers; judged again on what it kept, a
    tighter spread made outliers of frames that were none (`fit_profile`'s report said
    fewer frames than the pool had)."""
    from gazeloop.calibration.metrics.evaluate import robust_keep

    rng = np.random.default_rng(3)

    def sitting(shift):
        labels = np.repeat(GRID, 12, axis=0)
        gaze = labels / 1000.0 + shift + rng.standard_t(3, labels.shape) * 2e-3
        cols = {"gaze_yaw": gaze[:, 0], "gaze_pitch": gaze[:, 1]}
        names = [f"f{i}" for i in range(len(labels))]
        return {"as read": LabelledFrames(cols, labels, np.repeat(np.arange(9), 12), names)}

    pool = pool_sittings([sitting(0.0), sitting(0.01)])
    kept = len(pool.frames.labels_px)
    assert pool.dropped > 0
    again = robust_keep(pool.frames.matrix(["gaze_yaw", "gaze_pitch"]), pool.cells)
    assert again.sum() < kept  # what a second judgement would drop
    prof = fit_pooled_mapping(pool, "ridge", ["gaze_yaw", "gaze_pitch"], screen=SCREEN, **IDS)
    assert prof.fit.frames == kept
