"""`gazeloop ARGV` run in the test's own process, for the command tests."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout


def cli(*argv) -> tuple[int, str, str]:
    """`gazeloop ARGV` → (exit code, stdout, stderr); usable in module-scoped fixtures, where
    capsys is not. An argparse refusal (SystemExit) is its exit code."""
    from gazeloop.tools.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as e:  # argparse rejects a flag's value before the command runs
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def eval_json(*argv) -> dict:
    """`gazeloop eval ARGV --json`, which must succeed; stdout is the report and nothing else."""
    rc, out, err = cli("eval", *argv, "--json")
    assert rc == 0, err
    return json.loads(out)
