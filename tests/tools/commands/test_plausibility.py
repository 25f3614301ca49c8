"""Silent wrong results refused with the reason (issue 16, item 4): labels that cannot be on
the screen of a session whose size is unknown, profiles that would put the gaze nowhere,
and `train` defaults that fit the 4- and 9-target sessions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gazeloop.calibration.store.session import read_session
from gazeloop.tools.cli import build_parser, main


def _copy(src: Path, dst: Path, keep: int | None = None) -> list[Path]:
    """A session folder's first `keep` pairs (all by default), in a writable place."""
    dst.mkdir()
    records = sorted(src.glob("img_*.json"))[:keep]
    for r in records:
        shutil.copy(r, dst / r.name)
        shutil.copy(r.with_suffix(".jpg"), dst / r.with_suffix(".jpg").name)
    return [dst / r.name for r in records]


def _move_label(record: Path, x: float, y: float) -> None:
    d = json.loads(record.read_text())
    d["screen_x"], d["screen_y"] = x, y
    record.write_text(json.dumps(d))


@pytest.mark.parametrize(
    ("xy", "says"),
    [
        ((1e12, 1e12), "label (1e+12, 1e+12) is beyond any screen (16384 px)"),
        ((9000.0, 500.0), "px outside the other 8 targets (which span 1665x1002 px)"),
    ],
)
def test_a_label_far_from_the_other_targets_is_rejected_without_a_screen_size(
    shared, tmp_path, xy, says
):
    records = _copy(shared / "data/sessions/grid9", tmp_path / "s")
    _move_label(records[4], *xy)
    s = read_session(tmp_path / "s")
    assert len(s.items) == 8
    assert [r.file for r in s.rejected] == [records[4].name]
    assert says in s.rejected[0].why


def test_plausible_sessions_lose_nothing(shared, tmp_path):
    """grid9 as it is, and a cluster of targets with one at the far corner (800 px from a
    300 px cluster): both plausible, nothing rejected."""
    assert read_session(shared / "data/sessions/grid9").rejected == []
    records = _copy(shared / "data/sessions/grid9", tmp_path / "s", keep=5)
    spots = [(800, 400), (1100, 400), (800, 700), (1100, 700), (1900, 1070)]
    for r, xy in zip(records, spots, strict=True):
        _move_label(r, *xy)
    s = read_session(tmp_path / "s")
    assert len(s.items) == 5 and s.rejected == []


@pytest.mark.slow
def test_eval_leaves_the_absurd_label_out_and_says_why(shared, tmp_path, capsys):
    """The reported case: a label at (1e12, 1e12) made the mean 2.9e11 px."""
    records = _copy(shared / "data/sessions/grid9", tmp_path / "s")
    _move_label(records[0], 1e12, 1e12)
    assert main(["eval", str(tmp_path / "s"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["targets"] == 8 and r["mean_px"] < 200
    assert r["rejected"] == [
        {"file": records[0].name, "why": "label (1e+12, 1e+12) is beyond any screen (16384 px)"}
    ]


# --- profile show ---------------------------------------------------------------------------

HEALTHY = {
    "schema_version": 1,
    "user": "u",
    "device": "d",
    "screen": {"px": [1920, 1080]},
    "features": ["gaze_yaw", "gaze_pitch"],
    "gaze_model_id": "gaze-estimation-adas-0002-onnx",
    "gaze_model_sha256": "0" * 64,
    "mapping": {
        "name": "ridge",
        "params": {
            "format": "gazeloop.mapping",
            "version": 1,
            "name": "ridge",
            "hyper": {"alpha": 0.001},
            "columns": None,
            "feature_names": None,
            "n_features": 2,
            "state": {
                "degree": 1,
                "center": [0.1076, -0.1089],
                "scale": [0.1855, 0.1338],
                "W": [[0.45, 0.48], [-0.35, 0.02], [-0.05, -0.37]],
            },
        },
    },
    "fit": {"targets": 9, "frames": 9, "mean_px": 67.1, "median_px": 63.7},
    "offset": [0.01, -0.02],
}


def _with(path: list, value) -> dict:
    doc = json.loads(json.dumps(HEALTHY))
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        (_with(["offset"], [1e9, -1e9]), "drift offset (+1e+09, -1e+09) is more than a screen"),
        (_with(["mapping", "params", "state", "W", 1], [None, 0.02]), "state.W[1] (a missing"),
        (_with(["fit", "mean_px"], -5.0), "fit.mean_px -5.0 is not a distance"),
    ],
)
def test_profile_show_refuses_a_profile_that_would_put_the_gaze_nowhere(
    tmp_path, capsys, doc, says
):
    p = tmp_path / "p.json"
    p.write_text(json.dumps(doc))
    assert main(["profile", "show", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{p}: not a usable profile: " in err and says in err


def test_profile_show_names_a_nan_weight(tmp_path, capsys):
    p = tmp_path / "p.json"
    p.write_text(json.dumps(HEALTHY).replace("-0.35", "NaN"))
    assert main(["profile", "show", str(p)]) == 2
    assert "mapping state.W[1][0] (nan) is not a finite number" in capsys.readouterr().err


def test_profile_show_prints_a_healthy_profile(tmp_path, capsys):
    p = tmp_path / "p.json"
    p.write_text(json.dumps(HEALTHY))
    assert main(["profile", "show", str(p)]) == 0
    assert "drift offset +0.0100, -0.0200" in capsys.readouterr().out


# --- train defaults --------------------------------------------------------------------------


def _train_config(argv: list[str]):
    from gazeloop.tools.commands.train import _config

    return _config(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize(("targets", "calib_min"), [(9, 6), (4, 2)])
def test_train_fits_calib_min_to_a_small_session(shared, tmp_path, capsys, targets, calib_min):
    """The default (8 calibration targets + 1 query) needs 9 training targets; a lone
    person lends round(0.2 * targets) to validation, so 9 → 7 → 6 and 4 → 3 → 2."""
    _copy(shared / "data/sessions/grid9", tmp_path / "s", keep=targets)
    argv = ["--data", str(tmp_path / "s"), "--screen-px", "1920", "1080", "--out", str(tmp_path)]
    assert _train_config(argv).calib_min == calib_min
    err = capsys.readouterr().err
    assert f"note: --calib-min {calib_min}: the smallest --data session has {targets}" in err
    # The choice reads the data once before the trainer does: its progress says so.
    assert "calib-min data: unit 1 done" in err and "\ndata: unit" not in err
    assert _train_config([*argv, "--calib-min", "1"]).calib_min == 1  # a given one stays
