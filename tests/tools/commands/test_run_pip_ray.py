"""The live view's picture-in-picture draws the oracle's gold ray from the eye to where the
oracle says it looks. It never did for Moondream: the window read `details["target_px"]`,
which only the glance writes (a place on the screen), while Moondream keeps its target in
`details["target"]`, normalised to the image. No window and no model here: the labels are
made by the Moondream adapter over its API-shaped double, as a run makes them."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.labels import OracleLabel, PointObservation, Snapshot
from gazeloop.oracle.moondream import MoondreamConfig, MoondreamOracle, bgr_to_rgb
from gazeloop.oracle.moondream_double import ANSWERS, MoondreamDouble
from gazeloop.tools.commands.run import Window
from gazeloop.tools.ui.render import GOLD, render_pip

W, H = 640, 360
SCREEN = ScreenGeometry(px=(2560, 1440), mm=(597, 336), camera_mm=(298.5, -10, 0))


@pytest.fixture(autouse=True)
def _numpy_images_without_pillow(monkeypatch):
    """Pillow is an [oracle] extra; the adapter takes numpy images without it."""
    monkeypatch.setattr("gazeloop.oracle.moondream.to_model_image", bgr_to_rgb)


def snapshot() -> Snapshot:
    # The eyes where the double finds its pupils: a label with a screen observation.
    return Snapshot(
        t_ns=1,
        image=np.full((H, W, 3), 90, np.uint8),
        snapshot_id="s1",
        eye_px=(0.5 * W, 0.42 * H),
        pupils_px=((0.45 * W, 0.42 * H), (0.55 * W, 0.42 * H)),
        fast_xy=(0.5, 0.5),
    )


def pip_data(snap, label):
    """`Window._pip_data` of a window never opened: it reads nothing of the window."""
    return Window._pip_data(object.__new__(Window), snap, label)


def moondream_label(snap) -> OracleLabel:
    lab = MoondreamOracle(MoondreamDouble(), MoondreamConfig(), SCREEN).label(
        snap, threading.Event()
    )
    assert lab.observation is not None  # a label the loop takes, not a refusal
    return lab


def gold_inside(pip: np.ndarray) -> int:
    """Gold pixels of the picture, without its gold frame and caption."""
    inside = pip[4:-30, 4:-4].astype(int)
    return int(np.all(np.abs(inside - np.array(GOLD)) <= 40, axis=2).sum())


def test_a_moondream_label_draws_the_gold_ray_to_its_target_in_image_pixels():
    """Its target × the snapshot's size; a target that is not a point draws no ray."""
    snap = snapshot()
    lab = moondream_label(snap)
    g = ANSWERS["detect_gaze_forced"]["gaze"]
    d = pip_data(snap, lab)
    assert d.oracle_target_px == pytest.approx((g["x"] * W, g["y"] * H))
    assert gold_inside(render_pip(d)) > 50
    # The same label back from the oracle's own process (JSON: the target is a list).
    back = OracleLabel.model_validate(lab.model_dump(mode="json"))
    assert pip_data(snap, back).oracle_target_px == pytest.approx(d.oracle_target_px)
    for target in (None, [0.5], ["x", 0.2], [float("nan"), 0.2], "0.9,0.4"):
        bad = lab.model_copy(update={"details": lab.details | {"target": target}})
        assert pip_data(snap, bad).oracle_target_px is None, target


def test_a_glance_or_a_click_draws_no_ray_their_points_are_on_the_screen():
    """The glance's `target_px` is in screen pixels: on the camera's picture it pointed off
    into a corner."""
    snap = snapshot()
    for details in ({"target_px": [1800.0, 300.0]}, {"click_px": [1800.0, 300.0]}):
        lab = OracleLabel(
            t_ns=1,
            snapshot_id="s1",
            oracle="glance",
            observation=PointObservation(xy=(0.7, 0.2)),
            details=details,
        )
        d = pip_data(snap, lab)
        assert d.oracle_target_px is None
        assert gold_inside(render_pip(d)) == 0
    assert pip_data(snap, None).oracle_target_px is None  # the first label still on its way
