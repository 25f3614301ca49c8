"""`gazeloop head-shift --plot`: one scale for every move, turns named as turns, the screen
size the shift was worked out with, and each mapping's miss beside its name."""

from __future__ import annotations

from gazeloop.tools.runtime.head_shift_plot import plot_head_shift
from tests.tools.runtime.figures import texts


def _move(expected: list[float], geo: list[float], ridge: list[float]) -> dict:
    def stats(pred):
        miss = ((pred[0] - expected[0]) ** 2 + (pred[1] - expected[1]) ** 2) ** 0.5
        return {"expected_px": expected, "predicted_px": pred, "miss_px": miss}

    return {"frames": 9, "expected_px": expected,
            "by_candidate": {"geometric": stats(geo), "ridge": stats(ridge)}}  # fmt: skip


def _report() -> dict:
    return {
        "session": "grid9", "targets": 9, "frames": 9, "screen_mm": [300.0, 190.0],
        "chosen": "geometric",
        "moves": {
            "right": _move([8.0, 0.0], [-7.0, 0.0], [-14.0, 0.0]),
            "closer": _move([0.0, -70.0], [0.0, -73.0], [0.0, -4.0]),
        },
    }  # fmt: skip


def test_every_panel_has_one_scale(tmp_path, saved_figures):
    plot_head_shift(_report(), tmp_path / "h.png")
    axes = saved_figures[0].axes
    assert len(axes) == 2
    assert axes[0].get_xlim() == axes[1].get_xlim() and axes[0].get_ylim() == axes[1].get_ylim()
    assert axes[0].get_xlim()[1] >= 73.0  # the longest arrow of any move fits


def test_a_translated_image_is_named_a_turn_about_the_camera(tmp_path, saved_figures):
    plot_head_shift(_report(), tmp_path / "h.png")
    right, closer = (ax.get_title() for ax in saved_figures[0].axes)
    assert right.startswith("head turned about the camera,\nface right in the image: 8 px")
    assert closer.startswith("head closer: 70 px expected")


def test_the_title_says_the_screen_size_taken(tmp_path, saved_figures):
    plot_head_shift(_report(), tmp_path / "h.png")
    assert "screen taken as 300×190 mm" in saved_figures[0]._suptitle.get_text()


def test_each_mappings_legend_entry_says_its_miss_per_move(tmp_path, saved_figures):
    plot_head_shift(_report(), tmp_path / "h.png")
    words = texts(saved_figures[0])
    assert "geometric (chosen): miss 15, 3 px" in words
    assert "ridge: miss 22, 66 px" in words
