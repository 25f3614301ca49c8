"""The gate's arithmetic and its sessions: the margin and its standard error weigh alike
(table), and a --data folder of sessions is counted as sessions when the gate's quarter is
held out, so a run the gate could never judge is refused before it trains."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the trainer extra (torch) is not installed")

from gazeloop.trainer.datasets import DataSource  # noqa: E402
from gazeloop.trainer.gate import SessionScore, choose_holdout, decide  # noqa: E402
from tests.cli import cli  # noqa: E402

EVIT = Path(__file__).resolve().parents[3] / "shared" / "data" / "evit"


def _score(name: str, parent: float, margins: list[float]) -> SessionScore:
    mean = sum(margins) / len(margins)
    return SessionScore(
        session=name,
        targets=len(margins),
        parent_px=parent,
        candidate_px=parent - mean,
        margin_px=round(mean, 2),
        target_margins_px=margins,
    )


A16 = _score("A", 100.0, [-2.0] * 16)  # a little worse on every one of 16 targets
B2 = _score("B", 100.0, [29.0, 31.0])  # much better on 2


@pytest.mark.parametrize(
    ("scores", "promoted", "margin", "se", "basis"),
    [
        # Was promoted: sessions averaged equally (+14 px) against the 18 targets' SE (2.44).
        ([A16, B2], False, 1.56, 2.44, "18 paired targets"),
        ([B2, A16], False, 1.56, 2.44, "18 paired targets"),  # order does not matter
        ([B2], True, 30.0, 1.0, "2 paired targets"),
        ([A16], False, -2.0, 0.0, "16 paired targets"),
        # Three sessions: each weighs the same in the margin and in its SE.
        ([A16, B2, _score("C", 100.0, [10.0] * 4)], False, 12.67, 9.33, "sessions"),
    ],
)
def test_the_margin_and_its_se_weigh_alike(scores, promoted, margin, se, basis):
    res = decide(scores, z=2.0, min_gain_pct=1.0)
    assert (res.promoted, res.margin_px, res.margin_se_px, res.se_basis) == (
        promoted,
        margin,
        se,
        basis,
    )


def _sessions(root: Path, n: int) -> Path:
    folder = root / "sessions"
    folder.mkdir()
    for i in range(n):
        (folder / f"s{i}").symlink_to(EVIT / f"p1_s0{i}", target_is_directory=True)
    return folder


@pytest.mark.parametrize(("n", "held"), [(1, []), (2, ["s1"]), (5, ["s4"]), (8, ["s6", "s7"])])
def test_a_folder_of_sessions_holds_out_its_last_quarter(shared, tmp_path, n, held):
    folder = _sessions(tmp_path, n)
    choice = choose_holdout([DataSource(path=folder)], [])
    assert [Path(h.path).name for h in choice.holdout] == held
    (train,) = choice.train
    assert train.exclude == [(folder / h).resolve() for h in held]


@pytest.mark.slow
def test_export_with_nothing_to_judge_is_refused_before_training(shared, tmp_path):
    """It trained, exported, then said "too few sessions… give at least two session
    folders" for a folder that held one."""
    out = tmp_path / "run"
    argv = ["train", "--data", _sessions(tmp_path, 1), "--out", out, "--max-steps", "1"]
    rc, _, err = cli(*argv, "--export")
    assert rc == 2 and "Traceback" not in err, err
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(
            "--export: the promotion gate has no session to judge on: name one with --holdout "
            "SESSION or give --data at least two sessions (or train without --export and promote "
            "by hand: gazeloop export --promote)"
        )
    )
    assert not (out / "checkpoints").exists() and not (out / "cache").exists()
