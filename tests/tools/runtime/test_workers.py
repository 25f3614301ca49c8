"""`map_sessions` on spawned worker processes: results in order, a user's error raised
again as itself, and any other error of a worker raised in the main process rather than
waited on for ever. Each case runs in its own interpreter under a timeout, so a pool that
hangs fails the test instead of the whole run."""

from __future__ import annotations

import pickle
import subprocess
import sys

from gazeloop.calibration.mapping.families import NotEnoughTargets

SCRIPT = """
import sys
from gazeloop.fastpath.collect import LazyFastPath
from gazeloop.fastpath.pipeline import FastPathConfig
from gazeloop.tools.errors import UserError
from gazeloop.tools.runtime.workers import map_sessions
from tests.tools.runtime.test_workers import {fn}

cfg = FastPathConfig()
try:
    print(list(map_sessions({fn}, [1, 2, 3], cfg, LazyFastPath(cfg), 2, keep_going={keep})))
except UserError as e:
    print("UserError:", e)
except RuntimeError as e:
    print("RuntimeError:", str(e).splitlines()[0], "|", str(e).splitlines()[-1])
"""


class Picky(Exception):
    """An exception the pool cannot send back: unpickling calls __init__ with the message
    alone, which this one refuses."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"picky {a} {b}")


def square(item, fp):
    return item * item


def picky_on_two(item, fp):
    if item == 2:
        raise Picky(item, 0)
    return item


def user_error_on_three(item, fp):
    from gazeloop.tools.errors import UserError

    if item == 3:
        raise UserError("sitting 3: too few targets")
    return item


def _run(fn: str, keep_going: bool = False) -> str:
    script = SCRIPT.format(fn=fn, keep=keep_going)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_results_come_back_in_order():
    assert _run("square") == "[1, 4, 9]"


def test_a_worker_error_the_pool_cannot_unpickle_is_raised_not_waited_on():
    out = _run("picky_on_two")
    assert out.startswith("RuntimeError: picky_on_two failed in a worker process:"), out
    assert out.endswith("Picky: picky 2 0"), out


def test_a_users_error_in_a_worker_is_a_user_error():
    assert _run("user_error_on_three") == "UserError: sitting 3: too few targets"


def test_keep_going_yields_a_users_error_in_its_place_and_goes_on():
    out = _run("user_error_on_three", keep_going=True)
    assert out == "[1, 2, Skipped(reason='sitting 3: too few targets')]"
    # here, on one process, the same
    from gazeloop.fastpath.collect import LazyFastPath
    from gazeloop.fastpath.pipeline import FastPathConfig
    from gazeloop.tools.runtime.workers import Skipped, map_sessions

    cfg = FastPathConfig()
    got = list(
        map_sessions(user_error_on_three, [1, 3], cfg, LazyFastPath(cfg), 1, keep_going=True)
    )
    assert got == [1, Skipped("sitting 3: too few targets")]


def test_not_enough_targets_survives_a_trip_between_processes():
    e = pickle.loads(pickle.dumps(NotEnoughTargets("ridge", 3, 2, "fit")))
    assert isinstance(e, NotEnoughTargets) and (e.name, e.needed, e.given) == ("ridge", 3, 2)
    assert str(e) == "mapping 'ridge' needs at least 3 distinct targets to fit, got 2"
