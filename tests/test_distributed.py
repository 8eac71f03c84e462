"""One SiD run through Ray Train on this machine: DDP equivalence, two nodes, a killed worker, resource checks, CLI.

Every test runs real Ray (a local cluster, or ray.cluster_utils.Cluster for two nodes), stopped by run_distributed
itself, a fixture or the subprocess' exit; configs are tiny (batch 8, a few iterations, 256 images per Frechet
distance) and the teacher is a small random network (these tests are about distribution, not quality).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from sid.cluster.distributed import ResourceError, run_distributed
from sid.cluster.resources import TrialResources
from sid.config import preset
from sid.distill import Distiller
from sid.results import read_evaluations
from sid.run import run_local
from sid.teachers import load_teacher
from sid.testing.fixtures import DDP_TINY, assert_same_networks, flags, make_teacher
from sid.testing.processes import kill_during_run

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]


def worker_info(out: Path, rank: int) -> dict:
    return json.loads((out / "workers" / f"rank{rank}.json").read_text())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """The tiny teacher with two resolution levels (random weights: these tests are about distribution)."""
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt", channel_mult=[1, 2])


@pytest.fixture
def two_nodes():
    from ray.cluster_utils import Cluster  # noqa: PLC0415 (Ray: only the distributed path needs it)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1}, connect=False)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_two_workers_match_one_process_accumulating_two_rounds_and_hand_over_to_it(tmp_path, teacher, capsys):
    config = preset("digits", teacher=teacher, **dict(DDP_TINY, eval_every_kimg=DDP_TINY["duration_kimg"]))  # 0, end
    out = tmp_path / "run"
    run_distributed(config, out, resources=TrialResources(workers=2, gpus_per_worker=0), address=None, resume=False)
    assert "(STRICT_PACK) on 1 node(s)" in capsys.readouterr().out  # both ranks fit the one node
    ray_state = torch.load(out / "checkpoint.pt", weights_only=True)
    # the same run continued in one process (2 rounds of 4 per phase) for 2 more iterations
    longer = config.replace(duration_kimg=config.duration_kimg + 2 * config.batch / 1000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each Ray worker (OMP_NUM_THREADS=1); 2 threads crawl on a busy 2-core box
    try:
        run_local(longer, out, device=torch.device("cpu"), resume=True, progress=False)
        reference = Distiller(longer, load_teacher(teacher))  # 1 process from the start, the same global noise slots
        assert reference.rounds == 2
        initial = {k: v.clone() for k, v in reference.generator.state_dict().items()}
        for _ in range(config.iterations):
            reference.step()
        assert ray_state["iteration"] == reference.iteration == config.iterations
        moved = max((reference.generator.state_dict()[k] - v).abs().max().item() for k, v in initial.items())
        assert moved > 1e-4  # training moved the weights far beyond the tolerance below
        assert_same_networks(ray_state, reference.state_dict())
        while reference.iteration < longer.iterations:
            reference.step()
    finally:
        torch.set_num_threads(threads)
    assert_same_networks(torch.load(out / "checkpoint.pt", weights_only=True), reference.state_dict())
    rows = read_evaluations(out / "evaluations.parquet")
    assert rows["world_size"].tolist() == [2, 2, 1] and rows["iteration"].tolist() == [0, 4, 6]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_two_nodes_each_run_one_rank_and_rows_carry_world_size_two(tmp_path, teacher, two_nodes, capsys):
    config = preset("digits", teacher=teacher, **DDP_TINY)
    out = tmp_path / "run"
    rows_path = run_distributed(config, out, resources=TrialResources(workers=2, gpus_per_worker=0),
                                address=two_nodes.address, resume=False)
    assert "(PACK) on 2 node(s)" in capsys.readouterr().out  # no node holds both ranks
    ranks = [worker_info(out, r) for r in (0, 1)]
    assert ranks[0]["node_id"] != ranks[1]["node_id"]
    assert {r["world_size"] for r in ranks} == {2}
    rows = read_evaluations(rows_path)
    assert rows["kimg"].tolist() == pytest.approx(config.evaluation_kimg())
    assert set(rows["world_size"]) == {2} and rows["fid"].notna().all()
    assert rows["status"].eq("ok").all()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cli_run_survives_a_killed_worker_without_losing_or_duplicating_rows(tmp_path, teacher):
    # 12 iterations, an evaluation every 2: enough points that the kill lands mid-run
    config = preset("digits", teacher=teacher, **{**DDP_TINY, "duration_kimg": 0.096})
    out = tmp_path / "run"
    tiny_flags = flags(**{k: v for k, v in DDP_TINY.items() if k != "duration_kimg"})
    command = [sys.executable, "-m", "sid", "distill", "--workers", "2", "--out", str(out), "--duration-kimg=0.096",
               f"--teacher={teacher}", "--no-progress", *tiny_flags]
    # 3 rows: the checkpoint reported after the first is registered by Ray Train by then (a kill right after a row
    # can come before its checkpoint's registration, and the group then rightly starts over)
    victim, log, code = kill_during_run(command, out, lambda process: worker_info(out, 1)["pid"], cwd=ROOT, rows=3,
                                        wait_s=120, run_s=150)
    assert victim is not None, f"the run ended before a worker could be killed:\n{log[-3000:]}"
    assert code == 0, log[-3000:]
    assert worker_info(out, 1)["pid"] != victim  # the worker group was restarted...
    assert worker_info(out, 1)["restored_iteration"] is not None  # ...from a checkpoint, not from scratch (the
    # rank's own record: its "continuing at kimg" line may not reach the driver's log before the driver exits)
    rows = read_evaluations(out / "evaluations.parquet")
    assert rows["kimg"].tolist() == pytest.approx(config.evaluation_kimg())  # each point once, none missing
    assert not rows.duplicated(["trial_id", "kimg"]).any()
    assert set(rows["world_size"]) == {2} and rows["fid"].notna().all()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == config.iterations and math.isfinite(state["wall_s"])


@pytest.fixture
def local_ray():
    ray.init(address="local", num_cpus=os.cpu_count(), object_store_memory=256 * 2**20, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers, gpus, words", [
    (2 * os.cpu_count(), 0, [f"{2 * os.cpu_count()} worker(s)", f"= CPU {2 * os.cpu_count()} ",
                             f"has CPU {os.cpu_count()} on 1 node", f"room for {os.cpu_count()} "]),
    (1, 1, ["1 worker(s)", "GPU 1 (", "GPU 0 on 1 node", "room for 0 "]),
])
def test_unschedulable_requests_fail_in_seconds_naming_what_was_asked_and_what_exists(tmp_path, teacher, local_ray,
                                                                                       workers, gpus, words):
    config = preset("digits", teacher=teacher, **DDP_TINY)
    start = time.time()
    with pytest.raises(ResourceError) as raised:
        run_distributed(config, tmp_path / "run", resources=TrialResources(workers=workers, gpus_per_worker=gpus),
                        address=None, resume=False)
    assert time.time() - start < 5  # instead of Ray Train waiting for the worker group
    for word in words:
        assert word in str(raised.value)
    assert not (tmp_path / "run" / "evaluations.parquet").exists()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("workers, gpus, words", [
    (2, 0.5, ["Duplicate GPU", "48012"]),  # two ranks of one run on one GPU
    (1, 2, ["one GPU", "more workers"]),
    (0, 0, ["workers must be >= 1"]),
    (1, -1, ["gpus_per_worker must be >= 0"]),
])
def test_requests_that_cannot_work_anywhere_are_refused_before_ray_starts(tmp_path, teacher, workers, gpus, words):
    config = preset("digits", teacher=teacher, **DDP_TINY)
    with pytest.raises(ValueError) as raised:  # the request is refused where it is made
        run_distributed(config, tmp_path / "run", resources=TrialResources(workers=workers, gpus_per_worker=gpus),
                        address=None, resume=False)
    for word in words:
        assert word in str(raised.value)
    assert not ray.is_initialized()
