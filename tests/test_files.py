"""Run- and study-folder files (sid.files): names defined once, atomic writers that leave nothing half-written, and
files a lab can share: every file takes the mode the umask gives, as open() would make it."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest
import torch

import sid.files
from sid.config import preset
from sid.files import (
    WriteError,
    link_atomic,
    save_torch_atomic,
    write_bytes_atomic,
    write_file_atomic,
    write_text_atomic,
)
from sid.run import run_local
from sid.testing.fixtures import make_teacher

ROOT = Path(__file__).resolve().parents[1]

WRITERS = {
    "bytes": lambda path: write_bytes_atomic(path, b"\x00\x01"),
    "text": lambda path: write_text_atomic(path, "text"),
    "torch": lambda path: save_torch_atomic({"x": torch.ones(2)}, path),
    "stream": lambda path: write_file_atomic(path, lambda f: f.write(b"streamed")),
    "link": lambda path: link_atomic(write_bytes_atomic(path.with_name("source"), b"linked"), path),
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077], ids=["umask-022", "umask-077"])
def umask(request):
    """The process's umask set for one test (and restored): files get 0o666 & ~umask, folders 0o777 & ~umask."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_atomic_writer_gives_the_umasks_mode_and_leaves_no_temporary(tmp_path, umask, writer):
    path = tmp_path / "new" / "file"
    WRITERS[writer](path)
    assert mode(path) == 0o666 & ~umask and mode(path.parent) == 0o777 & ~umask
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_link_falls_back_to_a_copy_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch, umask):
    source = write_bytes_atomic(tmp_path / "source", b"snapshot")
    os.chmod(source, 0o444)  # a copy takes the umask's mode, not the source's

    def no_links(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # as on file systems without hard links
    link_atomic(source, tmp_path / "best")
    assert (tmp_path / "best").read_bytes() == b"snapshot" and mode(tmp_path / "best") == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "source"]


def test_a_failed_write_keeps_the_old_file_names_it_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "config.yaml", "old")

    def torn(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match=r"cannot write .*config.yaml: No space left on device"):
        write_file_atomic(path, torn)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_run_folders_files_and_folders_follow_the_umask(tmp_path, umask):
    teacher = make_teacher(tmp_path / "teacher.pt")
    config = preset("digits", teacher=teacher, batch=4, batch_per_device=4, duration_kimg=0.008, eval_every_kimg=0.004,
                    fid_images=16, phema="0.05", keep_snapshots="all")
    out = tmp_path / "run"
    run_local(config, out, device=torch.device("cpu"), resume=False, progress=False)
    files = [p for p in out.rglob("*") if p.is_file()]
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
    names = {p.relative_to(out).as_posix() for p in files}
    assert {"config.yaml", "evaluations.parquet", "checkpoint.pt", "best.pt", "samples-0000000.png"} <= names
    assert any(n.startswith("snapshots/") for n in names) and any(n.startswith("phema/") for n in names)
    assert {p.relative_to(out).as_posix(): oct(mode(p)) for p in files} == \
        {n: oct(0o666 & ~umask) for n in names}
    assert {p.relative_to(out).as_posix(): oct(mode(p)) for p in folders} == \
        {p.relative_to(out).as_posix(): oct(0o777 & ~umask) for p in folders}


def test_no_module_spells_a_file_name_that_sid_files_defines():
    """Every run- and study-folder file name with a suffix (and the snapshot pattern) is spelled in sid/files.py only:
    string constants elsewhere in sid/ (docstrings and comments aside) must import it."""
    names = {value for key, value in vars(sid.files).items()
             if key.isupper() and isinstance(value, str) and ("." in value or "*" in value)}
    assert {"checkpoint.pt", "best.pt", "evaluations.parquet", "generator-*.pt"} <= names
    spelled = []
    for path in sorted((ROOT / "sid").rglob("*.py")):
        if path.name == "files.py" and path.parent.name == "sid":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found = [name for name in names if name in node.value]
                spelled += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in found]
    assert spelled == []
