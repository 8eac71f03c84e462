"""The layering rules of the package (docs/architecture.md), read from the source as folder rules: no import cycles
among sid/ modules (imports inside functions count too, `if TYPE_CHECKING:` imports of annotations do not); the
library (sid/*.py, sid/networks/) and the cluster wing (sid/cluster/) never import the commands (sid/commands/); the
library never imports the cluster wing, nor Ray at module level; studies/ and analysis/ import no Ray, and analysis/ no
torch; only tests and benchmarks import the fixtures of sid/testing/, and nothing imports a test module.

The same check by hand: `python tests/test_imports.py` prints the graph's size and any cycle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the tree but those under `if TYPE_CHECKING:` (imports for annotations only, never run)."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """Modules of `known` that the file imports when it runs (top level or in a function; not the `if TYPE_CHECKING:`
    imports of annotations), resolved like Python does."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
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


def top_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions or `if TYPE_CHECKING:`)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module or "")
    return found


def wing(name: str) -> str:
    """'commands', 'cluster' or 'library' (sid/*.py and sid/networks/), for a module of the sid package."""
    parts = name.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ("commands", "cluster") else "library"


# The rules of docs/architecture.md, stated as folder rules: no list of module names to keep up to date.
def test_the_library_and_the_cluster_wing_never_import_a_command():
    edges = graph("sid")
    assert {wing(n) for n in edges} == {"library", "commands", "cluster"}  # the three places exist
    for name, targets in edges.items():
        if wing(name) != "commands" and name != "sid.__main__":
            bad = sorted(t for t in targets if wing(t) == "commands")
            assert not bad, f"{name} ({wing(name)}) imports the command module(s) {bad}"


def test_the_library_never_imports_the_cluster_wing():
    for name, targets in graph("sid").items():
        if wing(name) == "library":
            bad = sorted(t for t in targets if wing(t) == "cluster")
            assert not bad, f"{name} (library) imports the cluster wing: {bad}"


def test_the_library_imports_no_ray_at_module_level():
    for path in (ROOT / "sid").rglob("*.py"):
        if wing(module_name(path)) == "library":
            roots = {m.split(".")[0] for m in top_level_imports(path)}
            assert "ray" not in roots, f"{module_name(path)} imports Ray at module level"


@pytest.mark.parametrize("folder", ["studies", "analysis"])
def test_scripts_import_no_ray(folder):
    for path in (ROOT / folder).glob("*.py"):
        roots = {m.split(".")[0] for m in top_level_imports(path)} | function_level_roots(path)
        assert "ray" not in roots, f"{folder}/{path.name} imports Ray"


def test_analysis_needs_no_torch_and_no_sid_wing():
    for path in (ROOT / "analysis").glob("*.py"):
        modules = top_level_imports(path) | function_level_modules(path)
        assert "torch" not in {m.split(".")[0] for m in modules}, f"analysis/{path.name} imports torch"
        wings = {m for m in modules if m.startswith(("sid.commands", "sid.cluster"))}
        assert not wings, f"analysis/{path.name} imports {sorted(wings)}: it reads files, it runs nothing"


def function_level_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module or "")
    return found


def function_level_roots(path: Path) -> set[str]:
    return {m.split(".")[0] for m in function_level_modules(path)}


def test_only_tests_and_benchmarks_import_the_testing_fixtures():
    """sid/testing/ (tiny networks and configs, crafted pickles, results trees) serves tests and benchmarks only."""
    for name, targets in graph("sid").items():
        if not name.startswith("sid.testing"):
            bad = sorted(t for t in targets if t.startswith("sid.testing"))
            assert not bad, f"{name} imports the test fixtures {bad}"


@pytest.mark.parametrize("folder", ["tests", "benchmarks"])
def test_no_test_module_is_used_as_a_library_and_no_search_path_is_edited(folder):
    """Shared helpers come from sid/testing/ and benchmarks are imported as the package they are, so no file imports
    a test module (test_*.py, conftest.py) or puts a folder on sys.path."""
    for path in (ROOT / folder).rglob("*.py"):
        tests = sorted(m for m in function_level_modules(path) if m.split(".")[-1].startswith(("test_", "conftest")))
        assert not tests, f"{path.relative_to(ROOT)} imports the test module(s) {tests}"
        edits = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)
                 and n.attr in ("insert", "append") and ast.unparse(n.value) == "sys.path"]
        assert not edits, f"{path.relative_to(ROOT)} edits sys.path"


def test_package_init_files_are_empty_except_the_dispatcher():
    """No re-exports and no shims: each name has one path (sid/commands/__init__.py is the `sid` dispatcher)."""
    for path in (ROOT / "sid").rglob("__init__.py"):
        if module_name(path) in ("sid.commands",):
            continue
        code = [n for n in ast.parse(path.read_text()).body
                if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]  # docstrings are fine
        names = [t.id for n in code if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]
        assert not [n for n in code if not (isinstance(n, ast.Assign) and names == ["__version__"])], \
            f"{path.relative_to(ROOT)} holds code: imports or definitions belong in a module"


if __name__ == "__main__":
    edges = graph("sid")
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} import edges; cycles: {cycles(edges) or 'none'}")
    sys.exit(1 if cycles(edges) else 0)
