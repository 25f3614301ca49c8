"""Seeds: every random draw of a training step is a function of (seed, step, process).

That is what makes a resumed run continue exactly where it stopped: nothing depends on how
many draws came before, only on which step this is and which process draws.
"""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from (seed, step, process...): every draw of a step is a function of
    these alone, which is what makes a resumed run identical to an uninterrupted one."""
    return (
        int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0]) >> 1
    )


def seed_everything(seed: int) -> None:
    """python `random`, numpy's global generator and torch (CPU and CUDA)."""
    from accelerate.utils import set_seed

    set_seed(seed)
