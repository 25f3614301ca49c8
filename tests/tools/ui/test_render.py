"""The renderers are pure: check their pictures by colour and position."""

from __future__ import annotations

import numpy as np
import pytest

from gazeloop.calibration.labels import OracleLabel, PointObservation
from gazeloop.tools.ui.render import BLUE, GOLD, RED, PipData, render_pip


def _mask(img: np.ndarray, colour, tol: int = 30) -> np.ndarray:
    return np.all(np.abs(img.astype(int) - np.array(colour)) <= tol, axis=2)


def _data(**kw) -> PipData:
    img = np.full((480, 640, 3), 128, np.uint8)
    base = dict(
        image=img,
        eye_px=(320.0, 200.0),
        iris_px=[(290.0, 185.0), (350.0, 185.0)],
        label=OracleLabel(
            t_ns=0, snapshot_id="s", oracle="click", observation=PointObservation(xy=(0.8, 0.5))
        ),
        oracle_target_px=(480.0, 400.0),
        mirror_display=False,
    )
    base.update(kw)
    return PipData(**base)


def _inside(pip: np.ndarray) -> np.ndarray:
    """The picture without its gold frame and caption."""
    return pip[4:-30, 4:-4]


@pytest.mark.parametrize("width", [240, 320])
def test_pip_is_small_framed_in_gold_with_the_snapshot_aspect(width):
    pip = render_pip(_data(), width=width)
    assert pip.shape == (round(width * 480 / 640), width, 3)
    assert _mask(pip[:2, :], GOLD).mean() > 0.9  # the gold frame


def test_pip_draws_the_pupils_in_blue_and_the_oracles_ray_in_gold_where_they_belong():
    pip = render_pip(_data(), width=320)
    scale = 320 / 640
    for x, y in [(290, 185), (350, 185)]:
        assert _mask(pip, BLUE)[int(y * scale), int(x * scale)]
    # The ray runs from the eye (320, 200) down and right toward its target (480, 400).
    ys, xs = np.nonzero(_mask(_inside(pip), GOLD))
    assert ys.size > 20
    assert xs.mean() + 4 > 320 * scale and ys.mean() + 4 > 200 * scale


def test_a_mirrored_display_flips_the_oracles_ray():
    plain = _inside(render_pip(_data(), width=320))
    mirrored = _inside(render_pip(_data(mirror_display=True), width=320))
    mid = plain.shape[1] / 2
    assert (
        np.nonzero(_mask(plain, GOLD))[1].mean() > mid > np.nonzero(_mask(mirrored, GOLD))[1].mean()
    )


def test_busy_shows_a_spinner():
    idle = render_pip(_data(label=None), width=320)
    busy = render_pip(_data(label=None, busy=True, spinner_phase=0.3), width=320)
    assert np.count_nonzero(np.any(idle != busy, axis=2)) > 20


def test_the_caption_says_when_the_oracle_saw_no_screen_gaze():
    seen = render_pip(_data(), width=320)
    lab = OracleLabel(t_ns=0, snapshot_id="s", oracle="click", observation=None)
    unseen = render_pip(_data(label=lab, oracle_target_px=None), width=320)
    caption = (slice(-30, None), slice(None))
    assert _mask(unseen[caption], GOLD).sum() > _mask(seen[caption], GOLD).sum()


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


def test_the_waiting_view_dims_the_last_frame_and_says_why_in_gold():
    from gazeloop.tools.ui.render import render_waiting

    last = np.full((396, 1280, 3), 200, np.uint8)
    out = render_waiting(last, "camera 0: no frame for 1.5 s, reconnecting (q quits)")
    assert out.shape == last.shape and np.median(out) < 100  # dimmed
    ys, xs = np.nonzero(_mask(out, GOLD))
    assert xs.size > 200 and abs(ys.mean() - 198) < 20  # the message, across the middle
    assert render_waiting(None, "x").shape == (480, 960, 3)  # before any frame was shown
