"""One SiD run over torchrun's processes (torch.distributed, gloo on CPUs, no Ray): the same run folder, rows and
resume as one process accumulating the same global batch, and the command's torchrun checks.

The run is the tiny teacher at DDP_TINY budgets (batch 8 as 2 ranks x 4 or 1 process x 2 rounds of 4: the same noise
slots); torchrun starts 2 CPU processes (`python -m torch.distributed.run`, which is the `torchrun` script).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from sid.commands import distill
from sid.config import preset
from sid.devices import rank_device
from sid.results import read_evaluations
from sid.run import TORCHRUN_ENV, TorchrunRank, run_local, torchrun_rank
from sid.testing.fixtures import DDP_TINY, assert_same_networks, flags, make_teacher
from sid.testing.processes import kill_during_run

ROOT = Path(__file__).resolve().parents[1]
# Columns that say how and when a row was made, not what it measured: they differ between the two layouts.
LAYOUT_COLUMNS = ["world_size", "wall_s", "device_s", "images_per_s", "written_at"]
LONGER_KIMG = DDP_TINY["duration_kimg"] + 2 * DDP_TINY["batch"] / 1000  # the resume: 2 more iterations, 1 row


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """The tiny teacher with two resolution levels (random weights: this is about distribution, not quality)."""
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", channel_mult=[1, 2])


def torchrun_command(out: Path, teacher: str, *extra: str, launcher: tuple[str, ...] = ()) -> list[str]:
    """`torchrun --standalone --nproc-per-node 2 [launcher] -m sid distill ...` on the CPU at DDP_TINY budgets."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *launcher,
            "-m", "sid", "distill", "--out", str(out), f"--teacher={teacher}", "--device=cpu", "--no-progress",
            *flags(**DDP_TINY), *extra]  # a later flag in `extra` wins


def torchrun(out: Path, teacher: str, *extra: str) -> str:
    """Run torchrun_command; its output (it must succeed)."""
    done = subprocess.run(torchrun_command(out, teacher, *extra), cwd=ROOT, capture_output=True, text=True,
                          timeout=200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


def run_one_process(out: Path, teacher: str, *, resume: bool = True) -> None:
    """The reference: one process, 2 accumulation rounds of 4, the same start (and resume) as the torchrun run."""
    config = preset("digits", teacher=teacher, **DDP_TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each torchrun rank (OMP_NUM_THREADS=1); 2 threads crawl on a busy 2-core box
    try:
        run_local(config, out, device=torch.device("cpu"), resume=False, progress=False)
        if resume:
            run_local(config.replace(duration_kimg=LONGER_KIMG), out, device=torch.device("cpu"), resume=True,
                      progress=False)
    finally:
        torch.set_num_threads(threads)


def files_of(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_torchrun_ranks_give_the_rows_and_folder_of_one_process_and_resume(tmp_path, teacher):
    out, reference = tmp_path / "torchrun" / "run", tmp_path / "one" / "run"  # one trial_id: the folder's name
    log = torchrun(out, teacher)
    assert log.count("config:") == 1 and log.count("done in") == 1  # rank 0 speaks for the run
    first = read_evaluations(out / "evaluations.parquet")
    assert first["iteration"].tolist() == [0, 2, 4]
    log = torchrun(out, teacher, "--resume", f"--duration-kimg={LONGER_KIMG}")
    assert "resuming" in log and "continuing at kimg 0.032 (iteration 4)" in log
    run_one_process(reference, teacher)

    rows, expected = read_evaluations(out / "evaluations.parquet"), read_evaluations(reference / "evaluations.parquet")
    assert rows["iteration"].tolist() == expected["iteration"].tolist() == [0, 2, 4, 6]
    assert set(rows["world_size"]) == {2} and set(expected["world_size"]) == {1}
    assert rows["status"].eq("ok").all() and rows["fid"].notna().all()
    # kimg 0: G_ema is the teacher's copy on both sides and the evaluation latents are fixed, so the FD and its
    # spread are bit-identical; after training the networks agree to float32 rounding (the all-reduce sums in
    # another order than one process's accumulation), and so do the FD and the global batch's losses.
    assert rows["fid"][0] == expected["fid"][0] and rows["fid_std"][0] == expected["fid_std"][0]
    measured = ["fid", "fid_std", "loss_fake_score", "loss_generator"]
    pd.testing.assert_frame_equal(rows[measured], expected[measured], check_exact=False, rtol=1e-4)
    same = [c for c in rows.columns if c not in LAYOUT_COLUMNS + measured]
    pd.testing.assert_frame_equal(rows[same], expected[same])
    assert (rows["loss_fake_score"][1:] - first["loss_fake_score"][1:]).abs().max() == 0  # the resume kept the rows
    assert_same_networks(torch.load(out / "checkpoint.pt", weights_only=True),
                         torch.load(reference / "checkpoint.pt", weights_only=True))
    assert files_of(out) == files_of(reference)  # the same run folder: snapshots, best.pt, grids, config.yaml


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_factory_teacher_shards_over_two_torchrun_ranks_as_one_process(tmp_path):
    spec = "sid.testing.fixtures:user_teacher"  # the user's own network, named as module:function (docs/teachers.md)
    out, reference = tmp_path / "torchrun" / "run", tmp_path / "one" / "run"
    torchrun(out, spec)
    run_one_process(reference, spec, resume=False)
    rows, expected = read_evaluations(out / "evaluations.parquet"), read_evaluations(reference / "evaluations.parquet")
    assert rows["iteration"].tolist() == expected["iteration"].tolist() == [0, 2, 4]
    assert set(rows["world_size"]) == {2} and rows["status"].eq("ok").all()
    measured = ["fid", "fid_std", "loss_fake_score", "loss_generator"]
    pd.testing.assert_frame_equal(rows[measured], expected[measured], check_exact=False, rtol=1e-4)
    assert_same_networks(torch.load(out / "checkpoint.pt", weights_only=True),
                         torch.load(reference / "checkpoint.pt", weights_only=True))


def rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the process torchrun (`launcher`) started as `rank`, read from /proc, or None."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    return None


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_killed_rank_restarts_the_group_from_the_checkpoint_with_max_restarts(tmp_path, teacher):
    out = tmp_path / "run"
    kimg = 6 * DDP_TINY["eval_every_kimg"]  # 12 iterations, an evaluation every 2: the kill lands mid-run
    command = torchrun_command(out, teacher, f"--duration-kimg={kimg}", launcher=("--max-restarts=1",))
    victim, log, code = kill_during_run(command, out, lambda process: rank_pid(process.pid, 1), cwd=ROOT, rows=2,
                                        wait_s=200, run_s=300, checkpoint=True)
    assert victim is not None, f"the run ended before a rank could be killed:\n{log[-3000:]}"
    assert code == 0, log[-3000:]
    assert "continuing at kimg" in log  # the restarted group resumed from checkpoint.pt, not from scratch
    rows = read_evaluations(out / "evaluations.parquet")
    config = preset("digits", **dict(DDP_TINY, duration_kimg=kimg))
    assert rows["kimg"].tolist() == pytest.approx(config.evaluation_kimg())  # each point once, none missing
    assert set(rows["world_size"]) == {2} and rows["status"].eq("ok").all()


TORCHRUN_VALUES = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": "29500"}


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    (TORCHRUN_VALUES, TorchrunRank(rank=1, world_size=2, local_rank=1)),
    ({**TORCHRUN_VALUES, "TORCHELASTIC_RESTART_COUNT": "2"}, TorchrunRank(rank=1, world_size=2, local_rank=1,
                                                                         restart=2)),
])
def test_torchrun_rank_reads_torchruns_environment(monkeypatch, env, expected):
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert torchrun_rank() == expected


@pytest.mark.parametrize("env, argv, words", [
    ({**TORCHRUN_VALUES, "MASTER_PORT": ""}, [], ["torchrun environment incomplete", "MASTER_PORT not set"]),
    ({**TORCHRUN_VALUES, "RANK": "one"}, [], ["RANK, WORLD_SIZE, LOCAL_RANK and TORCHELASTIC_RESTART_COUNT", "'one'"]),
    ({**TORCHRUN_VALUES, "RANK": "2"}, [], ["0 <= RANK < WORLD_SIZE"]),
    (TORCHRUN_VALUES, ["--workers=2"], ["under torchrun each process is one rank", "leave out --workers"]),
    (TORCHRUN_VALUES, ["--address=auto"], ["under torchrun each process is one rank"]),
    (TORCHRUN_VALUES, ["--device=cuda:3"], ["--device: under torchrun expected auto, cuda or cpu", "'cuda:3'"]),
])
def test_the_command_refuses_a_bad_torchrun_setup_in_one_line_before_any_rendezvous(monkeypatch, capsys, tmp_path,
                                                                                   env, argv, words):
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as raised:
        distill.main(["--out", str(tmp_path / "run"), "--device=cpu", *argv])  # a later --device wins
    assert raised.value.code == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err
    assert not torch.distributed.is_initialized() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, local_rank, expected", [
    ("cpu", 1, "cpu"),
    ("auto", 1, "cuda:1" if torch.cuda.device_count() > 1 else "cpu" if not torch.cuda.device_count() else None),
])
def test_each_torchrun_rank_takes_its_local_device(text, local_rank, expected):
    if expected is None:
        pytest.skip("one CUDA device: LOCAL_RANK 1 has none")
    assert rank_device(text, local_rank) == torch.device(expected)
