"""Where the shared sample data is: the recordings `gazeloop demo` and the loop statistics
run on, kept beside the checkout rather than in it."""

from __future__ import annotations

import os
from pathlib import Path


def default_shared() -> Path:
    """The sample data: `$GAZELOOP_SHARED`, else `../shared` beside the working folder or
    beside the source checkout (the layout of development machines and CI)."""
    env = os.environ.get("GAZELOOP_SHARED")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2]  # tools/runtime/sample_data.py → the checkout
    for root in (Path.cwd(), checkout):
        if (root.parent / "shared").is_dir():
            return root.parent / "shared"
    return Path.cwd().parent / "shared"
