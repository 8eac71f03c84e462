"""Shared test setup: Ray environment for a 2-core machine (see docs/ray-notes.md section 4); no test leaves a figure
open."""

import os
import sys

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses and Ray workers
# Ray runs its workers at nice +15 by default: on a busy machine a test's trial then waits behind every other process
# and its timeout fires; the same priority as the test itself keeps the tests' timing what the machine gives them.
os.environ.setdefault("RAY_worker_niceness", "0")

import torch

torch.set_flush_denormal(True)
# One thread per process: with several processes on 2 cores (Ray workers, subprocesses), torch's spinning
# OpenMP threads made small convolutions ~100x slower here.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def close_figures():
    """Every test leaves no matplotlib figure open (the analysis tests draw many; pyplot is not imported for this)."""
    yield
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
