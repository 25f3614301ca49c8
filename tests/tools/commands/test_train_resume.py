"""`gazeloop train --resume` goes on with the run's saved settings: without --config given
again the defaults took their place (another validation split, another lr under the old
optimizer state), and a new --lr was recorded in config.json while the optimizer state
brought back the old one. Now only the run's length may change; anything else that differs
is refused in one line naming it and both values, before anything is read or written."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the trainer extra (torch) is not installed")

from tests.cli import cli  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(shared, tmp_path_factory) -> Path:
    """A run folder with one checkpoint, made with settings other than the defaults."""
    import torch

    from gazeloop.fastpath import models
    from gazeloop.trainer.checkpoint import (
        save_training_checkpoint,
        trained_parameters,
        trainer_state,
    )
    from gazeloop.trainer.config import TrainConfig
    from gazeloop.trainer.datasets import DataSource
    from gazeloop.trainer.model import GazeNet

    evit = shared / "data/evit"
    run = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = TrainConfig(
        out_dir=run,
        data=[DataSource(path=evit / "p1_s00")],
        holdout=[DataSource(path=evit / "p1_s02")],
        lr=3e-4,
        val_fraction=0.5,
        calib_min=4,
    )
    net = GazeNet.from_ir(models.resolve(models.GAZE_IR_XML), models.resolve(models.GAZE_IR_BIN))
    opt = torch.optim.AdamW(trained_parameters(net), lr=cfg.lr)
    at = dict(step=2, steps_per_epoch=1, best=1.0, best_step=1, bad_epochs=0, val_before=None)
    save_training_checkpoint(run, net, opt, trainer_state(cfg, **at), keep=1)
    return run


def _argv(shared, run: Path) -> list:
    evit = shared / "data/evit"
    return ["train", "--data", evit / "p1_s00", "--holdout", evit / "p1_s02", "--out", run]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_resume_with_another_lr_is_one_line_naming_both_values(shared, run_dir):
    before = _files(run_dir)
    rc, _, err = cli(*_argv(shared, run_dir), "--max-steps", "3", "--resume", "--lr", "1e-3")
    assert rc == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert "was trained with lr 0.0003 (now 0.001)" in line
    assert "only epochs, max_steps, checkpoint_every" in line
    assert _files(run_dir) == before


def test_a_bare_resume_trains_with_the_saved_settings(shared, run_dir, monkeypatch):
    import gazeloop.trainer.train as tt

    seen = []

    def stop(cfg):
        seen.append(cfg)
        raise tt.TrainError("stopped by the test")

    monkeypatch.setattr(tt, "train", stop)
    rc, _, err = cli(*_argv(shared, run_dir), "--max-steps", "3", "--resume")
    assert rc == 2 and "stopped by the test" in err, err
    (cfg,) = seen
    assert (cfg.lr, cfg.val_fraction, cfg.calib_min, cfg.max_steps) == (3e-4, 0.5, 4, 3)
    assert cfg.resume is True


def test_relaunching_a_finished_run_reports_its_last_validation(shared, tmp_path):
    """A launch script passes --resume every time (README); relaunched after the end, the run
    reported the model's validation before training as its result (205 px where its last
    validation, in metrics.csv and the best checkpoint, was 150)."""
    import json

    evit = shared / "data/evit"
    argv = ["train", "--data", evit / "p1_s00", "--data", evit / "p1_s01"]
    argv += ["--holdout", evit / "p1_s02", "--out", tmp_path / "run", "--max-steps", "4"]
    rc, out, err = cli(*argv, "--json")
    assert rc == 0, err
    # Sessions' labels are screen points: no gaze angle to score (said, not "nan deg").
    assert "nan deg" not in err and "% diag (constant predictor" in err
    assert err.count("no gaze-angle labels") == err.count("% diag (constant predictor")
    first = json.loads(out)
    rc, out, err = cli(*argv, "--resume", "--json")
    assert rc == 0, err
    again = json.loads(out)
    assert again["resumed_from_step"] == first["steps"] == again["steps"]
    assert again["val_error_px"] == first["val_error_px"] != first["val_before"]["val_px"]
    rows = (tmp_path / "run/metrics.csv").read_text().splitlines()
    head, last = rows[0].split(","), [r for r in rows if r.startswith("val,")][-1].split(",")
    assert float(last[head.index("val_px")]) == pytest.approx(first["val_error_px"], abs=1e-3)


def test_an_interrupt_while_judging_says_the_model_is_not_served_and_how_to_go_on(
    shared, tmp_path, monkeypatch
):
    """The gate runs the fast path twice over every held-out session: minutes in which
    nothing was said, and a SIGTERM there ended the run (143) with no word of what was left
    or that `--resume --export` finishes the job."""
    import gazeloop.trainer.ship as ship_mod

    def interrupted(*a, **k):
        raise KeyboardInterrupt  # what SIGTERM now raises there, as Ctrl-C does

    monkeypatch.setattr(ship_mod, "ship", interrupted)
    evit = shared / "data/evit"
    argv = ["train", "--data", evit / "p1_s00", "--data", evit / "p1_s01"]
    argv += ["--holdout", evit / "p1_s02", "--out", tmp_path / "run", "--max-steps", "1"]
    rc, _, err = cli(*argv, "--export")
    assert rc == 130
    assert "gate: exporting, then the parent and the new model through the fast path on 1 " in err
    assert err.strip().splitlines()[-1] == (
        "gazeloop train: interrupted while exporting, judging or registering: the new "
        "model is not served; the same command with --resume --export goes on from where "
        "it stopped (exports and judges it again, or promotes what its gate passed)"
    )


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda st: st["config"]["fastpath"].update(not_a_setting=1), "fastpath.not_a_setting"),
        (lambda st: st["config"].update(val_fraction=5), "val_fraction"),
        (lambda st: st.update(step="x"), "step 'x' is not a count"),
        (lambda st: st.pop("best_step"), "best_step None is not a count"),
        (lambda st: st.update(best_metric="low"), "best_metric 'low' is not a number"),
        (lambda st: st.pop("best_metric"), "best_metric is missing"),
    ],
)
def test_a_saved_state_this_gazeloop_cannot_take_is_one_line_and_nothing_changes(
    shared, run_dir, tmp_path, edit, says
):
    """A saved config this version refuses (a field dropped or tightened since) fell back
    to the flags given: the run went on with another seed, lr and validation split and
    config.json said so. A bad count in the state was a traceback after the data loaded."""
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (path,) = run.rglob("trainer_state.json")
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))
    before = _files(run)
    rc, _, err = cli(*_argv(shared, run), "--max-steps", "3", "--resume", "--seed", "7")
    assert rc == 2 and "Traceback" not in err, err
    assert says in err.strip().splitlines()[-1], err
    assert _files(run) == before


@pytest.mark.slow
def test_a_sitting_added_inside_a_data_folder_is_refused_on_resume(shared, tmp_path):
    """Only the folders named were compared: a sitting added inside a --data folder since
    was trained on silently on resume (validation went from 32 to 48 targets)."""
    evit = shared / "data/evit"
    sess = tmp_path / "sess"
    sess.mkdir()
    for name in ("p1_s00", "p1_s01"):
        (sess / name).symlink_to(evit / name, target_is_directory=True)
    argv = ["train", "--data", sess, "--holdout", evit / "p1_s02", "--out", tmp_path / "run"]
    rc, _, err = cli(*argv, "--max-steps", "1")
    assert rc == 0, err
    (sess / "p1_s03").symlink_to(evit / "p1_s03", target_is_directory=True)
    rc, _, err = cli(*argv, "--max-steps", "2", "--resume")
    assert rc == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert "was trained on other data than its folders hold now (added " in line, line
    assert "p1_s03" in line, line
    (sess / "p1_s03").unlink()  # as it was: the resume goes on
    rc, _, err = cli(*argv, "--max-steps", "2", "--resume")
    assert rc == 0, err
