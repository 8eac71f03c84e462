"""Helpers shared by tests/ and tests/faults/: the processes of a killed command, and loading a study script."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def session_processes(session: int) -> list[int]:
    """Live processes of a session: a command started with start_new_session and everything it started (Ray too)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, session
            found.append(int(stat.parent.name))
    return found


def load_script(name: str, monkeypatch):
    """studies/<name>.py as a module (its `main(argv)` can then run in-process)."""
    monkeypatch.syspath_prepend(str(ROOT / "studies"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "studies" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
