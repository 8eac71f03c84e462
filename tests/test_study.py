"""Studies through real Ray Tune + Train, real Optuna and real Parquet: grid and TPE studies, ASHA stopping a bad
trial, a killed and resumed study, and the scripts' bad-input table. Budgets are tiny (batch 8, 256 images per
Frechet distance, evaluations every 2 iterations); the pure pieces (capacity, divergence rule, states) are tables.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray
import ray.tune
import yaml
from ray.tune.experiment import Trial

from sid.cluster.callbacks import register_callback
from sid.cluster.distributed import RAY_ENV, ResourceError, connect
from sid.cluster.resources import TrialResources
from sid.cluster.search import open_storage
from sid.cluster.space import Grid, Range, StudyError
from sid.cluster.study import Study, StudyCallback, plan, rescore_at_end, run_study, trial_capacity
from sid.cluster.study_file import read_study_file
from sid.cluster.trials import TrialRecord, trial_state
from sid.cluster.watch import Progress, evaluation_line
from sid.config import preset
from sid.files import BEST, RUNS_DIR, SCORES_FILE, TRIALS_FILE
from sid.plan import CALIBRATION_FILE
from sid.results import (
    CONFIG_COLUMNS,
    EVALUATION_SCHEMA,
    MORE_CONFIG_COLUMNS,
    SCHEMA_VERSION,
    TRIAL_SCHEMA,
    Divergence,
    read_evaluations,
    read_scores,
    read_trials,
    write_trials,
)
from sid.saved import SavedGenerator
from sid.testing.fixtures import TINY, flags, session_processes, study_of_generators, tiny_teacher

ROOT = Path(__file__).resolve().parents[1]
# 1 iteration = 0.008 kimg; evaluations at 0, 0.016, 0.032 kimg


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the in-process studies (they come last in this file, after the subprocess tests that start
    their own, so that two clusters never share the 2 cores)."""
    ray.init(address="local", num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=True,
             log_to_driver=False)
    yield
    ray.shutdown()


# ---------------------------------------------------------------------------------------------- pure pieces
@pytest.mark.parametrize("resources, workers, gpus, cpus, expected", [
    ({"CPU": 2.0}, 1, 0.0, 1.0, 2),                # this machine: 2 trials of 1 CPU worker
    ({"CPU": 2.0}, 2, 0.0, 0.5, 2),                # 2 workers of half a core each
    ({"CPU": 2.0}, 2, 0.0, 1.0, 1),
    ({"CPU": 1.5}, 1, 0.0, 1.0, 1),
    ({"CPU": 64.0, "GPU": 8.0}, 1, 1.0, 1.0, 8),   # GPUs // GPUs per trial
    ({"CPU": 64.0, "GPU": 8.0}, 4, 1.0, 1.0, 2),
    ({"CPU": 64.0, "GPU": 8.0}, 1, 0.5, 1.0, 16),  # two trials share each GPU
    ({"CPU": 4.0, "GPU": 8.0}, 1, 1.0, 1.0, 4),    # CPUs bound GPU trials too
    ({"CPU": 64.0}, 1, 1.0, 1.0, 0),               # GPU trials on a CPU cluster: none
])
def test_trial_capacity_is_devices_over_devices_per_trial(resources, workers, gpus, cpus, expected):
    trial = TrialResources(workers=workers, gpus_per_worker=gpus, cpus_per_worker=cpus)
    assert trial_capacity(resources, trial) == expected


def evaluation_rows(fids, losses=None) -> pd.DataFrame:
    """One trial's rows: evaluation k at iteration 2k; losses NaN at iteration 0 as the loop writes them."""
    losses = losses or [1.0] * (len(fids) - 1)
    losses = [math.nan, *losses]
    return pd.DataFrame(dict(kimg=[0.016 * k for k in range(len(fids))], iteration=[2 * k for k in range(len(fids))],
                             fid=fids, loss_fake_score=losses, loss_generator=[1.0] * len(fids)))


@pytest.mark.parametrize("fids, losses, words", [
    ([50.0, 40.0, 30.0], None, None),
    ([50.0, 60.0, 499.0], None, None),                         # 9.98x its start: not yet
    ([50.0, 40.0, 501.0], None, ["501", "over 10x", "50"]),
    ([50.0, math.nan, 30.0], None, ["nan", "kimg 0.016"]),
    ([50.0, 40.0, math.inf], None, ["inf", "kimg 0.032"]),
    ([50.0, 40.0, 30.0, 20.0], [1.0, math.nan, 1.0], None),     # one bad evaluation is tolerated
    ([50.0, 40.0, 30.0, 20.0], [math.nan, 1.0, math.nan], None),  # not consecutive
    ([50.0, 40.0, 30.0, 20.0], [1.0, math.nan, math.inf], ["losses non-finite at 2 consecutive"]),
])
def test_divergence_rule_names_the_first_sign_of_divergence(fids, losses, words):
    reason = Divergence().reason(evaluation_rows(fids, losses))
    if words is None:
        assert reason is None
    else:
        assert reason is not None and all(w in reason for w in words), reason


@pytest.mark.parametrize("tune_state, fids, reported, expected", [
    ("error", [50.0, math.nan], math.nan, "error"),            # Tune's error wins over the rows
    ("terminated", [50.0, math.nan], math.nan, "diverged"),
    ("running", [50.0, 600.0], math.nan, "diverged"),
    ("terminated", [50.0, 40.0, 30.0], math.nan, "completed"),  # reached kimg 0.032 = the last evaluation
    ("terminated", [50.0, 40.0, 30.0], 0.032, "completed"),
    # Stopped at its rung (Tune's last result), though its worker wrote one more row before the stop reached it.
    ("terminated", [50.0, 40.0, 30.0], 0.016, "stopped_early"),
    ("terminated", [50.0, 40.0], math.nan, "stopped_early"),
    ("terminated", [], math.nan, "stopped_early"),
    ("running", [50.0, 40.0], math.nan, "running"),
])
def test_trial_state_precedence(tune_state, fids, reported, expected):
    record = TrialRecord("t", tune_state, "boom" if tune_state == "error" else "", preset("digits", **TINY), 1,
                         reported)
    rows = evaluation_rows(fids) if fids else evaluation_rows([1.0]).iloc[:0]
    assert trial_state(record, rows, Divergence())[0] == expected


@pytest.mark.parametrize("status, done, ended, expected", [
    ("RUNNING", True, True, "terminated"),     # ended by itself or stopped by ASHA/the divergence rule
    ("RUNNING", False, True, "running"),       # stopped because the study was interrupted: --resume continues it
    ("TERMINATED", True, False, "terminated"),
    ("TERMINATED", False, False, "running"),   # the same, as on_experiment_end sees it after the interrupt
    ("ERROR", False, False, "error"),
    ("PENDING", False, False, "running"),
])
def test_tune_state_tells_an_interrupted_trial_from_a_finished_one(status, done, ended, expected):
    trial = Trial("run_trial", config={}, stub=True)
    trial.set_status(status)
    if done:
        trial.update_last_result({"done": True, "kimg": 0.032})
    assert StudyCallback.tune_state(trial, ended) == expected


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.timeout(60)
@pytest.mark.parametrize("script, flags, words", [
    ("alpha_sweep", ["--preset", "nope"], ["--preset", "invalid choice: 'nope'"]),
    ("alpha_sweep", ["--alphas", ""], ["--alphas", "comma-separated list of numbers"]),
    ("alpha_sweep", ["--alphas", "1.0,abc"], ["--alphas", "'abc' is not a number"]),
    ("alpha_sweep", ["--alphas", "1.0,1.0"], ["--alphas", "repeat"]),
    ("alpha_sweep", ["--storage", "FILE"], ["storage", "is not a folder"]),
    ("alpha_sweep", ["--storage", "s3://bucket/sid"], ["storage", "local or mounted shared folder"]),
    ("alpha_sweep", ["--teacher", "/nowhere/teacher.pt"], ["teacher /nowhere/teacher.pt", "no such file"]),
    ("alpha_sweep", ["--seeds", "0"], ["--seeds", ">= 1"]),
    ("alpha_sweep", ["--resume"], ["--resume", "holds no study"]),
    ("alpha_sweep", ["--calibration", "FILE"], ["FILE", "not a readable calibration file"]),
    ("alpha_sweep", ["--workers", "0"], ["workers must be >= 1"]),
    ("alpha_sweep", ["--gpus-per-worker", "0.5", "--workers", "2"], ["Duplicate GPU"]),
    ("sigma_init_sweep", ["--sigma-inits", "0,2.5"], ["sigma_init", "must be > 0"]),
    ("hpo", ["--lr-range", "1e-3,1e-5"], ["--lr-range", "LOW < HIGH"]),
    ("hpo", ["--num-samples", "0"], ["--num-samples", ">= 1"]),
])
def test_bad_input_is_one_error_with_exit_code_2_and_writes_nothing(tmp_path, monkeypatch, capsys, script, flags,
                                                                      words):
    (tmp_path / "FILE").write_text("not a folder")
    flags = [str(tmp_path / "FILE") if f == "FILE" else f for f in flags]
    storage = [] if "--storage" in flags else ["--storage", str(tmp_path / "results")]
    connected = ray.is_initialized()
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(f"studies.{script}").main([*flags, *storage])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in error and all(w in error for w in words), error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]
    assert ray.is_initialized() == connected  # failed before starting Ray


@pytest.mark.timeout(60)
def test_bad_alpha_list_exits_2_from_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, "studies/alpha_sweep.py", "--alphas", "1.0,abc", "--storage",
                           str(tmp_path / "results")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "'abc' is not a number" in done.stderr and not list(tmp_path.iterdir())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text, words", [
    ("space: {teacher: {grid: [digits]}}", ["cannot search teacher: the model being distilled"]),
    ("space: {alpha: {grid: '1.0,1.2'}}", ["study.yaml: space: alpha: grid takes a YAML list, got '1.0,1.2'"]),
    ("space: {batch: {range: [8, 64]}}\nsearcher: optuna", ["batch:", "given values only (categorical)"]),
    ("space: {alpha: {range: [0.5, 1.5]}}\nsearcher: optuna\nsampler: nope", ["sampler must be one of tpe, gp"]),
    ("space: {alpha: {grid: [1.0]}}\ncallbacks: [nope]", ["callbacks: unknown key 'nope'"]),
])
def test_a_bad_study_file_is_one_error_with_exit_code_2_and_writes_nothing(tmp_path, capsys, text, words):
    path = tmp_path / "study.yaml"
    path.write_text(f"name: s\nbase: {{preset: digits}}\n{text}\n")
    connected = ray.is_initialized()
    with pytest.raises(SystemExit) as exited:
        importlib.import_module("studies.search").main([str(path), "--storage", str(tmp_path / "results")])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in error and all(w in error for w in words), error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
    assert ray.is_initialized() == connected  # failed before starting Ray


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_killed_study_resumes_without_losing_or_duplicating_rows(tmp_path):
    storage, name = tmp_path / "results", "resumed"
    evaluations = storage / name / "evaluations"
    # 12 iterations, 7 evaluations per trial, one trial at a time: the kill lands inside the first trial
    command = [sys.executable, "studies/alpha_sweep.py", "--alphas", "0.5,1.0", "--seeds", "1", "--storage",
               str(storage), "--name",
               name, "--max-concurrent", "1", *flags(**{**TINY, "duration_kimg": 0.096})]
    log = tmp_path / "killed.log"
    with log.open("w") as out:  # a file, not a pipe nobody reads while waiting
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 150
        while process.poll() is None and time.time() < deadline:
            files = list(evaluations.glob("*.parquet"))
            if files and len(read_evaluations(*files)) >= 2:
                break
            time.sleep(0.1)
        assert process.poll() is None, f"the study ended before it could be killed:\n{log.read_text()[-3000:]}"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.time() + 60  # Ray's processes die with their driver (fate sharing)
        while session_processes(process.pid) and time.time() < deadline:
            time.sleep(0.5)
        assert not session_processes(process.pid)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    before = read_evaluations(evaluations)
    assert before["trial_id"].nunique() == 1 and len(before) < 7

    resumed = subprocess.run([*command, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "alpha" in resumed.stdout and "trials.parquet" in resumed.stdout
    trials = pd.read_parquet(storage / name / "trials.parquet")
    assert sorted(trials["alpha"]) == [0.5, 1.0] and (trials["state"] == "completed").all()
    rows = read_evaluations(evaluations)
    assert not rows.duplicated(["trial_id", "kimg"]).any()
    base = preset("digits", **{**TINY, "duration_kimg": 0.096})
    for trial_id, mine in rows.groupby("trial_id"):
        assert sorted(mine["kimg"]) == pytest.approx(base.evaluation_kimg()), trial_id
    killed = rows[rows["trial_id"].isin(before["trial_id"])].set_index("kimg")["fid"]
    # rows written before the kill are still there (a point run again after the resume gives the same value)
    assert killed.loc[before["kimg"]].tolist() == pytest.approx(before["fid"].tolist())


# ---------------------------------------------------------------------------------------------- the plan
@pytest.mark.ray
@pytest.mark.timeout(60)
def test_the_plan_checks_the_cluster_once_and_hands_the_trials_resolved_resources(tmp_path, local_ray, monkeypatch):
    for key in RAY_ENV:  # connect() owns Ray's environment, also on a cluster this process joined before
        monkeypatch.delenv(key, raising=False)
    assert connect(None) is False and all(os.environ[k] == v for k, v in RAY_ENV.items())
    study = Study(name="plan", base=preset("digits", **TINY), space={"alpha": Grid([1.0])}, storage=tmp_path)
    settings, trial, concurrency = plan(study, study.folder)
    # Nothing left for a trial to ask the cluster: GPUs, CPUs (the driver's 0.01 taken off) and placement are set.
    assert settings.resources == TrialResources(gpus_per_worker=0.0, cpus_per_worker=0.99,
                                                placement_strategy="STRICT_PACK")
    assert (trial.cpus_per_worker, concurrency) == (1.0, 2)
    assert settings.base == study.base and settings.folder == study.folder
    # A resumed study runs with its saved resources, whatever the command asks now.
    saved = dataclasses.replace(settings, resources=TrialResources(gpus_per_worker=0.0, cpus_per_worker=0.49))
    asked = dataclasses.replace(study, resources=TrialResources(workers=2))
    resumed, trial, concurrency = plan(asked, study.folder, saved)
    assert resumed.resources == saved.resources.replace(placement_strategy="STRICT_PACK")
    assert (trial.workers, trial.cpus_per_worker, concurrency) == (1, 0.5, 4)
    too_big = dataclasses.replace(study, resources=TrialResources(workers=3, cpus_per_worker=1.0))
    with pytest.raises(ResourceError, match="room for 2 such worker"):
        plan(too_big, study.folder)


# ---------------------------------------------------------------------------------------------- watching
class FakeTrial:  # what Progress reads of a Tune trial
    def __init__(self, trial_id, status, kimg=None):
        self.trial_id, self.status = trial_id, status
        self.last_result = {} if kimg is None else {"kimg": kimg}


def test_progress_counts_trials_and_kimg_and_estimates_from_the_measured_rate():
    progress = Progress(planned=4, final_kimg=1.0, concurrency=2)  # no calibration: no ETA until a rate is measured
    a, b = FakeTrial("a", "RUNNING", 0.0), FakeTrial("b", "PENDING")
    progress.observe("a", 0.0, now=100.0)
    assert progress.line([a, b], started=b, now=100.0) == \
        "study: 0 of 4 trials done, 2 running, 2 pending; kimg 0/4; 0 img/s; ETA unknown"
    assert not progress.due(now=129.0) and progress.due(now=130.0)
    progress.observe("a", 0.5, now=110.0)  # 0.05 kimg/s; b not measured yet: counted at a's rate
    a.last_result, b.status = {"kimg": 0.5}, "RUNNING"
    # a ends in 10 s, b in 20 s; the two pending trials (20 s each) take the first slots to come free: 10+20, 20+20
    assert progress.line([a, b], now=110.0) == \
        "study: 0 of 4 trials done, 2 running, 2 pending; kimg 0.5/4; 100 img/s; ETA 0:00:40 (measured)"
    # a stopped early at 0.5: its budget ends there; b (0.75 kimg left: 15 s) and the pending one (20 s) side by side
    a.status, b.status, b.last_result = "TERMINATED", "RUNNING", {"kimg": 0.25}
    line = progress.line([a, b, FakeTrial("c", "ERROR", 0.0)], now=120.0)
    assert line == "study: 2 of 4 trials done, 1 running, 1 pending; kimg 0.75/2.5; 50 img/s; ETA 0:00:20 (measured)"
    done = [FakeTrial(x, "TERMINATED", 1.0) for x in "abcd"]
    # between trials (none running, one pending): the trials' mean rate
    assert progress.line(done[:3], now=130.0).endswith("3 of 4 trials done, 0 running, 1 pending; kimg 3/4; 50 img/s; "
                                                       "ETA 0:00:20 (measured)")
    assert progress.line(done).endswith("kimg 4/4; 0 img/s; finished")


@pytest.mark.parametrize("result, line", [
    (dict(kimg=0.016, fid=45.12345, fid_std=0.812, best_fid=40.0, images_per_s=123.4, loss_fake_score=0.5,
          loss_generator=2.0),
     "[t1] kimg 0.016/0.032  FD 45.1234 ± 0.81  best 40.0000  123 img/s  loss_fake 0.5  loss_G 2  alpha=1"),
    (dict(kimg=0.0, fid=90.0, fid_std=math.nan, best_fid=90.0, images_per_s=math.nan),  # kimg 0: no training yet
     "[t1] kimg 0/0.032  FD 90.0000 ± n/a  best 90.0000  nan img/s  loss_fake nan  loss_G nan  alpha=1"),
])
def test_an_evaluation_line_shows_the_spread_the_target_kimg_and_the_speed(result, line):
    assert evaluation_line("t1", result, 0.032, "alpha=1") == line


# ---------------------------------------------------------------------------------------------- studies
def params(folder: Path, trial_id: str) -> dict:
    return json.loads((folder / f"trial-{trial_id}" / "params.json").read_text())


def check_study_files(folder: Path, trials: pd.DataFrame, searched: list[str]) -> pd.DataFrame:
    """The documented files, columns and types; one row per (trial, evaluation point); configs as Tune ran them;
    trials.parquet derived from evaluations/. Returns all evaluation rows."""
    assert pq.read_schema(folder / "trials.parquet").remove_metadata() == TRIAL_SCHEMA
    files = sorted((folder / "evaluations").glob("*.parquet"))
    assert [f.stem for f in files] == sorted(trials["trial_id"])
    for f in files:
        schema = pq.read_schema(f)
        assert schema.remove_metadata() == EVALUATION_SCHEMA
        assert schema.metadata[b"sid_schema_version"].decode() == SCHEMA_VERSION
    rows = read_evaluations(folder / "evaluations")
    assert not rows.duplicated(["trial_id", "kimg"]).any()
    for trial in trials.itertuples():
        mine = rows[rows["trial_id"] == trial.trial_id].sort_values("kimg")
        if trial.state == "stopped_early":  # its worker may write one more row while the stop reaches it
            mine = mine[mine["kimg"] <= trial.last_kimg + 1e-9]
        tuned = params(folder, trial.trial_id)
        base = preset("digits", **TINY)
        for column in (*CONFIG_COLUMNS, *MORE_CONFIG_COLUMNS):  # every row carries the config Tune gave this trial
            want = tuned[column] if column in searched else getattr(base, column)
            want = pytest.approx(want) if isinstance(want, float) else want
            assert mine[column].tolist() == [want] * len(mine), column
        assert trial.evaluations == len(mine)
        assert trial.best_fid == mine["fid"].min() and trial.best_kimg == mine.loc[mine["fid"].idxmin(), "kimg"]
        assert trial.last_kimg == mine["kimg"].max()
        assert trial.device_hours == pytest.approx(mine["device_s"].iloc[-1] / 3600)
        if trial.state == "completed":
            assert mine["kimg"].tolist() == pytest.approx(base.evaluation_kimg())
    assert set(rows["study"]) == {folder.name} and (rows["world_size"] == 1).all()
    return rows


@pytest.mark.ray
@pytest.mark.timeout(200)
def test_grid_study_with_asha_stops_the_bad_learning_rate_and_records_every_evaluation(tmp_path, local_ray):
    # One trial at a time, the bad one second: it meets the first trial's FD at the first rung (kimg 0.016) and is
    # stopped; the third is compared with the median of both and goes on. The divergence rule is off here so that
    # the stop is ASHA's.
    study = Study(name="grid", base=preset("digits", **TINY), space={"glr": Grid([1e-4, 1.0, 5e-5])},
                  asha=True, max_concurrent=1, divergence=Divergence(fid_factor=math.inf, loss_patience=10**6),
                  storage=tmp_path, rescore_repeats=1)  # one draw: the re-score's own test has more
    trials = run_study(study)
    rows = check_study_files(study.folder, trials, ["glr"])
    states = trials.set_index("glr")["state"]
    assert states[1.0] == "stopped_early" and (states[[1e-4, 5e-5]] == "completed").all()
    stopped = rows[rows["glr"] == 1.0]["kimg"].tolist()  # kimg 0 and its first rung (+ one a racing worker wrote)
    assert stopped[:2] == pytest.approx([0, 0.016]) and len(stopped) <= 3
    assert trials.set_index("glr").loc[1.0, "last_kimg"] == pytest.approx(0.016)
    at_rung = rows[np.isclose(rows["kimg"], 0.016)].set_index("glr")["fid"]
    assert at_rung[1.0] > at_rung[[1e-4, 5e-5]].max()  # it was stopped for being worse there
    # At its end the study re-scored its best trial's best.pt on fresh latents (study.rescore_trials 'best').
    best = trials.sort_values("best_fid")["trial_id"].iloc[0]
    scored = [t for t in trials["trial_id"] if (study.folder / RUNS_DIR / t / SCORES_FILE).exists()]
    assert scored == [best]
    rescored = read_scores(study.folder / RUNS_DIR / best / SCORES_FILE)
    assert rescored["repeat"].tolist() == [0] and rescored["fid_images"].eq(TINY["fid_images"]).all()
    assert rescored["fid"].map(math.isfinite).all()


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_optuna_study_samples_within_the_space_and_keeps_its_state(tmp_path, local_ray, capsys):
    space = {"alpha": Range(0.5, 1.5), "lr": Range(1e-5, 1e-3)}
    study = Study(name="tpe", base=preset("digits", **TINY), space=space, searcher="optuna", num_samples=3,
                  storage=tmp_path)
    study.folder.mkdir()
    (study.folder / CALIBRATION_FILE).write_text(json.dumps(dict(
        preset=study.base.preset, device="test CPU", train_images_per_s=500.0, eval_images_per_s=1000.0, setup_s=2.0,
        source="made up for the test")))
    trials = run_study(study)
    assert len(trials) == 3 and (trials["state"] == "completed").all()
    assert trials["alpha"].between(0.5, 1.5).all() and trials["lr"].between(1e-5, 1e-3).all()
    assert trials["alpha"].nunique() == 3 and trials["lr"].nunique() == 3
    rows = check_study_files(study.folder, trials, ["alpha", "lr"])
    assert list(study.folder.glob("searcher-state-*.pkl"))  # what --resume gives back to Optuna

    # The Optuna study as optuna-dashboard shows it: a named metric, trials linked to Tune's, FD curves at images seen
    optuna_study = optuna.load_study(study_name="tpe", storage=open_storage(study.folder / "optuna.journal"))
    assert optuna_study.metric_names == ["FD digits-features-v1 (256 images)"]
    linked = {t.user_attrs["tune_trial_id"]: t for t in optuna_study.trials}
    assert sorted(linked) == sorted(trials["trial_id"])
    for trial_id, mine in rows.groupby("trial_id"):
        trial = linked[trial_id]
        assert trial.user_attrs["run_folder"] == str(study.folder / "runs" / trial_id)
        assert (study.folder / "runs" / trial_id / "samples-0000004.png").is_file()
        curve = {round(k * 1000): pytest.approx(f) for k, f in zip(mine["kimg"], mine["fid"])}
        assert trial.intermediate_values == curve
        assert trial.state.name == "COMPLETE" and trial.value == pytest.approx(mine["fid"].min())

    progress = [x for x in capsys.readouterr().out.splitlines() if x.startswith("study: ")]
    # the calibration --plan left in the folder gives the ETA from the start, until the trials measure their rate
    assert progress[0].startswith("study: 0 of 3 trials done, ") and progress[0].endswith(" (calibrated)")
    assert any(re.search(r"; \d+ img/s; ETA \d+:\d\d:\d\d \(measured\)$", x) for x in progress)
    assert progress[-1] == "study: 3 of 3 trials done, 0 running, 0 pending; kimg 0.096/0.096; 0 img/s; finished"

@pytest.mark.ray
@pytest.mark.timeout(150)
@pytest.mark.parametrize("rescore_trials, case, scored", [
    ("best", "finished", ["b"]),        # the lowest best FD; c has no finite evaluation (no best.pt)
    ("all", "finished", ["a", "b"]),
    ("none", "finished", []),
    ("best", "interrupted", []),        # a trial left running: the study is not finished, nothing is re-scored
    ("best", "broken best.pt", []),     # reported with the command that finishes it, not raised
])
def test_a_finished_study_rescores_its_chosen_generators_as_a_ray_task(tmp_path, local_ray, capsys, rescore_trials,
                                                                       case, scored):
    base = preset("digits", **TINY)
    generator = SavedGenerator.of(tiny_teacher(), sigma_init=2.5, config=base.to_dict(), kimg=0.032)
    study = Study(name="done", base=base, space={"alpha": Grid([1.0])}, storage=tmp_path,
                  rescore_trials=rescore_trials,
                  rescore_repeats=2)
    study_of_generators(study.folder, generator.save(tmp_path / "g.pt"), {"a": 30.0, "b": 20.0, "c": math.nan})
    if case == "interrupted":
        table = read_trials(study.folder / TRIALS_FILE)
        write_trials(study.folder / TRIALS_FILE, table.assign(state=["completed", "completed", "running"]))
    if case == "broken best.pt":
        (study.folder / RUNS_DIR / "b" / BEST).write_bytes(b"not a generator")
    rescore_at_end(study, TrialResources(cpus_per_worker=1.0, gpus_per_worker=0))
    assert [t for t in "abc" if (study.folder / RUNS_DIR / t / SCORES_FILE).exists()] == scored
    out = capsys.readouterr().out
    for trial in scored:
        rows = read_scores(study.folder / RUNS_DIR / trial / SCORES_FILE)
        assert rows["repeat"].tolist() == [0, 1] and rows["fid"].map(math.isfinite).all()
        assert rows["generator_kimg"].eq(0.032).all() and f"re-scored {study.folder / RUNS_DIR / trial / BEST}" in out
    if case == "broken best.pt":
        assert "re-score failed (" in out and f"run `sid evaluate --rescore {study.folder}` to finish it" in out

class Counter(ray.tune.Callback):
    """A user's callback: counts the evaluations it hears (in the Tune driver, this process)."""

    def __init__(self) -> None:
        self.results = 0

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.results += 1


BUILT: list[str] = []  # the studies the 'test-counter' key was built for, in order
register_callback("test-counter", lambda study: BUILT.append(study.name) or Counter())


@pytest.mark.ray
@pytest.mark.timeout(600)
@pytest.mark.parametrize("source", ["python", "yaml"])
def test_a_study_searching_tmax_and_the_ema_length_runs_and_resumes_from_python_and_from_yaml(tmp_path, local_ray,
                                                                                              source, monkeypatch):
    # Tune saving at every step (period 0): a trial that ran its budget returns without a done result, and Tune sets
    # done on its last result in place, unseen by the cached JSON a save between its last evaluation and its return
    # made; the resume of the finished study below then read its trials as 'running' (StudyCallback.on_trial_complete).
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")
    space = {"tmax": Range(500, 900), "ema_mimg": Range(0.05, 0.5)}
    if source == "yaml":  # sampler and callbacks by registry key
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(dict(
            name="tmax-ema", base={"preset": "digits", **TINY}, searcher="optuna", num_samples=2, sampler="random",
            callbacks=["progress-file", "test-counter"],
            space={"tmax": {"range": [500, 900]}, "ema_mimg": {"range": [0.05, 0.5]}})))
        study = read_study_file(path, storage=tmp_path)
        saved = ("random", ["progress-file", "test-counter"])
    else:  # objects: they serve this process, and a resume asks for them again
        counter = Counter()
        study = Study(name="tmax-ema", base=preset("digits", **TINY), space=space, searcher="optuna", num_samples=2,
                      sampler=optuna.samplers.RandomSampler(seed=1), callbacks=("progress-file", counter),
                      storage=tmp_path)
        saved = ("object:RandomSampler", ["progress-file", "object:Counter"])
    built = len(BUILT)
    trials = run_study(study)
    assert len(trials) == 2 and (trials["state"] == "completed").all()
    assert trials["tmax"].between(500, 900).all() and trials["ema_mimg"].between(0.05, 0.5).all()
    assert trials["tmax"].nunique() == 2 and trials["ema_mimg"].nunique() == 2
    rows = check_study_files(study.folder, trials, ["tmax", "ema_mimg"])  # each trial trained with its values
    assert rows["tmax"].dtype == np.int64
    settings = json.loads((study.folder / "trial_settings.json").read_text())
    assert (settings["sampler"], settings["callbacks"]) == saved
    log = (study.folder / "progress.log").read_text().splitlines()
    for trial_id in trials["trial_id"]:  # the progress-file callback: 3 evaluations and the end of each trial
        assert sum(line.startswith(f"[{trial_id}] kimg ") for line in log) == 3
        assert f"[{trial_id}] ended" in log
    if source == "yaml":
        assert BUILT[built:] == ["tmax-ema"]
        again = run_study(study, resume=True)  # keys: the callbacks are built again from the registry
        assert BUILT[built:] == ["tmax-ema", "tmax-ema"]
    else:
        assert counter.results == 6
        for given, words in [(dataclasses.replace(study, sampler="tpe", callbacks=("progress-file",)),
                              "ran with a sampler object (RandomSampler), which is not saved; give it again"),
                             (dataclasses.replace(study, callbacks=("progress-file",)),
                              "ran with the callback object(s) ['Counter'], which are not saved; give them again")]:
            with pytest.raises(StudyError, match=re.escape(words)):
                run_study(given, resume=True)
        again = run_study(dataclasses.replace(study, callbacks=("progress-file", Counter())), resume=True)
    assert again.set_index("trial_id")["state"].to_dict() == dict.fromkeys(trials["trial_id"], "completed")
    # A finished study saved by a version without that fix: its trials' last results lack done, and resume still
    # reads them as completed (saved TERMINATED: Tune saves an interrupted trial as RUNNING)
    saved = sorted(study.folder.glob("experiment_state-*.json"))
    assert saved
    for path in saved:
        state = json.loads(path.read_text())
        for pair in state["trial_data"]:  # [the trial's JSON, its run metadata's JSON]
            metadata = json.loads(pair[1])
            assert metadata["last_result"]["done"] is True
            metadata["last_result"]["done"] = False
            pair[1] = json.dumps(metadata)
        path.write_text(json.dumps(state))
    old = run_study(dataclasses.replace(study, callbacks=("progress-file", Counter())) if source == "python" else study,
                    resume=True)
    assert old.set_index("trial_id")["state"].to_dict() == dict.fromkeys(trials["trial_id"], "completed")
    resumed = read_evaluations(study.folder / "evaluations")
    assert len(resumed) == len(rows)  # a finished study resumed: nothing run again, nothing duplicated

@pytest.mark.ray
@pytest.mark.timeout(480)
def test_a_one_worker_trial_in_its_tune_process_writes_the_rows_of_a_train_worker_group(tmp_path, local_ray):
    # The study runs its one-worker trial in Tune's trial process (no Train worker group); run_distributed runs the
    # same config through a Ray Train worker group of one. One CPU (so one torch thread) each: the rows match bit
    # for bit but for the labels and the clocks.
    from sid.cluster.distributed import run_distributed  # noqa: PLC0415 (beside the study it checks)

    base = preset("digits", **TINY)
    study = Study(name="in-trial", base=base, space={"alpha": Grid([base.alpha])}, storage=tmp_path)
    trials = run_study(study)
    assert (trials["state"] == "completed").all()
    assert not (study.folder / "train").exists()  # no Train run was made for it
    in_trial = read_evaluations(study.folder / "evaluations")
    path = run_distributed(base, tmp_path / "train-group", address=None, resume=False,
                           resources=TrialResources(workers=1, gpus_per_worker=0.0, cpus_per_worker=1.0))
    group = read_evaluations(path)
    assert json.loads((tmp_path / "train-group" / "workers" / "rank0.json").read_text())["torch_threads"] == 1
    clocks_and_labels = ["study", "trial_id", "wall_s", "device_s", "images_per_s", "written_at"]
    assert len(in_trial) == len(base.evaluation_kimg())
    pd.testing.assert_frame_equal(in_trial.drop(columns=clocks_and_labels).reset_index(drop=True),
                                  group.drop(columns=clocks_and_labels).reset_index(drop=True), check_exact=True)
