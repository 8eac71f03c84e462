"""One SiD run sharded over Ray Train workers: DDP ranks on CPUs, GPUs and nodes (Ray 2.60, Train V2).

Each Ray Train worker is one DDP rank running `sid.loop.train` on its share of the global batch (sid.distill does the
split, the gradient all-reduce and the per-slot noise). Rank 0 computes the Frechet distance, writes the Parquet row
and then reports a checkpoint; every rank calls `ray.train.report` at each evaluation point (it is a barrier). A
restart (`FailureConfig.max_failures`) resumes from the newest reported checkpoint and re-runs to the next evaluation
point, whose row it rewrites: rows are keyed by (trial_id, kimg), so none is lost and none duplicated.

`build_trainer` is the reusable piece (the study layer calls it from a Tune driver function); `run_distributed` is the
one-run entry behind `python -m sid distill --workers N` / `--address`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import ray.tune
import torch

from sid.cluster.resources import STRATEGIES, TrialResources
from sid.config import DistillConfig
from sid.distill import Distiller, check_state_architecture, student_kwargs
from sid.files import (
    CHECKPOINT,
    EVALUATIONS,
    RAY_DIR,
    RAY_STATE_FILE,
    WORKERS_DIR,
    link_atomic,
    save_torch_atomic,
    write_text_atomic,
)
from sid.run import RunFolder, load_checkpoint, run_rank
from sid.teachers import load_teacher
from sid.timeline import phase, record
from sid.tracking import STEP_KEY, RunTracker, TrackingSettings, step_of

RUN_NAME = "train"             # Ray Train run name of a one-run folder (storage: <out>/ray/train)
# Set (unless already set) by connect() on any cluster: no Train V2 migration banners (Ray reads it at each call and
# passes it on to the Tune trials this process starts).
RAY_ENV = {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}
# Also set before starting a local Ray: each report then costs ~0.1 s instead of ~2 s (the Train controller polls its
# workers at this interval, docs/distributed.md).
LOCAL_RAY_ENV = {**RAY_ENV, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


class ResourceError(ValueError):
    """The cluster can never hold the requested worker group (raised before Ray Train would wait for it forever)."""


# ---------------------------------------------------------------------------------------------- resources
def _fits(node: dict[str, float], per_worker: dict[str, float]) -> int:
    """How many workers of this size one node can hold."""
    counts = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in per_worker.items() if v > 0]
    return min(counts) if counts else 1 << 30


def _live_nodes() -> list[dict[str, float]]:
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def _autoscaler_node_types() -> list[dict[str, float]]:
    """Resources of each node type an autoscaler may add ([] on a fixed cluster). Ray Train reads the same
    private GCS entry for its own check against the autoscaler's maximum."""
    from ray._private.state import state  # noqa: PLC0415 (Ray: only the distributed path needs it)

    config = state.get_cluster_config()
    return [dict(group.resources) for group in config.node_group_configs if group.max_count != 0] if config else []


def default_placement(workers: int, per_worker: dict[str, float]) -> str:
    """STRICT_PACK when one node (live or addable) holds every rank: NCCL stays on NVLink, and the autoscaler adds
    one big node instead of one small node per rank (docs/cluster.md); PACK otherwise."""
    shapes = _live_nodes() + _autoscaler_node_types()
    return "STRICT_PACK" if any(_fits(shape, per_worker) >= workers for shape in shapes) else "PACK"


def check_resources(workers: int, per_worker: dict[str, float], placement_strategy: str) -> None:
    """Fail fast when the live nodes of a fixed cluster can never hold `workers` bundles of `per_worker`: Train
    would wait for them and retry (hang). Under an autoscaler, nodes come on demand and Ray Train itself checks
    the request against the autoscaler's maximum, so nothing is checked here."""
    if placement_strategy not in STRATEGIES:
        raise ValueError(f"placement_strategy must be one of {', '.join(STRATEGIES)}, got {placement_strategy!r}")
    if _autoscaler_node_types():
        return
    nodes = _live_nodes()
    fits = [_fits(node, per_worker) for node in nodes]
    capacity = {"STRICT_PACK": max(fits, default=0),
                "STRICT_SPREAD": sum(f > 0 for f in fits)}.get(placement_strategy, sum(fits))
    if capacity >= workers:
        return
    asked = ", ".join(f"{k} {v * workers:g}" for k, v in per_worker.items())
    per_node = "; ".join(", ".join(f"{k} {node.get(k, 0):g}" for k in per_worker) for node in nodes)
    total = ray.cluster_resources()
    exists = ", ".join(f"{k} {total.get(k, 0):g}" for k in per_worker)
    raise ResourceError(f"asked for {workers} worker(s) x {per_worker} = {asked} ({placement_strategy}); the cluster "
                        f"has {exists} on {len(nodes)} node(s) [{per_node}], room for {capacity} such worker(s). "
                        "Use fewer workers or fewer CPUs/GPUs per worker, or add nodes")


# ---------------------------------------------------------------------------------------------- per-worker loop
def _record_worker(workers_dir: str | None, rank: int, world_size: int, device: torch.device,
                   restored_iteration: int | None) -> None:
    """One small JSON per rank (pid, node, device, the checkpoint's iteration it continued from, or None): tells an
    operator which process to look at or kill, and whether a restarted group continued or started over."""
    if not workers_dir:
        return
    info = dict(rank=rank, world_size=world_size, pid=os.getpid(), node_id=ray.get_runtime_context().get_node_id(),
                hostname=socket.gethostname(), device=str(device), torch_threads=torch.get_num_threads(),
                restored_iteration=restored_iteration)
    write_text_atomic(Path(workers_dir) / f"rank{rank}.json", json.dumps(info))


def _restored_state(loop_config: dict[str, Any], config: DistillConfig) -> dict | None:
    """The state to continue from: this Train run's newest checkpoint (a retry, a restored Tune trial), else the
    run folder's checkpoint.pt when resuming a run started in another process."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            return load_checkpoint(Path(folder) / RAY_STATE_FILE, config)
    if loop_config["resume_path"]:
        return load_checkpoint(Path(loop_config["resume_path"]), config)
    return None


class Reporter:
    """The last sink, on every rank: report the metrics and (rank 0, a good state) a checkpoint to Ray. The run
    folder wrote the row and files before, so a restart from this checkpoint never skips a row; the report is a
    barrier, and the checkpoint may end this worker. `tune`: report to Tune (a one-worker trial running in its Tune
    trial process, sid.cluster.study) instead of Ray Train. A study trial's last evaluation gets no checkpoint: a
    resumed trial whose rows reach the end is not run again (sid.cluster.study.run_trial)."""

    def __init__(self, folder: RunFolder | None, *, tune: bool = False) -> None:  # folder: rank 0's; None elsewhere
        self.folder = folder
        self.report, self.checkpoint = (ray.tune.report, ray.tune.Checkpoint) if tune else \
            (ray.train.report, ray.train.Checkpoint)

    def on_evaluation(self, row: dict[str, Any], distiller: Distiller, best: Mapping[str, Any] | None) -> None:
        metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics["best_fid"] = float(best["fid"]) if best is not None else math.nan
        metrics[STEP_KEY] = step_of(row)  # Tune's TensorBoard/MLflow callbacks step on it: images, not reports
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            keep = self.folder is not None and row["status"] == "ok"  # a diverged state is no checkpoint
            if keep and self.folder.state_path is not None:  # the run folder's checkpoint.pt: the state is saved once
                link_atomic(self.folder.state_path, Path(tmp) / RAY_STATE_FILE)
            elif keep and distiller.iteration < distiller.config.iterations:
                save_torch_atomic({**distiller.state_dict(), "wall_s": row["wall_s"]}, Path(tmp) / RAY_STATE_FILE)
            if any(Path(tmp).iterdir()):
                checkpoint = self.checkpoint.from_directory(tmp)
            self.report(metrics, checkpoint=checkpoint)


def train_worker(loop_config: dict[str, Any]) -> None:
    """The function each Ray Train worker runs: one DDP rank of one SiD run (see build_trainer for loop_config)."""
    record("worker_start", time.time(), time.time())  # the worker group is up: its first rank's code runs
    config = DistillConfig(**loop_config["config"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()  # the GPU Ray assigned to this worker (CUDA_VISIBLE_DEVICES-aware), or cpu
    if device.type == "cpu":
        # One thread per assigned CPU, rounded: Ray floors it in OMP_NUM_THREADS (1.99 CPUs -> 1 thread).
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, round(cpus)))
    state = _restored_state(loop_config, config)
    _record_worker(loop_config["workers_dir"], rank, world_size, device,
                   int(state["iteration"]) if state is not None else None)
    folder = RunFolder(Path(loop_config["run_folder"]), rows_path=Path(loop_config["rows_path"]),
                       keep_state=loop_config["keep_state"], config_text=loop_config.get("config_text")) \
        if rank == 0 else None
    tracker = None
    # a one-run command's trackers (a study's are Tune callbacks)
    if rank == 0 and loop_config.get("tracking", {}).get("trackers"):
        tracker = RunTracker(folder.out, config.to_dict(), TrackingSettings.from_dict(loop_config["tracking"]))
    sinks = [*([tracker] if tracker is not None else []), Reporter(folder)]  # the report last: a barrier
    try:
        run_rank(config, folder, device=device, rank=rank, world_size=world_size,
                 state=state, study=loop_config["study"], trial_id=loop_config["trial_id"],
                 setting=loop_config.get("setting", ""), sinks=sinks, progress=False)
    finally:
        if tracker is not None:
            tracker.close()


# ---------------------------------------------------------------------------------------------- trainer
def build_trainer(
    config: DistillConfig,
    *,
    resources: TrialResources,                # workers, GPUs/CPUs per worker (resolved), placement, restarts
    rows_path: str | os.PathLike,            # Parquet file the trial's rows are upserted into (rank 0 writes it)
    storage_path: str | os.PathLike,          # Ray Train storage (checkpoints); shared storage on a multi-node cluster
    name: str,                                # Ray Train run name: keep it stable per run/trial so a retry resumes
    trial_id: str,                            # the rows' trial_id
    study: str = "",                          # the rows' study ('' for a single run)
    setting: str = "",                        # the rows' setting label (a study's Settings dimension; '' for none)
    run_folder: str | os.PathLike | None = None,  # snapshots, best.pt, sample grids (sid/run.py; train_worker)
    keep_state: bool = False,                 # also checkpoint.pt in run_folder (one-run folders; Ray gets a link)
    resume_path: str | os.PathLike | None = None,  # checkpoint.pt to start from when this Train run has none
    workers_dir: str | os.PathLike | None = None,  # where each rank records its pid/node/device (None = nowhere)
    callbacks: Sequence[ray.train.UserCallback] = (),  # e.g. [TuneReportCallback()] inside a Tune driver function
    loop: Callable[[dict[str, Any]], None] = train_worker,  # what each worker runs (dry_run: place, load, stop)
    loop_extra: Mapping[str, Any] | None = None,  # more loop_config entries for `loop`
    backend: str | None = None,               # torch.distributed backend; None: nccl on GPUs, gloo on CPUs
    check: bool = True,                       # check the batch split and the cluster (False: the caller did, once)
) -> ray.train.torch.TorchTrainer:
    """A Train V2 TorchTrainer for one SiD run. Needs a connected Ray (it checks the request against the cluster,
    unless a study's plan() did so for all its trials)."""
    if not ray.is_initialized():
        raise RuntimeError("build_trainer needs a connected Ray: call ray.init(...) first")
    workers, gpus = resources.workers, resources.gpus_per_worker or 0.0
    per_worker = resources.per_worker()
    placement_strategy = resources.placement_strategy or default_placement(workers, per_worker)
    if check:
        config.accumulation_rounds(workers)  # batch must split over the ranks: fail here, not inside every worker
        check_resources(workers, per_worker, placement_strategy)
    loop_config = dict(config=config.to_dict(), rows_path=str(rows_path), trial_id=trial_id, study=study,
                       setting=setting,
                       run_folder=str(run_folder) if run_folder else None, keep_state=keep_state,
                       resume_path=str(resume_path) if resume_path else None,
                       workers_dir=str(workers_dir) if workers_dir else None, **(loop_extra or {}))
    return ray.train.torch.TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=ray.train.torch.TorchConfig(backend=backend or ("nccl" if gpus > 0 else "gloo")),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus > 0,
                                               resources_per_worker=per_worker, placement_strategy=placement_strategy),
        run_config=ray.train.RunConfig(
            name=name, storage_path=_storage_uri(storage_path), callbacks=list(callbacks),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # controller_failure_limit: failed worker-group starts before giving up (Ray's default -1 hangs)
            failure_config=ray.train.FailureConfig(max_failures=resources.max_failures, controller_failure_limit=2)),
    )


def _storage_uri(path: str | os.PathLike) -> str:
    """URIs (s3://, gs://, ...) go to Ray unchanged; local paths absolute (workers do not share the driver's cwd)."""
    text = os.fspath(path)
    return text if "://" in text else Path(text).resolve().as_posix()


def connect(address: str | None, *, quiet: bool = False) -> bool:
    """Connect to Ray unless connected; return whether this call did (and so must shut it down). `address`:
    'auto' or host:port joins a cluster; None starts a local one sized for this machine: never attaching to a stale
    cluster (address='local'), the dashboard on (its State API releases the workers of trials Tune stops), a small
    object store (nothing big goes through it). `quiet`: no worker logs (a study prints its own progress lines).
    It owns the Ray environment: RAY_ENV on any cluster (also one this process joined before), LOCAL_RAY_ENV too
    before starting a local one."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return False
    options = dict(log_to_driver=False, logging_level=logging.WARNING) if quiet else {}
    if address:
        ray.init(address=address, **options)
        return True
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    with phase("ray_start"):
        ray.init(address="local", num_cpus=os.cpu_count(), object_store_memory=256 * 2**20, include_dashboard=True,
                 **options)
    return True


def resolve(resources: TrialResources, *, cpus_default: float | None = None) -> TrialResources:
    """On the connected Ray: GPUs None -> 1 if the cluster has GPUs, else 0; CPUs None -> `cpus_default`, or for
    one run an even share: GPU ranks one CPU, CPU ranks the cluster's CPUs split evenly (at least one each, at most
    the smallest node's), so one CPU worker on a 2-core machine gets 2 torch threads like an in-process run."""
    gpus = resources.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU") else 0.0
    cpus = resources.cpus_per_worker
    if cpus is None:
        cpus = cpus_default
    if cpus is None:
        smallest = min(node.get("CPU", 0) for node in _live_nodes())
        share = math.floor(ray.cluster_resources().get("CPU", 1) / resources.workers)
        cpus = 1.0 if gpus > 0 else float(max(1, min(share, smallest)))
    return resources.replace(gpus_per_worker=gpus, cpus_per_worker=cpus)


def run_distributed(config: DistillConfig, out: Path, *, resources: TrialResources, address: str | None,
                    resume: bool, tracking: TrackingSettings = TrackingSettings(),  # noqa: B008 (frozen: safe to share)
                    config_text: str | None = None) -> Path:
    """Run (or continue) one distillation through Ray Train; return the evaluations file <out>/evaluations.parquet.

    The run folder looks like a single-process one (rows, checkpoint.pt, snapshots, samples), so a run can be
    continued with another number of workers or in one process. Ray's own checkpoints live in <out>/ray/train and
    serve restarts within this invocation; a new invocation starts from <out>/checkpoint.pt, which is written before
    each Ray checkpoint and so is never older. Uses the connected Ray if there is one, else starts/joins one."""
    out = Path(out).resolve()
    if resume and not (out / CHECKPOINT).exists():
        raise ValueError(f"resume: {out} holds no {CHECKPOINT} to continue from")
    if resume:  # here, one line, rather than as a failed worker group

        state = load_checkpoint(out / CHECKPOINT, config)
        check_state_architecture(state.get("generator_init_kwargs"),
                                 student_kwargs(load_teacher(config.teacher).init_kwargs, config))
    if not resume and (out / CHECKPOINT).exists():
        raise ValueError(f"{out} already holds a run; resume it or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / RAY_DIR / RUN_NAME, ignore_errors=True)  # older than (or as new as) checkpoint.pt: see above
    started = connect(address)
    try:
        resources = resolve(resources)
        trainer = build_trainer(config, resources=resources, rows_path=out / EVALUATIONS, storage_path=out / RAY_DIR,
                                name=RUN_NAME, trial_id=out.name, run_folder=out, keep_state=True,
                                resume_path=out / CHECKPOINT if resume else None, workers_dir=out / WORKERS_DIR,
                                loop_extra={"tracking": tracking.to_dict(), "config_text": config_text})
        print(f"Ray Train: {resources.workers} worker(s) x {resources.per_worker()} "
              f"({trainer.scaling_config.placement_strategy}) on {len(_live_nodes())} node(s); "
              f"rows -> {out / EVALUATIONS}", flush=True)
        trainer.fit()
    finally:
        if started:
            ray.shutdown()
    return out / EVALUATIONS
