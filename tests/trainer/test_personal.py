"""Personal retraining: a user's label store as training data (`train --labels`), and which
layers train (`--tune`). The store is built with the LabelStore API from the real grid9
frames; the gate judges on a real evit sitting, never on the exported labels."""

from __future__ import annotations

import copy
import json
import shutil
import types
from pathlib import Path

import cv2
import pytest

torch = pytest.importorskip("torch", reason="the trainer extra (torch) is not installed")

from gazeloop.calibration.labels import (  # noqa: E402
    LineObservation,
    OracleLabel,
    PointObservation,
)
from gazeloop.calibration.store.labelstore import DB_NAME, LabelStore  # noqa: E402
from gazeloop.calibration.store.session import read_session  # noqa: E402
from gazeloop.trainer.tune import apply_tune, tuned_modules  # noqa: E402

torch.set_num_threads(1)
GRID9_SCREEN = (1920, 1080)


def _decision(accepted: bool = True, why: str = "accepted"):
    return types.SimpleNamespace(accepted=accepted, why=why, residual=None, offset=(0.0, 0.0))


@pytest.fixture(scope="module")
def store(shared, tmp_path_factory) -> Path:
    """`<home>/users/alice/labels` holding grid9's nine frames as accepted click labels
    (un-mirrored: a store keeps camera frames), plus a rejected label and a line label that
    an export skips; the user's profile beside it says which screen the labels are on."""
    home = tmp_path_factory.mktemp("home")
    root = home / "users" / "alice" / "labels"
    session = read_session(shared / "data/sessions/grid9", screen_px=GRID9_SCREEN, mirrored=True)
    w, h = GRID9_SCREEN
    with LabelStore(root) as ls:
        for i, item in enumerate(session.items):
            frame = cv2.flip(cv2.imread(str(item.image)), 1)
            x, y = item.label_px
            label = OracleLabel(
                t_ns=i, snapshot_id=f"grid9-{i}", oracle="clicks",
                observation=PointObservation(xy=(x / w, y / h)),
            )  # fmt: skip
            ls.add(label, frame, None, _decision(), snapshot_ms=1_766_068_421_000 + 1000 * i)
        frame = cv2.flip(cv2.imread(str(session.items[0].image)), 1)
        rejected = OracleLabel(
            t_ns=20, snapshot_id="rejected", oracle="clicks",
            observation=PointObservation(xy=(0.5, 0.5)),
        )  # fmt: skip
        ls.add(rejected, frame, None, _decision(False, "outlier"))
        line = OracleLabel(
            t_ns=21, snapshot_id="line", oracle="moondream",
            observation=LineObservation(origin=(0.5, 0.0), direction=(0.0, 1.0)),
        )  # fmt: skip
        ls.add(line, frame, (0.5, 0.5), _decision())
    profiles = root.parent / "profiles"
    profiles.mkdir()
    (profiles / "laptop.json").write_text(json.dumps({"screen": {"px": list(GRID9_SCREEN)}}))
    return root


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from gazeloop.tools.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_train_on_a_label_store_judged_on_another_session(store, shared, tmp_path, capsys):
    """Two steps on the exported labels, exported and judged by the gate on an evit sitting
    (not on the labels); the summary says what came from the store."""
    holdout = shared / "data/evit/p1_s00"
    out, reg = tmp_path / "run", tmp_path / "registry"
    argv = ["train", "--labels", str(store), "--holdout", str(holdout), "--out", str(out)]
    argv += ["--max-steps", "2", "--tune", "head", "--export", "--registry", str(reg), "--json"]
    code, stdout, err = _cli(argv, capsys)
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    (lab,) = summary["labels"]
    assert lab["store"] == str(store) and lab["accepted_labels"] == 10  # the line is accepted
    assert lab["exported_labels"] == 9
    assert lab["skipped"] == {"line label": 1, "rejected by the loop": 1}
    # and says so where a person reads (it was said in --json alone)
    (note,) = [line for line in err.splitlines() if line.startswith(f"note: {store}")]
    assert "; left out: " in note and "1 line label" in note and "1 rejected by the loop" in note
    assert lab["frames"] == 9 and lab["screen_px"] == list(GRID9_SCREEN)
    # The person the user's calibration sessions are (their manifests' `user`): one person.
    assert lab["person"] == "session:alice"
    assert "profiles/laptop.json" in lab["screen_from"]
    export = Path(lab["session"])
    assert export.parent == out / "labels" and len(list(export.glob("img_*.jpg"))) == 9
    # The gate judged on the named sitting only, never on the exported labels.
    assert [s["session"] for s in summary["gate"]["sessions"]] == [str(holdout)]
    assert summary["gate"]["sessions"][0]["targets"] == 16
    assert summary["tune"]["tune"] == "head" and summary["tune"]["frozen_parameters"] > 0
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["tune"] == "head"
    assert [d["path"] for d in resolved["data"]] == [str(export)]
    assert [h["path"] for h in resolved["holdout"]] == [str(holdout)]
    assert "9 labels of 10 accepted" in err
    # What it ran on, in the summary; its progress on stderr with --json too (plain lines:
    # stderr is no terminal here), the summary alone on stdout.
    assert summary["device"] == "cpu" and summary["num_processes"] == 1
    assert summary["mixed_precision"] == "no"
    assert "step 2/2" in err and len(stdout.strip().splitlines()) == 1
    # The run's folder holds its checkpoints: a fresh run there is refused before its
    # exported labels are touched; a resumed one trains on them as they were exported.
    stamp = {f.name: f.stat().st_mtime_ns for f in export.iterdir()}
    code, _, err = _cli([*argv[:-3], "--json"], capsys)
    assert code == 2 and "holds checkpoints of an earlier run" in err
    resume = ["train", "--labels", str(store), "--holdout", str(holdout), "--out", str(out)]
    resume += ["--max-steps", "3", "--tune", "head", "--resume", "--json"]
    code, stdout, err = _cli(resume, capsys)
    assert code == 0, err
    again = json.loads(stdout.strip().splitlines()[-1])
    assert again["steps"] == 3 and again["labels"][0]["reused_export"] is True
    assert {f.name: f.stat().st_mtime_ns for f in export.iterdir()} == stamp


def test_a_model_of_ones_labels_goes_to_their_registry_not_anothers(store, tmp_path, capsys):
    """`train --labels` of alice's store registered into the `default` user's registry
    (the README's example): her personal model was served to whoever ran without --user."""
    import argparse

    from gazeloop.tools.commands.train import _registry_user
    from gazeloop.trainer.labels import export_store

    exp = export_store(store, tmp_path / "x", 0)
    plain = argparse.Namespace(user=None, registry=None)
    assert _registry_user(plain, [exp]) == "alice" and _registry_user(plain, []) == "default"
    argv = ["train", "--labels", str(store), "--user", "bob", "--out", str(tmp_path / "r")]
    code, _, err = _cli(argv, capsys)
    assert code == 2 and err.strip().endswith(
        "the --labels are alice's: --user bob would serve a model trained on them to bob; "
        "give --user alice (or --registry DIR)"
    )
    assert not (tmp_path / "r" / "config.json").exists()  # refused before training
    # A copy elsewhere (a training box's /data/alice-labels) is anybody's: its folder name
    # is no user, to serve the model to or to refuse --user alice with.
    outside = tmp_path / "alice-labels"
    shutil.copytree(store, outside)
    copy = export_store(outside, tmp_path / "y", 0, screen_px=GRID9_SCREEN)
    assert _registry_user(plain, [copy]) == "default"
    named = argparse.Namespace(user="alice", registry=None)
    assert _registry_user(named, [copy]) == "alice"


def test_a_bad_or_empty_store_is_one_line_naming_the_folder(store, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "labels"
    code, _, err = _cli(["train", "--labels", str(missing), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.strip() == f"gazeloop train: {missing}: no such label store folder"
    assert not missing.exists()  # looking did not create a store
    not_store = tmp_path / "plain"
    not_store.mkdir()
    code, _, err = _cli(["train", "--labels", str(not_store), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.strip().endswith(
        f"{not_store}: not a label store (no {DB_NAME} in it)"
    )
    empty = tmp_path / "empty"
    LabelStore(empty).close()
    argv = ["train", "--labels", str(empty), "--screen-px", "1920", "1080"]
    code, _, err = _cli([*argv, "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"gazeloop train: {empty}: no usable labels")
    assert not (tmp_path / "r" / "labels" / "0-empty").exists()
    # A store with labels but no screen (no --screen-px, no profile beside it).
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in store.iterdir():
        if f.is_file():
            (bare / f.name).write_bytes(f.read_bytes())
    code, _, err = _cli(["train", "--labels", str(bare), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "give --screen-px W H" in err and len(err.strip().splitlines()) == 1
    # A profile beside it that cannot be read is named (it said only "no profile").
    (tmp_path / "profiles").mkdir(exist_ok=True)
    (tmp_path / "profiles" / "laptop.json").write_text('{"screen": ')
    code, _, err = _cli(["train", "--labels", str(bare), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "laptop.json unreadable" in err and len(err.strip().splitlines()) == 1


def test_tune_is_validated(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _cli(["train", "--tune", "backbone", "--out", str(tmp_path / "r")], capsys)
    assert "invalid choice: 'backbone'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def base_model(shared):
    from gazeloop.fastpath import models
    from gazeloop.trainer.model import GazeNet

    return GazeNet.from_ir(models.resolve(models.GAZE_IR_XML), models.resolve(models.GAZE_IR_BIN))


def test_the_groups_follow_the_graph(base_model):
    spec = base_model.spec
    head = tuned_modules(spec, "head")
    assert head == ["conv14", "conv15", "scale9", "shift9", "conv16"]
    last = tuned_modules(spec, "last")
    assert last == ["conv12", "scale8", "shift8", "conv13", *head]
    every = tuned_modules(spec, "all")
    assert len(every) == 33 and set(last) < set(every)
    net = copy.deepcopy(base_model)
    info = apply_tune(net, "head")
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trained == {f"layers.{m}{s}" for m in ("conv14", "conv15", "conv16") for s in (
        ".weight", ".bias")} | {"layers.scale9", "layers.shift9"}  # fmt: skip
    total = sum(p.numel() for p in net.parameters())
    assert info["trained_parameters"] + info["frozen_parameters"] == total
    with pytest.raises(ValueError, match="tune must be one of"):
        tuned_modules(spec, "backbone")


def _synth_data():
    from gazeloop.trainer.datasets import GazeData
    from tests.trainer.test_train import synth

    return GazeData(samples=synth(persons=3, targets=10, frames=2))


@pytest.mark.parametrize("tune", ["head", "last"])
def test_tuning_leaves_the_frozen_layers_bit_identical(base_model, tmp_path, tune):
    """Only the chosen layers move; the checkpoint holds the whole network, exports with
    ONNX parity, and a resume with another choice is refused."""
    from safetensors.torch import load_file

    from gazeloop.trainer.export import export_onnx
    from gazeloop.trainer.model import load_checkpoint
    from gazeloop.trainer.train import TrainConfig, TrainError, train

    before = {k: v.clone() for k, v in base_model.state_dict().items()}
    cfg = TrainConfig(
        out_dir=tmp_path / "run", epochs=1, steps_per_epoch=3, max_steps=3, batch_persons=2,
        frames_per_person=20, calib_min=4, calib_max=6, val_fraction=0, lr=1e-3, tune=tune,
        threads=1, mixed_precision="no",
    )  # fmt: skip
    summary = train(cfg, data=_synth_data(), model=copy.deepcopy(base_model), progress=False)
    assert summary["steps"] == 3 and summary["tune"]["tune"] == tune
    after = load_file(summary["best_checkpoint"])
    assert set(after) == set(before)  # the whole network, frozen layers included
    moving = {f"layers.{m}" for m in tuned_modules(base_model.spec, tune)}

    def group(key: str) -> str:
        return key if key in moving else key.rsplit(".", 1)[0]

    frozen = [k for k in before if group(k) not in moving]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    # The embedding's layers train (conv16 gets no gradient from screen labels alone).
    assert not torch.equal(before["layers.conv15.weight"], after["layers.conv15.weight"])
    assert not torch.equal(before["layers.conv14.weight"], after["layers.conv14.weight"])
    if tune == "last":
        assert not torch.equal(before["layers.conv13.weight"], after["layers.conv13.weight"])
        assert torch.equal(before["layers.conv11.weight"], after["layers.conv11.weight"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["tune"] == tune
    onnx = export_onnx(
        load_checkpoint(summary["best_checkpoint"]), tmp_path / "m.onnx", card={"model_id": "t"}
    )  # raises unless the ONNX matches torch
    assert onnx.is_file()
    other = cfg.model_copy(update={"tune": "all", "resume": True, "max_steps": 4})
    with pytest.raises(TrainError, match=f"trained with tune '{tune}'"):
        train(other, data=_synth_data(), model=copy.deepcopy(base_model), progress=False)
