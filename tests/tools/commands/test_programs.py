"""The programs people run, end to end on the shared sample data."""

from __future__ import annotations

import json

import pytest

from gazeloop.tools.cli import main


@pytest.mark.slow
def test_run_headless_on_a_video_exits_cleanly(shared, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    video = shared / "data/video-corners4/calibrate.mp4"
    rc = main(["run", "--source", str(video), "--headless", "--frames", "40"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "gazeloop run: 40 frames" in out
    assert "no calibration profile" in out  # said plainly, not an error


def test_run_with_a_missing_camera_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    rc = main(["run", "--source", "97", "--headless", "--frames", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "camera" in err.lower() and "Traceback" not in err


def test_demo_data_is_the_shared_folder_or_its_recording_and_a_bad_config_makes_nothing(
    shared, tmp_path, capsys
):
    """The README's `--data SHARED` was refused ("the sample recording is not there"); a
    bad --config was said after the folder was made and 149 files imported into it."""
    from gazeloop.tools.commands.demo import _recording

    c4 = shared / "data" / "video-corners4"
    assert _recording(shared) == _recording(c4) == c4
    assert main(["demo", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "neither the shared data folder nor its 4-corner recording" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"loop": {"huber_k": -1}}')
    out = tmp_path / "d4"
    assert main(["demo", "--config", str(bad), "--out", str(out)]) == 2
    assert "loop.huber_k" in capsys.readouterr().err and not out.exists()
    # A folder of the user's: its session/ and profile.json were replaced without a word.
    mine = tmp_path / "mine"
    (mine / "session").mkdir(parents=True)
    (mine / "profile.json").write_text("{}")
    assert main(["demo", "--out", str(mine)]) == 2
    assert "--out" in capsys.readouterr().err and (mine / "profile.json").read_text() == "{}"
    assert list((mine / "session").iterdir()) == []


@pytest.fixture(scope="module")
def demo_out(shared, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--out", str(out), "--passes", "5"])
    assert rc == 0
    return out


@pytest.mark.slow
def test_demo_corrects_the_injected_drift_and_writes_its_report(demo_out):
    s = json.loads((demo_out / "summary.json").read_text())
    assert "ground truth" in s["oracle"]  # the replayed oracle is named for what it is
    # The drift hurts, and the loop takes back at least four fifths of what it cost (here
    # about nine tenths; as a ratio of the pre-drift error it sat 0.1 px inside 1.2×).
    before, hurt = s["error_before_drift_px"], s["error_just_after_drift_px"]
    assert hurt > before + 30
    assert s["error_last_two_passes_px"] - before < 0.2 * (hurt - before)
    # The offset found is the injected drift, opposite in sign (x), within 40 px.
    assert s["final_offset_px"][0] == pytest.approx(-s["injected_drift_px"], abs=40)
    assert s["labels_accepted"] >= 10
    page = (demo_out / "report.html").read_text()
    assert "loop.png" in page and "calibration.png" in page
    assert "Calibration per target" in page and page.count("<tr>") >= len(s) + 1 + 4
    for png in ("loop.png", "calibration.png"):
        assert (demo_out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The store records the run as `run` does (`gazeloop labels` said "from before runs were
    # recorded" of a store the demo had just made), at the recording's own times.
    from gazeloop.calibration.store.labelstore import LabelStore

    with LabelStore(demo_out / "labels") as store:
        (run,) = store.runs()
        rows = list(store)
    assert run.settings["command"] == "demo" and run.screen.px == (2560, 1440)
    assert {r.run_id for r in rows} == {run.id}
    assert max(r.snapshot_ms for r in rows) < 1_735_689_600_000  # 2024, not the replay's clock


@pytest.mark.slow
def test_demo_writes_the_settings_it_ran_with_and_reads_them_back(demo_out, tmp_path):
    """config.json beside the report: every section resolved (the loop's defaults included),
    the demo's one label a second; given back as `--config` it runs the same settings, and a
    changed interval there is the one the demo uses."""
    from gazeloop.calibration.drift.loop import LoopConfig
    from gazeloop.tools.runtime.run_config import RunConfig

    written = json.loads((demo_out / "config.json").read_text())
    assert set(written) == {"fastpath", "loop", "policy", "oracle"}
    assert written["loop"] == LoopConfig().model_dump(exclude={"aspect"})
    assert written["policy"]["min_interval_s"] == 1.0
    written["policy"]["min_interval_s"] = 3.0
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(written))
    out = tmp_path / "again"
    assert main(["demo", "--out", str(out), "--passes", "2", "--config", str(cfg_file)]) == 0
    again = RunConfig.from_doc(json.loads((out / "config.json").read_text()), "again")
    assert again == RunConfig.from_doc(written, "given")
    labels = json.loads((out / "summary.json").read_text())["labels_accepted"]
    # Two passes of about 12 s each: a label every 3 s gives at most 9 (every second: ~20).
    assert 1 <= labels <= 9


@pytest.mark.slow
def test_a_demo_again_in_its_folder_stores_its_own_labels(shared, tmp_path, capsys):
    """The second demo's labels were dropped as already stored (same snapshot ids), and its
    summary named a store that held only the first run."""
    from gazeloop.calibration.store.labelstore import LabelStore

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--passes", "2", "--drift-px", "0"]) == 0
    assert main(["demo", "--out", str(out), "--passes", "2", "--drift-px", "400"]) == 0
    s = json.loads((out / "summary.json").read_text())
    with LabelStore(out / "labels", readonly=True) as store:
        (run,) = store.runs()
        rows = list(store)
    assert len(rows) == s["labels_accepted"] + s["labels_rejected"] > 0
    # The residuals stored are the second run's, which saw a 400 px drift.
    assert min(r.residual[0] for r in rows if r.residual) * 2560 < -250
    # A store with another program's runs in the folder is never replaced.
    other = tmp_path / "other"
    with LabelStore(other / "labels") as store:
        store.begin_run({"command": "run"})
    (other / "summary.json").write_text("{}")
    assert main(["demo", "--out", str(other), "--passes", "2"]) == 2
    assert "holds labels of other runs" in capsys.readouterr().err
    assert (other / "labels" / "labels.sqlite3").is_file()
    with pytest.raises(SystemExit):  # one pass injects no drift to report on
        main(["demo", "--out", str(tmp_path / "one"), "--passes", "1"])


def test_every_option_of_every_command_says_what_it_is_for():
    """40 options had no help at all (`--user`, `--screen-px`, `train --lr`, ...): `-h` is
    the documentation a person reads first."""
    import argparse

    from gazeloop.tools.cli import build_parser

    silent = []

    def walk(parser, path):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, [*path, name])
            elif not a.help and not isinstance(a, argparse._HelpAction):
                silent.append(f"{' '.join(path)} {a.option_strings or a.dest}")

    walk(build_parser(), ["gazeloop"])
    assert silent == []
