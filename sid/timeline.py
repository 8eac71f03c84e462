"""Where a run's wall time goes: named phases appended as JSON lines to the file $SID_TIMELINE names (nothing when
it is unset), from every process of a run (the command, a Tune trial, each Ray Train worker: they inherit the
environment). benchmarks/ray_overhead.py reads them back with `read_timeline` to put a study beside the same
training in one process.

A line: {"phase": name, "start": unix seconds, "end": unix seconds, "pid": process id}; clocks are the machine's
wall clock (time.time), so lines from several processes of one machine line up.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TIMELINE_ENV = "SID_TIMELINE"  # the variable naming the timeline file


def record(phase: str, start: float, end: float) -> None:
    """Append one phase (unix seconds) to the timeline file, if there is one; a line is one write, so the lines of
    concurrent processes never interleave."""
    path = os.environ.get(TIMELINE_ENV)
    if not path:
        return
    line = json.dumps(dict(phase=phase, start=start, end=end, pid=os.getpid())) + "\n"
    try:
        with open(path, "a") as f:
            f.write(line)
    except OSError:  # a timeline is a diagnostic: a bad path must not stop a run
        pass


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as phase `name` (also when it raises)."""
    start = time.time()
    try:
        yield
    finally:
        record(name, start, time.time())


def read_timeline(path: str | os.PathLike) -> list[dict]:
    """The phases in a timeline file, in the order written ([] for a missing file)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
