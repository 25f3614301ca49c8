"""`gazeloop eval-sittings --plot`: the committed evit report as a picture, and a bad name
refused before any sitting is read."""

from __future__ import annotations

import json
import re

import numpy as np
from matplotlib.colors import to_rgb

from gazeloop.tools.cli import main
from gazeloop.tools.runtime.sittings_plot import plot_sittings_report
from tests.paths import ROOT


def test_the_evit_report_is_drawn(tmp_path):
    rep = json.loads((ROOT / "docs/baselines/evit_sittings.json").read_text())["output"]
    path = tmp_path / "sittings.png"
    plot_sittings_report(rep, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    # the sittings calibrated with their history are saved_figures when the report has them
    assert rep["with_history"]
    plain = {k: v for k, v in rep.items() if k not in ("with_history", "within_with_history")}
    plot_sittings_report(plain, tmp_path / "plain.png")
    assert (tmp_path / "plain.png").read_bytes() != data


def test_a_plot_name_without_a_picture_format_is_refused_first(tmp_path, capsys):
    (tmp_path / "s1").mkdir()
    assert main(["eval-sittings", str(tmp_path), "--plot", str(tmp_path / "p.txt")]) == 2
    err = capsys.readouterr().err
    assert "p.txt: name a .png, .svg or .pdf file" in err and "s1" not in err


def _evit() -> dict:
    return json.loads((ROOT / "docs/baselines/evit_sittings.json").read_text())["output"]


def test_the_title_says_what_stands_behind_it_in_whole_px(tmp_path, saved_figures):
    rep = _evit()
    plot_sittings_report(rep, tmp_path / "p.png")
    title = saved_figures[0].axes[0].get_title().replace("\n", " ")
    used = sum(r["frames_used"] for r in rep["sittings"])
    stills = sum(r["frames"] for r in rep["sittings"])
    assert used < stills  # the committed report left some out: the title must say so
    assert f"{rep['folder']}: 28 sittings of 2 people, {used} of {stills} stills used" in title
    assert f"median {round(rep['within']['median_px'])} px over 28" in title
    assert not re.search(r"\d\.\d", title), title


def test_people_are_never_drawn_in_the_green_of_the_history_marker(tmp_path, saved_figures):
    rep = _evit()
    names = [f"p{i}" for i in range(12)]
    for i, r in enumerate(rep["sittings"]):  # twelve people: every colour of the cycle
        r["user"] = names[i % 12]
    plot_sittings_report(rep, tmp_path / "p.png")
    legend = saved_figures[0].axes[0].get_legend()
    colour = {
        t.get_text(): h.get_color()
        for t, h in zip(legend.get_texts(), legend.legend_handles, strict=True)
    }
    green = colour.pop("calibrated with the earlier sittings")
    people = [c for label, c in colour.items() if label.startswith("p")]
    assert len(people) == 12
    assert all(not np.allclose(to_rgb(c), to_rgb(green), atol=0.1) for c in people)


def test_cjk_names_draw_without_missing_glyph_warnings(tmp_path, recwarn):
    rep = _evit()
    for r in rep["sittings"]:
        r["user"], r["sitting"] = "王小明", "数据_" + r["sitting"]
    plot_sittings_report(rep, tmp_path / "p.png")
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
