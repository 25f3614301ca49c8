"""Validation runs in float32 even when training autocasts to bf16: accelerate's prepared
model keeps an autocast wrapper on its forward, and validating through it judged (and chose
the best model by) bf16 numbers. Checked with accelerate's bf16 autocast on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch

import gazeloop.trainer.train as tt
from gazeloop.trainer.datasets import GazeData
from tests.trainer.test_train import base_model, config, synth  # noqa: F401


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one precision per process: an earlier test's float32 state would
    refuse bf16, and this test's bf16 must not outlive it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerator_state")
def test_validation_is_float32_while_training_autocasts(base_model, tmp_path, monkeypatch):  # noqa: F811
    from accelerate import Accelerator

    monkeypatch.setattr(
        tt, "_accelerator", lambda cfg: (Accelerator(mixed_precision="bf16", cpu=True), "bf16")
    )
    seen: dict[str, list[bool]] = {"train": [], "validate": []}
    phase = ["train"]

    def note(module, args, output):
        seen[phase[0]].append(torch.is_autocast_enabled("cpu"))

    validate = tt.validate

    def spy(model, *a, **kw):
        phase[0] = "validate"
        try:
            return validate(model, *a, **kw)
        finally:
            phase[0] = "train"

    monkeypatch.setattr(tt, "validate", spy)
    net = copy.deepcopy(base_model)
    for layer in list(net.modules())[1:]:  # inside forward: the wrapper's autocast is on there
        layer.register_forward_hook(note)
    out = tt.train(
        config(tmp_path / "run", max_steps=2), data=GazeData(synth()), model=net, progress=False
    )
    assert out["mixed_precision"] == "bf16" and out["steps"] == 2
    assert seen["train"] and all(seen["train"])  # the steps still autocast to bf16
    assert seen["validate"] and not any(seen["validate"])
