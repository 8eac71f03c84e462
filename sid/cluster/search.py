"""How a study searches and stops (the Tune side of sid.cluster.study): its space in Tune's terms, an Optuna study that
persists in a storage and is told the truth about stopped trials, and one stopper for divergence, noise-aware
successive halving and curve forecasts.

* Space: `tune_space` is the one translation of a study's space (sid/cluster/space.py) to Tune: Grid ->
  grid_search, Choice -> choice, Range -> uniform, loguniform or randint as sid.config.SEARCHABLE says.
* Storage: a journal file `<study>/optuna.journal` by default, or a database URL (`sqlite:///...`): `optuna-dashboard
  <storage>` and `optuna.load_study(study_name=<name>, storage=<storage>)` show the live study.
* Feedback: Optuna hears a trial's best FD as COMPLETE only when the trial reached the end of its budget; a trial
  stopped early or diverged is PRUNED (with its intermediate values: each evaluation's FD at its images seen), a
  failed one FAIL, so a value from a first rung is never taken for a final result. The metric is named
  `FD <detector> (<n> images)`; user attributes `tune_trial_id` and `run_folder` link an Optuna trial to Tune's.
* Stopping: sid/cluster/stopping.py's rules on the trial's Parquet rows (read, not kept, so a restored study judges the
  whole history); the reason of every stop goes to `<study>/stops/<trial_id>.json` and from there into
  trials.parquet.
* Saving: `SaveBeforeStart` saves Tune's experiment state (trials, the searcher's state) before a new trial gets a
  process, so every trial that writes rows is one a resumed study restores (docs/reliability.md, "Study resume").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import ray.tune
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from sid.cluster.space import SAMPLERS, Choice, Dimension, Grid, Range, Settings
from sid.cluster.stopping import CurveRule, Point
from sid.cluster.trials import record_stop
from sid.config import SEARCHABLE
from sid.files import EVALUATIONS_DIR, JOURNAL, RUNS_DIR
from sid.results import Divergence, read_parquet
from sid.tracking import step_of


def tune_space(space: Mapping[str, Dimension]) -> dict[str, Any]:
    """A study's space (checked: sid.cluster.space.check_space) in Ray Tune's terms, the scale of each Range from
    the registry: 'log' -> loguniform, 'int' -> randint over low..high (both included), else uniform; a Settings:
    a grid over its labels."""
    tuned = {}
    for field, dimension in space.items():
        if isinstance(dimension, Settings):  # a grid over the labels; trial_config expands each into its fields
            tuned[field] = ray.tune.grid_search(list(dimension.values))
            continue
        scale = SEARCHABLE[field]
        if isinstance(dimension, Grid):
            tuned[field] = ray.tune.grid_search(list(dimension.values))
        elif isinstance(dimension, Choice):
            tuned[field] = ray.tune.choice(list(dimension.values))
        elif isinstance(dimension, Range) and scale == "int":
            tuned[field] = ray.tune.randint(dimension.low, dimension.high + 1)  # Tune's upper bound is excluded
        elif isinstance(dimension, Range):
            uniform = ray.tune.loguniform if scale == "log" else ray.tune.uniform
            tuned[field] = uniform(float(dimension.low), float(dimension.high))
        else:
            raise TypeError(f"{field}: not a Grid, Range or Choice: {dimension!r}")
    return tuned


if TYPE_CHECKING:
    from sid.cluster.study import Study


class StorageError(ValueError):
    """An Optuna storage that cannot be opened; the message names it."""


def open_storage(spec: str | Path) -> optuna.storages.BaseStorage:
    """An Optuna storage: a database URL (anything with '://', e.g. sqlite:///study.db) or a journal file path."""
    text = str(spec)
    try:
        if "://" in text:
            return optuna.storages.RDBStorage(text)
        Path(text).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(text))
    except Exception as exc:  # SQLAlchemy, file and URL errors: one line naming the storage
        raise StorageError(f"cannot open the Optuna storage {text!r} (expected a database URL such as "
                           f"sqlite:///study.db or a writable journal file path): {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def make_sampler(sampler: str | optuna.samplers.BaseSampler, seed: int) -> optuna.samplers.BaseSampler:
    """A study's sampler: a key of sid.cluster.space.SAMPLERS made with `seed`, or an object as given."""
    if not isinstance(sampler, str):
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler](seed)


class FidelityOptunaSearch(OptunaSearch):
    """OptunaSearch that tells stopped and diverged trials as PRUNED, not as completed results at full budget, and
    reports each evaluation's FD as an intermediate value at its images seen (round(kimg * 1000): monotonic across
    restarts, unlike Tune's counter, and comparable across batch sizes). The study's metric is named (detector and
    images, for optuna-dashboard) and each Optuna trial carries its Tune trial id and run folder as user attributes."""

    def __init__(self, *args: Any, final_kimg: float, metric_name: str | None = None,
                 run_root: Path | None = None, **kwargs: Any) -> None:
        self.final_kimg, self.metric_name, self.run_root = final_kimg, metric_name, run_root
        super().__init__(*args, **kwargs)
        if metric_name is not None and getattr(self, "_ot_study", None) is not None:
            with warnings.catch_warnings():  # experimental since Optuna 3.2, still so in 5.0: no line per study
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names([metric_name])

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if config is not None and ot_trial is not None:
            ot_trial.set_user_attr("tune_trial_id", trial_id)
            if self.run_root is not None:
                ot_trial.set_user_attr("run_folder", str(Path(self.run_root) / trial_id))
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = result.get("fid")  # this evaluation's FD: the curve, not the running best
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or not _finite(value) or "kimg" not in result:
            return
        # Optuna keeps the first value of a step; a trial the journal already holds as finished (a study resumed from
        # an older searcher state) takes no more reports.
        try:
            ot_trial.report(float(value), step_of(result))
        except RuntimeError:
            pass

    def restore(self, checkpoint_path: str) -> None:
        """Tune's saved searcher state, then: a trial the storage holds as running that this state does not know was
        asked just before the study was interrupted and never ran: FAIL, so that no sampler waits on it. A resumed
        study's sampler object, given again (sid.cluster.study.reattach sets `resumed_sampler`), replaces the
        unpickled one."""
        sampler = self.__dict__.pop("resumed_sampler", None)
        super().restore(checkpoint_path)
        if sampler is not None:
            self._sampler = self._ot_study.sampler = sampler
        known = {t.number for t in self._ot_trials.values()}
        for orphan in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if orphan.number not in known:
                self._ot_study.tell(orphan.number, state=TrialState.FAIL, skip_if_finished=True)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        if result is not None and not error and "kimg" in result:
            # Tune hands the result it stops a trial on to this method only; a completed trial's last result came
            # through on_trial_result already (Optuna warns on a step reported twice)
            frozen = next(t for t in self._ot_study.get_trials(deepcopy=False) if t.number == ot_trial.number)
            if step_of(result) not in frozen.intermediate_values:
                self.on_trial_result(trial_id, result)
        value = (result or {}).get(self.metric)
        reached = (result or {}).get("kimg", -math.inf) >= self.final_kimg - 1e-9
        if error or result is None:
            state, value = TrialState.FAIL, None
        elif reached and _finite(value) and _finite((result or {}).get("fid", math.nan)):
            state, value = TrialState.COMPLETE, float(value)
        else:  # stopped at a rung, by a forecast, or diverged: its numbers are not a result at full budget
            state, value = TrialState.PRUNED, None
        try:  # skip_if_finished: the journal may hold it finished already (see on_trial_result)
            self._ot_study.tell(ot_trial, value, state=state, skip_if_finished=True)
        except (RuntimeError, ValueError) as exc:
            print(f"optuna: trial {trial_id} not told ({exc})", flush=True)
        self._completed_trials.add(trial_id)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def make_searcher(study: Study) -> FidelityOptunaSearch:
    """The Optuna searcher of a study (sid.cluster.study.Study with searcher='optuna')."""
    storage = open_storage(study.optuna_storage or study.folder / JOURNAL)
    return FidelityOptunaSearch(space=OptunaSearch.convert_search_space(tune_space(study.space)), metric="best_fid",
                                mode="min",
                                sampler=make_sampler(study.sampler, study.optuna_seed), study_name=study.name,
                                storage=storage, points_to_evaluate=list(study.points_to_evaluate) or None,
                                final_kimg=study.base.final_kimg, metric_name=metric_name(study.base),
                                run_root=study.folder / RUNS_DIR)


def metric_name(config: Any) -> str:
    """The name of a study's Optuna metric: 'FD digits-features-v1 (4096 images)' (a DistillConfig)."""
    images = f"{config.fid_images} images"
    if config.fid_images_final and config.fid_images_final != config.fid_images:
        images += f", {config.fid_images_final} at the end"
    return f"FD {config.fid_detector} ({images})"


class StudyStopper(ray.tune.Stopper):
    """Stops a trial whose rows show divergence (at once), and, when the study asks for it, by the noise-aware rung
    rule and the curve forecast of sid/cluster/stopping.py. It reads the trial's Parquet rows (written before the
    report), so it judges the whole history, also after a restore; each stop's reason is written for the trials
    table."""

    def __init__(self, folder: Path, divergence: Divergence, rule: CurveRule | None) -> None:
        self.folder, self.divergence, self.rule = folder, divergence, rule

    def __call__(self, trial_id: str, result: dict) -> bool:
        path = self.folder / EVALUATIONS_DIR / f"{trial_id}.parquet"
        rows = read_parquet(path) if path.exists() else None
        if rows is not None:  # the worker may be evaluations ahead of this result: judge the curve up to it
            rows = rows[rows["kimg"] <= result.get("kimg", math.inf) + 1e-9]
        reason = None
        if not _finite(result.get("fid", 0.0)):
            reason = f"diverged: fid {result.get('fid')} at kimg {result.get('kimg', math.nan):g}"
        elif rows is not None and (why := self.divergence.reason(rows)) is not None:
            reason = f"diverged: {why}"
        elif self.rule is not None and rows is not None:
            reason = self.rule.decide(trial_id, points_of(rows))
        if reason is not None:
            record_stop(self.folder, trial_id, reason, result.get("kimg", math.nan))
        return reason is not None

    def stop_all(self) -> bool:
        return False


class SaveBeforeStart(FIFOScheduler):
    """Tune's first-in-first-out scheduling, and Tune's experiment state (experiment_state-*.json: every trial, its
    config and checkpoints; searcher-state-*.pkl: the Optuna trial of each) saved into the study folder, the write
    waited for, whenever the searcher added trials since the last such save, before Tune gives any of them a process.
    Without it Tune saves every 10 s at most: a trial started since then wrote rows a killed study's --resume did not
    know, and the searcher sampled another trial in its place. One save per step that added trials (as many as the
    searcher added at once), in the driver, before the new trials start (docs/reliability.md: its time)."""

    def __init__(self) -> None:
        super().__init__()
        self.saved = 0  # trials Tune had at this scheduler's last save (a restored study's scheduler starts at 0)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        # Tune calls this once per step, after the searcher added that step's trials and before it starts any trial
        # (TuneController._maybe_add_actors: every trial's actor, new or reused, is requested after this call).
        trials = len(tune_controller.get_trials())  # Tune only ever appends to its trials
        if trials > self.saved:
            # Ray 2.60: schedulers get the controller wrapped (TrialRunnerWrapper), which keeps it here; its
            # checkpoint() is Tune's own save (force: now, whatever the period; wait: until it is in the study folder).
            tune_controller._tune_controller.checkpoint(force=True, wait=True)
            self.saved = trials
        return super().choose_trial_to_run(tune_controller)


def points_of(rows: Any) -> list[Point]:
    std = rows["fid_std"] if "fid_std" in rows else [math.nan] * len(rows)
    return [Point(float(k), float(f), float(s) if s is not None else math.nan)
            for k, f, s in zip(rows["kimg"], rows["fid"], std)]
