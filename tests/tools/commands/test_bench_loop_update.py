"""`gazeloop bench loop-update`: the time of each label update, by the labels the loop held.

Times are never asserted (they move with the host); what is: every update of every stream is
counted once, in the bin of the labels the loop held after it, and the loop holds no more
than its two windows and σ's labels however many come."""

from __future__ import annotations

import json

from gazeloop.calibration.drift.loop import LoopConfig
from gazeloop.tools.cli import main


def test_every_update_is_counted_once_in_the_bin_of_the_labels_held(capsys):
    assert main(["bench", "loop-update", "--labels", "130", "--streams", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["streams"] == 2 and out["updates"] == 2 * 130 == out["all"]["n"]
    rows = out["by_labels_held"]
    # 130 labels a second apart: the loop held 1..130 of them, each count twice (two streams).
    assert [r["labels_held"] for r in rows] == ["1-60", "61-120", "121-240"]
    assert [r["n"] for r in rows] == [120, 120, 20]
    assert out["most_labels_held"] == 130
    assert all(0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"] for r in rows)
    # streams × labels clicks, each decided at a fixation and handed on once.
    c = out["click_poll"]
    assert c["clicks"] == c["accepted"] == c["n"] == 130


def test_the_loop_holds_at_most_two_windows_and_the_scales_labels(capsys):
    cfg = LoopConfig()
    keep = 2 * cfg.window_labels + cfg.gate_labels
    n = keep + 20
    assert main(["bench", "loop-update", "--labels", str(n), "--streams", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["most_labels_held"] == keep
    last = out["by_labels_held"][-1]
    assert last["labels_held"] == "241+" and last["n"] == 2 * (n - 240)


def test_labels_older_than_the_window_leave(capsys):
    # A label every 10 s: the 600 s window holds 61 of them at most.
    argv = ["bench", "loop-update", "--labels", "90", "--streams", "1", "--interval-s", "10"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["most_labels_held"] == 61
