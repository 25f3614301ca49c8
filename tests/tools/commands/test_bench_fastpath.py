"""`gazeloop bench fastpath`: the numbers it reports are about the fast path, with their
provenance (what was excluded, where the busy oracle ran). No timing is asserted."""

from __future__ import annotations

import json

import pytest

from gazeloop.fastpath.pipeline import FastPathConfig
from gazeloop.tools.cli import main

pytestmark = pytest.mark.slow  # every test here runs the whole fast path


def test_bench_fastpath_reports_every_stage_and_excludes_loop_restarts(shared, capsys, monkeypatch):
    from gazeloop.tools.runtime import bench_fastpath

    notes: list[str] = []
    monkeypatch.setattr(bench_fastpath.Progress, "note", lambda self, text: notes.append(text))
    video = shared / "data/video-corners4/calibrate.mp4"
    argv = ["bench", "fastpath", "--source", str(video), "--frames", "90", "--threads", "2"]
    assert main([*argv, "--json"]) == 0
    # A long run says how far it is (on a terminal): frames measured so far, of how many.
    assert notes[0] == "frame 0 of 90" and notes[-1] == "frame 89 of 90"
    out = json.loads(capsys.readouterr().out)
    # 10 warm-up + 90 frames of a 74-frame file: the one reopen is left out, said so, and
    # one more frame read so that 90 are measured.
    assert out["loop_restarts_excluded"] == 1 and out["frames"] == 90
    assert (out["width"], out["height"]) == (640, 480)
    assert out["face_found"] >= 85
    assert set(out["stages"]) >= {"decode", "landmarks", "features", "gaze_model", "filter"}
    for k in ("p50_ms", "p95_ms", "p99_ms"):
        assert 0 < out["total"][k] < 1000
    assert out["total"]["p50_ms"] <= out["total"]["p99_ms"]
    assert out["stages"]["landmarks"]["n"] == 90
    # Where, with what and how it was measured: --threads was taken and dropped (1 reported).
    assert out["threads"] == 2 == out["settings"]["threads"] and out["source"] == str(video)
    on = out["measured_on"]
    assert on["machine"] and on["date"] and on["versions"]["onnxruntime"]


def test_bench_oracle_load_alternates_idle_and_busy_with_the_oracle_in_a_child(
    shared, capsys, monkeypatch
):
    from gazeloop.oracle.process import ProcessOracle

    # At its default priority (SCHED_IDLE) the child waits for a core as long as any load
    # lasts: 0.2 s to start alone, 200 s beside a busy test. Priority is not tested here.
    monkeypatch.setitem(ProcessOracle.__init__.__kwdefaults__, "niceness", 0)
    video = shared / "data/video-corners4/calibrate.mp4"
    # Few frames: under a parallel test run the busy phase shares its cores with another
    # test, and its synthetic load burns a core for as long as the phase lasts.
    args = ["bench", "fastpath", "--source", str(video), "--frames", "10", "--json"]
    rc = main([*args, "--oracle-load", "--rounds", "2"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rounds"] == 2
    assert out["idle"]["oracle_worker"]["state"] == "idle"
    assert out["idle"]["oracle_worker"]["calls"] == out["idle"]["oracle_worker"]["submitted"] == 0
    assert out["busy"]["oracle_worker"]["submitted"] >= 1  # the busy phase had its load
    assert out["busy"]["oracle_worker"]["state"] == "busy"
    assert out["busy"]["oracle_worker"]["in"] == "process"
    assert out["busy"]["oracle_worker"]["backend"] == "cpu-load"
    assert out["idle"]["frames"] == out["busy"]["frames"] == 20
    assert out["p99_ratio"] == round(
        out["busy"]["total"]["p99_ms"] / out["idle"]["total"]["p99_ms"], 3
    )


def test_bench_onnx_landmarks_reports_providers_detector_cadence_and_cpu(shared, capsys):
    video = shared / "data/video-corners4/calibrate.mp4"
    args = ["bench", "fastpath", "--source", str(video), "--frames", "90", "--json"]
    rc = main([*args, "--landmarks", "onnx", "--ep", "cpu"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["landmarks_backend"] == "onnx"
    cpu = ["CPUExecutionProvider"]
    assert out["execution_providers"] == {"requested": "cpu", "gaze_model": cpu, "landmarks": cpu}
    # One detector run for the whole tracked video (the loop restart included), one
    # landmark run per frame read (10 warm-up, 90 measured, 1 excluded restart), and 7 more
    # on the first frame, whose fresh detection is refined over 7 crops.
    assert out["network_runs"] == {"detector": 1, "landmark": 101 + 7}
    assert out["cpu_per_frame"]["n"] == 90 and out["cpu_per_frame"]["p50_ms"] > 0


def test_a_still_is_refused_before_the_fast_path_or_a_busy_oracle_starts(shared, monkeypatch):
    """The refusal used to come after the networks had loaded and the busy oracle's child
    had started, and nothing closed them on the way out."""
    from gazeloop.tools.errors import UserError
    from gazeloop.tools.runtime import bench_fastpath

    def loaded(*a, **k):
        raise AssertionError("loaded before the source was checked")

    monkeypatch.setattr(bench_fastpath, "FastPath", loaded)
    monkeypatch.setattr(bench_fastpath, "_oracle_worker", loaded)
    still = str(shared / "data/video-corners4/no_face.jpg")
    with pytest.raises(UserError, match="no_face.jpg: a still image"):
        bench_fastpath.bench_fastpath(still, 10, FastPathConfig(), oracle="busy")
