"""Where the gaze point must go when the picture of the head is scaled or translated."""

from __future__ import annotations

import numpy as np
import pytest

from gazeloop.calibration.metrics.head_shift import expected_shift_mm, follow_stats

EYES = np.array([[10.0, -20.0, -550.0], [-30.0, 15.0, -480.0]])
TARGETS = np.array([[120.0, 60.0], [-90.0, 140.0]])  # screen mm from the camera's foot


def test_scaling_is_the_scene_shrunk_toward_the_camera():
    for s in (1.15, 0.87):
        d = expected_shift_mm(EYES, TARGETS, 640.0, scale=s)
        np.testing.assert_allclose(d, TARGETS * (1 / s - 1), atol=1e-9)


def test_no_move_no_shift():
    np.testing.assert_allclose(expected_shift_mm(EYES, TARGETS, 640.0), 0.0, atol=1e-12)


def test_a_turn_about_the_camera_keeps_a_target_at_the_camera_in_place():
    d = expected_shift_mm(EYES, np.zeros((2, 2)), 640.0, du=50.0, dv=-30.0)
    np.testing.assert_allclose(d, 0.0, atol=1e-9)


def test_a_translation_moves_far_targets_by_second_order_only():
    du = 50.0  # ≈ 4.5° of turn
    d = expected_shift_mm(EYES, TARGETS, 640.0, du=du)
    parallel = du / 640.0 * np.abs(EYES[:, 2])  # what a parallel slide would give (mm)
    assert (np.abs(d[:, 0]) < 0.25 * parallel).all()


def test_a_turn_moves_a_target_off_the_camera_as_the_ray_geometry_says():
    """The closed form for an eye on the camera's axis at depth D looking at a target x mm
    to one side, the scene turned about the camera by θ = du/f: the ray from the turned eye
    through the turned target meets the screen at D·x / (D cos θ ∓ x sin θ). (The tests
    above expect zero or a bound; dropping du and dv passed them.)"""
    depth, f, x, y = 600.0, 640.0, 150.0, 90.0
    eye = np.array([[0.0, 0.0, -depth]])
    yaw, pitch = 50.0 / f, -30.0 / f
    d = expected_shift_mm(eye, np.array([[x, 0.0]]), f, du=50.0)
    want = depth * x / (depth * np.cos(yaw) - x * np.sin(yaw)) - x
    np.testing.assert_allclose(d, [[want, 0.0]], atol=1e-9)
    assert want > 3.0  # a shift worth measuring: 3.5 mm
    d = expected_shift_mm(eye, np.array([[0.0, y]]), f, dv=-30.0)
    want = depth * y / (depth * np.cos(pitch) + y * np.sin(pitch)) - y
    np.testing.assert_allclose(d, [[0.0, want]], atol=1e-9)
    assert abs(want) > 0.5


def test_follow_stats():
    exp = np.array([[0.0, 60.0], [0.0, 40.0]])
    st = follow_stats(np.array([[0.0, 25.0], [0.0, 25.0]]), exp)
    assert st["expected_px"] == [0.0, 50.0] and st["predicted_px"] == [0.0, 25.0]
    assert st["followed"] == pytest.approx(0.5) and st["miss_fraction"] == pytest.approx(0.5)
    assert st["miss_px"] == pytest.approx(25.0)
    tiny = follow_stats(np.array([[30.0, 0.0]]), np.array([[1.0, 0.0]]))
    assert tiny["followed"] is None and tiny["miss_px"] == pytest.approx(29.0)
