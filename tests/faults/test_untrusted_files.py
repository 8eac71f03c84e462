"""Untrusted files: no teacher, checkpoint or snapshot runs code from the file; every torch.load in the code is
weights_only=True (a source audit, so that a regression fails here); downloaded assets are checked against the
sha256 recorded at download time before use."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest
import torch
from _util import ROOT, TINY, flags, make_teacher, run_command

from sid.assets import cache_path
from sid.run import main as distill_main
from sid.teachers import load_network_file, load_teacher


class RunsCommand:
    """Unpickling this runs a shell command (the classic pickle exploit): here one that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code-was-executed"


@pytest.fixture
def teacher(tmp_path) -> str:
    return make_teacher(tmp_path / "teacher.pt")


@pytest.mark.timeout(120)
def test_edm_pickle_teacher_that_would_run_a_command_exits_2_naming_the_refused_global(tmp_path, marker):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"ema": RunsCommand(marker)}))
    done = run_command("-m", "sid.distill", "--teacher", str(evil), "--out", str(tmp_path / "run"), *flags(**TINY))
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and str(evil) in error and "'posix.system'" in error and "refusing" in error
    assert "Traceback" not in done.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["teacher", "resume"])
def test_torch_file_that_would_run_a_command_is_refused(tmp_path, monkeypatch, capsys, marker, teacher, where):
    """A .pt teacher and a run's checkpoint.pt (also what a Ray checkpoint's state.pt is read with) hold plain data;
    weights_only=True refuses the pickled os.system before anything runs."""
    monkeypatch.chdir(tmp_path)
    evil = Path("evil.pt" if where == "teacher" else "run/checkpoint.pt")
    evil.parent.mkdir(exist_ok=True)
    torch.save({"init_kwargs": RunsCommand(marker), "config": RunsCommand(marker)}, evil)
    argv = ["--teacher", str(evil) if where == "teacher" else teacher, "--out", "run", *flags(**TINY)]
    with pytest.raises(SystemExit) as exited:
        distill_main([*argv, "--resume"] if where == "resume" else argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and str(evil) in error and "GLOBAL posix.system" in error
    assert not marker.exists()
    with pytest.raises(ValueError, match="GLOBAL posix.system"):
        load_network_file(evil)  # how a run's generator.pt is read, too
    assert not marker.exists()
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    assert written == {"teacher.pt", evil.as_posix()} | ({"run"} if where == "resume" else set())  # nothing new


# ---------------------------------------------------------------------------------------------- source audit
SOURCES = ["sid", "studies", "analysis", "benchmarks"]
# The only places allowed to go beyond weights_only=True, and why.
ALLOWED = {
    ("sid/safe_pickle.py", "pickle._Unpickler"): "the restricted unpickler of EDM/SiD snapshots (allow-list)",
    ("sid/metrics.py", "torch.jit.load"): "NVIDIA's Inception-v3 exists only as TorchScript (fetched by sid.assets)",
}


def dotted(node: ast.AST) -> str:
    """'torch.jit.load' for the expression torch.jit.load; '' for anything that is not a dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else ""


def audit(path: Path, relative: str) -> tuple[list[str], int]:
    """Violations in one file, and how many torch.load calls it checked."""
    problems, checked = [], 0
    for node in ast.walk(ast.parse(path.read_text(), filename=relative)):
        where = f"{relative}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle", "dill", "cloudpickle", "joblib"):
            names = {a.name for a in node.names} & {"load", "loads", "Unpickler"}
            if names:
                problems.append(f"{where}: from {node.module} import {', '.join(sorted(names))} (call it dotted)")
        if isinstance(node, ast.ClassDef):
            for base in map(dotted, node.bases):
                if base in ("pickle.Unpickler", "pickle._Unpickler") and (relative, base) not in ALLOWED:
                    problems.append(f"{where}: a pickle.Unpickler subclass outside the restricted loader")
        if not isinstance(node, ast.Call):
            continue
        name, keywords = dotted(node.func), {k.arg: k.value for k in node.keywords}
        literal = lambda key: isinstance(keywords.get(key), ast.Constant) and keywords[key].value  # noqa: E731
        if name == "torch.load":
            checked += 1
            if literal("weights_only") is not True:
                problems.append(f"{where}: torch.load without weights_only=True")
        elif name in ("pickle.load", "pickle.loads", "dill.load", "dill.loads", "joblib.load", "yaml.load",
                      "yaml.unsafe_load", "eval", "exec", "torch.serialization.add_safe_globals",
                      "torch.serialization.safe_globals"):
            problems.append(f"{where}: {name}")
        elif name in ("np.load", "numpy.load") and "allow_pickle" in keywords and literal("allow_pickle") is not False:
            problems.append(f"{where}: {name} with allow_pickle")
        elif name == "torch.jit.load" and (relative, name) not in ALLOWED:
            problems.append(f"{where}: torch.jit.load runs the TorchScript in the file")
    return problems, checked


@pytest.mark.timeout(30)
def test_every_load_in_the_code_is_weights_only_or_the_restricted_unpickler():
    problems, checked = [], 0
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found, n = audit(path, path.relative_to(ROOT).as_posix())
            problems += found
            checked += n
    assert not problems, "\n".join(problems)
    assert checked >= 2  # teachers.load_plain, digits: the audit saw them


@pytest.mark.parametrize("source, problem", [
    ("torch.load(p)", "without weights_only=True"),
    ("torch.load(p, weights_only=False)", "without weights_only=True"),
    ("torch.load(p, weights_only=flag)", "without weights_only=True"),
    ("from torch import load", "call it dotted"),
    ("pickle.loads(b)", "pickle.loads"),
    ("np.load(p, allow_pickle=True)", "allow_pickle"),
    ("torch.jit.load(p)", "TorchScript"),
    ("class U(pickle.Unpickler): pass", "restricted loader"),
    ("class U(pickle._Unpickler): pass", "restricted loader"),
    ("torch.serialization.add_safe_globals([Evil])", "add_safe_globals"),
])
def test_the_audit_catches_each_unsafe_load(tmp_path, source, problem):
    path = tmp_path / "x.py"
    path.write_text(source + "\n")
    found, _ = audit(path, "sid/x.py")
    assert len(found) == 1 and problem in found[0], found


def test_the_audit_passes_a_weights_only_load(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("torch.load(p, map_location='cpu', weights_only=True)\n")
    assert audit(path, "sid/x.py") == ([], 1)


# ---------------------------------------------------------------------------------------------- downloaded assets
def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.timeout(60)
def test_tampered_cached_teacher_is_never_used(tmp_path, monkeypatch, capsys, marker):
    monkeypatch.setenv("SID_CACHE", str(tmp_path / "cache"))
    url = Path(make_teacher(tmp_path / "teacher.pt")).as_uri()
    genuine = load_teacher(url)
    cached = cache_path(url)
    assert cached.read_bytes() == (tmp_path / "teacher.pt").read_bytes()
    torch.save({"init_kwargs": RunsCommand(marker)}, cached)  # someone swaps the cached copy
    again = load_teacher(url)
    assert "is corrupt" in capsys.readouterr().err
    assert not marker.exists() and same_weights(again, genuine)
    assert cached.read_bytes() == (tmp_path / "teacher.pt").read_bytes()


@pytest.mark.timeout(60)
def test_teacher_whose_source_changed_since_its_recorded_sha256_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SID_CACHE", str(tmp_path / "cache"))
    url = Path(make_teacher(tmp_path / "teacher.pt")).as_uri()
    source = tmp_path / "teacher.pt"
    load_teacher(url)
    torch.manual_seed(1)
    swapped = load_network_file(source)
    for p in swapped.parameters():
        p.data.normal_()
    # the URL now serves another network
    torch.save(dict(init_kwargs=swapped.init_kwargs, state_dict=swapped.state_dict()), source)
    cache_path(url).write_bytes(b"tampered")  # and the cached copy no longer matches its recorded sha256
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_teacher(url)
