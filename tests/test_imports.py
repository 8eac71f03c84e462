"""The layering rules of the package, read from the source: no import cycles among sid/ modules (imports inside
functions count too), no core module imports a command-line module or Ray, and analysis/ needs neither Ray nor torch.

The same check by hand: `python tests/test_imports.py` prints the graph's size and any cycle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = {"sid.run", "sid.commands"}     # command-line modules: nothing in the package imports them
CORE = {"sid.config", "sid.networks", "sid.checkpoints", "sid.losses", "sid.distill", "sid.metrics", "sid.loop",
        "sid.run_state", "sid.results", "sid.digits", "sid.teachers", "sid.assets", "sid.augment", "sid.fast"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path, known: set[str]) -> set[str]:
    """Modules of `known` that the file imports anywhere (top level or in a function), resolved like Python does."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:  # 'sid.networks.precond.EDMPrecond' -> 'sid.networks.precond'
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(folder: str) -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / folder).rglob("*.py")}
    return {name: imports(path, set(files)) for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_among_sid_modules():
    edges = graph("sid")
    assert len(edges) > 20 and sum(map(len, edges.values())) > 40  # the reader found the package's imports
    assert cycles(edges) == []


@pytest.mark.parametrize("edges, expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_cycle_finder_finds_cycles(edges, expected):
    assert cycles(edges) == expected


def test_no_core_module_imports_a_cli_module_or_ray():
    for name, targets in graph("sid").items():
        if name not in CLI:
            assert not targets & CLI, f"{name} imports the command-line module(s) {targets & CLI}"
    for path in (ROOT / "sid").rglob("*.py"):
        name = module_name(path)
        if name in CORE or name.startswith("sid.networks"):  # Ray is a layer on top: the core never needs it
            top = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
            modules = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
            modules |= {n.module or "" for n in top if isinstance(n, ast.ImportFrom)}
            assert not {m.split(".")[0] for m in modules} & {"ray"}, f"{name} imports Ray at module level"


def test_analysis_needs_neither_ray_nor_torch():
    for path in (ROOT / "analysis").glob("*.py"):
        text = path.read_text()
        assert "import ray" not in text and "import torch" not in text and "from ray" not in text, path.name


if __name__ == "__main__":
    edges = graph("sid")
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} import edges; cycles: {cycles(edges) or 'none'}")
    sys.exit(1 if cycles(edges) else 0)
