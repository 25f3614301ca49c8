"""The speed benchmarks' JSON says what stands behind its numbers: the machine, the
versions, the settings, how many runs (timings are never asserted: they move with the host)."""

from __future__ import annotations

import json

from gazeloop.tools.cli import main


def test_the_speed_benchmarks_say_where_and_on_what_they_ran(capsys):
    """`bench mapping` dropped how many fits it timed (rbf's "p95" is the slowest of 4) and
    never said its data is synthetic; none said the machine or the versions."""
    assert main(["bench", "mapping", "--mapping", "ridge", "--repeats", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"].startswith("synthetic") and (out["repeats"], out["repeats_rbf"]) == (5, 3)
    assert out["measured_on"]["versions"]["numpy"] and out["measured_on"]["machine"]
    assert main(["bench", "loop-update", "--labels", "5", "--streams", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["measured_on"]["date"]


def test_the_eyetrax_comparison_refuses_more_threads(capsys):
    argv = ["bench", "eyetrax", "--source", "x.mp4", "--threads", "2"]
    assert main(argv) == 2
    assert (
        "--threads 2: the comparison runs both trackers on one thread each"
        in capsys.readouterr().err
    )
