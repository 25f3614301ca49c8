"""`gazeloop labels`: a user's label store counted by source and by run, read-only."""

from __future__ import annotations

import json
import types

import numpy as np

from gazeloop.calibration.geometry import ScreenGeometry
from gazeloop.calibration.labels import OracleLabel, PointObservation
from gazeloop.calibration.store.labelstore import DB_NAME, LabelStore
from tests.cli import cli


def _add(ls: LabelStore, i: int, oracle: str, accepted: bool, run=None, image=True) -> None:
    label = OracleLabel(
        t_ns=i, snapshot_id=f"s{i}", oracle=oracle, observation=PointObservation(xy=(0.5, 0.5))
    )
    d = types.SimpleNamespace(accepted=accepted, why="ok", residual=None, offset=None)
    picture = np.full((32, 32, 3), 100, np.uint8) if image else None
    ls.add(label, picture, None, d, run_id=run)


def test_a_store_is_counted_by_source_and_by_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    root = tmp_path / "users" / "ann" / "labels"
    with LabelStore(root) as ls:
        _add(ls, 0, "clicks", True)  # from before runs were recorded
        laptop = ls.begin_run({"source": "0", "oracle": "clicks"}, ScreenGeometry(px=(1512, 982)))
        monitor = ls.begin_run(
            {"source": "0", "oracle": "auto", "gaze_model": {"id": "tuned"}, "device": "desk"},
            ScreenGeometry(px=(2560, 1440)),
        )
        ls.begin_run({"source": "1"}, ScreenGeometry(px=(800, 600)))  # stored nothing
        _add(ls, 1, "clicks", True, laptop)
        _add(ls, 2, "clicks", False, laptop)
        _add(ls, 3, "glance", True, monitor, image=False)

    def kept():  # the store's files (SQLite's empty -wal/-shm aside)
        return {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file()
                and not p.name.endswith(("-wal", "-shm"))}  # fmt: skip

    files = kept()
    rc, out, err = cli("labels", "--user", "ann", "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert (s["labels"], s["accepted"], s["with_image"]) == (4, 3, 3)
    assert s["by_source"] == {
        "clicks": {"labels": 3, "accepted": 2, "unjudged": 0, "with_image": 3},
        "glance": {"labels": 1, "accepted": 1, "unjudged": 0, "with_image": 0},
    }
    assert [(r["id"], r["screen_px"], r["labels"]) for r in s["runs"]] == [
        (laptop, [1512, 982], 2),
        (monitor, [2560, 1440], 1),
    ]
    assert s["runs"][1]["gaze_model"] == "tuned" and s["without_run"]["labels"] == 1
    rc, text, _ = cli("labels", "--store", root)
    assert rc == 0 and text.startswith(f"label store {root}: 4 labels, 3 accepted, 3 with")
    assert f"run {laptop} from " in text and "on 1512x982: 2 labels (1 accepted)" in text
    assert "on 2560x1440 of device desk: 1 labels" in text  # two runs that look alike else
    assert "1 labels from before runs were recorded" in text
    assert "labels to train on from several screens" in text and "--screen-px" in text
    assert kept() == files  # read, nothing written


def test_labels_no_loop_judged_are_counted_as_training_keeps_them(tmp_path):
    """Clicks stored before any profile (no loop's word on them) are what `train --labels`
    exports beside the accepted ones: `labels` said "0 accepted" and gave no warning for a
    store on two screens that training then refused without --screen-px."""
    from gazeloop.calibration.store.labelstore import NOT_PROCESSED

    root = tmp_path / "labels"
    with LabelStore(root) as ls:
        for i, px in enumerate([(1920, 1080), (2560, 1440)]):
            run = ls.begin_run({"source": "0", "oracle": "clicks"}, ScreenGeometry(px=px))
            for k in range(3):
                label = OracleLabel(
                    t_ns=10 * i + k,
                    snapshot_id=f"s{i}-{k}",
                    oracle="clicks",
                    observation=PointObservation(xy=(0.5, 0.5)),
                )
                d = types.SimpleNamespace(
                    accepted=False, why=NOT_PROCESSED, residual=None, offset=None
                )
                ls.add(label, np.full((32, 32, 3), 100, np.uint8), None, d, run_id=run)
    rc, out, err = cli("labels", "--store", root, "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert (s["labels"], s["accepted"], s["unjudged"]) == (6, 0, 6)
    rc, text, _ = cli("labels", "--store", root)
    assert "6 labels, 0 accepted, 6 not judged by any loop" in text, text
    assert "labels to train on from several screens" in text, text


def test_no_store_is_one_line_and_none_is_made(tmp_path, monkeypatch):
    monkeypatch.setenv("GAZELOOP_HOME", str(tmp_path))
    rc, out, err = cli("labels", "--user", "nobody")
    root = tmp_path / "users" / "nobody" / "labels"
    assert (
        rc == 2
        and err.strip()
        == f"gazeloop labels: {root}: no label store there (no {DB_NAME}); `gazeloop run` makes one"
    )
    assert not root.exists()


def test_a_picture_gone_from_the_folder_is_not_counted(tmp_path):
    """Two pictures deleted by hand: `labels` still said "12 with a picture", where the
    trainer then left them out as "image missing"."""
    root = tmp_path / "labels"
    with LabelStore(root) as ls:
        for i in range(3):
            _add(ls, i, "clicks", True)
        ls.image_path(next(iter(ls))).unlink()
    rc, out, err = cli("labels", "--store", root, "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert (s["labels"], s["with_image"]) == (3, 2)
    assert s["by_source"]["clicks"]["with_image"] == 2
