"""A full disk or a file size limit while safetensors writes a checkpoint: safetensors
raises its own SafetensorError (not an OSError), which reached the user as a traceback.
Now it is gazeloop's WriteError naming the file meant, and nothing half-written is left."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import SafetensorError

import gazeloop.trainer.model as tm
from gazeloop.calibration.store.atomic import WriteError
from gazeloop.trainer.checkpoint import save_training_checkpoint

CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    import torch
    from gazeloop.trainer.checkpoint import save_optimizer
    from gazeloop.trainer.model import save_checkpoint

    m = torch.nn.Linear(100, 100)
    m.spec = {}
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(2, 100)).sum().backward()
    opt.step()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    out = Path(sys.argv[1])
    try:
        save_checkpoint(m, out / "model.safetensors") if sys.argv[2] == "model" else (
            save_optimizer(opt, m, out))
    except OSError as e:
        print(type(e).__name__, e)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(("what", "name"), [("model", "model"), ("optimizer", "optimizer")])
def test_a_file_size_limit_is_a_write_error_naming_the_file(tmp_path, what, name):
    got = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), what],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in got.stderr, got.stderr
    assert got.stdout.strip() == f"WriteError cannot write {tmp_path}/{name}.safetensors: " + (
        "File too large"
    )
    assert list(tmp_path.iterdir()) == []  # no temp file left beside it


def test_a_full_disk_mid_checkpoint_keeps_the_last_one(tmp_path, monkeypatch):
    m = torch.nn.Linear(3, 2)
    m.spec = {}
    opt = torch.optim.AdamW(m.parameters())
    state = {"step": 1}
    first = save_training_checkpoint(tmp_path, m, opt, state, keep=3)
    latest = (tmp_path / "checkpoints" / "latest.json").read_bytes()

    def full(*_a, **_k):
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(tm, "save_file", full)
    with pytest.raises(WriteError) as e:
        save_training_checkpoint(tmp_path, m, opt, {"step": 2}, keep=3)
    assert str(e.value).startswith("cannot write ") and "No space left on device" in str(e.value)
    assert e.value.filename == str(tmp_path / "checkpoints" / "step-0000002" / "model.safetensors")
    assert e.value.errno == 28
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest.json",
        first.name,
    ]
    assert (tmp_path / "checkpoints" / "latest.json").read_bytes() == latest
