"""A label store's screen for the export: the one its runs recorded, else the profiles'; a
store whose runs were on several screens is asked which, and the others' labels are left
out and counted."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.labels import OracleLabel, PointObservation
from gazeloop.calibration.store.labelstore import LabelStore
from gazeloop.trainer.labels import LabelExportError, export_store

LAPTOP = ScreenGeometry(px=(1512, 982), mm=(302.0, 196.0))
MONITOR = ScreenGeometry(px=(2560, 1440))


def _store(root: Path, screens: list[ScreenGeometry | None], *, judged: bool = True) -> Path:
    """Three accepted click labels per run, one run per screen given (`judged=False`: labels
    no loop judged, as before any profile)."""
    img = np.full((48, 64, 3), 128, np.uint8)
    ok = types.SimpleNamespace(accepted=True, why="accepted", residual=None, offset=None)
    ok = ok if judged else None
    with LabelStore(root) as ls:
        for r, screen in enumerate(screens):
            run = ls.begin_run({"source": "0"}, screen)
            for i in range(3):
                obs = PointObservation(xy=(0.2 + 0.3 * i, 0.5))
                label = OracleLabel(
                    t_ns=i, snapshot_id=f"r{r}-{i}", oracle="clicks", observation=obs
                )
                ls.add(label, img, None, ok, snapshot_ms=1_766_000_000_000 + 10 * i, run_id=run)
    return root


def test_the_screen_the_runs_recorded_needs_no_flag_and_no_profile(tmp_path):
    store = _store(tmp_path / "labels", [LAPTOP, None])
    exp = export_store(store, tmp_path / "run", 0)
    assert exp.screen.px == LAPTOP.px and exp.screen_from == "the store's runs (1)"
    assert exp.exported == 6 and exp.skipped == {}  # a run that named no screen goes along


def test_labels_no_loop_judged_are_exported_on_their_runs_screen(tmp_path):
    """Export kept them, but the screen was looked for only among runs with an accepted
    label: such a store had "no run that recorded its screen"."""
    store = _store(tmp_path / "labels", [LAPTOP], judged=False)
    exp = export_store(store, tmp_path / "run", 0)
    assert exp.screen.px == LAPTOP.px and exp.exported == 3 and exp.skipped == {}


def test_a_run_that_stored_no_label_does_not_count(tmp_path):
    """A run on the monitor that only sent earlier labels (or stored nothing accepted) says
    nothing about the screen of the labels there are."""
    store = _store(tmp_path / "labels", [LAPTOP])
    with LabelStore(store) as ls:
        ls.begin_run({"source": "0"}, MONITOR)
    exp = export_store(store, tmp_path / "run", 0)
    assert exp.screen.px == LAPTOP.px and exp.exported == 3


def test_runs_on_two_screens_ask_which_and_leave_the_others_out(tmp_path):
    store = _store(tmp_path / "labels", [LAPTOP, MONITOR])
    with pytest.raises(LabelExportError, match=r"several screens \(1512x982, 2560x1440\)"):
        export_store(store, tmp_path / "run", 0)
    exp = export_store(store, tmp_path / "run", 0, screen_px=MONITOR.px)
    assert exp.exported == 3 and exp.skipped == {"recorded on another screen (1512x982)": 3}


def test_two_users_stores_are_two_people(tmp_path, monkeypatch):
    """Their names made safe for a folder were both "store": one person to the trainer."""
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    people = []
    for user in ("李雷", "王芳"):
        store = _store(tmp_path / "users" / user / "labels", [LAPTOP])
        people.append(export_store(store, tmp_path / "run", len(people)).person)
    assert people == ["session:李雷", "session:王芳"]


def test_a_user_whose_name_is_no_folder_name_is_the_person_of_their_sessions(tmp_path, monkeypatch):
    """ "team/eve" lives in a folder of another spelling: her labels trained as person
    'team_eve-<hash>' beside her sessions' 'team/eve', two people, and one went to validation
    whole. Her profiles beside the store name her."""
    import json

    from gazeloop.calibration.profile import profile_path, user_dir

    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    home = user_dir("team/eve")
    assert home.name != "team/eve" and home.parent == tmp_path / "users"
    store = _store(home / "labels", [LAPTOP])
    p = profile_path("team/eve", "laptop")
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"user": "team/eve", "screen": {"px": [1512, 982]}}))
    assert export_store(store, tmp_path / "run", 0).person == "session:team/eve"


def test_replays_of_what_the_gate_may_judge_on_are_left_out_with_or_without_a_holdout(tmp_path):
    """Only --holdout was looked at: with none named the gate holds out the last quarter of
    --data, and a run that replayed one of those sessions was trained on."""
    import argparse

    from gazeloop.tools.commands.train import _judged_on

    a, b, h = (tmp_path / n for n in ("a", "b", "h"))
    plain = argparse.Namespace(holdout=[], data=[a, b])
    assert _judged_on(plain, {}) == [a.resolve(), b.resolve()]
    assert _judged_on(plain, {"holdout": [{"path": str(h)}]}) == [h.resolve()]
    named = argparse.Namespace(holdout=[h], data=[a, b])
    assert _judged_on(named, {"holdout": "elsewhere"}) == [h.resolve()]
