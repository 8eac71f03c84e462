"""Faults during a study (real Ray Tune + Train + Optuna on the digits preset at tiny budgets): a trial's process killed
mid-trial, a trial that goes NaN, and the study driver killed (SIGKILL) and resumed with --resume."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import torch
from _util import descendants, kill_session, rows, start, wait_until

from sid.cluster.space import Grid
from sid.cluster.study import Study, run_study
from sid.results import read_trials, upsert_evaluations
from sid.testing.fixtures import TINY, flags, make_teacher, tiny_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]
GOOD_GLR, ABSURD_GLR = 1e-4, 1e6


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def working_dir(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


class WorkerKiller(threading.Thread):
    """SIGKILLs the process that trains the trial with glr=GOOD_GLR once it has written `after` rows: a one-worker
    trial trains in its Tune trial process (sid.cluster.study.run_in_trial), the process below this one (a Ray this
    test started) whose working folder is the trial's (Tune runs each trial in a folder named trial-<trial_id>)."""

    def __init__(self, folder, after: int) -> None:
        super().__init__(daemon=True)
        self.folder, self.after, self.done = folder, after, threading.Event()
        self.victims: list[int] = []
        self.before = pd.DataFrame()

    def run(self) -> None:
        while not self.done.is_set():
            found = rows(self.folder / "evaluations")
            mine = found[found["glr"] == GOOD_GLR] if not found.empty else found
            # Also wait until two of the trial's checkpoints are saved: a row is written before its checkpoint is
            # reported, and a kill before any registered checkpoint would rightly restart the trial from scratch.
            saved = len(mine) and len(checkpoint_folders(self.folder, mine["trial_id"].iloc[0])) >= 2
            if len(mine) >= self.after and saved:
                trial = f"/trial-{mine['trial_id'].iloc[0]}"
                workers = [pid for pid, command in descendants(os.getpid()).items()
                           if command.startswith("ray::") and working_dir(pid).endswith(trial)]
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                if workers:
                    self.victims, self.before = workers, mine
                    return
            time.sleep(0.05)


def checkpoint_folders(folder, trial_id: str) -> list:
    """The Tune checkpoints a trial still has (the study keeps the 2 newest)."""
    return sorted((folder / f"trial-{trial_id}").glob("checkpoint_*"))


@pytest.fixture(scope="module")
def faulty_study(tmp_path_factory, teacher):
    """Two trials at once: glr=1e6 (goes NaN) and glr=1e-4, whose process is killed after 3 of its 7 rows."""
    study = Study(name="faults", base=tiny_config(teacher, duration_kimg=0.096),  # 7 rows each
                  storage=tmp_path_factory.mktemp("results"),
                  space={"glr": Grid([ABSURD_GLR, GOOD_GLR])}, max_concurrent=2)
    killer = WorkerKiller(study.folder, after=3)
    killer.start()
    try:
        trials = run_study(study)
    finally:
        killer.done.set()
        killer.join()
    return study, trials.set_index("glr"), killer


def trial_rows(study: Study, trial_id: str) -> pd.DataFrame:
    return rows(study.folder / "evaluations" / f"{trial_id}.parquet").sort_values("kimg")


@pytest.mark.timeout(300)
def test_killed_worker_trial_resumes_from_its_checkpoint_without_lost_or_duplicate_rows(faulty_study):
    study, trials, killer = faulty_study
    assert killer.victims, f"no worker was killed; trials:\n{trials.to_string()}"
    assert not any(os.path.exists(f"/proc/{pid}") for pid in killer.victims)
    good = trials.loc[GOOD_GLR]
    assert good["state"] == "completed"
    mine = trial_rows(study, good["trial_id"])
    assert mine["kimg"].tolist() == pytest.approx(study.base.evaluation_kimg())  # each point once, none missing
    before = killer.before.set_index("kimg")
    # the first row was not written again: the restarted trial continued from a checkpoint, not from scratch
    assert mine.iloc[0]["written_at"] == before.iloc[0]["written_at"], (mine.to_string(), before.to_string())
    again = mine.set_index("kimg").loc[before.index]
    assert again["fid"].tolist() == before["fid"].tolist()  # a point evaluated again gives the same value
    assert mine["status"].eq("ok").all() and good["evaluations"] == len(mine)


def checkpoint_iterations(study: Study, trial_id: str) -> list[int]:
    """Iterations of the checkpoints a trial still has."""
    states = [p / "state.pt" for p in checkpoint_folders(study.folder, trial_id)]
    return sorted(torch.load(p, weights_only=True)["iteration"] for p in states)


@pytest.mark.timeout(300)
def test_nan_trial_is_marked_diverged_and_the_study_goes_on(faulty_study):
    study, trials, _ = faulty_study
    bad = trials.loc[ABSURD_GLR]
    assert bad["state"] == "diverged" and "fid nan" in bad["error"]
    mine = trial_rows(study, bad["trial_id"])
    # stopped at its first NaN (Tune stops a trial asynchronously: one more evaluation may land), not run to the end
    assert mine["status"].iloc[0] == "ok" and mine["status"].iloc[1:].eq("diverged").all()
    assert mine["fid"].iloc[1:].isna().all() and len(mine) < len(study.base.evaluation_kimg())
    good = trials.loc[GOOD_GLR]  # the study went on after the diverged trial was stopped: the other one ran to the end
    assert good["state"] == "completed"
    assert trial_rows(study, good["trial_id"])["written_at"].max() > mine["written_at"].max()


@pytest.mark.timeout(300)
def test_diverged_trial_keeps_its_last_good_state_as_its_newest_checkpoint(faulty_study):
    study, trials, _ = faulty_study
    bad = trials.loc[ABSURD_GLR]
    mine = trial_rows(study, bad["trial_id"])
    assert checkpoint_iterations(study, bad["trial_id"])[-1] == mine[mine["status"] == "ok"]["iteration"].max()


# ---------------------------------------------------------------------------------------------- driver killed
SEARCHED = ["alpha", "lr", "glr", "sigma_init"]


def optuna_history(folder) -> tuple[dict, list]:
    """From OptunaSearch's saved state (our own test artefact, so unpickling it is fine): Tune trial id -> the
    Optuna trial TPE learns from (params, value, state), and every trial of the Optuna study."""
    with open(max(folder.glob("searcher-state-*.pkl")), "rb") as f:
        state = pickle.load(f)
    history = state["_ot_study"].trials
    return {tune_id: history[trial.number] for tune_id, trial in state["_ot_trials"].items()}, history


@pytest.mark.timeout(480)
def test_hpo_driver_killed_as_a_new_trial_wrote_its_first_row_resumes_with_its_trials_and_optuna_history(tmp_path,
                                                                                                         teacher):
    storage, name, samples = tmp_path / "results", "hpo", 2
    folder = storage / name
    base = tiny_config(teacher, duration_kimg=0.064)  # 8 iterations, 5 evaluations per trial
    # --no-asha: the first trial ends by completing (an ASHA-stopped one would just run on when resumed); one trial at
    # a time: the second starts after the first ended, and nothing else reports checkpoints while it starts
    command = [sys.executable, "studies/hpo.py", "--num-samples", str(samples), "--max-concurrent", "1", "--storage",
               str(storage), "--name", name, "--no-asha", "--teacher", teacher,
               *flags(**{**TINY, "duration_kimg": 0.064})]
    log = tmp_path / "killed.log"
    # The race: a trial that starts after Tune's last save of its experiment state and writes rows before the driver
    # dies. Tune itself saves every TUNE_GLOBAL_CHECKPOINT_S (here: never after its first save) and after a trial's
    # 2nd checkpoint since the last save, so killing at the second trial's first row (reported with at most one
    # checkpoint) leaves only the study's own save before a trial starts (sid.cluster.search.SaveBeforeStart) to
    # know that trial.
    process = start(command, log, TUNE_GLOBAL_CHECKPOINT_S="3600")
    try:  # a rows file appears whole (written beside, then renamed): a listing sees it at once, no reading in between
        wait_until(lambda: len(list((folder / "evaluations").glob("*.parquet"))) == samples, process, 300, log)
        kill_session(process)  # the driver and its local Ray, at once
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    before_trials, before = read_trials(folder).set_index("trial_id"), rows(folder / "evaluations")
    # killed as the second trial had written its first row (none of its later ones), the first trial all of its own
    assert sorted(before["trial_id"].value_counts()) == [1, len(base.evaluation_kimg())]
    ended = before_trials[before_trials["state"] != "running"]
    assert len(ended) == 1 and ended["state"].eq("completed").all()
    # what a study run before Tune's state was saved at each trial start could leave: rows of a trial it does not know
    stranger = before[before["trial_id"].isin(ended.index)].assign(trial_id="0rphan00")
    upsert_evaluations(folder / "evaluations" / "0rphan00.parquet", stranger.to_dict("records"))

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    set_aside = folder / "orphaned" / "0rphan00.parquet.orphaned"  # kept whole, not read as a result, and said
    assert f"set aside {set_aside.resolve()}" in resumed.stdout
    assert rows(set_aside)["fid"].tolist() == stranger["fid"].tolist()
    trials = read_trials(folder).set_index("trial_id")
    assert len(trials) == samples  # the same number of trials: none lost, none sampled again
    assert set(trials["state"]) <= {"completed", "stopped_early", "diverged"}
    assert not trials[SEARCHED].duplicated().any()
    # trials that had ended before the kill are kept as they were, rows included (not run again)
    assert trials.loc[ended.index, SEARCHED].equals(ended[SEARCHED])
    after = rows(folder / "evaluations")
    was = before[before["trial_id"].isin(ended.index)]
    assert after[after["trial_id"].isin(ended.index)]["written_at"].sort_values().tolist() == \
        was["written_at"].sort_values().tolist()
    assert not after.duplicated(["trial_id", "kimg"]).any() and set(after["trial_id"]) == set(trials.index)
    kept = after.set_index(["trial_id", "kimg"]).loc[before.set_index(["trial_id", "kimg"]).index]
    assert kept["fid"].tolist() == pytest.approx(before["fid"].tolist())  # no row lost, re-evaluated ones agree
    for trial_id, trial in trials.iterrows():  # each trial's rows are its evaluation points up to where it ended
        mine = after[after["trial_id"] == trial_id].sort_values("kimg")
        assert mine["kimg"].tolist() == pytest.approx(base.evaluation_kimg()[: len(mine)]) and len(mine) > 0
        assert trial["last_kimg"] == pytest.approx(mine["kimg"].max())
    # Optuna's history: one Optuna trial per Tune trial, all told their result, with the values the rows carry
    ot_trials, history = optuna_history(folder)
    assert sorted(ot_trials) == sorted(trials.index)
    # The study lives in its journal: a trial Optuna was asked for just before the kill, never run, is FAIL there.
    assert sum(t.state.name == "COMPLETE" for t in history) == samples  # nothing sampled twice
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in history) and len(history) <= samples + 1
    for trial_id, ot_trial in ot_trials.items():
        assert ot_trial.params == pytest.approx(trials.loc[trial_id, SEARCHED].to_dict())
        assert ot_trial.value == pytest.approx(trials.loc[trial_id, "best_fid"])  # TPE learns each trial's best
