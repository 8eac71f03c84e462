"""Killing a process of a running command at a chosen point, for the tests of what a run survives (a rank of a
torchrun group, a worker of a Ray Train group). A library module: it imports only the library, and nothing in the
library imports it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from sid.files import CHECKPOINT, EVALUATIONS
from sid.results import read_evaluations


def kill_during_run(command: list[str], out: Path, victim: Callable[[subprocess.Popen], int | None], *, cwd: Path,
                    rows: int, wait_s: float, run_s: float,
                    checkpoint: bool = False,  # also wait for the run folder's checkpoint.pt before the kill
                    ) -> tuple[int | None, str, int]:
    """Start `command`, a run that writes the run folder `out`; once it has `rows` evaluation rows (within `wait_s`),
    SIGKILL the process `victim(process)` names (None: not found yet, ask again), then let the command finish (within
    `run_s`). Returns (the killed pid, None if the run ended or the time ran out first; its output; its exit code)."""
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        killed, deadline = None, time.time() + wait_s
        while killed is None and process.poll() is None and time.time() < deadline:
            path = out / EVALUATIONS
            ready = path.exists() and len(read_evaluations(path)) >= rows
            if ready and (not checkpoint or (out / CHECKPOINT).exists()):
                killed = victim(process)
                if killed is not None:
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        log, _ = process.communicate(timeout=run_s)
    finally:
        process.kill()
    return killed, log, process.returncode
