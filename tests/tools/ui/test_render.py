"""The renderers are pure: check their pictures by colour and position."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gazeloop.calibration.labels import LineObservation, OracleLabel, PointObservation
from gazeloop.tools.ui.render import BLUE, GOLD, RED, VerifyData, render_pip, render_verify


def _mask(img: np.ndarray, colour, tol: int = 30) -> np.ndarray:
    return np.all(np.abs(img.astype(int) - np.array(colour)) <= tol, axis=2)


def _body(out: np.ndarray) -> np.ndarray:
    """The picture without the legend bar along the bottom."""
    return out[:-40]


def _data(**kw) -> VerifyData:
    img = np.full((480, 640, 3), 128, np.uint8)
    base = dict(
        image=img,
        eye_px=(320.0, 200.0),
        iris_px=[(290.0, 185.0), (350.0, 185.0)],
        fast_gaze_yp=(math.radians(20), 0.0),
        fast_xy=(0.2, 0.5),
        label=OracleLabel(
            t_ns=0, snapshot_id="s", oracle="click", observation=PointObservation(xy=(0.8, 0.5))
        ),
        oracle_target_px=(320.0, 400.0),
        mirror_display=False,
    )
    base.update(kw)
    return VerifyData(**base)


def test_verify_screen_draws_three_colours_where_they_belong():
    out = _body(render_verify(_data(), width=1280))
    snap_w = int(1280 * 0.62)
    scale = snap_w / 640
    red, gold, blue = _mask(out, RED), _mask(out, GOLD), _mask(out, BLUE)
    # Fast-path ray: yaw > 0 points toward image right from the eye.
    ys, xs = np.nonzero(red[:, :snap_w])
    assert xs.size > 50 and xs.mean() > 320 * scale
    # Oracle ray goes down from the eye to its target.
    ys, xs = np.nonzero(gold[:, :snap_w])
    assert ys.size > 50 and ys.mean() > 200 * scale
    # Iris centres are blue dots at their pixels.
    for x, y in [(290, 185), (350, 185)]:
        assert blue[int(y * scale), int(x * scale)]
    # Screen panel: red fast point on the left half, gold oracle point on the right half.
    panel = out[:, snap_w:]
    pr, pg = _mask(panel, RED), _mask(panel, GOLD)
    mid = panel.shape[1] / 2
    assert np.nonzero(pr)[1].mean() < mid < np.nonzero(pg)[1].mean()


def test_mirrored_display_flips_the_rays():
    plain = _body(render_verify(_data(), width=1280))
    mirrored = _body(render_verify(_data(mirror_display=True), width=1280))
    snap_w = int(1280 * 0.62)
    x_plain = np.nonzero(_mask(plain[:, :snap_w], RED))[1].mean()
    x_mirr = np.nonzero(_mask(mirrored[:, :snap_w], RED))[1].mean()
    assert x_plain > snap_w / 2 > x_mirr


def test_line_label_draws_a_line_through_the_camera():
    lab = OracleLabel(
        t_ns=0,
        snapshot_id="s",
        oracle="moondream2",
        observation=LineObservation(origin=(0.5, 0.0), direction=(0.0, 1.0)),
    )
    out = _body(render_verify(_data(label=lab), width=1280))
    snap_w = int(1280 * 0.62)
    panel = _mask(out[:, snap_w:], GOLD)
    ys, xs = np.nonzero(panel)
    assert np.ptp(ys) > 100  # a long vertical line...
    assert xs.std() < 6  # ...at one x: the camera's, mid-screen


def test_busy_shows_a_spinner_and_no_label():
    idle = render_verify(_data(label=None), width=1280)
    busy = render_verify(_data(label=None, busy=True, spinner_phase=0.3), width=1280)
    assert np.count_nonzero(np.any(idle != busy, axis=2)) > 50


@pytest.mark.parametrize("width", [240, 320])
def test_pip_is_small_framed_in_gold_with_the_snapshot_aspect(width):
    pip = render_pip(_data(), width=width)
    assert pip.shape == (round(width * 480 / 640), width, 3)
    assert _mask(pip[:2, :], GOLD).mean() > 0.9  # the gold frame
    assert _mask(pip, RED).any() and _mask(pip, BLUE).any()


def test_live_view_has_camera_mesh_pip_cursor_and_status():
    from gazeloop.tools.ui.render import LiveData, render_live

    img = np.full((480, 640, 3), 100, np.uint8)
    pts = np.zeros((478, 3), np.float32)
    pts[:, 0] = np.linspace(200, 440, 478)
    pts[:, 1] = 240
    pip = np.zeros((90, 120, 3), np.uint8)
    pip[:] = GOLD
    out = render_live(
        LiveData(image=img, landmarks=pts, screen_xy=(0.75, 0.25), pip=pip, status="20 fps"),
        width=1280,
    )
    cam_w = 640
    green = np.all(out[:, :cam_w] == (0, 220, 0), axis=2)
    assert green.sum() > 100  # the mesh
    assert _mask(out[:90, cam_w - 120 : cam_w], GOLD).mean() > 0.95  # PiP, top right corner
    ys, xs = np.nonzero(_mask(out[:, cam_w:], RED))
    canvas_w = 1280 - cam_w - 20
    assert xs.mean() == pytest.approx(10 + 0.75 * canvas_w, abs=25)  # the cursor's x
    assert ys.mean() < out.shape[0] / 2  # ...and it is in the upper half
    assert np.any(out[-36:] > 200)  # the status line is written


def test_window_text_is_what_the_font_can_draw():
    """OpenCV's Hershey fonts draw ASCII only: "yaw -20.3° pitch" showed as "??"."""
    from gazeloop.tools.ui.render import drawable

    assert drawable("gaze yaw -20.3° pitch −4.3°") == "gaze yaw -20.3 deg pitch -4.3 deg"
    assert drawable("clicks 4/4 σ 58px") == "clicks 4/4 sd 58px"
    assert drawable("fine ✓").isascii()
