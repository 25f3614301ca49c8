"""The layer contract (issue 11, DESIGN.md "The data flow"): dependencies point one way.

`tools` may use the four packages; none of them knows `tools`. `fastpath` and `oracle` never
import each other; `calibration` imports neither (it owns the types both feed); the running
system (`tools.runtime`) parses no command line and imports no command; commands share only
`_args`. Every import names the one installed namespace, `gazeloop.*`: a bare `tools` or
`fastpath` import works in a checkout and breaks in a wheel. Checked on the source with
`ast`, lazy imports inside functions included, so a violation cannot hide in a function body.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.paths import ROOT

ROOMS = ("fastpath", "oracle", "calibration", "trainer", "tools")
BARE = set(ROOMS)

# room → rooms it must never import
FORBIDDEN = {
    "fastpath": {"oracle", "trainer", "tools"},
    "oracle": {"fastpath", "trainer", "tools"},
    "calibration": {"fastpath", "oracle", "trainer", "tools"},
    "trainer": {"oracle", "tools"},
    "tools": set(),
}


def _modules() -> dict[str, Path]:
    mods = {}
    for room in ROOMS:
        for py in (ROOT / room).rglob("*.py"):
            rel = py.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods["gazeloop." + ".".join(parts)] = py
    for py in (ROOT / "gazeloop").glob("*.py"):
        name = "gazeloop" if py.stem == "__init__" else f"gazeloop.{py.stem}"
        mods[name] = py
    return mods


MODULES = _modules()


def _imports(py: Path, *, top_level_only: bool = False) -> list[str]:
    """Absolute module names imported by a file (`from a import b` gives `a.b` when that is a
    module, else `a`)."""
    tree = ast.parse(py.read_text(), filename=str(py))
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.append(full if full in MODULES else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            out.append(f"relative import in {py}")
    return out


def _room(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "gazeloop" and parts[1] in ROOMS else None


def test_every_room_is_found():
    assert {_room(m) for m in MODULES} >= set(ROOMS)
    assert len(MODULES) > 80


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_imports_follow_the_layers(mod):
    py, room = MODULES[mod], _room(mod)
    problems = []
    for imp in _imports(py):
        head = imp.split(".")[0]
        if imp.startswith("relative import"):
            problems.append(imp)
        elif head in BARE:
            problems.append(f"bare '{imp}': import it as gazeloop.{imp}")
        elif room and _room(imp) in FORBIDDEN[room]:
            problems.append(f"{room} must not import {imp}")
        elif mod.startswith("gazeloop.tools.runtime") and (
            imp == "argparse" or imp.startswith(("gazeloop.tools.commands", "gazeloop.tools.ui"))
        ):
            problems.append(f"the running system imports {imp}")
        elif mod.startswith("gazeloop.tools.ui") and imp.startswith("gazeloop.tools.commands"):
            problems.append(f"ui imports the command {imp}")
        elif (
            mod.startswith("gazeloop.tools.commands.")
            and imp.startswith("gazeloop.tools.commands.")
            and imp != "gazeloop.tools.commands._args"
        ):
            problems.append(f"a command imports another command, {imp}")
    assert not problems, f"{py.relative_to(ROOT)}: " + "; ".join(problems)


def _package(mod: str) -> str:
    """The package a module belongs to: itself for a package, else its parent."""
    py = MODULES[mod]
    return mod if py.name == "__init__.py" else mod.rsplit(".", 1)[0]


def test_no_package_cycles():
    """Packages (gazeloop.calibration.store, gazeloop.tools.runtime, ...) form a DAG, counting
    every import, lazy ones included: a cycle means two rooms that cannot be understood (or
    installed, or tested) apart."""
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, py in MODULES.items():
        if not _room(mod):
            continue
        src = _package(mod)
        for imp in _imports(py):
            if imp in MODULES and _room(imp):
                dst = _package(imp)
                if dst != src and not src.startswith(dst + ".") and not dst.startswith(src + "."):
                    graph[src].add(dst)
    cycle = _find_cycle(graph)
    assert cycle is None, "package cycle: " + " → ".join(cycle)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_pickle_anywhere():
    """Profiles, label stores and checkpoints must be safe to load from others."""
    banned = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    for mod, py in MODULES.items():
        used = {imp.split(".")[0] for imp in _imports(py)} & banned
        text = py.read_text()
        assert not used, f"{mod} imports {used}"
        for call in ("torch.save(", "torch.load(", "weights_only=False"):
            assert call not in text, f"{mod} uses {call}"


def test_the_contract_catches_a_violation(tmp_path):
    """The checker itself: a bare import and a forbidden room are reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("import tools.cli\nfrom gazeloop.oracle import worker\n")
    imps = _imports(bad)
    assert "tools.cli" in imps and any(i.startswith("gazeloop.oracle") for i in imps)
    assert _room("gazeloop.oracle.worker") in FORBIDDEN["fastpath"]
    assert _find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
