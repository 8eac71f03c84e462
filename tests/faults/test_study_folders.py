"""Study folders are untrusted input (issue 29): Ray decodes a study's Tune state with (cloud)pickle, so a crafted
`experiment_state-*.json`, `tuner.pkl`, searcher state or trial `error.pkl` runs code in whatever reads it with Ray.
The offline view (sid.cluster.trust.result_grid) never hands them to Ray's decoders, and --resume, which must,
first refuses a study any file or folder of which another user owns or can write."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import ray
from ray import cloudpickle

from sid.cluster.space import Grid, StudyError
from sid.cluster.study import Study, run_study
from sid.cluster.trust import result_grid, untrusted_study
from sid.testing.crafted import RunsCommand
from sid.testing.fixtures import tiny_config


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code-was-executed"


def payload(marker: Path) -> dict:
    """How Tune embeds what JSON cannot hold in experiment_state-*.json; Ray's decoder cloudpickle-loads it."""
    return {"_type": "CLOUDPICKLE_FALLBACK", "value": cloudpickle.dumps(RunsCommand(marker)).hex()}


def crafted_study(folder: Path, marker: Path) -> Path:
    """A study folder as someone else could hand it over: every file Ray decodes carries a payload; the trials'
    plain JSON (params.json, result.json) is what a real study holds."""
    folder.mkdir(parents=True)
    state = dict(trial_data=[], runner_data={"_metric": payload(marker)}, stats={"start_time": payload(marker)})
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    for name in ("tuner.pkl", "basic-variant-state-2026-01-01_00-00-00.json", "searcher-state-2026-01-01.pkl"):
        (folder / name).write_bytes(pickle.dumps(RunsCommand(marker)))
    for trial, alpha, failed in (("trial-a_00000", 1.0, False), ("trial-a_00001", 1.2, True)):
        (folder / trial).mkdir()
        config = {"alpha": alpha, "preset": "digits-study"}
        (folder / trial / "params.json").write_text(json.dumps(config))
        (folder / trial / "params.pkl").write_bytes(pickle.dumps(RunsCommand(marker)))
        reports = [dict(kimg=k, fid=10.0 * alpha - k, best_fid=10.0 * alpha - k, config=config) for k in (0, 1, 2)]
        (folder / trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in reports))
        if failed:
            (folder / trial / "error.txt").write_text("Traceback ...\nRuntimeError: the trial failed\n")
            (folder / trial / "error.pkl").write_bytes(cloudpickle.dumps(RunsCommand(marker)))
    return folder


def test_the_offline_view_of_a_crafted_study_runs_none_of_its_payloads(tmp_path, marker):
    """Ray's ExperimentAnalysis (what result_grid was) decoded experiment_state-*.json's payload: the marker was
    created. The offline view reads the trials' plain JSON and Tune's error text only."""
    grid = result_grid(crafted_study(tmp_path / "study", marker))
    assert not marker.exists()
    assert [r.config for r in grid] == [{"alpha": 1.0, "preset": "digits-study"},
                                        {"alpha": 1.2, "preset": "digits-study"}]
    best = grid.get_best_result(metric="best_fid", mode="min")
    assert best.config["alpha"] == 1.0 and best.metrics["best_fid"] == 8.0
    assert best.metrics_dataframe["fid"].tolist() == [10.0, 9.0, 8.0]
    assert [str(e) for e in grid.errors] == ["RuntimeError: the trial failed"]
    assert grid.get_best_result(metric="fid", mode="max", scope="all").config["alpha"] == 1.2
    assert not marker.exists()


HOW = {  # what another user could have done -> the path refused, and why
    "folder writable by others": (".", 0o777, "writable by other users"),
    "tuner.pkl writable by the group": ("tuner.pkl", 0o664, "writable by other users"),
    "experiment state writable by the group": ("experiment_state-2026-01-01_00-00-00.json", 0o664,
                                               "writable by other users"),
    "grid searcher state writable by others": ("basic-variant-state-2026-01-01_00-00-00.json", 0o646,
                                               "writable by other users"),
    "Optuna searcher state writable by the group": ("searcher-state-2026-01-01.pkl", 0o660, "writable by other users"),
    "trial_settings.json writable by the group": ("trial_settings.json", 0o664, "writable by other users"),
    "a trial's folder writable by others": ("trial-a_00000", 0o777, "writable by other users"),
    "a trial's error.pkl writable by the group": ("trial-a_00001/error.pkl", 0o664, "writable by other users"),
    "a Train checkpoint writable by the group": ("train/train-a_00000/checkpoint_000000/state.pt", 0o664,
                                                 "writable by other users"),
    "a link to a file others can write": ("trial-a_00000/params.pkl", "link", "a symbolic link to .*elsewhere.pkl, "
                                          "outside the study, a file other users own or can write"),
    "a link to a folder outside": ("train", "link to folder", "a symbolic link to .*, a folder outside the study"),
    "experiment state of another owner": ("experiment_state-2026-01-01_00-00-00.json", "chown",
                                          "owned by user id 4242"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", list(HOW))
def test_resume_refuses_a_study_with_any_file_others_own_or_can_write(tmp_path, marker, how):
    """--resume hands tuner.pkl, experiment_state-*.json, the searchers' state and trial_settings.json to Ray's
    decoders. The gate looked at the folder and *.pkl only: a group-writable experiment state passed it."""
    if how.endswith("another owner") and os.getuid() != 0:
        pytest.skip("changing a file's owner needs root")
    study = Study(name="shared", base=tiny_config("digits"), storage=tmp_path / "results",
                  space={"alpha": Grid([1.0])})
    crafted_study(study.folder, marker)
    (study.folder / "trial_settings.json").write_text("{}")
    checkpoint = study.folder / "train" / "train-a_00000" / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.pt").write_bytes(b"")
    for path in (study.folder, *study.folder.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    where, change, message = HOW[how]
    target = study.folder / where
    if change == "link":  # the payload, where whoever can write it can change it
        target.unlink()
        target.symlink_to(tmp_path / "elsewhere.pkl")
        (tmp_path / "elsewhere.pkl").write_bytes(pickle.dumps(RunsCommand(marker)))
        (tmp_path / "elsewhere.pkl").chmod(0o666)
    elif change == "link to folder":
        target.rename(tmp_path / "train")
        target.symlink_to(tmp_path / "train")
    elif change == "chown":
        os.chown(target, 4242, -1)
    else:
        target.chmod(change)
    shown = study.folder if where == "." else target
    with pytest.raises(StudyError, match=f"--resume: refusing {shown}: .*{message}.*code could run"):
        run_study(study, resume=True)
    assert not marker.exists() and not ray.is_initialized()


def test_the_resume_gate_passes_a_study_of_this_user_with_links_inside_it(tmp_path, marker):
    """W&B keeps links in the study: `wandb/latest-run` to a folder inside, its logs to files of this user outside."""
    folder = crafted_study(tmp_path / "study", marker)
    (folder / "wandb" / "offline-run-1").mkdir(parents=True)
    (folder / "wandb" / "latest-run").symlink_to("offline-run-1")
    (folder / "wandb" / "debug.log").symlink_to(folder / "wandb" / "offline-run-1" / "debug.log")
    (tmp_path / "wandb-cache.log").write_text("")  # W&B links its core log to its cache, outside the study
    (folder / "wandb" / "offline-run-1" / "debug-core.log").symlink_to(tmp_path / "wandb-cache.log")
    (folder / "wandb" / "offline-run-1" / "gone.log").symlink_to(tmp_path / "deleted.log")
    for path in (folder, *folder.rglob("*"), tmp_path / "wandb-cache.log"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o600)
    assert untrusted_study(folder) is None


@pytest.mark.timeout(60)
def test_resume_refuses_a_study_in_a_folder_others_can_swap_it_in(tmp_path, marker):
    """Whoever can write the folder holding the study (without the sticky bit) can put another study in its place
    after the check."""
    if os.getuid() != 0:
        pytest.skip("changing a folder's owner needs root")
    storage = tmp_path / "shared"
    study = Study(name="s", base=tiny_config("digits"), storage=storage, space={"alpha": Grid([1.0])})
    crafted_study(study.folder, marker)
    for path in (study.folder, *study.folder.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    storage.chmod(0o777)
    os.chown(storage, 4242, -1)
    with pytest.raises(StudyError, match=f"the folder holding it \\({storage}, mode 777\\) lets other users"):
        run_study(study, resume=True)
    assert not marker.exists() and not ray.is_initialized()
