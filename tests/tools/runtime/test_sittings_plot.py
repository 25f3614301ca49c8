"""`gazeloop eval-sittings --plot`: the committed evit report as a picture, and a bad name
refused before any sitting is read."""

from __future__ import annotations

import json

from gazeloop.tools.cli import main
from gazeloop.tools.runtime.sittings_plot import plot_sittings_report
from tests.paths import ROOT


def test_the_evit_report_is_drawn(tmp_path):
    rep = json.loads((ROOT / "docs/baselines/evit_sittings.json").read_text())["output"]
    path = tmp_path / "sittings.png"
    plot_sittings_report(rep, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    # the sittings calibrated with their history are drawn when the report has them
    assert rep["with_history"]
    plain = {k: v for k, v in rep.items() if k not in ("with_history", "within_with_history")}
    plot_sittings_report(plain, tmp_path / "plain.png")
    assert (tmp_path / "plain.png").read_bytes() != data


def test_a_plot_name_without_a_picture_format_is_refused_first(tmp_path, capsys):
    (tmp_path / "s1").mkdir()
    assert main(["eval-sittings", str(tmp_path), "--plot", str(tmp_path / "p.txt")]) == 2
    err = capsys.readouterr().err
    assert "p.txt: name a .png, .svg or .pdf file" in err and "s1" not in err
