"""`gazeloop train` and `gazeloop export` on bad input: one line naming the flag, field or
file (exit 2), never a traceback, refused before any training, nothing stored lost. Found
by a sweep of bad inputs; each case failed before its fix (a traceback, a pydantic dump, a
refusal only after training, a warning said twice)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch", reason="the trainer extra (torch) is not installed")

from tests.cli import cli  # noqa: E402


def _one_line_refusal(rc: int, err: str) -> str:
    """The error line of a refusal, after checking it is a refusal in one line."""
    assert rc == 2, err
    assert "Traceback" not in err and "validation error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("gazeloop ")]
    assert len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err
    return lines[0]


@pytest.fixture
def p1(shared) -> dict[str, Path]:
    return {n: shared / "data/evit" / n for n in ("p1_s00", "p1_s01", "p1_s02")}


def _train(tmp_path: Path, p1, *more) -> tuple[int, str, str]:
    argv = ["train", "--data", p1["p1_s00"], "--holdout", p1["p1_s02"]]
    return cli(*argv, "--out", tmp_path / "run", "--max-steps", "1", *more)


# --- flags and the config file -------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        # torch's Adam raised "value cannot be converted to float without overflow".
        (["--lr", "1e300"], "--lr: must be a positive number up to 1, got '1e300'"),
        (["--lr", "2"], "--lr: must be a positive number up to 1"),
        # accelerate's set_seed raised a ValueError (numpy seeds are 0 .. 2**32 - 1).
        (["--seed", "-1"], "--seed: must be a non-negative integer, got '-1'"),
        (["--seed", str(2**32)], "--seed: must be an integer from 0 to 4294967295"),
    ],
)
def test_numbers_out_of_range_are_refused_by_their_flag(tmp_path, flags, says):
    rc, _, err = cli("train", "--data", tmp_path, "--out", tmp_path / "run", *flags)
    assert rc == 2 and says in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ("[1]", "a training config is a JSON object of TrainConfig fields, not a list"),
        ("null", "a training config is a JSON object of TrainConfig fields, not null"),
        ('{"lr": 1e300}', "lr: Input should be less than or equal to 1 (got 1e+300)"),
        ('{"seed": -1}', "seed: Input should be greater than or equal to 0 (got -1)"),
        ('{"lr": "fast"}', "lr: Input should be a valid number"),
        ('{"val_fraction": -1}', "val_fraction: Input should be greater than or equal to 0"),
        ('{"learning_rate": 1}', "learning_rate: not a known field"),
        ('{"lr": "fast", "seed": -1}', "lr: Input should be a valid number, unable to parse"),
        ('{"data": 5}', "data: Input should be a valid list (got 5)"),
        ('{"holdout": [{"path": 3}]}', "holdout.0.path: Input is not a valid path"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_field(tmp_path, p1, config, says):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(config)
    data = [] if '"data"' in config else ["--data", p1["p1_s00"]]
    rc, _, err = cli("train", *data, "--out", tmp_path / "run", "--config", cfg)
    line = _one_line_refusal(rc, err)
    assert says in line and str(cfg) in line
    if '"seed": -1' in config and '"lr"' in config:
        assert line.endswith("(and 1 more)")


def test_calib_min_above_calib_max_is_one_line(tmp_path, p1):
    rc, _, err = _train(tmp_path, p1, "--calib-min", "5", "--calib-max", "3")
    line = _one_line_refusal(rc, err)
    assert line == "gazeloop train: invalid training config: calib_min 5 > calib_max 3"
    assert not (tmp_path / "run").exists()


# --- --data and --holdout, read before anything trains ---------------------------------------


def _bad_folders(root: Path, p1) -> dict[str, Path]:
    root.mkdir()
    (root / "afile.txt").write_text("not a session")
    (root / "empty").mkdir()
    bad = root / "badmanifest"
    shutil.copytree(p1["p1_s01"], bad)
    (bad / "session.json").write_text("[")
    return {
        "missing": root / "nope",
        "file": root / "afile.txt",
        "empty": root / "empty",
        "manifest": bad,
    }


@pytest.mark.parametrize(
    ("case", "holdout_says", "data_says"),
    [
        ("missing", "session folder does not exist", "does not exist"),
        ("file", "session path is not a folder", "neither .h5 (ETH-XGaze) nor .tfrecord"),
        ("empty", "no usable img_<unix-ms>.jpg + .json pairs", "no known layout"),
        ("manifest", "bad session manifest", "bad session manifest"),
    ],
)
def test_a_bad_holdout_or_data_is_refused_before_training(
    tmp_path, p1, case, holdout_says, data_says
):
    """A bad --holdout used to be found by the gate, after training and the ONNX export."""
    bad = _bad_folders(tmp_path / "in", p1)[case]
    out = tmp_path / "run"
    argv = ["train", "--data", p1["p1_s00"], "--data", p1["p1_s01"], "--max-steps", "1"]
    rc, _, err = cli(*argv, "--holdout", bad, "--out", out, "--export")
    line = _one_line_refusal(rc, err)
    assert line.startswith("gazeloop train: --holdout: ") and holdout_says in line
    assert str(bad) in line and not out.exists()
    argv = ["train", "--data", bad, "--data", p1["p1_s01"], "--holdout", p1["p1_s02"]]
    rc, _, err = cli(*argv, "--out", out, "--max-steps", "1")
    line = _one_line_refusal(rc, err)
    assert line.startswith("gazeloop train: --data: ") and data_says in line
    assert str(bad) in line and not out.exists()


def test_the_config_files_sources_are_checked_as_the_flags_are(tmp_path, p1):
    """A --config's data and holdout lists passed unchecked: a bad holdout was found after
    training and the export, and one session given twice was trained on twice (its held-out
    targets trained in the other copy)."""
    bad = _bad_folders(tmp_path / "in", p1)["empty"]
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"holdout": [{"path": str(bad)}]}))
    argv = ["train", "--data", p1["p1_s00"], "--data", p1["p1_s01"], "--max-steps", "1"]
    rc, _, err = cli(*argv, "--config", cfg, "--out", out, "--export")
    line = _one_line_refusal(rc, err)
    assert line.startswith(f"gazeloop train: holdout in {cfg}: ") and str(bad) in line
    assert "no usable img_<unix-ms>.jpg + .json pairs" in line and not out.exists()
    twice = [{"path": str(p1["p1_s00"])}, {"path": f"{p1['p1_s00']}/"}]
    cfg.write_text(json.dumps({"data": [*twice, {"path": str(p1["p1_s01"])}]}))
    rc, _, err = cli("train", "--config", cfg, "--out", out, "--max-steps", "1")
    line = _one_line_refusal(rc, err)
    assert f"data in {cfg} {p1['p1_s00']}/ is given twice" in line and not out.exists()


def test_a_copy_of_a_data_session_is_refused(tmp_path, p1):
    """The same frames under another folder name (`cp -r`): validation would grade the
    model on targets it trained on in the other copy."""
    copy = tmp_path / "copy_s00"
    shutil.copytree(p1["p1_s00"], copy)
    out = tmp_path / "run"
    argv = ["train", "--data", p1["p1_s00"], "--data", copy, "--holdout", p1["p1_s02"]]
    rc, _, err = cli(*argv, "--out", out, "--max-steps", "1")
    line = _one_line_refusal(rc, err)
    assert f"--data {copy} holds 16 frames of --data {p1['p1_s00']}" in line
    assert "each source once" in line and not out.exists()


def test_a_session_without_a_screen_size_is_refused_before_training(tmp_path, p1):
    bare = tmp_path / "bare"
    shutil.copytree(p1["p1_s01"], bare)
    (bare / "session.json").unlink()
    rc, _, err = _train(tmp_path, {**p1, "p1_s00": bare}, "--data", p1["p1_s01"])
    line = _one_line_refusal(rc, err)
    assert f"--data: {bare}: screen size unknown" in line and "--screen-px" in line


# --- the --calib-min choice counts usable frames --------------------------------------------


def _faceless_session(folder: Path, manifest: Path, n: int = 9) -> Path:
    """`n` labelled stills of a plain wall: valid labels, no face to read."""
    folder.mkdir()
    shutil.copy(manifest, folder / "session.json")
    wall = np.full((480, 640, 3), 180, np.uint8)
    for i in range(n):
        stem = f"img_{1_700_000_001_000 + 1000 * i}"
        cv2.imwrite(str(folder / f"{stem}.jpg"), wall)
        label = {"timestamp": 1_700_000_001_000 + 1000 * i, "screen_x": 100 + 100 * i}
        (folder / f"{stem}.json").write_text(json.dumps(label | {"screen_y": 90, "target": i}))
    return folder


def test_calib_min_is_fitted_to_usable_frames_not_label_files(tmp_path, p1, capsys):
    """Nine faceless stills made --calib-min 6 ("the smallest --data session has 9
    targets") though they train nothing: validation went from 169 to 1358 px."""
    from gazeloop.tools.cli import build_parser
    from gazeloop.tools.commands.train import _config

    wall = _faceless_session(tmp_path / "wall", p1["p1_s00"] / "session.json")
    argv = ["train", "--data", str(wall), "--data", str(p1["p1_s00"])]
    argv += ["--holdout", str(p1["p1_s02"]), "--out", str(tmp_path / "run")]
    cfg = _config(build_parser().parse_args(argv))
    err = capsys.readouterr().err
    assert cfg.calib_min == 8 and "note: --calib-min" not in err  # p1_s00: 16 targets
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and warned[0].startswith(f"warning: {wall}: no usable frames (")
    assert warned[0].endswith("left out of the --calib-min choice")


# --- label-file warnings: once --------------------------------------------------------------


def test_a_bad_label_file_is_warned_about_once(tmp_path, p1, caplog):
    """The --calib-min choice read the folder, then the trainer did: every warning twice."""
    bad = tmp_path / "badlabel"
    shutil.copytree(p1["p1_s00"], bad)
    first = sorted(bad.glob("img_*.json"))[1]
    first.write_text('{"screen_x": 1, "screen_y": "\x01')
    caplog.set_level(logging.WARNING, logger="gazeloop.calibration.store.session")
    rc, _, err = _train(tmp_path, {**p1, "p1_s00": bad}, "--data", p1["p1_s01"])
    assert rc == 0, err
    said = [r.getMessage() for r in caplog.records if first.name in r.getMessage()]
    assert len(said) == 1 and "rejected" in said[0], said


# --- damaged checkpoints --------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_run(shared, tmp_path_factory) -> Path:
    """A run folder with one checkpoint of the real network (its optimizer state included)."""
    import torch

    from gazeloop.fastpath import models
    from gazeloop.trainer.checkpoint import (
        save_training_checkpoint,
        trained_parameters,
        trainer_state,
    )
    from gazeloop.trainer.config import TrainConfig
    from gazeloop.trainer.model import GazeNet

    run = tmp_path_factory.mktemp("ckpt") / "run"
    net = GazeNet.from_ir(models.resolve(models.GAZE_IR_XML), models.resolve(models.GAZE_IR_BIN))
    opt = torch.optim.AdamW(trained_parameters(net), lr=1e-5)
    net(*[torch.zeros(2, 3, 60, 60)] * 2, torch.zeros(2, 3))[0].sum().backward()
    opt.step()  # Adam's moments exist: the state has tensors to save
    at = dict(step=2, steps_per_epoch=1, best=1.0, best_step=1, bad_epochs=0, val_before=None)
    save_training_checkpoint(run, net, opt, trainer_state(TrainConfig(out_dir=run), **at), keep=1)
    return run


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("damage", "names", "says"),
    [
        ("truncate", "optimizer.safetensors", "missing or damaged"),
        ("list", "optimizer.json", "not a gazeloop optimizer state"),
        ("not json", "optimizer.json", "unreadable"),
    ],
)
def test_resume_from_a_damaged_optimizer_state_is_one_line(
    checkpoint_run, tmp_path, p1, damage, names, says
):
    run = tmp_path / "run"
    shutil.copytree(checkpoint_run, run)
    ckpt = run / "checkpoints" / "step-0000002"
    if damage == "truncate":
        (ckpt / names).write_bytes((ckpt / names).read_bytes()[:100_000])
    else:
        (ckpt / names).write_text("[]" if damage == "list" else "{")
    before = _files(run)
    argv = ["train", "--data", p1["p1_s00"], "--holdout", p1["p1_s02"], "--out", run]
    rc, _, err = cli(*argv, "--max-steps", "3", "--resume")
    line = _one_line_refusal(rc, err)
    assert f"{ckpt / names}: {says}" in line
    assert _files(run) == before  # refused before the data is read: no cache, no config


def test_a_resume_on_other_data_is_refused_before_its_cache_is_written(
    checkpoint_run, tmp_path, p1
):
    """The trainer refused it, but only after the command had fitted calib_min on the new
    data and so preprocessed it into the old run's cache."""
    run = tmp_path / "run"
    shutil.copytree(checkpoint_run, run)  # a run made with no --data sources
    before = _files(run)
    argv = ["train", "--data", p1["p1_s00"], "--holdout", p1["p1_s02"], "--out", run]
    rc, _, err = cli(*argv, "--max-steps", "3", "--resume")
    assert "was trained with data [], not" in _one_line_refusal(rc, err)
    assert _files(run) == before


def test_exporting_a_truncated_checkpoint_is_one_line(checkpoint_run, tmp_path):
    """A sidecar whose hash was taken of the truncated file passes the hash check; the
    safetensors read then raised a SafetensorError traceback."""
    from gazeloop.fastpath.models import sha256_file

    weights = tmp_path / "model.safetensors"
    src = checkpoint_run / "checkpoints" / "step-0000002" / "model.safetensors"
    weights.write_bytes(src.read_bytes()[:100_000])
    side = json.loads(Path(f"{src}.json").read_text())
    Path(f"{weights}.json").write_text(json.dumps(side | {"weights_sha256": sha256_file(weights)}))
    rc, _, err = cli("export", weights, "--no-register")
    line = _one_line_refusal(rc, err)
    assert line.startswith(f"gazeloop export: {weights}: unreadable weights (")
    assert not weights.with_suffix(".onnx").exists()


def test_export_promote_with_no_register_is_refused(checkpoint_run, tmp_path):
    """--promote was dropped without a word: exit 0, an ONNX file, nothing served."""
    src = checkpoint_run / "checkpoints" / "step-0000002" / "model.safetensors"
    out = tmp_path / "m.onnx"
    rc, _, err = cli("export", src, "--out", out, "--promote", "--no-register")
    line = _one_line_refusal(rc, err)
    assert "--promote serves the model from the registry, --no-register keeps it out" in line
    assert not out.exists()


def test_exporting_one_checkpoint_twice_registers_it_once(checkpoint_run, tmp_path):
    """Two versions with one hash: a second export of the same checkpoint registered it again
    (a relaunched `train --resume --export` already said "already registered")."""
    from gazeloop.trainer.registry import ModelRegistry

    src = checkpoint_run / "checkpoints" / "step-0000002" / "model.safetensors"
    reg = tmp_path / "reg"
    argv = ["export", src, "--out", tmp_path / "m.onnx", "--registry", reg, "--json"]
    rc, out, err = cli(*argv)
    assert rc == 0, err
    first = json.loads(out)
    rc, out, err = cli(*argv, "--promote")
    assert rc == 0, err
    again = json.loads(out)
    assert again["version"] == first["version"] and again["already_registered"] is True
    assert f"is already registered as v{first['version']}" in err
    versions = ModelRegistry(reg).list()
    assert [e.version for e in versions] == [first["version"]]
    assert ModelRegistry(reg).promoted().version == first["version"]  # --promote still served it
    # A registered copy gone bad (same size) is not "there": exporting again repairs it.
    onnx = versions[0].onnx_path
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))
    rc, out, err = cli(*argv)
    assert rc == 0, err
    assert json.loads(out)["version"] == first["version"] + 1 and "already" not in out


def test_a_missing_init_is_one_line_before_the_data_is_read(shared, tmp_path):
    """`init` (the model a fresh run starts from) was read only after every session had been
    preprocessed into the run folder; then the run was refused."""
    evit = shared / "data/evit"
    run, config = tmp_path / "run", tmp_path / "config.json"
    config.write_text(json.dumps({"init": str(tmp_path / "nope.safetensors")}))
    rc, _, err = cli(
        "train", "--data", evit / "p1_s00", "--holdout", evit / "p1_s02", "--out", run,
        "--config", config,
    )  # fmt: skip
    assert rc == 2 and "Traceback" not in err, err
    assert "checkpoint weights not found" in err.strip().splitlines()[-1], err
    assert not run.exists() or not any(run.rglob("*")), sorted(run.rglob("*"))
