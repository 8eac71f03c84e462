"""Experiment trackers, read back with their own readers: TensorBoard's EventAccumulator and MLflow's client on a
local file store. One run in this process (its own APIs, sid/tracking.py) and one study (Ray Tune's callbacks)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import mlflow  # noqa: F401 (the test extra installs it: a missing one must fail, not skip)
import pytest
import yaml

import sid.commands.distill
from sid.cluster.space import Grid
from sid.config import preset
from sid.files import CONFIG_FILE, MLFLOW_DIR, TENSORBOARD_DIR, TRACKING_FILE
from sid.results import read_evaluations
from sid.run import run_local
from sid.testing.fixtures import TINY, code_blocks
from sid.tracking import RunTracker, TrackingSettings

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")



def scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: PLC0415 (a tracker reader, loaded only when used)

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


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


def test_unreachable_tracking_uri_switches_tracking_off_once_and_the_run_goes_on(tmp_path, capsys):
    tracker = RunTracker(tmp_path, {"alpha": 1.2}, TrackingSettings(("mlflow",), "http://127.0.0.1:9"))
    for kimg in (0.0, 0.016, 0.032):
        tracker.log({"kimg": kimg, "fid": 1.0})
    tracker.close()
    err = capsys.readouterr().err
    assert err.count("tracking: mlflow is off") == 1 and "127.0.0.1:9" in err


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_study_metrics_reach_tensorboard_and_mlflow_and_tune_sees_flat_configs(tmp_path):
    import ray  # noqa: PLC0415 (Ray: only the distributed path needs it)

    from sid.cluster.study import Study, run_study  # noqa: PLC0415 (imports Ray: only this path needs it)
    from sid.cluster.trust import result_grid  # noqa: PLC0415 (imports Ray)

    study = Study(name="tracked", base=preset("digits", **TINY), space={"alpha": Grid([1.0, 1.2])},
                  storage=tmp_path, tracking=TrackingSettings(("tensorboard", "mlflow"), experiment="tracked"))
    ray.init(address="local", num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=True,
             log_to_driver=False)
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
    for trial_id, mine in rows.groupby("trial_id"):
        # stepped on images seen, not on reports; Ray's callbacks read a step of 0 as missing and log kimg 0 at 1
        want = sorted((max(1, round(k * 1000)), f) for k, f in zip(mine["kimg"], mine["fid"]))
        logged = scalars(study.folder / f"trial-{trial_id}", "ray/tune/fid")
        assert [s for s, _ in logged] == [1, 16, 32]
        assert logged == [(s, pytest.approx(f, rel=1e-6)) for s, f in want]
        run = next(r for r in runs if trial_id in r.data.tags["trial_name"])
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "fid"))
        assert history == [(s, pytest.approx(f)) for s, f in want]
        assert set(run.data.params) == {"alpha", "preset"}  # flat: the searched field and the preset's name

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
