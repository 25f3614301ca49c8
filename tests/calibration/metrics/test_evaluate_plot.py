"""`plot_report`, the picture of `eval --plot`, `calibrate` and `demo`, read back from the
figure it draws: every name readable, every target's colour strong and its own, the error
numbers clear of the predictions, and the picture saying what it shows."""

from __future__ import annotations

import colorsys
import itertools

import numpy as np

from gazeloop.calibration.metrics.evaluate import Evaluated, plot_report
from tests.calibration.metrics.test_evaluate import SCREEN, evaluate, grid_data, linear_features


def _report(screen=SCREEN, session="synthetic") -> Evaluated:
    labels, groups = grid_data()
    return evaluate(linear_features(labels, groups, noise=0.01), labels, groups,
                    screen=screen, session=session)  # fmt: skip


def _above(ev: Evaluated, dy: float) -> Evaluated:
    """`ev` with every prediction `dy` px straight above its target: where the numbers sat."""
    pred = ev.labels_px + [0.0, -dy]
    per = [t.model_copy(update={"pred_px": (t.label_px[0], t.label_px[1] - dy)})
           for t in ev.report.per_target]  # fmt: skip
    report = ev.report.model_copy(update={"per_target": per})
    return Evaluated(report=report, labels_px=ev.labels_px, pred_px=pred, groups=ev.groups)


def test_a_cjk_name_draws_without_missing_glyph_warnings(tmp_path, recwarn):
    plot_report(_report(session="数据/grid9"), tmp_path / "p.png", title="calibration of 王小明")
    assert not [w for w in recwarn if "Glyph" in str(w.message)]


def test_a_long_title_is_wrapped_to_the_figure(tmp_path, saved_figures):
    device = "probably MacBook Pro 14in (1512x982 pt, fullscreen below the notch), camera top"
    plot_report(_report(), tmp_path / "p.png", title=f"calibration of someone on {device} " * 2)
    lines = saved_figures[0].axes[0].get_title().splitlines()
    assert max(map(len, lines)) <= 110 and "calibration of someone" in lines[0]


def test_targets_get_strong_distinct_colours(tmp_path, saved_figures):
    plot_report(_report(), tmp_path / "p.png")
    colours = [c.get_facecolor()[0][:3] for c in saved_figures[0].axes[0].collections]
    assert len(colours) == 9
    for c in colours:  # pale colours vanish on white
        assert colorsys.rgb_to_hls(*c)[1] < 0.7, c
    for a, b in itertools.combinations(colours, 2):
        assert np.abs(np.subtract(a, b)).sum() > 0.3, (a, b)


def test_error_numbers_stay_clear_of_the_predictions(tmp_path, saved_figures):
    ev = _above(_report(), 25.0)
    plot_report(ev, tmp_path / "p.png")
    ax = saved_figures[0].axes[0]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(saved_figures[0]).get_renderer()  # plot_report closed it
    numbers = [t for t in ax.texts if t.get_text().isdigit()]
    assert len(numbers) == 9
    dots = ax.transData.transform(ev.pred_px)
    for t in numbers:
        box = t.get_window_extent(renderer).expanded(1.1, 1.1)
        assert box.count_contains(dots) == 0, t.get_text()


def test_the_picture_says_what_it_shows(tmp_path, saved_figures):
    plot_report(_report(screen=None), tmp_path / "p.png")
    plot_report(_report(), tmp_path / "q.png")
    unknown, known = (f.axes[0] for f in saved_figures)
    legend = [t.get_text() for t in unknown.get_legend().get_texts()]
    assert [x.split(",")[0].split(":")[0] for x in legend] == [
        "target",
        "held-out prediction",
        "error",
    ]
    # The number is the frames' mean error, not the arrow's length (up to 2.7× apart).
    assert "the frames' mean error" in legend[2]
    assert any("screen size unknown" in t.get_text() for t in unknown.texts)
    assert not any("screen size unknown" in t.get_text() for t in known.texts)
    assert "54 of 54 frames used" in unknown.get_title()
    assert "of the targets' diagonal" in unknown.get_title()
    assert "of the screen's diagonal" in known.get_title()
