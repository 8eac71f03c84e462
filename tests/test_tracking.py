"""Experiment trackers, read back with their own readers: TensorBoard's EventAccumulator, MLflow's client on a
local file store and W&B's offline run files (WANDB_MODE=offline, no account, no network). One run in this process
(its own APIs, sid/tracking.py) and one study (Ray Tune's callbacks)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import mlflow  # noqa: F401 (the test extra installs it: a missing one must fail, not skip)
import pytest
import torch
import wandb  # noqa: F401 (the test extra installs it: a missing one must fail, not skip)
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sid.commands.distill
from sid.cluster.space import Grid
from sid.config import preset
from sid.files import CONFIG_FILE, MLFLOW_DIR, TENSORBOARD_DIR, TRACKING_FILE, samples_name
from sid.results import read_evaluations
from sid.run import run_local
from sid.testing.fixtures import TINY, code_blocks
from sid.testing.trackers import wandb_runs
from sid.tracking import RunTracker, TrackingSettings, off_note, switched_off

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline: no account, no network; its own files (settings, cache) in tmp_path."""
    home = tmp_path / "wandb-home"
    for key, sub in (("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                     ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(key, str(home / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return home


def mlflow_runs(store: Path) -> list:
    from mlflow import MlflowClient  # noqa: PLC0415 (a tracker backend, installed only when used)

    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.timeout(240)
def test_one_run_logs_to_tensorboard_and_mlflow_and_a_resume_continues_the_axis(tmp_path, capsys):
    out = tmp_path / "run"
    tracking = TrackingSettings(("tensorboard", "mlflow"))
    run_local(preset("digits", **TINY), out, device=__import__("torch").device("cpu"), resume=False,
              progress=False, tracking=tracking)
    run_local(preset("digits", **{**TINY, "duration_kimg": 0.048}), out, device=__import__("torch").device("cpu"),
              resume=True, progress=False, tracking=tracking)
    rows = read_evaluations(out).sort_values("kimg")
    assert yaml.safe_load((out / CONFIG_FILE).read_text())["duration_kimg"] == 0.048  # rewritten by the resume
    want = [(round(k * 1000), f) for k, f in zip(rows["kimg"], rows["fid"])]  # steps: images seen, 0..48
    assert [s for s, _ in want] == [0, 16, 32, 48]

    logged = scalars(out / TENSORBOARD_DIR, "fid")
    assert [s for s, _ in logged] == [s for s, _ in want]
    assert [v for _, v in logged] == pytest.approx([f for _, f in want], rel=1e-6)

    client, runs = mlflow_runs(out / MLFLOW_DIR)
    assert len(runs) == 1  # the resume continued the same MLflow run
    run = runs[0]
    assert json.loads((out / TRACKING_FILE).read_text())["mlflow_run_id"] == run.info.run_id
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "fid"))
    assert history == [(s, pytest.approx(f)) for s, f in want]
    assert run.data.params["alpha"] == "1.2" and run.data.params["preset"] == "digits"
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert len(artifacts) == 4 and all(a.endswith(".png") for a in artifacts)
    assert "tracking:" not in capsys.readouterr().err


@pytest.mark.timeout(240)
def test_one_run_logs_metrics_config_and_samples_to_wandb_offline_and_a_resume_continues_the_run(
        tmp_path, wandb_offline, capsys):
    out = tmp_path / "run"
    tracking = TrackingSettings(("wandb",), experiment="digits-wandb")
    run_local(preset("digits", **TINY), out, device=torch.device("cpu"), resume=False, progress=False,
              tracking=tracking)
    run_local(preset("digits", **{**TINY, "duration_kimg": 0.048}), out, device=torch.device("cpu"), resume=True,
              progress=False, tracking=tracking)
    assert "tracking:" not in capsys.readouterr().err  # on with wandb 0.31, where wandb.util.generate_id is gone
    rows = read_evaluations(out).sort_values("kimg")
    runs = wandb_runs(out / "wandb")  # <run>/wandb/offline-run-*: what `wandb sync` uploads later
    run_id = json.loads((out / TRACKING_FILE).read_text())["wandb_run_id"]
    assert list(runs) == [run_id] and len(runs[run_id]["folders"]) == 2  # the resume continued the same run
    run = runs[run_id]
    assert run["name"] == "run" and run["config"]["alpha"] == 1.2 and run["config"]["preset"] == "digits"
    assert run["config"]["duration_kimg"] == 0.048  # the resume updated the run's config (config, not metrics)
    history = [(step, values) for step, values in run["history"] if "fid" in values]
    assert [s for s, _ in history] == [round(k * 1000) for k in rows["kimg"]] == [0, 16, 32, 48]
    assert [v["fid"] for _, v in history] == pytest.approx(rows["fid"].tolist(), rel=1e-6)
    assert {"best_fid", "images_per_s", "kimg", "loss_generator"} <= set(history[-1][1])
    assert not {"alpha", "iteration", "batch"} & set(history[-1][1])  # config fields and labels are not metrics
    for _, values in history:  # every evaluation's sample grid, copied into the offline run's media
        assert values["samples/_type"] == "image-file"
        assert any((folder / "files" / values["samples/path"]).is_file() for folder in run["folders"])
    assert sorted(p.name for p in out.glob("samples-*.png")) == [samples_name(i) for i in (0, 2, 4, 6)]


def test_unreachable_tracking_uri_switches_tracking_off_once_and_the_run_goes_on(tmp_path, capsys):
    tracker = RunTracker(tmp_path, {"alpha": 1.2}, TrackingSettings(("mlflow",), "http://127.0.0.1:9"))
    for kimg in (0.0, 0.016, 0.032):
        tracker.log({"kimg": kimg, "fid": 1.0})
    tracker.close()
    err = capsys.readouterr().err
    assert err.count("tracking: mlflow is off") == 1 and "127.0.0.1:9" in err
    assert list(switched_off(tmp_path)) == ["mlflow"] and "127.0.0.1:9" in off_note(tmp_path)


@pytest.mark.timeout(120)
def test_the_final_line_of_a_run_names_the_trackers_it_switched_off(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, "duration_kimg": 0.016}.items()]
    sid.commands.distill.main(["--preset", "digits", *flags, "--out", "run", "--no-progress", "--device", "cpu",
                               "--tracker", "mlflow", "--tracking-uri", "http://127.0.0.1:9"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("done in ") and "; trackers switched off: mlflow (" in last and "127.0.0.1:9" in last
    assert len(read_evaluations(tmp_path / "run")) == 2  # the run went on: its rows are the record


def images(logdir: Path, tag: str) -> list[int]:
    events = EventAccumulator(str(logdir), size_guidance={"images": 0})
    events.Reload()
    return [e.step for e in events.Images(tag)]


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_study_metrics_and_sample_grids_reach_tensorboard_mlflow_and_wandb_and_tune_sees_flat_configs(
        tmp_path, wandb_offline, capsys):
    import ray  # noqa: PLC0415 (Ray: only the distributed path needs it)

    from sid.cluster.study import Study, run_study  # noqa: PLC0415 (imports Ray: only this path needs it)
    from sid.cluster.trust import result_grid  # noqa: PLC0415 (imports Ray)

    study = Study(name="tracked", base=preset("digits", **TINY), space={"alpha": Grid([1.0, 1.2])},
                  storage=tmp_path, tracking=TrackingSettings(("tensorboard", "mlflow", "wandb"),
                                                              experiment="tracked"))
    ray.init(address="local", num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=True,
             log_to_driver=False)  # after wandb_offline: the W&B logging actors inherit WANDB_MODE=offline
    try:
        trials = run_study(study)
    finally:
        ray.shutdown()
    assert (trials["state"] == "completed").all()
    rows = read_evaluations(study.folder / "evaluations")
    assert yaml.safe_load((study.folder / CONFIG_FILE).read_text())["base"]["fid_images"] == 256
    for trial_id in rows["trial_id"].unique():  # each trial's run folder: its own complete config
        assert yaml.safe_load((study.folder / "runs" / trial_id / CONFIG_FILE).read_text())["alpha"] in (1.0, 1.2)
    client, runs = mlflow_runs(study.folder / MLFLOW_DIR)
    assert len(runs) == 2
    wandb_by_id = wandb_runs(study.folder / "wandb")
    assert sorted(wandb_by_id) == sorted(rows["trial_id"].unique())  # one W&B run per trial, named by its id
    constant = {"alpha", "batch", "fid_images", "iteration", "training_iteration", "time_total_s", "timestamp",
                "time_this_iter_s", "pid", "timesteps_total", "world_size"}
    for trial_id, mine in rows.groupby("trial_id"):
        # stepped on images seen (kimg 0 at step 0), not on reports
        want = sorted((round(k * 1000), f) for k, f in zip(mine["kimg"], mine["fid"]))
        logged = scalars(study.folder / f"trial-{trial_id}", "ray/tune/fid")
        assert logged == [(s, pytest.approx(f, rel=1e-6)) for s, f in want] and [s for s, _ in logged] == [0, 16, 32]
        assert images(study.folder / f"trial-{trial_id}", "samples") == [0, 16, 32]  # the trial's sample grids
        run = next(r for r in runs if trial_id in r.data.tags["trial_name"])
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "fid"))
        assert history == [(s, pytest.approx(f)) for s, f in want]
        assert set(run.data.params) == {"alpha", "preset"}  # flat: the searched field and the preset's name
        assert not constant & set(run.data.metrics)  # only what changes between evaluations
        assert {"fid", "best_fid", "images_per_s", "loss_generator"} <= set(run.data.metrics)
        assert len([a for a in client.list_artifacts(run.info.run_id, "samples") if a.path.endswith(".png")]) == 3
        w = wandb_by_id[trial_id]
        assert w["config"]["alpha"] == mine["alpha"].iloc[0] and w["config"]["preset"] == "digits"
        steps = [(step, values) for step, values in w["history"] if "fid" in values]
        assert [(s, v["fid"]) for s, v in steps] == [(s, pytest.approx(f, rel=1e-6)) for s, f in want]
        assert not constant & {k for _, v in steps for k in v}
        assert all(v["samples/_type"] == "image-file" for _, v in steps)

    out = capsys.readouterr().out  # what the study printed: evaluation lines with spread and target kimg, progress
    for trial_id, mine in rows.groupby("trial_id"):
        for row in mine.itertuples():
            line = next(x for x in out.splitlines() if x.startswith(f"[{trial_id}] kimg {row.kimg:.4g}/0.032 "))
            assert f"FD {row.fid:.4f} ± {row.fid_std:.2g}" in line and f"{row.images_per_s:.0f} img/s" in line
    progress = [x for x in out.splitlines() if x.startswith("study: ")]
    assert progress[0] == "study: 0 of 2 trials done, 1 running, 1 pending; kimg 0/0.064; 0 img/s; ETA unknown"
    assert progress[-1].startswith("study: 2 of 2 trials done, 0 running, 0 pending; kimg 0.064/0.064; ")
    assert progress[-1].endswith("; finished")

    grid = result_grid(study.folder)  # offline, after the cluster is gone
    assert len(grid) == 2 and not grid.errors
    assert sorted(r.config["alpha"] for r in grid) == [1.0, 1.2]
    assert all(set(r.config) == {"alpha", "preset"} for r in grid)
    best = grid.get_best_result(metric="best_fid", mode="min")
    assert best.metrics["best_fid"] == pytest.approx(trials["best_fid"].min())

    namespace = {"STUDY": str(study.folder)}  # docs/reading-results.md's Tune examples, as written
    doc = Path(__file__).resolve().parents[1] / "docs" / "reading-results.md"
    for block in code_blocks(doc.read_text(), "python tune"):
        exec(compile(block, "reading-results.md", "exec"), namespace)
    assert namespace["best"].metrics["best_fid"] == pytest.approx(trials["best_fid"].min())


@pytest.mark.parametrize("argv, words", [
    (["--tracker", "tensorbord"], "invalid choice: 'tensorbord'"),
    (["--tracker", "wandb"], "tracker wandb needs the wandb package: pip install 'sid-studies[wandb]'"),
])
def test_unknown_or_uninstalled_tracker_is_one_error_with_exit_code_2(tmp_path, monkeypatch, capsys, argv, words):
    if "wandb" in argv and importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        sid.commands.distill.main(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and "error:" in last and words in last, last
    assert not list(tmp_path.iterdir())
