"""Hyperparameter studies: Ray Tune (grid or Optuna TPE, optional ASHA) over DistillConfig fields; every trial is one
run: in its Tune trial process for one worker, a Ray Train run for several.

A study is a search space over a few fields (any of the registry sid.config.SEARCHABLE; the rest fixed by a base
config) in the project's own terms (sid/cluster/space.py: Grid, Range, Choice), a searcher and its sampler, a
scheduler, callbacks, the resources of one trial and a storage folder; from Python or from a YAML file
(sid/cluster/study_file.py). A one-worker trial trains in its Tune trial process (run_in_trial: no Train worker
group, whose start-up is all it would add); a larger trial's Tune function holds 0.01 CPU, builds the trial's
TorchTrainer (sid.cluster.distributed.build_trainer) and waits for it. The trial's rank 0 writes every evaluation to
Parquet before reporting it to Tune (directly, or through TuneReportCallback). All of a study lives in
<storage>/<name>/:

    evaluations/<trial_id>.parquet   every evaluation of one trial, keyed (trial_id, kimg)
    trials.parquet                   one row per trial: state, best FID, where, last kimg, device-hours
    train/train-<trial_id>/          a trial of several workers: its Ray Train run (checkpoints: what it continues from)
    trial-<trial_id>/checkpoint_*/   a one-worker trial's checkpoints (Tune's: what it continues from)
    trial_settings.json              what every trial gets (sid.cluster.trials.TrialSettings): the resume contract
    orphaned/<trial_id>.parquet.orphaned   rows of a trial a resumed study's Tune state did not know (set aside)
    trial-<trial_id>/, experiment_state-*.json, searcher-state-*.pkl, tuner.pkl    Tune's own files

The checks run once per study: Study.validate (the space, every corner config, the batch split, the teacher path,
the storage) before Ray starts, then plan() (resources resolved and checked against the cluster, the placement
chosen) once Ray is up; each trial's Train run takes plan()'s resources as they are (build_trainer(check=False)).

Ray 2.60 facts this relies on (docs/ray-notes.md): the dashboard must run so that trials stopped by Tune release
their workers; the searcher gets metric and mode itself and learns from `best_fid`; the stopper
(sid/cluster/search.py) judges our monotonic `kimg` and the trial's Parquet rows, not Tune's per-trial history,
which restarts on restore.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import ray
import ray.tune
import torch
import yaml
from ray.tune.integration.ray_train import TuneReportCallback

from sid.assets import is_url
from sid.cluster.callbacks import build_callbacks, check_callbacks, check_saved_callbacks
from sid.cluster.distributed import Reporter, build_trainer, check_resources, connect, default_placement, resolve
from sid.cluster.resources import TrialResources
from sid.cluster.search import SaveBeforeStart, StorageError, StudyStopper, make_searcher, open_storage, tune_space
from sid.cluster.space import (
    FIELD_TYPES,
    OBJECT,
    SAMPLERS,
    SETTING,
    Dimension,
    Grid,
    Settings,
    StudyError,
    check_point,
    check_sampler,
    check_space,
    saved_name,
    space_data,
)
from sid.cluster.stopping import CurveRule
from sid.cluster.trials import TrialRecord, TrialSettings, set_aside_orphans, write_trials_table
from sid.cluster.trust import untrusted_study
from sid.cluster.watch import Progress, calibrated_trial_s, evaluation_line
from sid.config import SEARCHABLE, ConfigError, DistillConfig
from sid.files import (
    CONFIG_FILE,
    EVALUATIONS_DIR,
    MLFLOW_DIR,
    RAY_STATE_FILE,
    RUNS_DIR,
    TRAIN_DIR,
    TRIALS_FILE,
    write_text_atomic,
)
from sid.plan import CALIBRATION_FILE, PLAN_FILE, PlanError, study_calibration
from sid.results import Divergence, is_uri, read_parquet
from sid.run import RunFolder, load_checkpoint, run_rank
from sid.scoring import RESCORE_REPEATS, RESCORE_TRIALS, rescore_study
from sid.teachers import teacher_kind
from sid.timeline import phase
from sid.tracking import STEP_KEY, TrackingSettings, mlflow_uri, step_of

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

DRIVER_CPU = 0.01                      # CPU held by each trial's driver function (Tune rejects 0)


@dataclass(frozen=True)
class Study:
    name: str                                  # the study's folder under `storage` (and its Tune experiment name)
    base: DistillConfig                        # every field that is not searched
    space: Mapping[str, Dimension]             # field -> Grid([...]) (grid); Range(low, high), Choice([...]) (optuna)
    searcher: str = "grid"                     # 'grid': every combination of the Grids; 'optuna': TPE or GP
    num_samples: int = 1                       # optuna: trials to run; grid: repeats of the whole grid
    asha: bool = False                         # stop trials whose smoothed FD trails the others' at a rung (ASHA)
    grace_kimg: float | None = None            # ASHA's first rung (None: the first evaluation after kimg 0)
    reduction_factor: float = 2.0              # ASHA keeps the best 1/reduction_factor of the trials at each rung
    curve_stop: bool = False                   # also stop a trial whose power-law forecast cannot beat the best final
    noise_z: float = 1.0                       # differences below noise_z x the measured noise are ties (no stop)
    sampler: str | Any = "tpe"                 # optuna: a key of sid.cluster.space.SAMPLERS or an Optuna sampler
    optuna_storage: str | None = None          # optuna: database URL or journal file (None: <study>/optuna.journal)
    points_to_evaluate: tuple[dict, ...] = ()  # optuna: first trials to run, e.g. the preset's published values
    divergence: Divergence = field(default_factory=Divergence)  # when a trial is stopped at once as diverged
    resources: TrialResources = TrialResources()  # of each trial; CPUs per worker (default 1) include the driver's
    max_concurrent: int | None = None          # trials at once; None: as many as the cluster holds
    storage: Path = Path("results")            # parent folder; on a multi-node cluster a path every node shares
    optuna_seed: int = 0                       # seed of the sampler a key names
    tracking: TrackingSettings = TrackingSettings()  # trackers, through Ray Tune's logger callbacks
    rescore_trials: str = "best"               # at the end: re-score the best trial's best.pt, 'all' trials', 'none'
    rescore_repeats: int = RESCORE_REPEATS     # its draws on fresh latents, each of the evaluations' image count
    callbacks: tuple[str | Any, ...] = ()      # keys of sid.cluster.callbacks.CALLBACKS or ray.tune.Callback objects

    @property
    def cpus_per_worker(self) -> float:
        return self.resources.cpus_per_worker if self.resources.cpus_per_worker is not None else 1.0

    @property
    def folder(self) -> Path:
        return Path(self.storage).resolve() / self.name

    def trial_configs(self) -> list[DistillConfig]:
        """The configs the space can produce at its corners (a Grid's or Choice's values, a Range's ends; a grid
        study: all of its trials); raises StudyError if one is invalid, so a study fails before starting rather than
        in every trial. The space must be checked (check_space)."""
        corners = {key: dimension.corners() for key, dimension in self.space.items()}
        configs = []
        for combo in itertools.product(*corners.values()):
            try:
                configs.append(trial_config(dict(zip(corners, combo)), self.base, setting_fields(self.space)))
            except (ConfigError, TypeError, ValueError) as exc:
                raise StudyError(f"study {self.name!r}: {exc}") from None
        return configs

    def validate(self) -> None:
        """StudyError (one line) for a study that cannot run, before Ray starts; the only check of the study's
        definition (the cluster's check is plan())."""
        def bad(what: str) -> StudyError:
            return StudyError(f"study {self.name!r}: {what}")

        if not self.name or self.name.startswith(".") or "/" in self.name:
            raise StudyError(f"study name must be a plain folder name, got {self.name!r}")
        try:
            check_space(self.space, self.searcher)
            for point in self.points_to_evaluate:
                check_point(point, self.space)
        except StudyError as exc:
            raise bad(str(exc)) from None
        if self.num_samples < 1:
            raise bad(f"num_samples must be >= 1, got {self.num_samples}")
        if self.reduction_factor <= 1:
            raise bad(f"reduction_factor must be > 1, got {self.reduction_factor}")
        if not (math.isfinite(self.noise_z) and self.noise_z >= 0):
            raise bad(f"noise_z must be a finite number >= 0, got {self.noise_z}")
        try:
            check_sampler(self.sampler)
            check_callbacks(self.callbacks)
        except StudyError as exc:
            raise bad(str(exc)) from None
        if self.optuna_storage is not None:
            try:
                open_storage(self.optuna_storage)
            except StorageError as exc:
                raise bad(str(exc)) from None
        if self.rescore_trials not in (*RESCORE_TRIALS, "none"):
            raise bad(f"rescore_trials must be one of {', '.join(RESCORE_TRIALS)}, none; got {self.rescore_trials!r}")
        if self.rescore_repeats < 1:
            raise bad(f"rescore_repeats must be >= 1, got {self.rescore_repeats}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise bad(f"max_concurrent must be >= 1, got {self.max_concurrent}")
        if not isinstance(self.resources, TrialResources):
            raise bad(f"resources must be a TrialResources, got {type(self.resources).__name__}")
        if self.cpus_per_worker * self.resources.workers <= DRIVER_CPU:
            raise bad(f"cpus_per_worker must leave room for the trial's driver ({DRIVER_CPU} CPU), "
                      f"got {self.cpus_per_worker}")
        try:  # the batch splits over each trial's workers (checked here, not in every trial's Train run)
            self.base.accumulation_rounds(self.resources.workers)
        except ConfigError as exc:
            raise bad(str(exc)) from None
        if is_uri(self.storage):
            raise StudyError(f"storage must be a local or mounted shared folder (e.g. NFS), got {self.storage}: "
                             "trials write their Parquet rows with plain file I/O")
        teacher = self.base.teacher
        kind = teacher_kind(teacher)  # None: a spec of no form (sid.teachers.TEACHER_FORMS)
        if kind is None or (kind == "file" and not is_url(teacher) and not Path(teacher).is_file()):
            raise bad(f"teacher {teacher}: no such file (on a cluster: a path every node sees) and no other teacher "
                      f"spec")
        blocked = next((p for p in (self.folder, *self.folder.parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise StudyError(f"storage: {blocked} exists and is not a folder")
        self.trial_configs()


def setting_fields(space: Mapping[str, Dimension]) -> dict[str, dict[str, Any]]:
    """The space's Settings as label -> {field: value} (empty without one): what trial_config expands a label into,
    saved in the TrialSettings."""
    dimension = space.get(SETTING)
    return {label: dict(fields) for label, fields in dimension.settings.items()} \
        if isinstance(dimension, Settings) else {}


def trial_config(tune_config: Mapping[str, Any], base: DistillConfig,
                 settings: Mapping[str, Mapping[str, Any]] | None = None) -> DistillConfig:
    """A trial's DistillConfig: the study's base config with the trial's searched values. Tune's trial config is
    flat: the searched fields, the label of a Settings dimension (SETTING, expanded into its fields by `settings`:
    setting_fields) and the preset's name (a label); the base travels in the TrialSettings."""
    cast = {"int": int, "float": float, "str": str}
    values = dict(tune_config)
    if SETTING in values:
        label = values.pop(SETTING)
        if label not in (settings or {}):
            raise StudyError(f"trial setting {label!r}: not a label of the study's Settings "
                             f"({', '.join(map(repr, settings or {})) or 'none'})")
        values = {**settings[label], **values}
    searched = {k: cast[FIELD_TYPES[k]](v) for k, v in values.items() if k in SEARCHABLE}
    return base.replace(**searched)


def run_trial(tune_config: dict[str, Any], settings: TrialSettings) -> None:
    """Tune function trainable (settings bound with tune.with_parameters): run the trial's config as one Ray Train
    run and wait for it. The Train run's name is stable per trial, so a restored trial continues from its newest
    checkpoint."""
    trial_id = ray.tune.get_context().get_trial_id()
    folder = settings.folder
    config = trial_config(tune_config, settings.base, settings.setting_fields)
    label, rows_path = tune_config.get(SETTING, ""), folder / EVALUATIONS_DIR / f"{trial_id}.parquet"
    rows = read_parquet(rows_path) if rows_path.exists() else None
    if rows is not None and len(rows) and rows["iteration"].max() >= config.iterations:
        # The trial finished just before the study was interrupted: its Train run has nothing left to report, so
        # report its last evaluation again, else Tune and Optuna would see a trial without a result.
        last = rows.sort_values("kimg").iloc[-1]
        metrics = {k: float(v) for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        ray.tune.report({**metrics, "best_fid": float(rows["fid"].min()), STEP_KEY: step_of(last)})
        return
    with phase("trial"):
        if settings.resources.workers == 1:
            run_in_trial(config, settings, trial_id, rows_path, setting=label)
        else:
            build_trainer(config, resources=settings.resources, rows_path=rows_path, storage_path=folder / TRAIN_DIR,
                          name=f"train-{trial_id}", trial_id=trial_id, run_folder=folder / RUNS_DIR / trial_id,
                          study=settings.study, setting=label, callbacks=[TuneReportCallback()],
                          check=False).fit()  # plan() checked


def run_in_trial(config: DistillConfig, settings: TrialSettings, trial_id: str, rows_path: Path,
                 setting: str = "") -> None:
    """A one-worker trial in its Tune trial process (no Ray Train worker group: a DDP group of one adds nothing but
    its start-up): the same run_rank as a Train worker's, with the trial's CPUs as torch threads and its GPU (Ray sets
    CUDA_VISIBLE_DEVICES); it continues from the trial's newest Tune checkpoint (a retry, a restored study). Tune's
    FailureConfig restarts it (_tuner), as Train's restarts a worker group."""
    assigned = ray.get_runtime_context().get_assigned_resources()
    device = torch.device("cuda", 0) if assigned.get("GPU") else torch.device("cpu")
    if device.type == "cpu":  # one thread per CPU of the trial, rounded, like a Train worker (distributed.py)
        torch.set_num_threads(max(1, round(assigned.get("CPU", 1))))
    state = None
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as saved:
            state = load_checkpoint(Path(saved) / RAY_STATE_FILE, config)
    folder = RunFolder(settings.folder / RUNS_DIR / trial_id, rows_path=rows_path, keep_state=False)
    run_rank(config, folder, device=device, state=state, study=settings.study, trial_id=trial_id, setting=setting,
             sinks=[Reporter(folder, tune=True)], progress=False)


def trial_process_resources(trial: TrialResources) -> dict[str, float]:
    """What Tune's trial process holds: a one-worker trial runs in it, so all of the trial's resources (plan()'s
    `trial`, the driver's CPU included); a larger trial only drives its Train worker group (DRIVER_CPU)."""
    if trial.workers > 1:
        return {"cpu": DRIVER_CPU}
    return {"cpu": trial.cpus_per_worker, **({"gpu": trial.gpus_per_worker} if trial.gpus_per_worker else {})}


def trial_capacity(cluster: Mapping[str, float], resources: TrialResources) -> int:
    """Trials the cluster holds at once: GPUs // GPUs per trial for GPU trials (and enough CPUs), else
    CPUs // CPUs per trial, so that no trial waits on resources it cannot get (`resources` resolved)."""
    def fit(kind: str, per_worker: float) -> int:
        return math.floor(cluster.get(kind, 0.0) / (resources.workers * per_worker) + 1e-9)

    cpus, gpus = resources.cpus_per_worker, resources.gpus_per_worker
    return fit("CPU", cpus) if not gpus else min(fit("CPU", cpus), fit("GPU", gpus))


def trial_label(trial: ray.tune.experiment.Trial) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in trial.config.items() if k in SEARCHABLE or k == SETTING)


class StudyCallback(ray.tune.Callback):
    """In the Tune driver: one line per evaluation and per trial start and end, a study progress line
    (sid.cluster.watch) after each trial start and end and at most every PROGRESS_EVERY_S between them;
    trials.parquet rewritten at each trial end and at the end of the study; at the first step (or at the end of a
    resumed study that had nothing left to run), the rows of trials Tune's (restored) state does not know set aside
    (sid.cluster.trials.set_aside_orphans) and the trials it restored as ended remembered as finished."""

    def __init__(self, folder: Path, study: str, divergence: Divergence, settings: TrialSettings,
                 planned: int = 1, concurrency: int = 0, trial_s: float | None = None) -> None:
        self.folder, self.study, self.divergence, self.settings = folder, study, divergence, settings
        self.final_kimg = settings.base.final_kimg
        self.progress = Progress(planned=planned, final_kimg=self.final_kimg, concurrency=concurrency, trial_s=trial_s)

    def on_step_begin(self, iteration, trials, **info) -> None:
        self.first_look(trials)

    def first_look(self, trials: list[Trial]) -> None:
        """Once, before any trial of this process started: Tune's trials are the restored ones."""
        if getattr(self, "orphans_checked", False):  # getattr: a callback unpickled from an older study lacks it
            return
        self.orphans_checked = True
        # Tune saves a trial as TERMINATED only once it ended (an interrupted one is saved RUNNING): finished, also
        # where a study saved before on_trial_complete dropped the results' cache lost its done result
        self.finished_before = {t.trial_id for t in trials if t.status == "TERMINATED"}
        for path in set_aside_orphans(self.folder, [t.trial_id for t in trials]):
            print(f"set aside {path}: the rows of a trial this study's saved Tune state does not know (it started "
                  f"after the last save of a study run before Tune's state was saved at each trial start)", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        print(f"[{trial.trial_id}] start  {trial_label(trial)}", flush=True)
        print(self.progress.line(trials, started=trial), flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        print(evaluation_line(trial.trial_id, result, self.final_kimg, trial_label(trial)), flush=True)
        self.progress.observe(trial.trial_id, float(result.get("kimg", 0.0)))
        if self.progress.due():
            print(self.progress.line(trials), flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # A trial that ran its budget returns without a done result, and Ray 2.60 sets done on its last result in
        # place, unseen by the results' cached JSON: without this, a save cached earlier restores it as 'running'.
        trial.run_metadata.invalidate_cache()
        self.write(trials, ended=trial)  # Tune marks it TERMINATED only after this call
        print(self.progress.line(trials, ended=trial), flush=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.write(trials)
        print(f"[{trial.trial_id}] error  {self.record(trial, 'error').error}  {trial_label(trial)}", flush=True)
        print(self.progress.line(trials, ended=trial), flush=True)

    def on_experiment_end(self, trials, **info) -> None:
        self.first_look(trials)  # a resumed finished study: Tune ran no step
        self.write(trials)

    @staticmethod
    def tune_state(trial: Trial, ended: bool) -> str:
        """'error', 'terminated' (it ended by itself or a scheduler/stopper ended it: Tune then marks its last
        result done), or 'running'. A trial Tune ends because the study was interrupted is TERMINATED in memory
        without a done result (Tune saved it RUNNING before ending it), and --resume continues it: 'running'."""
        if trial.status == "ERROR":
            return "error"
        finished = ended or trial.status == "TERMINATED"
        return "terminated" if finished and trial.last_result.get("done") else "running"

    def write(self, trials: list[Trial], ended: Trial | None = None) -> None:
        finished = getattr(self, "finished_before", set())
        records = [self.record(t, "terminated" if t.trial_id in finished else self.tune_state(t, t is ended))
                   for t in trials]
        table = write_trials_table(self.folder, self.study, records, self.divergence)
        if ended is not None and ended.last_result.get("done"):
            row = table.set_index("trial_id").loc[ended.trial_id]
            print(f"[{ended.trial_id}] {row['state']}  best {row['best_fid']:.4f} at kimg {row['best_kimg']:g}"
                  f"  {trial_label(ended)}", flush=True)

    def record(self, trial: Trial, state: str) -> TrialRecord:
        error = ""
        if state == "error":
            text = Path(trial.error_file).read_text() if trial.error_file and Path(trial.error_file).exists() else ""
            error = next((line for line in reversed(text.splitlines()) if line.strip()), "unknown error")[:500]
        return TrialRecord(trial.trial_id, state, error,
                           trial_config(trial.config, self.settings.base, self.settings.setting_fields),
                           self.settings.resources.workers, float(trial.last_result.get("kimg", math.nan)),
                           str(trial.config.get(SETTING, "")))


def trial_dirname(trial: Trial) -> str:
    return f"trial-{trial.trial_id}"


def plan(study: Study, folder: Path, saved: TrialSettings | None = None) -> tuple[TrialSettings, TrialResources, int]:
    """The study's one check against the connected cluster, and what follows from it: the settings every trial gets
    (a new study: its resources resolved here, each worker's CPUs less the driver's share, the placement chosen; a
    resumed one: its `saved` settings, the placement chosen if they left it open), one trial's resources as the
    cluster holds them (the driver's CPU included), and the trials to run at once. Raises ResourceError when no
    node can ever hold a trial. `folder`: where the trials write (the study's, or its dry run's)."""
    if saved is None:
        trial = resolve(study.resources, cpus_default=1.0)
        worker = trial.replace(cpus_per_worker=trial.cpus_per_worker - DRIVER_CPU / trial.workers)
    else:
        worker = saved.resources
        trial = worker.replace(cpus_per_worker=worker.cpus_per_worker + DRIVER_CPU / worker.workers)
    placement = worker.placement_strategy or default_placement(worker.workers, worker.per_worker())
    worker = worker.replace(placement_strategy=placement)
    check_resources(worker.workers, worker.per_worker(), placement)
    settings = TrialSettings(base=study.base, study=study.name, folder=folder, resources=worker,
                             sampler=saved_name(study.sampler), callbacks=tuple(map(saved_name, study.callbacks)),
                             setting_fields=setting_fields(study.space)) \
        if saved is None else dataclasses.replace(saved, resources=worker)
    # Counts the nodes that exist now: on an autoscaling cluster (which may have none yet) give max_concurrent.
    concurrency = study.max_concurrent or max(1, trial_capacity(ray.cluster_resources(), trial))
    return settings, trial, concurrency


def tracker_callbacks(study: Study) -> list[Any]:
    """Ray Tune's own logger callbacks for the study's trackers (sid/cluster/study_trackers.py: each evaluation's
    metrics stepped on images seen, and its sample grid)."""
    if not study.tracking.trackers:
        return []
    from sid.cluster.study_trackers import StudyMLflow, StudyTensorBoard, StudyWandb  # noqa: PLC0415 (slow import)

    callbacks: list[Any] = []
    for name in study.tracking.trackers:
        if name == "tensorboard":  # <study>/trial-<id>/events.out.tfevents.* (Tune adds none of its own then)
            callbacks.append(StudyTensorBoard(study.folder))
        elif name == "mlflow":
            callbacks.append(StudyMLflow(study.folder, tracking_uri=mlflow_uri(study.tracking.tracking_uri,
                                                                               study.folder / MLFLOW_DIR),
                                         experiment_name=study.tracking.experiment or study.name))
        elif name == "wandb":  # <study>/wandb/ (offline-)run-*-<trial_id>
            callbacks.append(StudyWandb(study.folder, project=study.tracking.experiment or study.name,
                                        group=study.name, dir=str(study.folder)))
    return callbacks


def planned_trials(study: Study) -> int:
    """Trials the study runs: grid: every combination num_samples times; optuna: num_samples."""
    if study.searcher != "grid":
        return study.num_samples
    return study.num_samples * math.prod(len(d.values) for d in study.space.values()
                                         if isinstance(d, (Grid, Settings)))


def _tuner(study: Study, trainable: Any, concurrency: int, settings: TrialSettings,
           trial_s: float | None = None) -> ray.tune.Tuner:
    """`trial_s`: one trial's seconds by the calibration, the progress line's ETA until trials measure theirs."""
    base = study.base
    search_alg, param_space = None, {**tune_space(study.space), "preset": base.preset}
    if study.searcher == "optuna":  # metric/mode given to the searcher itself (docs/studies.md)
        search_alg, param_space = make_searcher(study), {"preset": base.preset}
    rule = None
    if study.asha or study.curve_stop:
        grace = study.grace_kimg or base.evaluation_kimg()[1]  # default: the first evaluation after kimg 0
        rule = CurveRule(grace_kimg=min(grace, base.final_kimg), final_kimg=base.final_kimg,
                         eta=study.reduction_factor if study.asha else math.inf, z=study.noise_z,
                         curve=study.curve_stop)
    # One-worker trials run in Tune's trial process (run_in_trial): Tune restarts them, and reusing the process for
    # the next trial keeps what it loaded (sid.process_cache). Larger trials: Train restarts their worker groups.
    in_trial = settings.resources.workers == 1
    return ray.tune.Tuner(
        trainable, param_space=param_space,
        # SaveBeforeStart: Tune's state saved before a new trial starts, so a resume knows every trial that wrote rows
        tune_config=ray.tune.TuneConfig(search_alg=search_alg, scheduler=SaveBeforeStart(),
                                        num_samples=study.num_samples, max_concurrent_trials=concurrency,
                                        trial_dirname_creator=trial_dirname, reuse_actors=in_trial),
        run_config=ray.tune.RunConfig(
            name=study.name, storage_path=str(study.folder.parent), verbose=0,
            stop=StudyStopper(study.folder, study.divergence, rule),
            callbacks=[StudyCallback(study.folder, study.name, study.divergence, settings, planned_trials(study),
                                     concurrency, trial_s),
                       *tracker_callbacks(study), *build_callbacks(study)],
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=2),
            # a one-worker trial restarts through Tune; a Train group restarts its own workers
            failure_config=ray.tune.FailureConfig(max_failures=settings.resources.max_failures if in_trial else 0)),
    )


def resumed_sampler(study: Study, saved: TrialSettings) -> Any:
    """The sampler a resumed study uses: None to keep its saved one (a key: Tune restores the sampler it built, with
    its random state), else the object given again for one given as an object (StudyError when none is)."""
    if not saved.sampler.startswith(OBJECT):
        if saved.sampler not in SAMPLERS:
            raise StudyError(f"--resume: study {study.name!r} names the sampler key {saved.sampler!r}, not registered "
                             f"in this process (register_sampler it before resuming)")
        return None
    if isinstance(study.sampler, str):
        raise StudyError(f"--resume: study {study.name!r} ran with a sampler object ({saved.sampler[len(OBJECT):]}), "
                         f"which is not saved; give it again: Study(..., sampler=<the sampler>)")
    return study.sampler


def reattach(tuner: ray.tune.Tuner, study: Study, saved: TrialSettings) -> None:
    """A restored Tuner with the study's callbacks and sampler for this process: keys rebuilt from the registries,
    objects as given again. Tune unpickles the RunConfig and the searcher it saved; the study's own callbacks
    (StudyCallback, the trackers) stay as restored, the user's (the last len(saved.callbacks)) are replaced. The
    scheduler is SaveBeforeStart, also for a study saved before it existed (its FIFOScheduler schedules alike)."""
    sampler = resumed_sampler(study, saved) if study.searcher == "optuna" else None
    callbacks = build_callbacks(study, saved.callbacks)
    internal = tuner._local_tuner  # Ray 2.60: Tuner.restore keeps its TunerInternal here (no public setter)
    run_config = internal.get_run_config()
    own = list(run_config.callbacks or [])[:len(run_config.callbacks or []) - len(saved.callbacks)]
    run_config.callbacks = [*own, *callbacks]
    internal._tune_config.scheduler = SaveBeforeStart()
    if sampler is not None:
        internal._tune_config.search_alg.resumed_sampler = sampler  # applied after Tune restores the searcher


def study_yaml(study: Study) -> str:
    """config.yaml of a study made in Python: its definition (the space as data: sid.cluster.space.space_data), the
    base config in full."""
    optuna = dict(sampler=saved_name(study.sampler), optuna_seed=study.optuna_seed) if study.searcher == "optuna" \
        else {}
    return yaml.safe_dump(dict(name=study.name, searcher=study.searcher, num_samples=study.num_samples,
                               asha=study.asha, space=space_data(study.space), **optuna,
                               callbacks=list(map(saved_name, study.callbacks)),
                               resources=dataclasses.asdict(study.resources), base=study.base.to_dict()),
                          sort_keys=False)


def rescore_at_end(study: Study, worker: TrialResources) -> None:
    """Once every trial has ended: the study's chosen generator(s) re-scored on fresh latents (sid.scoring, into each
    run folder's scores.parquet), as a Ray task on one worker's resources. A failure is reported, not raised: the
    trials' results stand, and `sid evaluate --rescore <study>` does the same later (finished draws are kept)."""
    path = study.folder / TRIALS_FILE
    table = read_parquet(path) if path.is_file() else pd.DataFrame()
    if study.rescore_trials == "none" or table.empty or (table["state"] == "running").any():
        return
    gpus = worker.gpus_per_worker or 0
    task = ray.remote(rescore_study).options(num_cpus=worker.cpus_per_worker, num_gpus=gpus)
    print(f"re-scoring {'the best trial' if study.rescore_trials == 'best' else 'every trial'} on fresh latents "
          f"({study.rescore_repeats} draws)", flush=True)
    try:
        with phase("rescore"):
            rows = ray.get(task.remote(study.folder, trials=study.rescore_trials, repeats=study.rescore_repeats,
                                       device="cuda" if gpus else "cpu"))
    except Exception as exc:  # any failure of the re-score leaves the study's own results intact
        cause = getattr(exc, "cause", None) or exc
        print(f"re-score failed ({type(cause).__name__}: {str(cause).splitlines()[-1] if str(cause) else ''}); "
              f"run `sid evaluate --rescore {study.folder}"
              f"{' --rescore-trials all' if study.rescore_trials == 'all' else ''}` to finish it", flush=True)
        return
    for source, group in rows.groupby("source", sort=False):
        fid = group["fid"].astype(float)
        print(f"re-scored {source}: FD {fid.mean():.4f} +- {fid.std(ddof=1) if len(fid) > 1 else math.nan:.4f} "
              f"over {len(fid)} draws of {int(group['fid_images'].iloc[0])} images", flush=True)


def run_study(study: Study, *, resume: bool = False, address: str | None = None, config_text: str | None = None,
              calibration: str | Path | None = None) -> pd.DataFrame:
    """Run (or, with resume, continue) a study; return its trials table (also in <folder>/trials.parquet); Tune's
    own view of it is sid.cluster.trust.result_grid(study.folder). `config_text`: the study command's resolved
    config, written to <folder>/config.yaml (a resume keeps the first one). `calibration`: a calibration.json of the
    preset (sid.plan) for the progress line's ETA until the trials have measured their rate; default: the one --plan
    left in the study folder, if any (a resumed study keeps its first run's).

    Uses the connected Ray if there is one, else joins `address` ('auto': a running cluster) or starts a local one.
    A resumed study keeps its saved definition (space, searcher and Optuna state, scheduler); unfinished and errored
    trials continue from their Train checkpoints, and their rows are rewritten, never duplicated."""
    study.validate()
    folder = study.folder
    restorable = ray.tune.Tuner.can_restore(folder) if folder.exists() else False
    if resume and not restorable:
        raise StudyError(f"--resume: {folder} holds no study to continue")
    saved = None
    if resume:
        if why := untrusted_study(folder):  # before anything of Ray or of ours reads the study's files
            raise StudyError(f"--resume: {why}")
        saved = TrialSettings.read(folder)  # before Ray starts: a torn or edited file is one line
        if study.searcher == "optuna":
            resumed_sampler(study, saved)  # objects given in Python are asked for again, before Ray starts
        check_saved_callbacks(study, saved.callbacks)
    if not resume and folder.exists() and any(p.name not in (PLAN_FILE, CALIBRATION_FILE) for p in folder.iterdir()):
        raise StudyError(f"{folder} already holds a study; pass --resume to continue it, or another --name")
    try:
        # a resumed study's progress line is its first run's, restored with Tune's callbacks
        calibrated = None if resume else study_calibration(folder, study.base.preset, calibration)
    except PlanError as exc:
        raise StudyError(str(exc)) from None
    started = connect(address, quiet=True)  # our progress lines, not Tune's tables
    try:
        settings, trial, concurrency = plan(study, folder, saved)
        if not resume:
            settings.write()
            write_text_atomic(folder / CONFIG_FILE, config_text or study_yaml(study))
        trainable = ray.tune.with_resources(ray.tune.with_parameters(run_trial, settings=settings),
                                            trial_process_resources(trial))
        if resume:
            print(f"resuming {folder}", flush=True)
            tuner = ray.tune.Tuner.restore(str(folder), trainable, resume_unfinished=True, resume_errored=True)
            reattach(tuner, study, saved)
        else:
            print(f"study {study.name}: up to {concurrency} trial(s) at once, {trial.workers} worker(s) x "
                  f"{trial.per_worker()} each; {folder}", flush=True)
            trial_s = calibrated_trial_s(calibrated, study.base, trial.workers)
            tuner = _tuner(study, trainable, concurrency, settings, trial_s)
        with phase("tune"):
            tuner.fit()
        rescore_at_end(study, settings.resources)
    finally:
        if started:
            ray.shutdown()
    return read_parquet(folder / TRIALS_FILE) if (folder / TRIALS_FILE).exists() else pd.DataFrame()
