"""The training loop on data the tests make: the loss goes down, resume continues exactly,
a NaN stops the run with the last good checkpoint kept, a checkpoint of another model
version is refused with nothing written, the split and the validation numbers are right,
and (with ../shared) the whole path from the grid9 session through the fast path."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import gazeloop.trainer.train as tt  # the loop: episode_loss and validate are patched there
from gazeloop.trainer.checkpoint import load_optimizer, save_optimizer, trained_parameters
from gazeloop.trainer.datasets import GazeData
from gazeloop.trainer.episodes import episode_loss, make_batch, spread_over_targets
from gazeloop.trainer.model import CheckpointError
from gazeloop.trainer.readers.common import SampleBuilder, Samples
from gazeloop.trainer.split import ValSet, make_split
from gazeloop.trainer.train import TrainConfig, TrainError, train
from gazeloop.trainer.validation import validate

torch.set_num_threads(1)
SCREEN = (1920, 1080)


def synth(persons: int = 3, targets: int = 10, frames: int = 2, seed: int = 0) -> Samples:
    """Eye crops with a dark 'pupil' whose position follows the screen target through a
    per-person gain and offset: a small, learnable, person-dependent relation."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:60, 0:60]
    b = SampleBuilder()
    for p in range(persons):
        off, gain = rng.normal(0, 3, 2), 1.0 + 0.2 * rng.normal()
        for t, (x, y) in enumerate(rng.uniform(0.05, 0.95, (targets, 2))):
            for f in range(frames):
                cx = 30 + gain * (x - 0.5) * 24 + off[0] + rng.normal(0, 0.7)
                cy = 30 + gain * (y - 0.5) * 14 + off[1] + rng.normal(0, 0.7)
                img = 170 - 120 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 50.0)
                img = img + rng.normal(0, 4, img.shape)
                crop = np.clip(np.repeat(img[..., None], 3, 2), 0, 255).astype(np.uint8)
                b.add(
                    left=crop,
                    right=crop,
                    head=np.zeros(3),
                    roll=0.0,
                    person=f"synth:{p}",
                    name=f"p{p}t{t}f{f}",
                    target=p * 1000 + t,
                    screen=(x, y),
                    screen_px=SCREEN,
                )
    return b.build()


@pytest.fixture(scope="module")
def base_model(shared):
    from gazeloop.fastpath import models
    from gazeloop.trainer.model import GazeNet

    return GazeNet.from_ir(models.resolve(models.GAZE_IR_XML), models.resolve(models.GAZE_IR_BIN))


@pytest.fixture
def net(base_model):
    return copy.deepcopy(base_model)


def config(out_dir: Path, **kw) -> TrainConfig:
    base = dict(
        out_dir=out_dir,
        epochs=2,
        steps_per_epoch=2,
        batch_persons=2,
        frames_per_person=20,
        calib_min=6,
        calib_max=8,
        lr=3e-4,
        checkpoint_every=100,
        val_fraction=0.34,
    )
    return TrainConfig(**(base | kw))


def files_snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def fixed_episode_loss(model, samples: Samples, cfg: TrainConfig) -> float:
    """The loss on all frames with 10 fixed calibration draws: comparable before/after."""
    batch = make_batch(samples, np.arange(len(samples)), torch.device("cpu"))
    with torch.no_grad():
        return float(
            np.mean(
                [
                    float(
                        episode_loss(model, batch, cfg, torch.Generator().manual_seed(100 + s)).loss
                    )
                    for s in range(10)
                ]
            )
        )


# --- learning -------------------------------------------------------------------------------


@pytest.mark.slow
def test_loss_goes_down(net, tmp_path):
    data = GazeData(samples=synth(persons=2, seed=2))
    cfg = config(tmp_path / "run", epochs=1, steps_per_epoch=8, val_fraction=0, seed=2)
    before = fixed_episode_loss(net, data.samples, cfg)
    summary = train(cfg, data=data, model=net, progress=False)
    after = fixed_episode_loss(net, data.samples, cfg)
    assert after < 0.8 * before, (before, after)
    losses = summary["losses"]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    # Per-step losses are on random episodes (one drew a 1.0 among 0.1-0.2 here), so the
    # learning is judged on the fixed episodes above; the steps are what metrics.csv holds.
    assert summary["steps"] == 8 and summary["epochs"] == 1 and summary["stopped"] == "finished"
    assert summary["samples_per_s"] > 0 and summary["wall_time_s"] > 0
    assert summary["split"].startswith("no validation")
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("kind,step,epoch,loss") and len(rows) == 1 + 8
    logged = [float(r.split(",")[3]) for r in rows[1:]]
    assert np.allclose(logged, losses, rtol=1e-5), (logged, losses)


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_validates_its_last_steps(net, tmp_path):
    """`--max-steps` inside the first epoch used to export the untrained start as the best
    model (validated before training, never after), and the summary's validation was that
    start's."""
    data = GazeData(samples=synth(seed=3))
    cfg = config(tmp_path / "run", epochs=1, steps_per_epoch=4, max_steps=3)
    summary = train(cfg, data=data, model=net, progress=False)
    assert summary["steps"] == 3
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    head = rows[0].split(",")
    val = [dict(zip(head, r.split(","), strict=True)) for r in rows[1:] if r.startswith("val")]
    assert [int(v["step"]) for v in val] == [3], rows
    assert summary["val_error_px"] == pytest.approx(float(val[0]["val_px"]), abs=1e-3)
    best = json.loads((tmp_path / "run" / "best" / "model.safetensors.json").read_text())
    after = float(val[0]["val_pct_diag"])
    before = summary["val_before"]["val_pct_diag"]
    assert best["extra"]["step"] == (3 if after < before else 0), (before, after)
    # Resumed with nothing left to do: no second validation of the same steps.
    cfg = config(tmp_path / "run", epochs=1, steps_per_epoch=4, max_steps=3, resume=True)
    train(cfg, data=data, model=copy.deepcopy(net), progress=False)
    again = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [r for r in again if r.startswith("val")] == [r for r in rows if r.startswith("val")]


# --- resume ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_resume_with_an_unreadable_metrics_log_keeps_it_aside_and_goes_on(base_model, tmp_path):
    """Random bytes in metrics.csv were a UnicodeDecodeError after the data had loaded."""
    data = GazeData(samples=synth())
    out = tmp_path / "run"
    train(config(out, max_steps=2), data=data, model=copy.deepcopy(base_model), progress=False)
    (out / "metrics.csv").write_bytes(b"\xff\xfe garbage \x00\x81")
    rest = train(
        config(out, max_steps=3, resume=True),
        data=data,
        model=copy.deepcopy(base_model),
        progress=False,
    )
    assert rest["steps"] == 3
    assert (out / "metrics.csv.unreadable").read_bytes() == b"\xff\xfe garbage \x00\x81"
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("kind,step") and rows[1].startswith("train,3,")


def _two_steps(out, sources, data, base_model) -> None:
    """A run of two steps on `sources` (their frames are `data`'s) in `out`, to resume."""
    train(
        config(out, max_steps=2, data=sources),
        data=data,
        model=copy.deepcopy(base_model),
        progress=False,
    )


@pytest.mark.slow
def test_a_resume_on_other_data_is_refused_before_anything_is_written(base_model, tmp_path):
    """It was taken: the summary put the old run's "before training" beside the new data's
    validation, and a new holdout could have been trained on."""
    from gazeloop.trainer.datasets import DataSource

    data = GazeData(samples=synth())
    out = tmp_path / "run"
    first = [DataSource(path=tmp_path / "p1_s00")]
    _two_steps(out, first, data, base_model)
    before = files_snapshot(out)
    other = [DataSource(path=tmp_path / "p1_s02")]
    with pytest.raises(TrainError, match="was trained with data .*p1_s00.*not .*p1_s02"):
        train(config(out, max_steps=3, resume=True, data=other), data=data, progress=False)
    assert files_snapshot(out) == before


@pytest.mark.slow
def test_a_new_best_removes_the_onnx_exported_from_the_old_one(base_model, tmp_path):
    """`--resume` without `--export` used to leave best/model.onnx of the earlier best beside
    a newer best checkpoint: `--gaze-model best/model.onnx` served the old model."""
    data = GazeData(samples=synth())
    out = tmp_path / "run"
    train(config(out, max_steps=2), data=data, model=copy.deepcopy(base_model), progress=False)
    best = out / "best"
    (best / "model.onnx").write_bytes(b"exported from the step-2 best")
    (best / "model.card.json").write_text("{}")
    rest = train(
        config(out, max_steps=6, resume=True),
        data=data,
        model=copy.deepcopy(base_model),
        progress=False,
    )
    assert rest["best_step"] > 2  # a newer best: what this test is about
    assert not (best / "model.onnx").exists() and not (best / "model.card.json").exists()


@pytest.mark.slow
def test_resume_continues_the_step_counter_and_matches_an_uninterrupted_run(base_model, tmp_path):
    data = GazeData(samples=synth())
    whole = train(
        config(tmp_path / "a", max_steps=4),
        data=data,
        model=copy.deepcopy(base_model),
        progress=False,
    )
    first = train(
        config(tmp_path / "b", max_steps=2),
        data=data,
        model=copy.deepcopy(base_model),
        progress=False,
    )
    assert first["steps"] == 2 and first["checkpoint"].endswith("step-0000002")
    rest = train(
        config(tmp_path / "b", max_steps=4, resume=True),
        data=data,
        model=copy.deepcopy(base_model),  # the checkpoint's weights replace these
        progress=False,
    )
    assert rest["resumed_from_step"] == 2 and rest["steps"] == 4 and rest["steps_this_run"] == 2
    assert first["losses"] + rest["losses"] == whole["losses"]  # bit for bit
    assert rest["val_error_pct_diag"] == whole["val_error_pct_diag"]
    state = json.loads((Path(rest["checkpoint"]) / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["epoch"] == 2 and state["seed"] == 0
    with open(tmp_path / "b" / "metrics.csv") as f:
        steps = [
            int(line.split(",")[1])
            for line in f.read().splitlines()[1:]
            if line.startswith("train")
        ]
    assert steps == [1, 2, 3, 4]


def test_optimizer_state_roundtrips_by_parameter_name(tmp_path):
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(trained_parameters(a), lr=0.01, betas=(0.8, 0.9))
    a(torch.randn(5, 3)).sum().backward()
    opt.step()
    save_optimizer(opt, a, tmp_path)

    class Reordered(torch.nn.Module):  # same names, registered in another order
        def __init__(self) -> None:
            super().__init__()
            self.add_module("1", torch.nn.Linear(4, 2))
            self.add_module("0", torch.nn.Linear(3, 4))

    b = Reordered()
    opt2 = torch.optim.AdamW(trained_parameters(b), lr=0.5)
    load_optimizer(opt2, b, tmp_path)
    assert opt2.param_groups[0]["lr"] == 0.01 and tuple(opt2.param_groups[0]["betas"]) == (0.8, 0.9)
    for name, p in a.named_parameters():
        q = dict(b.named_parameters())[name]
        for k in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt2.state[q][k], opt.state[p][k], rtol=0, atol=0)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["optimizer.json", "optimizer.safetensors"]
    with pytest.raises(CheckpointError, match="other parameters"):
        load_optimizer(
            torch.optim.AdamW(torch.nn.Linear(3, 4).parameters()), torch.nn.Linear(3, 4), tmp_path
        )


# --- failures -------------------------------------------------------------------------------


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(base_model, tmp_path, monkeypatch):
    data = GazeData(samples=synth())
    clean = train(
        config(tmp_path / "clean", max_steps=2, checkpoint_every=1),
        data=data,
        model=copy.deepcopy(base_model),
        progress=False,
    )
    real, calls = tt.episode_loss, []

    def poisoned(*a, **kw):
        parts = real(*a, **kw)
        calls.append(1)
        if len(calls) >= 3:
            parts = dataclasses.replace(parts, loss=parts.loss * float("nan"))
        return parts

    monkeypatch.setattr(tt, "episode_loss", poisoned)
    out = tmp_path / "nan"
    s = train(
        config(out, max_steps=5, checkpoint_every=1),
        data=data,
        model=copy.deepcopy(base_model),
        progress=False,
    )
    assert s["steps"] == 2 and "not finite" in s["stopped"] and "step 3" in s["stopped"]
    assert s["checkpoint"].endswith("step-0000002") and "step-0000002" in s["stopped"]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step-0000001", "step-0000002"]
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 2
    # The kept checkpoint is the clean run's step 2, bit for bit, and finite.
    from safetensors.torch import load_file

    kept = load_file(str(out / "checkpoints" / "step-0000002" / "model.safetensors"))
    ref = load_file(str(Path(clean["checkpoint"]) / "model.safetensors"))
    assert kept.keys() == ref.keys()
    for k in kept:
        assert torch.isfinite(kept[k]).all()
        torch.testing.assert_close(kept[k], ref[k], rtol=0, atol=0)
    # Fixed, the run resumes from there.
    monkeypatch.setattr(tt, "episode_loss", real)
    again = train(
        config(out, max_steps=3, checkpoint_every=1, resume=True),
        data=data,
        model=copy.deepcopy(base_model),
        progress=False,
    )
    assert again["resumed_from_step"] == 2 and again["steps"] == 3


@pytest.mark.slow
def test_early_stopping_keeps_the_best(base_model, tmp_path, monkeypatch):
    # Validation % diag: 10 before training, then 9 (best), 9.5, 9.7: patience 2 stops there.
    seq = iter([10.0, 9.0, 9.5, 9.7, 1.0])

    def fake_validate(*a, **kw):
        v = next(seq)
        return {"val_px": v * 22.03, "val_pct_diag": v, "val_baseline_px": 1.0,
                "val_baseline_pct_diag": 50.0, "val_deg": math.nan}  # fmt: skip

    monkeypatch.setattr(tt, "validate", fake_validate)
    out = tmp_path / "run"
    s = train(
        config(out, epochs=10, patience=2),
        data=GazeData(samples=synth()),
        model=copy.deepcopy(base_model),
        progress=False,
    )
    assert s["stopped"].startswith("early stopping") and s["steps"] == 6 and s["epochs"] == 3
    assert s["best_metric"] == 9.0 and s["best_step"] == 2
    best = json.loads((out / "best" / "model.safetensors.json").read_text())
    assert best["extra"]["step"] == 2 and best["extra"]["val_pct_diag"] == 9.0
    assert s["checkpoint"].endswith("step-0000006")  # the state at the stop is kept too


@pytest.mark.slow
@pytest.mark.parametrize("where", ["trainer_state.json", "model.safetensors.json"])
def test_checkpoint_of_another_model_version_is_refused(base_model, tmp_path, where):
    data = GazeData(samples=synth())
    out = tmp_path / "run"
    s = train(config(out, max_steps=1), data=data, model=copy.deepcopy(base_model), progress=False)
    doc_path = Path(s["checkpoint"]) / where
    doc = json.loads(doc_path.read_text())
    doc["model_version"] = "gazeloop.trainer.gazenet/0"
    doc_path.write_text(json.dumps(doc))
    before = files_snapshot(out)
    with pytest.raises(CheckpointError, match=r"gazenet/0.*gazenet/1|model version"):
        train(
            config(out, max_steps=3, resume=True),
            data=data,
            model=copy.deepcopy(base_model),
            progress=False,
        )
    assert files_snapshot(out) == before


@pytest.mark.slow
def test_a_fresh_run_never_overwrites_an_earlier_one(base_model, tmp_path):
    data = GazeData(samples=synth())
    out = tmp_path / "run"
    train(config(out, max_steps=1), data=data, model=copy.deepcopy(base_model), progress=False)
    before = files_snapshot(out)
    with pytest.raises(TrainError, match="resume: true in the config"):
        train(config(out, max_steps=1), data=data, model=copy.deepcopy(base_model), progress=False)
    assert files_snapshot(out) == before


def test_config_is_validated():
    with pytest.raises(ValidationError, match="calib_min"):
        TrainConfig(out_dir="x", calib_min=20, calib_max=10)
    with pytest.raises(ValidationError):
        TrainConfig(out_dir="x", learning_rate=1.0)
    assert TrainConfig(out_dir="x").calib_min == 8 and TrainConfig(out_dir="x").calib_max == 40


# --- split and validation numbers -----------------------------------------------------------


def test_split_is_person_disjoint():
    s = synth(persons=5, targets=4, frames=1)
    split = make_split(s, config(Path("x"), val_fraction=0.4))
    assert len(split.val_persons) == 2 and len(split.train_persons) == 3
    assert set(s.person[split.train_rows]).isdisjoint(split.val_persons)
    assert set(s.person[split.val.rows]) == set(split.val_persons)
    # Per person, calibration and query frames are whole, different targets.
    for p in split.val_persons:
        m = s.person[split.val.rows] == p
        cal, qry = split.val.rows[m & split.val.calib], split.val.rows[m & ~split.val.calib]
        assert len(cal) and len(qry) and set(s.target[cal]).isdisjoint(s.target[qry])
    assert split.description.startswith("person-disjoint")


def test_single_person_falls_back_to_held_out_targets_and_says_so():
    s = synth(persons=1, targets=10, frames=3)
    split = make_split(s, config(Path("x"), val_fraction=0.2))
    assert "only one person" in split.description and "TARGET-disjoint" in split.description
    query = split.val.rows[~split.val.calib]
    assert len(np.unique(s.target[query])) == 2
    assert set(s.target[query]).isdisjoint(s.target[split.train_rows])
    assert set(split.val.rows[split.val.calib]) <= set(split.train_rows)
    with pytest.raises(TrainError, match="too few"):
        make_split(synth(persons=1, targets=2, frames=3), config(Path("x")))
    assert "also trained on" not in split.description  # every point is a new one here


def test_a_single_persons_sittings_at_the_same_points_are_said_not_new_points():
    """Two sittings of one person at the same grid: a held-out target's point is trained on
    in the other sitting, so validation measures a new sitting there, not a new point."""
    first = synth(persons=1, targets=10, frames=2)
    second = copy.deepcopy(first)
    second.target = second.target + 100  # the same points, another sitting's targets
    split = make_split(Samples.concat([first, second]), config(Path("x"), val_fraction=0.2))
    assert "TARGET-disjoint" in split.description
    assert "but 4 of the 4 held-out targets are screen points also trained on" in split.description


def test_episodes_spread_frames_over_targets():
    rows = np.arange(15)
    targets = np.repeat([7, 8, 9], 5)
    got = spread_over_targets(rows, targets, 6, np.random.default_rng(0))
    assert len(set(got.tolist())) == 6
    assert np.bincount(targets[got] - 7).tolist() == [2, 2, 2]


def test_a_run_that_could_never_calibrate_is_refused(tmp_path):
    data = GazeData(samples=synth(persons=3, targets=10))
    with pytest.raises(TrainError, match="13 screen targets"):
        train(config(tmp_path / "r", calib_min=12, calib_max=20), data=data, progress=False)
    assert not (tmp_path / "r").exists()


class Stub(torch.nn.Module):
    """Embedding = two pixels of the left crop scaled to [0, 1] (or a constant)."""

    def __init__(self, constant: bool = False) -> None:
        super().__init__()
        self.constant = constant
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, left, right, head):
        e = left[:, 0, 0, :2] / 200.0
        if self.constant:
            e = torch.ones_like(e)
        return torch.zeros(len(left), 3), e * self.w


def tiny_val_set(screen_px=SCREEN) -> tuple[Samples, ValSet]:
    """Targets A (0.2, 0.2), B (0.4, 0.2) calibrate; C (0.8, 0.6) is scored. Pixels (0,0)
    and (0,1) of the left crop carry x·200 and y·200."""
    b = SampleBuilder()
    for t, (x, y) in enumerate([(0.2, 0.2), (0.4, 0.2), (0.8, 0.6), (0.6, 0.4)]):
        for f in range(2):
            crop = np.zeros((60, 60, 3), np.uint8)
            crop[0, 0, 0], crop[0, 1, 0] = round(x * 200), round(y * 200)
            b.add(left=crop, right=crop, head=np.zeros(3), roll=0.0, person="v", name=f"{t}{f}",
                  target=t, screen=(x, y), screen_px=screen_px)  # fmt: skip
    s = b.build()
    # D calibrates too, so the two embedding columns are not collinear on the calibration.
    return s, ValSet(rows=np.arange(8), calib=np.array([1, 1, 1, 1, 0, 0, 1, 1], bool))


def test_validation_numbers_in_px_and_percent_of_the_diagonal():
    cfg = config(Path("x"), ridge_lambda=1e-9)
    s, val = tiny_val_set()
    perfect = validate(Stub(), s, val, cfg, torch.device("cpu"))
    assert perfect["val_px"] < 1e-3 and perfect["val_pct_diag"] < 1e-4
    # Constant embedding: the ridge predicts the calibration mean, = the constant predictor.
    const = validate(Stub(constant=True), s, val, cfg, torch.device("cpu"))
    mean = np.mean([(0.2, 0.2), (0.4, 0.2), (0.6, 0.4)], axis=0)  # (0.4, 0.2667)
    err_px = math.hypot((0.8 - mean[0]) * 1920, (0.6 - mean[1]) * 1080)
    assert const["val_px"] == pytest.approx(err_px, rel=1e-6)
    assert const["val_baseline_px"] == pytest.approx(err_px, rel=1e-6)
    assert const["val_pct_diag"] == pytest.approx(100 * err_px / math.hypot(1920, 1080), rel=1e-6)
    # Unknown screen size: px is NaN, % of the diagonal comes from the aspect.
    s2, val2 = tiny_val_set(screen_px=None)
    unk = validate(
        Stub(constant=True), s2, val2, cfg.model_copy(update={"aspect": 2.0}), torch.device("cpu")
    )
    assert math.isnan(unk["val_px"])
    d = math.hypot((0.8 - mean[0]) * 2.0, 0.6 - mean[1])
    assert unk["val_pct_diag"] == pytest.approx(100 * d / math.hypot(2.0, 1.0), rel=1e-6)


# --- end to end through the fast path -------------------------------------------------------


@pytest.mark.slow
def test_grid9_through_the_fast_path_with_the_command(shared, tmp_path, capsys):
    """`python -m trainer.train cfg.json`: data read and cached via the fast path, the
    pretrained network from the IR, a one-person run that says its split is by target."""
    cfg = {
        "data": [
            {
                "path": str(shared / "data" / "sessions" / "grid9"),
                "screen_px": [1920, 1080],
                "mirrored": True,
            }
        ],
        "out_dir": str(tmp_path / "run"),
        "epochs": 1,
        "steps_per_epoch": 2,
        "batch_persons": 1,
        "frames_per_person": 9,
        "calib_min": 4,
        "calib_max": 6,
        "threads": 1,
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    assert tt.main([str(path)]) == 0
    out = capsys.readouterr().out

    def not_json(c: str):
        raise AssertionError(f"{c} is not standard JSON")

    summary = json.loads(out, parse_constant=not_json)
    assert summary["samples"] == 9 and summary["steps"] == 2
    assert "only one person (session:grid9)" in summary["split"]
    assert "TARGET-disjoint" in summary["split"]
    assert math.isfinite(summary["val_error_px"]) and summary["val_error_px"] > 0
    assert summary["val_before"]["val_baseline_px"] > 0
    assert summary["val_error_deg"] is None  # no gaze labels in a session
    assert summary["checkpoint"].endswith("step-0000002")
    assert len(list((tmp_path / "run" / "cache").glob("session-*.npz"))) == 1


def test_a_resume_that_fails_while_keeping_its_rows_loses_no_history(tmp_path, monkeypatch):
    """metrics.csv was opened for writing (emptied) before the kept rows went back in: a
    full disk or a crash in between lost the run's whole history."""
    import csv

    from gazeloop.trainer.config import TrainConfig
    from gazeloop.trainer.logs import METRICS, MetricsLog

    cfg = TrainConfig(out_dir=tmp_path)
    log = MetricsLog(tmp_path, cfg, None)
    for step in (1, 2, 3):
        log.write({"kind": "train", "step": step, "loss": 1.0 / step})
    log.close()
    before = (tmp_path / METRICS).read_bytes()

    def full_disk(self, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", full_disk)
    with pytest.raises(OSError, match="No space left"):
        MetricsLog(tmp_path, cfg, 2)
    assert (tmp_path / METRICS).read_bytes() == before
    monkeypatch.undo()
    MetricsLog(tmp_path, cfg, 2).close()
    with open(tmp_path / METRICS, newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["1", "2"]


@pytest.mark.slow
def test_a_resume_reading_the_same_folder_otherwise_is_refused(base_model, tmp_path):
    """Only the folders were compared: a resume without --mirrored went on training the
    selfie-view session read unmirrored, its labels on the other side of the screen."""
    from gazeloop.trainer.datasets import DataSource

    data = GazeData(samples=synth())
    out = tmp_path / "run"
    first = [DataSource(path=tmp_path / "p1_s00", mirrored=True, screen_px=(1512, 945))]
    _two_steps(out, first, data, base_model)
    before = files_snapshot(out)
    other = [DataSource(path=tmp_path / "p1_s00", screen_px=(1512, 945))]
    with pytest.raises(TrainError, match=r"read data .*p1_s00 with mirrored True \(now False\)"):
        train(config(out, max_steps=3, resume=True, data=other), data=data, progress=False)
    assert files_snapshot(out) == before
    same = [DataSource(path=tmp_path / "p1_s00", mirrored=True, screen_px=(1512, 945))]
    rest = train(config(out, max_steps=3, resume=True, data=same), data=data, progress=False)
    assert rest["steps"] == 3


@pytest.mark.slow
def test_a_resume_without_options_a_session_json_overrides_goes_on(base_model, tmp_path):
    """A session.json gives the screen and the mirroring whatever the flags say (`train`
    says --screen-px is ignored there): a resume without the ignored flag reads the same."""
    from gazeloop.trainer.datasets import DataSource

    data = GazeData(samples=synth())
    out, folder = tmp_path / "run", tmp_path / "p1_s00"
    folder.mkdir()
    (folder / "session.json").write_text("{}")
    first = [DataSource(path=folder, screen_px=(1512, 945), mirrored=True)]
    _two_steps(out, first, data, base_model)
    again = [DataSource(path=folder)]
    rest = train(config(out, max_steps=3, resume=True, data=again), data=data, progress=False)
    assert rest["steps"] == 3
