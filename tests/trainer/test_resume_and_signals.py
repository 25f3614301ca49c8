"""A resume goes on with the run's own settings (only its length and checkpoint cadence may
change), and SIGINT/SIGTERM end a run after the current step with a checkpoint that a
resume continues to the same result as a run never interrupted."""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import pytest

import gazeloop.trainer.train as tt
from gazeloop.trainer.datasets import GazeData
from gazeloop.trainer.train import TrainConfig, TrainError, train
from tests.trainer.test_train import base_model, config, files_snapshot, synth  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data() -> GazeData:
    return GazeData(samples=synth())


@pytest.fixture(scope="module")
def whole(base_model, data, tmp_path_factory):  # noqa: F811
    """Four steps never interrupted: what a stopped and resumed run must come to."""
    out = tmp_path_factory.mktemp("whole") / "run"
    return train(
        config(out, max_steps=4), data=data, model=copy.deepcopy(base_model), progress=False
    )


def _first_two(out: Path, data, base_model) -> None:  # noqa: F811
    train(config(out, max_steps=2), data=data, model=copy.deepcopy(base_model), progress=False)


def test_a_resume_with_another_lr_is_refused_naming_both_values(base_model, data, tmp_path):  # noqa: F811
    """It was taken: the optimizer state brought back the old lr while config.json said
    the new one."""
    out = tmp_path / "run"
    _first_two(out, data, base_model)
    before = files_snapshot(out)
    with pytest.raises(TrainError) as e:
        train(config(out, max_steps=4, resume=True, lr=1e-3, seed=5), data=data, progress=False)
    line = str(e.value)
    assert "\n" not in line
    assert "lr 0.0003 (now 0.001)" in line and "seed 0 (now 5)" in line
    assert files_snapshot(out) == before


def test_a_resume_that_names_only_the_length_goes_on_with_the_saved_settings(
    base_model,  # noqa: F811
    data,
    whole,
    tmp_path,
):
    """Without the first run's settings repeated (lr, val_fraction, the episode sizes) the
    defaults took their place: another split and another lr under the old run's state."""
    out = tmp_path / "run"
    _first_two(out, data, base_model)
    bare = TrainConfig(out_dir=out, max_steps=4, resume=True)
    rest = train(bare, data=data, progress=False)
    assert rest["resumed_from_step"] == 2 and rest["steps"] == 4
    assert rest["split"] == whole["split"]
    assert rest["losses"] == whole["losses"][2:]  # bit for bit
    assert rest["val_error_pct_diag"] == whole["val_error_pct_diag"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["lr"] == 3e-4 and saved["val_fraction"] == 0.34 and saved["max_steps"] == 4


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_the_current_step_and_a_resume_matches(
    base_model,  # noqa: F811
    data,
    whole,
    tmp_path,
    monkeypatch,
    signum,
):
    """The signal comes from inside the loop at step 3 (mid-epoch), not from a timer."""
    record = tt._record_step

    def then_signal(run, *a, **kw):
        record(run, *a, **kw)
        if run.at.step == 3:
            os.kill(os.getpid(), signum)

    def unhandled(*_):  # without the trainer's handler: a clean failure, not pytest killed
        raise RuntimeError(f"{signal.Signals(signum).name} reached the default handler")

    previous = signal.signal(signum, unhandled)
    monkeypatch.setattr(tt, "_record_step", then_signal)
    out = tmp_path / "run"
    try:
        first = train(
            config(out, max_steps=4), data=data, model=copy.deepcopy(base_model), progress=False
        )
        handler_after = signal.getsignal(signum)
    finally:
        signal.signal(signum, previous)  # never left raising for the rest of the session
    monkeypatch.setattr(tt, "_record_step", record)
    assert first["signal"] == signum and first["steps"] == 3
    ckpt = out / "checkpoints" / "step-0000003"
    assert first["checkpoint"] == str(ckpt) and (ckpt / "optimizer.safetensors").is_file()
    name = signal.Signals(signum).name
    assert first["stopped"].startswith(f"interrupted by {name} at step 3: checkpoint {ckpt}")
    assert "--resume" in first["stopped"]
    assert handler_after is unhandled  # the handler in place before is back
    rest = train(config(out, max_steps=4, resume=True), data=data, progress=False)
    assert rest["resumed_from_step"] == 3 and rest["signal"] is None
    assert first["losses"] + rest["losses"] == whole["losses"]
    assert rest["val_error_pct_diag"] == whole["val_error_pct_diag"]


def test_a_signal_with_the_last_step_lets_the_run_finish(
    base_model,  # noqa: F811
    data,
    whole,
    tmp_path,
    monkeypatch,
):
    """Stopped there, the run exited as interrupted and its tail was never validated: a
    resume found no step left to take."""
    record = tt._record_step

    def then_signal(run, *a, **kw):
        record(run, *a, **kw)
        if run.at.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    monkeypatch.setattr(tt, "_record_step", then_signal)
    try:
        done = train(
            config(tmp_path / "run", max_steps=4),
            data=data,
            model=copy.deepcopy(base_model),
            progress=False,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert done["stopped"] == "finished" and done["signal"] is None
    assert done["val_error_pct_diag"] == whole["val_error_pct_diag"]


def test_the_command_exits_128_plus_the_signal(tmp_path, monkeypatch, capsys):
    summary = {"main_process": True, "stopped": "interrupted by SIGTERM", "signal": 15}
    monkeypatch.setattr(tt, "train", lambda cfg: summary)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"out_dir": str(tmp_path / "run")}))
    assert tt.main([str(cfg)]) == 143
