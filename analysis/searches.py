"""An Optuna search as the analysis reads it: the study from its own storage where one exists (`<study>/optuna.journal`,
or the `optuna_storage` recorded in the study's config.yaml), so a trial the study pruned stays pruned; without one,
rebuilt from the trials table the way the study tells Optuna (sid/cluster/search.py): COMPLETE only for a trial that
reached the end of its budget, PRUNED (with its running best FD at each evaluation's iteration) for one stopped early,
diverged or short of its budget, FAIL for an error. Storages are only read: nothing is created or changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import yaml
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from analysis import common
from sid.files import CONFIG_FILE, JOURNAL

CATEGORICAL = ("precision",)
SEARCHABLE = (*common.SWEEPABLE, *CATEGORICAL)  # what an imported or hand-made study may vary
MIN_IMPORTANCE_TRIALS = 10  # fANOVA on fewer complete trials ranks parameters by chance as often as not
REBUILT = "rebuilt from the trials table (no Optuna storage found)"


@dataclass
class Search:
    """One Optuna study as the report reads it."""

    name: str
    study: optuna.Study
    source: str            # the storage it was read from, or REBUILT
    trials: pd.DataFrame   # the study's trials in start order, with optuna_state and optuna_number
    params: list[str]      # every searched field


def searched(trials: pd.DataFrame) -> list[str]:
    """The hyperparameters that vary over the study's trials."""
    return [p for p in SEARCHABLE if p in trials and trials[p].nunique(dropna=True) > 1]


def _distributions(trials: pd.DataFrame, params: Sequence[str]) -> dict[str, optuna.distributions.BaseDistribution]:
    dists: dict[str, optuna.distributions.BaseDistribution] = {}
    for p in params:
        values = trials[p].dropna()
        if p in CATEGORICAL:
            dists[p] = optuna.distributions.CategoricalDistribution(sorted(values.unique()))
        elif pd.api.types.is_integer_dtype(values):
            dists[p] = optuna.distributions.IntDistribution(int(values.min()), int(values.max()))
        else:
            log = p in common.LOG_PARAMS and values.min() > 0
            dists[p] = optuna.distributions.FloatDistribution(float(values.min()), float(values.max()), log=log)
    return dists


def full_budget(trials: pd.DataFrame) -> pd.Series:
    """Whether each trial reached the end of its planned budget (duration_kimg rounded up to whole iterations, as
    sid.config.DistillConfig.final_kimg; the study's longest trial where the plan is not recorded)."""
    last = pd.to_numeric(trials["last_kimg"], errors="coerce")
    planned = pd.Series(math.nan, index=trials.index)
    if "duration_kimg" in trials and "batch" in trials:
        duration = pd.to_numeric(trials["duration_kimg"], errors="coerce")
        batch = pd.to_numeric(trials["batch"], errors="coerce")
        planned = np.ceil(duration * 1000 / batch - 1e-9) * batch / 1000
    planned = planned.fillna(last.max())
    return last >= planned - 1e-6


def rebuilt_state(trials: pd.DataFrame) -> pd.Series:
    """The state the study's searcher tells Optuna (sid/cluster/search.py): COMPLETE for a trial that reached its
    budget with a finite value, PRUNED for one stopped early, diverged or short of its budget, FAIL for an error,
    RUNNING for an unfinished one."""
    state = trials["state"].fillna("completed")
    finite = np.isfinite(pd.to_numeric(trials["best_fid"], errors="coerce"))
    complete = (state == "completed") & finite & full_budget(trials)
    out = pd.Series("PRUNED", index=trials.index)
    out[complete] = "COMPLETE"
    out[state == "error"] = "FAIL"
    out[state == "running"] = "RUNNING"
    return out


def to_optuna(trials: pd.DataFrame, params: Sequence[str], name: str = "study",
              evals: pd.DataFrame | None = None) -> optuna.Study:
    """An in-memory Optuna study holding the trials (objective: best_fid, minimised) in the given row order, each in
    rebuilt_state(); with `evals`, every trial's intermediate values are its running best FD at each evaluation's
    iteration (what the study reports)."""
    dists = _distributions(trials, params)
    states = rebuilt_state(trials)
    study = optuna.create_study(study_name=name, direction="minimize", storage=optuna.storages.InMemoryStorage())
    made = []
    for i, r in trials.iterrows():
        params_ = {p: (r[p] if p in CATEGORICAL else dists[p].to_external_repr(float(r[p]))) for p in params}
        state = TrialState[states[i]]
        steps = {}
        if evals is not None:
            rows = evals[(evals["study"] == r["study"]) & (evals["trial_id"] == r["trial_id"])].sort_values("kimg")
            running = rows["fid"].where(np.isfinite(rows["fid"])).cummin()
            steps = {int(s): float(v) for s, v in zip(rows["iteration"], running) if math.isfinite(v)}
        made.append(optuna.trial.create_trial(
            params=params_, distributions=dists, intermediate_values=steps,
            value=float(r["best_fid"]) if state == TrialState.COMPLETE else None, state=state,
            user_attrs={"trial_id": r["trial_id"]}))
    study.add_trials(made)
    return study


def storage_of(folder: Path) -> tuple[object | None, str]:
    """(the Optuna storage of a study folder, where it is) or (None, why not): `<folder>/optuna.journal`, else the
    `optuna_storage` its config.yaml records (a journal file or a database URL). Read only: nothing is created."""
    if (folder / JOURNAL).is_file():
        return journal(folder / JOURNAL), str(folder / JOURNAL)
    recorded = None
    if (folder / CONFIG_FILE).is_file():
        try:
            config = yaml.safe_load((folder / CONFIG_FILE).read_text(errors="replace"))
        except yaml.YAMLError:
            config = None
        recorded = config.get("optuna_storage") if isinstance(config, dict) else None
    if not isinstance(recorded, str) or not recorded:
        return None, REBUILT
    if "://" in recorded:
        if recorded.startswith("sqlite:///") and not Path(recorded[len("sqlite:///"):]).is_file():
            return None, f"{REBUILT}: the recorded storage {recorded} does not exist here"
        return optuna.storages.RDBStorage(recorded, skip_table_creation=True), recorded
    path = Path(recorded) if Path(recorded).is_absolute() else folder / recorded
    if not path.is_file():
        return None, f"{REBUILT}: the recorded storage {recorded} does not exist here"
    return journal(path), str(path)


def is_search(paths: Sequence[str | Path], trials: pd.DataFrame, x: str) -> bool:
    """Whether the trials are an Optuna search rather than a sweep of `x`: fields other than x (and those a setting
    label sets: common.set_by) vary, or a folder has an Optuna storage."""
    if [p for p in searched(trials) if p != x and p not in common.set_by(trials, x)]:
        return True
    return any(_recorded_storage(Path(f)) for f in paths if Path(f).is_dir())


def _recorded_storage(folder: Path) -> bool:
    if (folder / JOURNAL).is_file():
        return True
    try:
        config = yaml.safe_load((folder / CONFIG_FILE).read_text(errors="replace")) if (
            folder / CONFIG_FILE).is_file() else None
    except yaml.YAMLError:
        return False
    return isinstance(config, dict) and isinstance(config.get("optuna_storage"), str) and bool(config["optuna_storage"])


def journal(path: Path) -> optuna.storages.JournalStorage:
    """A journal storage on an existing file (JournalFileBackend creates only a missing file; reads take no lock)."""
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def read_study(folder: Path, name: str) -> tuple[optuna.Study | None, str]:
    """The Optuna study named `name` (or the storage's only study) from the folder's storage, or (None, why)."""
    try:
        storage, where = storage_of(folder)
        if storage is None:
            return None, where
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        chosen = name if name in names else names[0] if len(names) == 1 else None
        if chosen is None:
            return None, f"{REBUILT}: {where} holds no study named {name!r} (it holds {', '.join(names) or 'none'})"
        return optuna.load_study(study_name=chosen, storage=storage), where
    except Exception as exc:  # a cut or foreign journal, an unreachable database: fall back, saying why
        return None, f"{REBUILT}: the storage of {folder} could not be read ({type(exc).__name__}: " \
                     f"{str(exc).splitlines()[0] if str(exc) else ''})"


def _match(study: optuna.Study, trials: pd.DataFrame, params: Sequence[str]) -> dict[int, int]:
    """Optuna trial number -> row index of `trials` with the same searched values (each row used once): the study
    stores no trial id in Optuna, and the values a trial ran with are the ones Optuna suggested."""
    free = list(trials.index)
    found = {}
    for t in study.get_trials(deepcopy=False):
        for i in free:
            if all(p in t.params and _same(t.params[p], trials.at[i, p]) for p in params):
                found[t.number] = i
                free.remove(i)
                break
    return found


def _same(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float, np.number)):
        return bool(np.isclose(float(a), float(b), rtol=1e-9, atol=0))
    return a == b


def search(paths: Sequence[str | Path], trials: pd.DataFrame, evals: pd.DataFrame | None = None,
           name: str | None = None) -> Search:
    """The Optuna view of one study of `trials` (its storage if found under `paths`, else rebuilt)."""
    names = sorted(trials["study"].unique())
    if name is None and len(names) > 1:
        raise common.AnalysisError(f"trials of several studies ({', '.join(names)}): choose one")
    name = names[0] if name is None else name
    rows = trials[trials["study"] == name].sort_values(["first_written", "trial_id"]).reset_index(drop=True)
    if rows.empty:
        raise common.AnalysisError(f"no trials of study {name!r}")
    study, where = None, REBUILT
    for folder in map(Path, paths):
        for candidate in (folder, folder / name):
            if candidate.is_dir() and ((candidate / JOURNAL).exists() or (candidate / CONFIG_FILE).exists()):
                study, where = read_study(candidate, name)
                if study is not None or where != REBUILT:
                    break
        if study is not None:
            break
    if study is None:
        params = searched(rows)
        study = to_optuna(rows, params, name, evals)
        rows = rows.assign(optuna_state=rebuilt_state(rows).to_numpy(), optuna_number=np.arange(len(rows)))
        return Search(name, study, where, rows, params)
    params = sorted({p for t in study.trials for p in t.distributions}, key=_param_order)
    matched = _match(study, rows, params)
    rows = rows.assign(optuna_state=rebuilt_state(rows).to_numpy(), optuna_number=-1)
    for number, i in matched.items():
        rows.at[i, "optuna_state"] = study.trials[number].state.name
        rows.at[i, "optuna_number"] = number
    lost = [t for t in study.trials if t.number not in matched]  # asked, never wrote a row (failed or orphaned)
    if lost:
        extra = pd.DataFrame([{"study": name, "trial_id": f"optuna #{t.number}", "state": t.state.name.lower(),
                               "best_fid": math.nan, "optuna_state": t.state.name, "optuna_number": t.number,
                               **{p: t.params.get(p, math.nan) for p in params}} for t in lost])
        rows = pd.concat([rows, extra], ignore_index=True)
    return Search(name, study, where, rows, params)


def _param_order(p: str) -> tuple[int, str]:
    return (SEARCHABLE.index(p) if p in SEARCHABLE else len(SEARCHABLE), p)


def complete(s: Search) -> pd.DataFrame:
    """The COMPLETE trials with a finite value, best first."""
    done = s.trials[(s.trials["optuna_state"] == "COMPLETE") & np.isfinite(s.trials["best_fid"].astype(float))]
    return done.sort_values("best_fid", kind="stable")


def best_configuration(s: Search) -> pd.Series | None:
    """The best COMPLETE trial's row (every searched field, best_fid, trial_id), or None."""
    done = complete(s)
    return done.iloc[0] if len(done) else None


def configuration_text(row: pd.Series, params: Sequence[str]) -> str:
    """'α = 1.049, lr (fake score) = 0.0001234, glr (generator) = 3.2e-05, σ_init = 2.71'."""
    return ", ".join(f"{common.short(p)} = {common.fmt(row[p])}" for p in params)


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances over the COMPLETE trials (seeded, so the figure is reproducible); empty when they cannot
    be estimated."""
    done = study.get_trials(states=(TrialState.COMPLETE,))
    if len(done) < 2 or not done[0].params:
        return {}
    return optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))


def importance_warning(s: Search) -> str | None:
    """A warning when importances rest on fewer than MIN_IMPORTANCE_TRIALS complete trials, else None."""
    n = len(complete(s))
    if n >= MIN_IMPORTANCE_TRIALS or not s.params:
        return None
    return (f"parameter importances of {s.name or 'the study'} rest on {n} complete trial{'s' * (n != 1)} (fewer "
            f"than {MIN_IMPORTANCE_TRIALS}): their ranking is not reliable")
