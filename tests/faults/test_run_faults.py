"""Faults during one run (`python -m sid distill`, a real subprocess on the digits preset at tiny budgets): killed
and resumed, a generator that goes NaN, a results disk that fills up or turns read-only mid-run."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from _util import kill_session, rows, run_command, start, wait_until

from sid.files import CHECKPOINT, EVALUATIONS
from sid.run import run_local
from sid.testing.fixtures import TINY, flags, make_teacher, tiny_config

CPU = torch.device("cpu")
LONGER = dict(TINY, duration_kimg=0.128)  # 16 iterations, 9 evaluations: room for a fault mid-run
# Columns that differ between two runs of the same config by design (clock, folder name).
CLOCK = ["trial_id", "wall_s", "device_s", "images_per_s", "written_at"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def command(teacher: str, out, **budget) -> list[str]:
    return [sys.executable, "-m", "sid", "distill", "--teacher", teacher, "--out", str(out), "--no-progress",
            *flags(**{**LONGER, **budget})]


def assert_same_state(a: dict, b: dict) -> None:
    assert a["iteration"] == b["iteration"]
    for net in ("generator", "fake_score", "generator_ema"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), (net, key)
    for opt in ("fake_opt", "gen_opt"):
        for index, state in a[opt]["state"].items():
            for key, value in state.items():
                assert torch.equal(value, b[opt]["state"][index][key]), (opt, index, key)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_killed_run_resumes_to_the_rows_and_checkpoint_of_an_uninterrupted_run(tmp_path, teacher):
    reference = tmp_path / "reference"
    run_local(tiny_config(teacher, **LONGER), reference, device=CPU, resume=False, progress=False)
    out, log = tmp_path / "run", tmp_path / "killed.log"
    process = start(command(teacher, out), log)
    try:
        wait_until(lambda: len(rows(out / EVALUATIONS)) >= 3, process, 150, log)
        kill_session(process)  # SIGKILL: no handler, no flush, like a power cut of the process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    before = rows(out / EVALUATIONS)  # what was written before the kill is readable
    assert 3 <= len(before) < 9, before["kimg"].tolist()

    resumed = subprocess.run([*command(teacher, out), "--resume"], capture_output=True, text=True, timeout=150)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    after, expected = rows(out / EVALUATIONS), rows(reference / EVALUATIONS)
    assert not after.duplicated(["trial_id", "kimg"]).any()
    # every row as the uninterrupted run wrote it, bit for bit on CPU (the clock columns aside)
    assert after.drop(columns=CLOCK).equals(expected.drop(columns=CLOCK))
    # the rows up to the kill were kept, not written again: the run continued from its checkpoint, not from scratch
    kept = after.set_index("kimg").loc[before["kimg"].iloc[:-1], "written_at"]
    assert kept.tolist() == before["written_at"].iloc[:-1].tolist()
    assert_same_state(torch.load(out / CHECKPOINT, weights_only=True),
                      torch.load(reference / CHECKPOINT, weights_only=True))
    assert not list(out.glob(".*.tmp"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("lr, glr, sign", [
    (1e6, 1e6, "losses"),  # the fake score blows up first: the NaN guard drops every sample, the generator stalls
    (1e-4, 1e6, "fid"),    # the generator blows up: G_ema's images are NaN
])
def test_nan_run_is_marked_diverged_and_keeps_its_last_good_checkpoint(tmp_path, teacher, lr, glr, sign):
    config = tiny_config(teacher, lr=lr, glr=glr, duration_kimg=0.048)  # evaluations at 0, 2, 4, 6 iterations
    run_local(config, tmp_path / "run", device=CPU, resume=False, progress=False)
    found = rows(tmp_path / "run" / EVALUATIONS)
    ok, diverged = found[found["status"] == "ok"], found[found["status"] == "diverged"]
    assert len(found) == 4 and not ok.empty and not diverged.empty
    assert ok["kimg"].max() < diverged["kimg"].min()  # good, then diverged for good
    if sign == "fid":
        assert diverged["fid"].isna().all()  # not a finite distance to black stand-ins for NaN pixels
    else:
        assert diverged[["loss_fake_score", "loss_generator"]].isna().all().all()
        assert (diverged["nan_samples"] == 2 * 2 * config.batch).all()  # both phases of 2 iterations, all dropped
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert state["iteration"] == ok["iteration"].max()  # the last good state, not the diverged one
    for net in ("generator", "fake_score", "generator_ema"):
        assert all(t.isfinite().all() for t in state[net].values()), net
    snapshots = sorted((tmp_path / "run" / "snapshots").glob("generator-*.pt"))
    assert torch.load(snapshots[-1], weights_only=True)["kimg"] == pytest.approx(ok["kimg"].max())  # no diverged one


# ---------------------------------------------------------------------------------------------- results disk
@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB file system (tmpfs) for the run folder; skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk) -> bool:
    """Write until the file system has no byte left."""
    with open(disk / "filler", "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 10, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return True


def remount(disk, mode: str) -> bool:
    """Remount read-only / read-write; False while a file open for writing makes it busy."""
    return subprocess.run(["mount", "-o", f"remount,{mode}", str(disk)], capture_output=True).returncode == 0


def while_paused(process: subprocess.Popen, action) -> None:
    """Run `action` with the command stopped (SIGSTOP), so that the fault lands mid-run however fast the run is;
    retried while the action reports failure (a remount is busy while the run has a file open)."""
    for _ in range(500):
        os.killpg(process.pid, signal.SIGSTOP)
        try:
            if action():
                return
        finally:
            os.killpg(process.pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("the fault could not be injected")


FAULTS = {  # how the disk fails mid-run, the cause the error names, and how an operator repairs it
    "full": (fill, "No space left on device", lambda disk: (disk / "filler").unlink()),
    "read-only": (lambda disk: remount(disk, "ro"), "Read-only file system", lambda disk: remount(disk, "rw")),
}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", FAULTS)
def test_results_disk_failing_mid_run_is_one_clear_error_and_the_rows_stay_readable(tmp_path, teacher, small_disk,
                                                                                    fault):
    break_disk, cause, repair = FAULTS[fault]
    out, log = small_disk / "run", tmp_path / "run.log"
    process = start(command(teacher, out), log)
    try:
        wait_until(lambda: len(rows(out / EVALUATIONS)) >= 2, process, 150, log)
        while_paused(process, lambda: break_disk(small_disk))
        before = rows(out / EVALUATIONS)
        process.wait(timeout=150)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text()
    assert process.returncode == 1, text[-3000:]
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text[-3000:]
    error = errors[0]
    assert error.startswith(f"error: cannot write {out}/") and error.endswith(cause), error
    after = rows(out / EVALUATIONS)
    assert after["kimg"].tolist() == before["kimg"].tolist() and after["fid"].map(math.isfinite).all()
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind

    assert repair(small_disk) is not False  # space freed / remounted: the run continues from its checkpoint
    resumed = run_command(*command(teacher, out)[1:], "--resume", timeout=150)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = rows(out / EVALUATIONS)
    assert len(final) == 9 and not final.duplicated(["trial_id", "kimg"]).any()
    assert final.set_index("kimg").loc[before["kimg"], "fid"].tolist() == before["fid"].tolist()
