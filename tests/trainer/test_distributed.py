"""Two processes on CPU (torchrun, as `accelerate launch` runs them): the data is
preprocessed once, by the main process, while the other waits on the cache's ready file;
only the main process exports and registers; the run resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the trainer extra (torch) is not installed")


def _launch(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "gazeloop.tools.cli"]
    return subprocess.run(
        [*cmd, "-v", *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_two_processes_preprocess_once_register_once_and_resume(shared, tmp_path):
    env = dict(os.environ, GAZELOOP_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    out, reg = tmp_path / "run", tmp_path / "reg"
    data = ["--data", str(shared / "data/sessions/grid9"), "--mirrored", "--calib-min", "2"]
    data += ["--screen-px", "1920", "1080"]
    # --export needs a session for the gate, else it is refused before training.
    data += ["--holdout", str(shared / "data/evit/p1_s00")]
    first = _launch(
        ["train", *data, "--out", str(out), "--max-steps", "1", "--export"]
        + ["--registry", str(reg), "--json"],
        env,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    (summary,) = [json.loads(line) for line in first.stdout.splitlines() if line.startswith("{")]
    assert summary["steps"] == 1 and summary["export"]["version"] == 1  # one summary, one export
    assert summary["promoted"] is False and len(summary["gate"]["sessions"]) == 1
    assert sorted(p.name for p in (reg / "gazeloop-gazenet").iterdir()) == ["v0001"]
    (cached,) = (out / "cache").iterdir()  # one preprocessed unit; the ready file is gone
    assert cached.suffix == ".npz"
    assert "process 1: read the cache after" in first.stderr
    assert "units preprocessed here: 0" in first.stderr
    # A one-step run left a checkpoint to resume from; two processes continue it.
    second = _launch(
        ["train", *data, "--out", str(out), "--max-steps", "2", "--resume", "--json"], env
    )
    assert second.returncode == 0, second.stderr[-3000:]
    (resumed,) = [json.loads(line) for line in second.stdout.splitlines() if line.startswith("{")]
    assert resumed["resumed_from_step"] == 1 and resumed["steps"] == 2
    assert (out / "checkpoints" / "step-0000002").is_dir()
    assert sorted(p.name for p in (reg / "gazeloop-gazenet").iterdir()) == ["v0001"]
