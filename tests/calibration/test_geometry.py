"""ScreenGeometry: the only place pixels and millimetres meet normalised screen points."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from gazeloop.calibration.geometry import ScreenGeometry

# A 15.6" 16:9 laptop panel: 0.18 mm pixels at 1920×1080.
LAPTOP = ScreenGeometry(
    px=(1920, 1080), mm=(345.6, 194.4), camera_mm=(172.8, -8.0, 0.0), viewing_distance_mm=600
)


def test_to_norm_and_back_on_any_leading_shape():
    px = np.array([[0, 0], [1920, 1080], [960, 270]], dtype=float)
    norm = LAPTOP.to_norm(px)
    np.testing.assert_allclose(norm, [[0, 0], [1, 1], [0.5, 0.25]])
    np.testing.assert_allclose(LAPTOP.to_px(norm), px)
    grid = np.arange(24, dtype=float).reshape(3, 4, 2)
    assert LAPTOP.to_norm(grid).shape == (3, 4, 2)
    np.testing.assert_allclose(LAPTOP.to_px(LAPTOP.to_norm(grid)), grid)
    np.testing.assert_allclose(LAPTOP.to_norm((960, 540)), [0.5, 0.5])


def test_points_must_be_pairs():
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        LAPTOP.to_norm(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="shape"):
        LAPTOP.to_px(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"px": (0, 1080)}, "px must be positive"),
        ({"px": (1920, -1)}, "px must be positive"),
        ({"px": (10**9, 10**9)}, "beyond any screen"),  # a collector took it as a folder name
        ({"px": (1920, 1080), "mm": (345.6, 0.0)}, "mm must be positive"),
        ({"px": (1920, 1080), "mm": (math.inf, 194.4)}, "mm must be positive and finite"),
        ({"px": (1920, 1080), "viewing_distance_mm": 0.0}, "viewing_distance_mm must be"),
        ({"px": (1920, 1080), "camera_mm": (1.0, 2.0, 3.0, 4.0)}, "camera_mm must be"),
        ({"px": (1920, 1080), "camera_mm": (1.0, math.nan)}, "camera_mm must be finite"),
        ({"px": (1920, 1080), "dpi": 96}, "Extra inputs"),
    ],
)
def test_validation_says_what_is_wrong(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        ScreenGeometry(**kwargs)


def test_frozen_and_manifest_style_camera():
    g = ScreenGeometry(px=(1920, 1080), camera_mm=(172.8, -8.0))
    assert g.camera_mm == (172.8, -8.0, 0.0)  # the manifest's in-plane form reads z = 0
    with pytest.raises(ValidationError):
        g.px = (1, 1)


def test_sizes_and_scales():
    assert LAPTOP.diag_px == pytest.approx(math.hypot(1920, 1080))
    assert LAPTOP.diag_mm == pytest.approx(math.hypot(345.6, 194.4))
    assert LAPTOP.px_to_mm_scale == pytest.approx((0.18, 0.18))
    assert LAPTOP.aspect == pytest.approx(16 / 9)
    np.testing.assert_allclose(LAPTOP.norm_to_mm([0.5, 1.0]), [172.8, 194.4])
    np.testing.assert_allclose(LAPTOP.camera_norm, [0.5, -8.0 / 194.4])
    bare = ScreenGeometry(px=(1600, 1200))
    assert bare.diag_mm is None and bare.px_to_mm_scale is None and bare.camera_norm is None
    assert bare.aspect == pytest.approx(4 / 3)
    with pytest.raises(ValueError, match="mm is unknown"):
        bare.norm_to_mm([0.5, 0.5])


def test_physical_aspect_wins_over_pixel_aspect():
    # Non-square pixels: 1280×1024 stretched over a 16:10 panel.
    g = ScreenGeometry(px=(1280, 1024), mm=(320.0, 200.0))
    assert g.aspect == pytest.approx(1.6)


def test_error_in_degrees_is_the_symmetric_visual_angle():
    # 100 px = 18 mm at 600 mm: 2·atan(9/600).
    expected = math.degrees(2 * math.atan(9.0 / 600.0))
    assert LAPTOP.error_deg(100.0) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(1.7187, abs=1e-4)
    # and it is not the one-sided atan(e/d) (they differ, by a little)
    assert LAPTOP.error_deg(100.0) != pytest.approx(math.degrees(math.atan(18 / 600)), rel=1e-6)
    np.testing.assert_allclose(LAPTOP.error_deg(np.array([0.0, 100.0])), [0.0, expected])
    assert LAPTOP.error_mm(100.0) == pytest.approx(18.0)
    assert LAPTOP.error_pct_diag(LAPTOP.diag_px / 10) == pytest.approx(10.0)
    assert ScreenGeometry(px=(1920, 1080), mm=(345.6, 194.4)).error_deg(100.0) is None
    assert ScreenGeometry(px=(1920, 1080), viewing_distance_mm=600).error_deg(100.0) is None


def test_with_px_is_the_same_physical_screen():
    hi = LAPTOP.with_px(2560, 1440)
    assert hi.px == (2560, 1440)
    assert (hi.mm, hi.camera_mm, hi.viewing_distance_mm) == (
        LAPTOP.mm,
        LAPTOP.camera_mm,
        LAPTOP.viewing_distance_mm,
    )
    assert hi.px_to_mm_scale == pytest.approx((0.135, 0.135))
    # the same physical error reads the same in degrees at either resolution
    assert hi.error_deg(100.0 * 2560 / 1920) == pytest.approx(LAPTOP.error_deg(100.0))
    np.testing.assert_allclose(hi.to_px([0.25, 0.75]), [640.0, 1080.0])
    with pytest.raises(ValidationError, match="px must be positive"):
        LAPTOP.with_px(0, 1440)


def test_from_targets_is_the_bounding_box():
    # a 3×3 grid at 10 % / 50 % / 90 % of a 1920×1080 screen
    xs, ys = [192.0, 960.0, 1728.0], [108.0, 540.0, 972.0]
    pts = [(x, y) for y in ys for x in xs]
    g = ScreenGeometry.from_targets(pts)
    assert g.px == (1536, 864)
    assert g.diag_px == pytest.approx(0.8 * math.hypot(1920, 1080))
    row = ScreenGeometry.from_targets([(10.0, 50.0), (110.5, 50.0)])
    assert row.px == (101, 1)  # ceil of the width; a row has no height
    with pytest.raises(ValueError, match="2 distinct targets"):
        ScreenGeometry.from_targets([(5.0, 5.0), (5.0, 5.0)])


def test_clamp_norm():
    np.testing.assert_allclose(
        ScreenGeometry.clamp_norm([[-0.2, 0.5], [1.3, 1.0], [0.4, 0.6]]),
        [[0.0, 0.5], [1.0, 1.0], [0.4, 0.6]],
    )


def test_from_manifest():
    from gazeloop.calibration.store.session import SessionManifest

    m = SessionManifest(screen_px=(1512, 982), screen_mm=(302.4, 196.4), camera_mm=(151.2, -6))
    g = ScreenGeometry.from_manifest(m, viewing_distance_mm=550)
    assert g.px == (1512, 982) and g.mm == (302.4, 196.4)
    assert g.camera_mm == (151.2, -6.0, 0.0) and g.viewing_distance_mm == 550
