"""A study's dry run (sid.cluster.dry_run) on a simulated GPU cluster: a ray.cluster_utils.Cluster whose two worker
nodes declare 2 GPUs each and a head with none, one cluster for the module (2 GPUs a node: as few worker processes as
show packing, waiting and sharing, on a 2-core machine). The dry run's workers touch no CUDA (gloo, CPU loads), so
fake GPUs suffice; each node has its own asset cache (SID_CACHE in the node's environment), and the teacher is a local
file served through the URL code path (file://)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import ray
from ray.cluster_utils import Cluster

from sid.cluster import dry_run
from sid.cluster.distributed import LOCAL_RAY_ENV, RAY_ENV, ResourceError
from sid.cluster.dry_run import (
    MARKER,
    PLACEMENTS_FILE,
    check,
    dry_run_folder,
    dry_run_study,
    max_overlap,
    placements,
    summary,
)
from sid.cluster.resources import TrialResources
from sid.cluster.space import Grid, StudyError
from sid.cluster.study import DRIVER_CPU, Study
from sid.config import preset
from sid.results import read_parquet
from sid.testing.fixtures import TINY, flags, make_teacher

pytestmark = pytest.mark.ray
GPUS_PER_NODE, NODES = 2, 2
WORKERS = GPUS_PER_NODE  # of a whole-GPU trial: one fills a node


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    for key, value in LOCAL_RAY_ENV.items():  # the Train controllers run in the raylets' environment
        os.environ.setdefault(key, value)
    caches = tmp_path_factory.mktemp("caches")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False},
                      connect=False)
    for i in range(NODES):
        cluster.add_node(num_cpus=GPUS_PER_NODE, num_gpus=GPUS_PER_NODE, env_vars={"SID_CACHE": str(caches / str(i))})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield caches
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def teacher_url(tmp_path_factory) -> str:
    return Path(make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")).as_uri()


def study(teacher: str, storage: Path, name: str, alphas: list[float], **resources) -> Study:
    return Study(name=name, base=preset("digits", teacher=teacher, **TINY), storage=storage,
                 space={"alpha": Grid(alphas)}, resources=TrialResources(**resources))


def drivers(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((folder / "drivers").glob("*.json"))]


@pytest.fixture(scope="module")
def whole_gpu_trials(gpu_cluster, teacher_url, tmp_path_factory):
    """3 trials of 2 one-GPU workers on 2 nodes of 2 GPUs: 2 fit at once, the third waits."""
    spec = study(teacher_url, tmp_path_factory.mktemp("results"), "packed", [0.5, 1.0, 1.2],
                 workers=WORKERS, gpus_per_worker=1.0)
    return spec, dry_run_study(spec, hold_s=3.0)


@pytest.mark.timeout(240)
def test_each_worker_holds_one_gpu_and_the_cpu_the_flags_ask_for(whole_gpu_trials):
    _, table = whole_gpu_trials
    assert len(table) == 3 * WORKERS and table.groupby("trial_id").size().eq(WORKERS).all()
    held = table["resources"].map(json.loads)
    assert held.map(lambda r: r["GPU"]).eq(1.0).all()
    assert held.map(lambda r: r["CPU"]).sub(1.0 - DRIVER_CPU / WORKERS).abs().lt(1e-9).all()  # the driver's share
    assert table["gpu_ids"].map(json.loads).map(len).eq(1).all()
    assert table["ranks_reduced"].eq(WORKERS).all() and table["world_size"].eq(WORKERS).all()


@pytest.mark.timeout(240)
def test_trial_drivers_hold_only_their_cpu_share(whole_gpu_trials):
    spec, table = whole_gpu_trials
    found = drivers(dry_run_folder(spec))
    assert sorted(d["trial_id"] for d in found) == sorted(table["trial_id"].unique())
    assert all(d["resources"] == {"CPU": DRIVER_CPU} for d in found)


@pytest.mark.timeout(240)
def test_a_trial_that_fits_one_node_is_packed_on_one_node_on_distinct_gpus(whole_gpu_trials):
    _, table = whole_gpu_trials
    for _, mine in table.groupby("trial_id"):
        assert mine["node_id"].nunique() == 1
        assert sorted(json.loads(ids)[0] for ids in mine["gpu_ids"]) == [str(i) for i in range(GPUS_PER_NODE)]
    assert table["node_id"].nunique() == NODES  # two trials at once need both nodes


@pytest.mark.timeout(240)
def test_concurrent_trials_never_exceed_the_gpus_and_no_gpu_is_held_twice(whole_gpu_trials):
    _, table = whole_gpu_trials
    spans = [(g["start"].min(), g["end"].max()) for _, g in table.groupby("trial_id")]
    assert max_overlap(spans) <= NODES * GPUS_PER_NODE // WORKERS
    for (node, gpu), users in table.assign(gpu=table["gpu_ids"].map(lambda s: json.loads(s)[0])).groupby(
            ["node_id", "gpu"]):
        assert max_overlap(list(zip(users["start"], users["end"]))) == 1, (node, gpu)


@pytest.mark.timeout(240)
def test_each_node_downloads_the_teacher_once_for_all_its_trials(whole_gpu_trials, gpu_cluster):
    _, table = whole_gpu_trials
    for _, mine in table.groupby("node_id"):
        caches = [json.loads(c) for c in mine["cache"]]
        names = {name for cache in caches for name in cache if name.endswith("-teacher.pt")}
        assert len(names) == 1  # the file:// URL went through the cache
        (name,) = names
        assert len({cache[name] for cache in caches}) == 1  # the same copy (inode) for every worker on the node
    copies = sorted(p.parent.name for p in gpu_cluster.glob(f"*/{name}"))
    assert copies == [str(i) for i in range(NODES)]  # one copy per node cache, no other


@pytest.mark.timeout(240)
def test_the_placements_table_is_written_and_summarised(whole_gpu_trials):
    spec, table = whole_gpu_trials
    folder = dry_run_folder(spec)
    assert (folder / MARKER).exists() and folder.name == "packed-dry-run" and not spec.folder.exists()
    pd.testing.assert_frame_equal(read_parquet(folder / PLACEMENTS_FILE), table)
    text = summary(table)
    assert text.count(f"{WORKERS} worker(s), GPU") == 3 and text.endswith("trial(s) ran at once")


@pytest.mark.timeout(240)
def test_fractional_gpu_trials_share_gpus_at_most_two_to_one(gpu_cluster, teacher_url, tmp_path):
    spec = study(teacher_url, tmp_path, "shared", [0.5, 1.0, 1.2], workers=1, gpus_per_worker=0.5)  # 3 at once
    table = dry_run_study(spec, hold_s=1.0)
    assert len(table) == 3
    assert table["resources"].map(lambda r: json.loads(r)["GPU"]).eq(0.5).all()
    for _, users in table.assign(gpu=table["gpu_ids"].map(lambda s: json.loads(s)[0])).groupby(["node_id", "gpu"]):
        assert max_overlap(list(zip(users["start"], users["end"]))) <= 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("script, searched", [
    ("alpha_sweep", ["--alphas", "1.0", "--seeds", "1"]),
    ("hpo", ["--num-samples", "1"]),  # Optuna's domains, sampled: the dry run has nothing to learn from
])
def test_the_study_script_dry_run_prints_where_each_trial_ran(gpu_cluster, teacher_url, tmp_path, monkeypatch, capsys,
                                                              script, searched):
    for key in RAY_ENV:  # the scripts set none of Ray's environment: connect() does, also on a cluster joined before
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(dry_run, "DEFAULT_HOLD_S", 0.0)  # one trial: nothing to overlap with
    importlib.import_module(f"studies.{script}").main(
        ["--dry-run", "--teacher", teacher_url, *searched, "--workers", "2", "--storage", str(tmp_path),
         *flags(**TINY)])
    out = capsys.readouterr().out
    assert "up to 2 trial(s) at once, 2 worker(s) x {'CPU': 0.995, 'GPU': 1.0}" in out
    assert "2 worker(s), GPU " in out and "at most 1 trial(s) ran at once" in out
    assert f"placements: {tmp_path.resolve() / f'{script}-digits-study-dry-run' / PLACEMENTS_FILE}" in out
    assert not (tmp_path / f"{script}-digits-study").exists()  # the study's own folder stays free
    assert all(os.environ[k] == v for k, v in RAY_ENV.items())


@pytest.mark.timeout(60)
def test_a_trial_the_cluster_cannot_hold_fails_before_anything_waits(gpu_cluster, teacher_url, tmp_path):
    spec = study(teacher_url, tmp_path, "too-big", [1.0], workers=GPUS_PER_NODE + 1, gpus_per_worker=1.0,
                 placement_strategy="STRICT_PACK")
    spec = dataclasses.replace(spec, base=spec.base.replace(batch=6, batch_per_device=2))  # splits over 3 ranks
    with pytest.raises(ResourceError, match=f"room for {GPUS_PER_NODE} such worker"):
        dry_run_study(spec, hold_s=0.0)


# ---------------------------------------------------------------------------------------------- no Ray needed
@pytest.mark.parametrize("intervals, expected", [
    ([], 0),
    ([(0, 1)], 1),
    ([(0, 1), (2, 3)], 1),
    ([(0, 2), (1, 3)], 2),
    ([(0, 1), (1, 2)], 1),  # one ends as the next starts: never both
    ([(0, 10), (1, 2), (3, 4), (5, 6)], 2),
    ([(0, 5), (1, 5), (2, 5)], 3),
])
def test_max_overlap(intervals, expected):
    assert max_overlap(intervals) == expected


def record(trial: str, rank: int, **changes) -> dict:
    return {**dict(trial_id=trial, rank=rank, world_size=2, ranks_reduced=2, node_id="n", hostname="h", pid=1,
                   resources={"CPU": 1.0, "GPU": 1.0}, gpu_ids=[str(rank)], cuda_visible_devices=None, cache={},
                   start=0.0, end=1.0), **changes}


@pytest.mark.parametrize("records, words", [
    ([record("a", 0), record("a", 1)], []),
    ([record("a", 0)], ["trial a: 1 of 2 worker records", "does not share"]),
    ([record("a", 0), record("a", 1, resources={"CPU": 1.0})], ["trial a rank 1: holds {'CPU': 1.0}"]),
    ([record("a", 0), record("a", 1, resources={"CPU": 1.0, "GPU": 0.5})], ["rank 1: holds"]),
    ([record("a", 0, ranks_reduced=1), record("a", 1, ranks_reduced=1)], ["did not span its 2 workers"]),
])
def test_check_names_each_problem(tmp_path, records, words):
    for r in records:
        path = tmp_path / "workers" / f"{r['trial_id']}-rank{r['rank']}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(r))
    problems = check(placements(tmp_path), trials=["a"], workers=2, per_worker={"CPU": 1.0, "GPU": 1.0})
    assert bool(problems) == bool(words)
    for word in words:
        assert any(word in p for p in problems), (word, problems)


def test_a_folder_that_is_not_a_dry_runs_is_never_replaced(tmp_path):
    spec = study("digits", tmp_path, "mine", [1.0])
    precious = dry_run_folder(spec) / "results.parquet"
    precious.parent.mkdir(parents=True)
    precious.write_text("not mine to delete")
    with pytest.raises(StudyError, match="not a dry run's folder"):
        dry_run_study(spec)
    assert precious.read_text() == "not mine to delete"


@pytest.mark.parametrize("hold_s", [-1.0, float("nan"), float("inf")])
def test_bad_hold_time_is_refused_before_ray_starts(tmp_path, hold_s):
    with pytest.raises(StudyError, match="hold_s"):
        dry_run_study(study("digits", tmp_path, "x", [1.0]), hold_s=hold_s)
    assert not dry_run_folder(study("digits", tmp_path, "x", [1.0])).exists()
