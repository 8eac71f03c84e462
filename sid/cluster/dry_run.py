"""A study's dry run: every trial's Ray Train workers start where the real ones would, load the run's assets (teacher,
detector, reference statistics) through the same per-node cache, join their process group, record where they ran,
and stop. Nothing is trained.

Run it on a new cluster before paying for a study (`--dry-run` in the study scripts): it shows which nodes and GPUs
each trial gets, how many trials ran at once, and that every node reaches the assets and the shared storage (a
worker's record that the driver cannot read means the storage is not shared). Its folder is <storage>/<name>-dry-run:

    placements.parquet               one row per worker of each trial: node, GPU ids, resources, times, cached files
    workers/<trial_id>-rank<k>.json  what each worker recorded (the table is built from these)
    drivers/<trial_id>.json          where each trial's driver ran and what it holds

The process group uses gloo whatever the devices (no CUDA call, so a cluster whose GPUs are fake custom resources
works too): NCCL itself is not exercised.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import ray
import ray.train
import ray.tune
import torch.distributed

from sid.assets import default_cache_dir
from sid.cluster.distributed import build_trainer, connect
from sid.cluster.search import tune_space
from sid.cluster.space import StudyError
from sid.cluster.study import DRIVER_CPU, Study, plan, trial_config, trial_dirname, trial_label
from sid.cluster.trials import TrialSettings
from sid.config import DistillConfig
from sid.files import TRAIN_DIR, write_text_atomic
from sid.loop import Evaluator
from sid.results import write_atomic
from sid.teachers import load_teacher, sigma_range

DEFAULT_HOLD_S = 5.0          # each worker holds its resources this long, so trials that can overlap do
MARKER = ".sid-dry-run"       # marks a folder as a dry run's, which the next dry run may replace
PLACEMENTS_FILE = "placements.parquet"


class PlacementError(RuntimeError):
    """A dry run found trials whose workers did not all run with what was asked; one line per problem."""


def dry_run_folder(study: Study) -> Path:
    return study.folder.with_name(f"{study.name}-dry-run")


def _write_json(path: Path, record: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(record))


def _cached_files() -> dict[str, int]:
    """The node's asset cache: file name -> inode (one download per node shows as one inode for all its workers)."""
    cache = default_cache_dir()
    if not cache.is_dir():
        return {}
    return {p.name: p.stat().st_ino for p in cache.iterdir()
            if p.is_file() and not p.name.endswith((".lock", ".sha256", ".part"))}


def probe_worker(loop_config: dict[str, Any]) -> None:
    """What each worker of a dry-run trial runs instead of sid.cluster.distributed.train_worker."""
    start = time.time()
    config = DistillConfig(**loop_config["config"])
    context, runtime = ray.train.get_context(), ray.get_runtime_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    sigma_range(load_teacher(config.teacher), config)  # every rank loads the teacher; rank 0 also evaluates
    if rank == 0:
        Evaluator(config, "cpu")
    ranks = torch.ones(())
    torch.distributed.all_reduce(ranks)  # the group spans the trial's nodes
    time.sleep(loop_config["hold_s"])
    _write_json(Path(loop_config["records"]) / f"{loop_config['trial_id']}-rank{rank}.json", dict(
        trial_id=loop_config["trial_id"], rank=rank, world_size=world_size, ranks_reduced=int(ranks.item()),
        node_id=runtime.get_node_id(), hostname=socket.gethostname(), pid=os.getpid(),
        resources=runtime.get_assigned_resources(),
        gpu_ids=[str(i) for i in runtime.get_accelerator_ids().get("GPU", [])],
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), cache=_cached_files(),
        start=start, end=time.time()))


def probe_trial(tune_config: dict[str, Any], settings: TrialSettings, hold_s: float) -> None:
    """Tune function trainable of a dry run (settings and hold_s bound with tune.with_parameters): record the
    driver, then run the trial's workers with probe_worker."""
    trial_id = ray.tune.get_context().get_trial_id()
    folder = settings.folder
    runtime = ray.get_runtime_context()
    _write_json(folder / "drivers" / f"{trial_id}.json",
                dict(trial_id=trial_id, node_id=runtime.get_node_id(), resources=runtime.get_assigned_resources()))
    build_trainer(trial_config(tune_config, settings.base, settings.setting_fields),
                  resources=settings.resources.replace(max_failures=0),
                  rows_path=folder / "no-rows.parquet",  # probes write no rows
                  storage_path=folder / TRAIN_DIR, name=f"probe-{trial_id}", trial_id=trial_id,
                  study=settings.study, loop=probe_worker, backend="gloo", check=False,  # plan() checked
                  loop_extra=dict(records=str(folder / "workers"), hold_s=hold_s)).fit()


class _Progress(ray.tune.Callback):
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        print(f"[{trial.trial_id}] placing  {trial_label(trial)}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        print(f"[{trial.trial_id}] placed   {trial_label(trial)}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        print(f"[{trial.trial_id}] error    {trial_label(trial)}: see {trial.error_file}", flush=True)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals [start, end] that share a point in time."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    best = running = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def _fresh_folder(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).exists():
            raise StudyError(f"{folder} exists and is not a dry run's folder; choose another --name")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).touch()


def placements(folder: Path) -> pd.DataFrame:
    """The workers' records as a table, one row per worker, sorted by trial and rank."""
    records = [json.loads(p.read_text()) for p in sorted((folder / "workers").glob("*-rank*.json"))]
    table = pd.DataFrame(records, columns=["trial_id", "rank", "world_size", "ranks_reduced", "node_id", "hostname",
                                           "pid", "resources", "gpu_ids", "cuda_visible_devices", "cache", "start",
                                           "end"])
    for column in ("resources", "gpu_ids", "cache"):  # nested values as JSON text: Parquet-friendly, readable
        table[column] = table[column].map(json.dumps)
    return table.sort_values(["trial_id", "rank"]).reset_index(drop=True)


def check(table: pd.DataFrame, *, trials: list[str], workers: int, per_worker: dict[str, float]) -> list[str]:
    """What went wrong, one line each ([] when every trial's workers all ran with what was asked)."""
    problems = []
    for trial_id in trials:
        mine = table[table["trial_id"] == trial_id]
        if len(mine) < workers:
            problems.append(f"trial {trial_id}: {len(mine)} of {workers} worker records readable here (a failed "
                            "worker, or a storage folder that the worker's node does not share with this one)")
        if (mine["ranks_reduced"] != workers).any():
            problems.append(f"trial {trial_id}: the process group did not span its {workers} workers")
    for row in table.itertuples():
        held = json.loads(row.resources)
        if any(not math.isclose(held.get(k, 0.0), v, rel_tol=1e-6) for k, v in per_worker.items()):
            problems.append(f"trial {row.trial_id} rank {row.rank}: holds {held}, asked for {per_worker}")
    return problems


def summary(table: pd.DataFrame) -> str:
    """One line per trial: its nodes with the GPU ids of its workers there, and when it ran."""
    t0, lines = table["start"].min(), []
    for trial_id, mine in table.groupby("trial_id"):
        nodes = []
        for (node, host), ranks in mine.groupby(["node_id", "hostname"]):
            gpus = [gpu for ids in ranks["gpu_ids"] for gpu in json.loads(ids)]
            nodes.append(f"{host} (node {node[:8]}): {len(ranks)} worker(s), GPU {','.join(gpus) or '-'}")
        lines.append(f"  {trial_id}  {'; '.join(nodes)}  ran {mine['start'].min() - t0:.1f}-"
                     f"{mine['end'].max() - t0:.1f} s")
    spans = [(g["start"].min(), g["end"].max()) for _, g in table.groupby("trial_id")]
    return "\n".join([*lines, f"at most {max_overlap(spans)} trial(s) ran at once"])


def dry_run_study(study: Study, *, address: str | None = None,
                  hold_s: float | None = None,  # seconds each worker holds its resources (None: DEFAULT_HOLD_S)
                  ) -> pd.DataFrame:
    """Place every trial of `study` on the cluster without training; return the placements table (also in
    <storage>/<name>-dry-run/placements.parquet). A bad study raises StudyError before anything starts; trials whose
    workers did not all run with the resources asked for raise PlacementError, one line each."""
    study.validate()
    hold_s = DEFAULT_HOLD_S if hold_s is None else hold_s
    if not math.isfinite(hold_s) or hold_s < 0:
        raise StudyError(f"hold_s must be a finite number >= 0, got {hold_s}")
    folder = dry_run_folder(study)
    _fresh_folder(folder)
    started = connect(address, quiet=True)
    try:
        settings, trial, concurrency = plan(study, folder)
        per_worker = settings.resources.per_worker()
        print(f"dry run {study.name}: up to {concurrency} trial(s) at once, {trial.workers} worker(s) x "
              f"{per_worker} each + {DRIVER_CPU} CPU per driver; {folder}", flush=True)
        tuner = ray.tune.Tuner(
            ray.tune.with_resources(ray.tune.with_parameters(probe_trial, settings=settings, hold_s=hold_s),
                                    {"cpu": DRIVER_CPU}),
            param_space={**tune_space(study.space), "preset": study.base.preset},
            # No searcher: a grid's values as given, an Optuna study's domains sampled at random (nothing to learn).
            tune_config=ray.tune.TuneConfig(num_samples=study.num_samples, max_concurrent_trials=concurrency,
                                            trial_dirname_creator=trial_dirname),
            run_config=ray.tune.RunConfig(name=folder.name, storage_path=str(folder.parent), verbose=0,
                                          callbacks=[_Progress()]))
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    table = placements(folder)
    write_atomic(pa.Table.from_pandas(table, preserve_index=False), folder / PLACEMENTS_FILE)
    trial_ids = [Path(result.path).name.removeprefix("trial-") for result in results]
    problems = check(table, trials=trial_ids, workers=trial.workers, per_worker=per_worker)
    problems += [f"a trial failed: {str(error).strip().splitlines()[-1]}" for error in results.errors]
    if problems:
        raise PlacementError("dry run: " + "\n  ".join(problems))
    return table
