"""A laptop that installed gazeloop without an extra (no torch, no aiomqtt): commands that
need one say which to install, in one line; the registry is read without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.paths import ROOT

# The packages a plain `pip install gazeloop` leaves out, blocked as if never installed.
_WITHOUT = """
import sys
for m in ("torch", "accelerate", "safetensors", "onnxscript", "aiomqtt", "transformers"):
    sys.modules[m] = None
from gazeloop.tools.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _gazeloop(tmp_path, *argv) -> subprocess.CompletedProcess:
    env = {"GAZELOOP_HOME": str(tmp_path / "home"), "GAZELOOP_OFFLINE": "1", "PATH": "/usr/bin"}
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT, *map(str, argv)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["collect", "--mqtt", "mqtt://127.0.0.1:9", "--out", "OUT"], "mqtt"),
        (["export", "OUT/model.safetensors"], "trainer"),
    ],
)
def test_a_command_needing_a_missing_extra_names_it_in_one_line(tmp_path, argv, extra):
    r = _gazeloop(tmp_path, *[str(a).replace("OUT", str(tmp_path)) for a in argv])
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and f"pip install 'gazeloop[{extra}]'" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_model_registry_is_listed_without_torch(tmp_path):
    """`models list` ended in a torch traceback; so did `run` and `track --profile` once a
    registry folder existed (the README tells a Mac user to copy a version folder in)."""
    (tmp_path / "home" / "users" / "default" / "models").mkdir(parents=True)
    r = _gazeloop(tmp_path, "models", "list")
    assert r.returncode == 0 and "no registered models" in r.stdout, r.stderr
