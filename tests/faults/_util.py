"""Helpers of the fault-injection tests: real subprocesses of the commands, and finding and killing only the processes
these tests started. The tiny teacher and configs are sid.testing's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from sid.results import read_evaluations
from sid.testing.fixtures import session_processes

ROOT = Path(__file__).resolve().parents[2]
def rows(*paths: Path) -> pd.DataFrame:
    """Evaluation rows under `paths`, or an empty frame while nothing readable is there yet."""
    paths = tuple(p for p in paths if p.exists())
    if not paths:
        return read_evaluations()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_evaluations(*paths)


def start(command: list[str], log: Path, **env: str) -> subprocess.Popen:
    """A command in its own session (so that it and everything it starts can be found and killed), output to a file
    (a pipe nobody reads while the test waits could fill up and block it)."""
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **env})


def wait_until(condition: Callable[[], bool], process: subprocess.Popen | None, timeout: float, log: Path) -> None:
    """Poll `condition` until it holds; fail if the process ended first or the time ran out."""
    deadline = time.time() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the command ended (code {process.returncode}) before the fault could be injected:\n"
                                 f"{log.read_text()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"no fault point within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def kill_session(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL a command started by `start` and every process of its session (power-cut style); wait until gone."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.time() + timeout
    while session_processes(process.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not session_processes(process.pid), "processes of the killed command survived it"


def descendants(root: int) -> dict[int, str]:
    """{pid: command line} of every live process below `root` (e.g. the Ray workers of a local Ray)."""
    parent, command = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z":
            pid = int(stat.parent.name)
            parent[pid], command[pid] = int(fields[1]), cmdline.strip()
    below = {}
    for pid in parent:
        p = pid
        while p in parent and p != root:
            p = parent[p]
        if p == root and pid != root:
            below[pid] = command[pid]
    return below


def run_command(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
