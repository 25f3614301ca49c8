"""`gazeloop oracle eval --plot`: the histogram counts only the labels the oracle returned,
a far value is counted rather than squeezing the rest, the session's note is never cut, and
every frame at a target stays visible."""

from __future__ import annotations

import matplotlib.patches
import numpy as np

from gazeloop.tools.runtime.oracle_eval_plot import plot_oracle_eval

W, H = 1920, 1080
TARGETS = [(40.0, 40.0), (960.0, 540.0), (1880.0, 1040.0)]


def _click(target: int, returned: bool, fixation: float, why: str | None = None) -> dict:
    truth = list(TARGETS[target])
    return {
        "item": f"target {target}", "target": target, "truth_px": truth,
        "returned": returned, "why_not": why, "kind": "point" if returned else None,
        "distance_px": 0.0 if returned else None, "perpendicular_px": None,
        "fixation_px": fixation, "point_px": truth if returned else None, "line_px": None,
    }  # fmt: skip


def _clicks_out(note: str = "clicks replayed") -> dict:
    kept = [_click(i % 3, True, 50.0 + 5 * i) for i in range(9)]
    refused = [_click(0, False, 1333.0, "far"), _click(2, False, None, "burst")]
    labels = kept + refused
    return {
        "session": "grid9", "oracle": "clicks", "oracle_note": note, "screen_px": [W, H],
        "labels": labels,
        "summary": {"labels": len(labels), "returned": len(kept),
                    "why_not": {"far": 1, "burst": 1}},
    }  # fmt: skip


def _bars(ax) -> list[matplotlib.patches.Rectangle]:
    return [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle) and p.get_height()]


def test_a_refused_clicks_fixation_is_not_among_the_errors(tmp_path, saved_figures):
    out = _clicks_out()
    plot_oracle_eval(out, tmp_path / "o.png")
    (fig,) = saved_figures
    right = fig.axes[1]
    kept = [r["fixation_px"] for r in out["labels"] if r["returned"]]
    assert right.get_title() == f"median {np.median(kept):.0f} px over 9 returned labels"
    assert sum(b.get_height() for b in _bars(right)) == 9
    assert right.get_xlim()[1] < 1333.0


def test_a_far_error_is_counted_past_a_clipped_axis(tmp_path, saved_figures):
    out = _clicks_out()
    out["labels"][0]["fixation_px"] = 4000.0  # a returned label, far from the rest
    plot_oracle_eval(out, tmp_path / "o.png")
    right = saved_figures[0].axes[1]
    assert right.get_xlim()[1] < 1000.0
    assert sum(b.get_height() for b in _bars(right)) == 8
    assert any(t.get_text().startswith("1 beyond") for t in right.texts)


def test_the_sessions_note_is_wrapped_in_full(tmp_path, saved_figures):
    note = " ".join(f"word{i}" for i in range(80)) + " THE-END"
    plot_oracle_eval(_clicks_out(note), tmp_path / "o.png")
    title = saved_figures[0]._suptitle.get_text()
    assert "THE-END" in title and "..." not in title and "…" not in title
    assert title.replace("\n", " ") == f"grid9: {note}"


def test_every_label_at_a_target_can_be_told_apart(tmp_path, saved_figures):
    plot_oracle_eval(_clicks_out(), tmp_path / "o.png")
    left = saved_figures[0].axes[0]
    crosses = [ln for ln in left.lines if ln.get_marker() == "x" and len(ln.get_xdata())]
    assert len(crosses) == 2
    assert all(ln.get_xdata()[0] not in {x for x, _ in TARGETS} for ln in crosses)
    counts = sorted(t.get_text() for t in left.texts)
    assert counts == ["3/3", "3/4", "3/4"]  # returned of asked, per target


def test_the_screen_panel_names_its_vertical_axis(tmp_path, saved_figures):
    plot_oracle_eval(_clicks_out(), tmp_path / "o.png")
    assert saved_figures[0].axes[0].get_ylabel() == "screen y (px)"


def test_the_histogram_counts_whole_labels(tmp_path, saved_figures):
    out = _clicks_out()
    out["labels"] = out["labels"][:3]  # one label a bar: matplotlib's own ticks go by 0.2
    plot_oracle_eval(out, tmp_path / "o.png")
    ticks = saved_figures[0].axes[1].get_yticks()
    assert np.allclose(ticks, np.round(ticks))


def test_a_cjk_session_name_draws_without_missing_glyph_warnings(tmp_path, recwarn):
    out = _clicks_out()
    out["session"] = "数据/grid9"
    plot_oracle_eval(out, tmp_path / "o.png")
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
