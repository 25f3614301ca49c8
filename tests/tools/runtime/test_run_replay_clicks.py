"""`gazeloop run --replay-clicks`: a recording's targets clicked through the real click rules,
beside another oracle, with both sources' labels in the status line and the label store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.cli import cli
from tests.paths import SHARED

CORNERS4 = SHARED / "data" / "video-corners4"
VIDEO = CORNERS4 / "calibrate.mp4"


def stored(home: Path) -> dict[tuple[str, int], int]:
    db = home / "users" / "default" / "labels" / "labels.sqlite3"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        rows = c.execute("SELECT oracle, accepted, COUNT(*) FROM labels GROUP BY 1, 2")
        return {(o, int(a)): n for o, a, n in rows}


@pytest.mark.slow
def test_targets_and_replayed_clicks_feed_one_loop_and_the_store(c4_profile, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("GAZELOOP_HOME", str(home))
    rc, out, err = cli(
        "run", "--headless", "--source", VIDEO, "--oracle", "targets", "--replay-clicks",
        "--profile", c4_profile, "--snapshot-every", "0.5", "--no-watch-models",
    )  # fmt: skip
    assert rc == 0, err
    last = out.strip().splitlines()[-1]
    # One click per target visit (4 corners), each vouched for by a fixation on it.
    assert "clicks 4 kept of 4" in last and "clicks 4/4 σ" in last, last
    assert " target " in last and "last " in last, last
    labels = stored(home)
    assert labels.get(("clicks", 1)) == 4
    assert labels.get(("target", 1), 0) >= 1  # the target oracle answers asynchronously
    # The run record holds the interval that ran (the flag over the default 5 s).
    from gazeloop.calibration.store.labelstore import LabelStore

    with LabelStore(home / "users" / "default" / "labels") as store:
        (run,) = store.runs()
        times = [row.snapshot_ms for row in store]
    assert run.settings["config"]["policy"]["min_interval_s"] == 0.5
    # Kept at the recording's own times (2024, within its 12 s), as with --mqtt, not at the
    # wall clock of the replay: the same input, the same store.
    assert max(times) - min(times) < 12_000 and max(times) < 1_735_689_600_000, times


@pytest.mark.slow
def test_replayed_clicks_on_another_screen_are_at_the_targets_fractions(
    c4_profile, tmp_path, monkeypatch
):
    """The recording's corners are pixels of its 2560x1440 screen; pressed as such on a
    1920x1080 screen in use, the clicks were stored at other fractions than the targets'
    (63 px off) or off the screen (an audit: 'clicks 1 kept of 1' for 4 targets)."""
    from gazeloop.calibration.store.labelstore import LabelStore
    from gazeloop.calibration.store.session import read_session

    home = tmp_path / "home"
    monkeypatch.setenv("GAZELOOP_HOME", str(home))
    rc, out, err = cli(
        "run", "--headless", "--source", VIDEO, "--oracle", "targets", "--replay-clicks",
        "--profile", c4_profile, "--snapshot-every", "0.5", "--no-watch-models",
        "--screen-px", 1920, 1080,
    )  # fmt: skip
    assert rc == 0, err
    assert "clicks 4 kept of 4" in out.strip().splitlines()[-1], out
    with LabelStore(home / "users" / "default" / "labels", readonly=True) as store:
        clicks = {tuple(round(v, 6) for v in r.observation.xy) for r in store}
    session = read_session(c4_profile.parent / "session")  # the recording, as imported
    w, h = session.screen_px
    corners = {(round(i.label_px[0] / w, 6), round(i.label_px[1] / h, 6)) for i in session.items}
    assert len(clicks & corners) == 4, (clicks, corners)  # the target oracle's are there too


@pytest.mark.slow
def test_the_configs_policy_is_the_one_run_uses(c4_profile, tmp_path, monkeypatch):
    """`--config`'s policy section reaches `run`: a gaze never slow enough to be a fixation
    takes no snapshot for the target oracle at all, while the clicks, judged by their own
    rules, are all kept."""
    home = tmp_path / "home"
    monkeypatch.setenv("GAZELOOP_HOME", str(home))
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"policy": {"max_speed": 1e-9, "min_interval_s": 0.5}}')
    rc, out, err = cli(
        "run", "--headless", "--source", VIDEO, "--oracle", "targets", "--replay-clicks",
        "--profile", c4_profile, "--config", cfg, "--no-watch-models",
    )  # fmt: skip
    assert rc == 0, err
    labels = stored(home)
    assert labels.get(("clicks", 1)) == 4
    assert not any(oracle == "target" for oracle, _ in labels), labels
    # The store says how its labels were made: one run, on the profile's screen, with the
    # settings resolved from --config (what `--config` takes back) and the models.
    from gazeloop.calibration.store.labelstore import LabelStore
    from gazeloop.tools.runtime.run_config import RunConfig

    with LabelStore(home / "users" / "default" / "labels") as store:
        (run,) = store.runs()
        assert {row.run_id for row in store} == {run.id}
    assert run.screen.px == (2560, 1440) and run.screen.mm == (597.0, 336.0)
    s = run.settings
    assert s["source"] == str(VIDEO) and s["oracle"] == "targets"
    assert s["source_path"] == str(VIDEO.resolve())
    assert s["profile"] == str(c4_profile) and len(s["gaze_model"]["sha256"]) == 64
    assert RunConfig.model_validate(s["config"]).policy.max_speed == 1e-9
    _a_replay_of_a_holdout_is_not_trained_on(home / "users" / "default" / "labels", tmp_path)


def _a_replay_of_a_holdout_is_not_trained_on(store, tmp_path):
    """A replay's labels are the recording's frames: trained on while the same recording
    was a --holdout, the gate judged the model on frames it had learnt (it checked paths of
    --data alone)."""
    from gazeloop.trainer.labels import LabelExportError, export_store

    exp = export_store(store, tmp_path / "run", 0, held_out=[tmp_path])
    assert exp.exported == 4 and exp.skipped == {}  # another recording held out
    held = VIDEO.parent.resolve()
    with pytest.raises(LabelExportError, match=f"4 from a run replaying the held-out {held}$"):
        export_store(store, tmp_path / "run", 0, held_out=[held])


@pytest.mark.slow
def test_replay_clicks_needs_a_recording_with_targets(tmp_path, monkeypatch):
    if not VIDEO.is_file():
        pytest.skip(f"{VIDEO} is missing")
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    plain = tmp_path / "plain.mp4"  # the video without its csv: no targets
    plain.write_bytes(VIDEO.read_bytes())
    rc, out, err = cli("run", "--headless", "--source", plain, "--replay-clicks")
    assert rc == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "no recorded targets" in err, err


@pytest.mark.slow
def test_another_devices_profile_is_used_and_said(c4_profile, tmp_path, monkeypatch):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path / "home"))
    rc, out, err = cli(
        "run", "--headless", "--source", VIDEO, "--frames", "3", "--oracle", "none",
        "--profile", c4_profile, "--device", "mac", "--no-watch-models",
    )  # fmt: skip
    assert rc == 0, err
    assert f"note: {c4_profile} was made for default/default on a 2560x1440 screen" in out
    assert "this run is default/mac" in out
