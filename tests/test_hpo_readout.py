"""HPO read-outs on a real Optuna storage written here the way a study writes it (sid/cluster/search.py: params named
by the searched fields, intermediate best FD at the run's iteration, COMPLETE only at full budget, PRUNED for a
stopped or diverged trial, FAIL for an orphan), beside the study's Parquet rows: pruned trials stay pruned, the best
configuration names every searched field, importances on few trials are flagged."""

from __future__ import annotations

import math
import warnings

import optuna
import pandas as pd
import pytest

from analysis import common, hpo_report, report, searches
from sid.results import write_evaluations, write_trials
from sid.testing.results import row, trials_table

KIMG = (0.0, 2.0, 4.0, 6.0)  # the budget: 6 kimg, batch 128 -> iteration = kimg * 1000 / 128
SPACE = {"alpha": optuna.distributions.FloatDistribution(0.5, 1.5),
         "lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)}
# (alpha, lr, FD curve, how it ended); the diverged trial reached the lowest FD of all before it diverged, the
# stopped one its value at a third of the budget: neither is a result at full budget.
TRIALS = [(1.0, 1e-4, [800.0, 40.0, 30.0, 25.0], "completed"),
          (1.2, 3e-4, [800.0, 38.0, 27.0, 21.0], "completed"),
          (0.7, 5e-5, [800.0, 60.0], "stopped_early"),
          (1.4, 2e-4, [800.0, 30.0, 18.0, math.nan], "diverged"),
          (0.9, 1e-3, [800.0, 45.0, 33.0, 29.0], "completed")]
STATES = {"completed": "COMPLETE", "stopped_early": "PRUNED", "diverged": "PRUNED"}



def write_hpo(folder, *, storage: str | None, trials_file: bool = True, orphan: bool = True) -> None:
    """A search study folder: evaluations/<trial>.parquet per trial, trials.parquet, and the Optuna study in
    `storage` ('journal' = <folder>/optuna.journal, a sqlite:/// URL or a journal path recorded in config.yaml)."""
    rows = []
    for i, (alpha, lr, fids, _) in enumerate(TRIALS):
        for kimg, fid in zip(KIMG, fids):
            status = "diverged" if not math.isfinite(fid) else "ok"
            rows.append(row("hpo", f"t{i}", alpha=alpha, seed=0, kimg=kimg, fid=fid, lr=lr, order=i, status=status)
                        | {"duration_kimg": 6.0})
    evals = pd.DataFrame(rows)
    for trial, g in evals.groupby("trial_id"):
        write_evaluations(folder / "evaluations" / f"{trial}.parquet", g)
    if trials_file:
        table = trials_table(evals).iloc[:-1]  # without the fixture's failed trial
        table["state"] = [ended for *_, ended in TRIALS]
        write_trials(folder / "trials.parquet", table)
    if storage is None:
        return
    if storage == "journal":
        backend = optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal"))
        store = optuna.storages.JournalStorage(backend)
    elif storage.startswith("sqlite"):
        store = optuna.storages.RDBStorage(storage)
    else:
        store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    if storage != "journal":
        (folder / "config.yaml").write_text(f"name: hpo\noptuna_storage: {storage}\n")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="hpo", storage=store, direction="minimize")
    for alpha, lr, fids, ended in TRIALS:
        study.enqueue_trial({"alpha": alpha, "lr": lr})
        trial = study.ask(SPACE)
        running = math.inf
        for kimg, fid in zip(KIMG, fids):  # every evaluation, kimg 0 included, at the run's iteration
            if math.isfinite(fid):
                running = min(running, fid)
                trial.report(running, round(kimg * 1000 / 128))
        state = optuna.trial.TrialState[STATES[ended]]
        study.tell(trial, running if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    if orphan:  # asked just before an interruption, never ran: the restored study told it FAIL
        study.tell(study.ask(SPACE), state=optuna.trial.TrialState.FAIL)


@pytest.mark.parametrize("storage", ["journal", "recorded journal", "recorded sqlite"])
def test_pruned_trials_stay_pruned_when_read_from_the_storage(tmp_path, storage):
    folder = tmp_path / "hpo"
    spec = {"journal": "journal", "recorded journal": str(tmp_path / "elsewhere.journal"),
            "recorded sqlite": f"sqlite:///{tmp_path / 'hpo.db'}"}[storage]
    write_hpo(folder, storage=spec, trials_file=False)  # an interrupted study: its rows say nothing of stops
    evals, trials = common.load([folder])
    found = searches.search([folder], trials, evals)
    assert found.source != searches.REBUILT and found.params == ["alpha", "lr"]
    states = found.trials.set_index("trial_id")["optuna_state"]
    assert states[[f"t{i}" for i in range(len(TRIALS))]].tolist() == [STATES[e] for *_, e in TRIALS]
    assert states["optuna #5"] == "FAIL"  # the orphan appears, with no value
    best = searches.best_configuration(found)
    assert best["trial_id"] == "t1" and best["best_fid"] == 21.0  # not the diverged t3 (18.0) nor any pruned one
    assert list(searches.complete(found)["trial_id"]) == ["t1", "t0", "t4"]


def test_without_a_storage_the_rebuild_tells_stopped_trials_as_pruned(tmp_path):
    write_hpo(tmp_path / "hpo", storage=None)
    evals, trials = common.load([tmp_path / "hpo"])
    found = searches.search([tmp_path / "hpo"], trials, evals)
    assert found.source == searches.REBUILT
    by_id = {t.user_attrs["trial_id"]: t for t in found.study.trials}
    assert [by_id[f"t{i}"].state.name for i in range(len(TRIALS))] == [STATES[e] for *_, e in TRIALS]
    step = {kimg: round(kimg * 1000 / 128) for kimg in KIMG}
    assert by_id["t2"].intermediate_values == {step[0.0]: 800.0, step[2.0]: 60.0}  # the running best, as reported
    assert by_id["t3"].intermediate_values == {step[0.0]: 800.0, step[2.0]: 30.0, step[4.0]: 18.0}
    assert by_id["t1"].value == 21.0 and by_id["t3"].value is None
    assert found.study.best_trial.user_attrs["trial_id"] == "t1"


def test_report_of_a_search_names_every_searched_field_and_warns_on_few_trials(tmp_path, capsys):
    folder = tmp_path / "hpo"
    write_hpo(folder, storage="journal")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fANOVA on three trials
        path, verdict = report.build([folder], tmp_path / "report", formats=("png",))
    text = path.read_text()
    err = capsys.readouterr().err
    assert verdict.startswith("Best configuration found: α = 1.2, lr = 0.0003") and "Recommended" not in text
    assert "Trials: 6 (3 complete, 2 pruned, 1 fail); Optuna states read from" in text
    table = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and " | t" in line]
    assert table[0][:4] == ["| rank", "trial", "α", "lr"]  # every searched field is a column
    assert [cells[1] for cells in table[1:]] == ["t1", "t0", "t4"]  # complete trials only, best first
    warning = "rest on 3 complete trials (fewer than 10): their ranking is not reliable"
    assert warning in text and warning in err
    assert "hpo_report.png" in text and (tmp_path / "report" / "hpo_report.png").stat().st_size > 10_000


def test_hpo_report_command_writes_the_top_k_table(tmp_path, capsys):
    folder = tmp_path / "hpo"
    write_hpo(folder, storage="journal")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hpo_report.main([str(folder), "--out", str(tmp_path / "out"), "--top", "2", "--format", "svg"])
    md = (tmp_path / "out" / "hpo_report_hpo.md").read_text()
    assert "Best configuration (2 searched fields): α = 1.2, lr = 0.0003: best" in md
    assert "Top 2 complete trials" in md and (tmp_path / "out" / "hpo_report_hpo.svg").exists()
    assert "importances of hpo rest on 3 complete trials" in capsys.readouterr().err


def test_an_unreadable_storage_falls_back_and_says_why(tmp_path):
    folder = tmp_path / "hpo"
    write_hpo(folder, storage=None)
    (folder / "optuna.journal").write_bytes(b'{"op_code": 0, "worker_id": "x", "study_name": "hpo"\n not json\n')
    evals, trials = common.load([folder])
    found = searches.search([folder], trials, evals)
    assert found.source.startswith(searches.REBUILT) and "could not be read" in found.source
    assert found.trials.set_index("trial_id").loc["t2", "optuna_state"] == "PRUNED"
