"""The trainer's side of bad input: the config's bounds, a
damaged optimizer state refused naming its file, a registry card that cannot be read
warned about in one line, and `resume` on a folder with no checkpoint said so."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the trainer extra (torch) is not installed")

from pydantic import ValidationError  # noqa: E402

from gazeloop.calibration.problems import first_problem  # noqa: E402
from gazeloop.trainer.checkpoint import (  # noqa: E402
    check_optimizer_state,
    load_optimizer,
    save_optimizer,
    trained_parameters,
)
from gazeloop.trainer.config import TrainConfig  # noqa: E402
from gazeloop.trainer.model import CheckpointError  # noqa: E402


def test_a_validators_own_message_is_kept_without_pydantics_prefix():
    with pytest.raises(ValidationError) as e:
        TrainConfig(out_dir="x", calib_min=5, calib_max=3)
    assert first_problem(e.value) == "calib_min 5 > calib_max 3"


@pytest.mark.parametrize(
    ("field", "value"), [("lr", 1e300), ("lr", 1.5), ("seed", -1), ("seed", 2**32)]
)
def test_learning_rate_and_seed_are_bounded_in_the_config(field, value):
    """lr 1e300 overflowed in torch's Adam, seed -1 in accelerate's set_seed."""
    with pytest.raises(ValidationError, match=field):
        TrainConfig(out_dir="x", **{field: value})
    assert TrainConfig(out_dir="x", lr=1.0, seed=2**32 - 1).lr == 1.0


# --- the optimizer state ----------------------------------------------------------------------


def _saved(folder: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(trained_parameters(net), lr=0.01)
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    save_optimizer(opt, net, folder)
    return net, opt


def _fresh(net: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(trained_parameters(net), lr=0.5)


def test_optimizer_tensors_are_checked_against_their_hash(tmp_path):
    net, _ = _saved(tmp_path)
    tensors = tmp_path / "optimizer.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit the safetensors header cannot see
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="missing or damaged") as e:
        load_optimizer(_fresh(net), net, tmp_path)
    assert str(e.value).startswith(f"{tensors}: ")


def test_an_optimizer_state_written_before_the_hash_still_loads_or_says_which_file(tmp_path):
    net, opt = _saved(tmp_path)
    doc_path = tmp_path / "optimizer.json"
    doc = json.loads(doc_path.read_text())
    del doc["tensors_sha256"]
    doc_path.write_text(json.dumps(doc))
    fresh = _fresh(net)
    load_optimizer(fresh, net, tmp_path)
    assert fresh.param_groups[0]["lr"] == 0.01
    tensors = tmp_path / "optimizer.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(CheckpointError) as e:
        check_optimizer_state(tmp_path)
    assert str(e.value).startswith(f"{tensors}: unreadable (") and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"param_groups": {}, "scalars": {}},
        {"param_groups": [{"params": [1]}], "scalars": {}},
        {"param_groups": [{"lr": 1}], "scalars": {}},
    ],
)
def test_an_optimizer_json_of_another_shape_is_refused_naming_it(tmp_path, doc):
    """`[]` gave an AttributeError traceback from load_optimizer."""
    net, _ = _saved(tmp_path)
    (tmp_path / "optimizer.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="not a gazeloop optimizer state") as e:
        load_optimizer(_fresh(net), net, tmp_path)
    assert str(e.value).startswith(str(tmp_path / "optimizer.json"))


def test_an_optimizer_state_that_does_not_fit_is_refused_whole(tmp_path):
    net, _ = _saved(tmp_path)
    doc_path = tmp_path / "optimizer.json"
    doc = json.loads(doc_path.read_text())
    doc["scalars"]["no.such.weight"] = {"step": 1}
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        load_optimizer(_fresh(net), net, tmp_path)


# --- the registry ---------------------------------------------------------------------------


def test_a_corrupt_card_is_a_one_line_warning_naming_it(tmp_path, caplog):
    """It was pydantic's multi-line dump, one block per bad field."""
    from gazeloop.trainer.registry import ModelRegistry

    version = tmp_path / "gazeloop-gazenet" / "v0001"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"onnx")
    (version / "card.json").write_text(json.dumps({"model_id": 5, "version": "two"}))
    caplog.set_level(logging.WARNING, logger="gazeloop.trainer.registry")
    assert ModelRegistry(tmp_path).list() == []
    (said,) = [r.getMessage() for r in caplog.records]
    assert "\n" not in said and f"unreadable card {version / 'card.json'}: " in said
    assert said.endswith("more)") and "errors.pydantic.dev" not in said


# --- resume without a checkpoint --------------------------------------------------------------


def test_resume_without_a_checkpoint_says_it_starts_from_step_0(tmp_path, caplog, monkeypatch):
    import gazeloop.trainer.train as tt
    from gazeloop.trainer.datasets import GazeData
    from gazeloop.trainer.readers.common import Samples

    class Started(Exception):
        pass

    def start(*a, **k):
        raise Started

    monkeypatch.setattr(tt, "_start", start)  # what is said before the run starts is enough
    caplog.set_level(logging.WARNING, logger="gazeloop.trainer.train")
    out = tmp_path / "run"
    with pytest.raises(Started):
        tt.train(TrainConfig(out_dir=out, resume=True), data=GazeData(Samples.empty()))
    assert [r.getMessage() for r in caplog.records] == [
        f"no checkpoint in {out}: starting from step 0"
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"lr": "fast", "out_dir": "o", "data": []}', "invalid training config: lr: Input"),
        ("{bad", "invalid training config: Invalid JSON"),
    ],
)
def test_the_module_entry_says_a_bad_config_in_one_line(tmp_path, capsys, text, says):
    """`python -m gazeloop.trainer.train cfg.json` (the accelerate launch) printed pydantic's
    whole dump."""
    from gazeloop.trainer.train import main

    cfg = tmp_path / "cfg.json"
    cfg.write_text(text)
    with pytest.raises(SystemExit) as e:
        main([str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and says in err[-1] and str(cfg) in err[-1], err
