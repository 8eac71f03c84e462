"""The one-run command: rows per evaluation, run folder contents, resume, and one clear error per bad input."""

import math
import subprocess
import sys

import pytest
import torch

from sid.config import preset
from sid.digits import DigitsDetector
from sid.distill import Distiller
from sid.files import snapshot_name
from sid.loop import Evaluator, train
from sid.networks.vp import load_diffusers
from sid.results import EVALUATION_SCHEMA, read_evaluations
from sid.run import run_local
from sid.teachers import load_network_file, load_teacher
from sid.testing.fixtures import RowSink, make_teacher


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "tiny.pt")


def tiny(teacher_file, **overrides):
    base = dict(teacher=teacher_file, batch=16, batch_per_device=16, duration_kimg=0.096, eval_every_kimg=0.032,
                fid_images=128, lr=1e-3, glr=1e-3)
    return preset("digits", **{**base, **overrides})


def test_run_writes_one_row_per_evaluation_point(tmp_path, teacher_file):
    config = tiny(teacher_file)
    path = run_local(config, tmp_path / "run", device=torch.device("cpu"), resume=False, progress=False)
    rows = read_evaluations(path)
    assert list(rows.columns) == EVALUATION_SCHEMA.names
    assert rows["iteration"].tolist() == config.evaluation_iterations() == [0, 2, 4, 6]
    assert rows["kimg"].tolist() == pytest.approx([0, 0.032, 0.064, 0.096])
    assert rows["fid"].map(math.isfinite).all() and (rows["status"] == "ok").all()
    assert rows["fid_detector"].eq("digits-features-v1").all() and rows["world_size"].eq(1).all()
    assert math.isnan(rows["loss_generator"].iloc[0]) and rows["loss_fake_score"].iloc[1:].gt(0).all()
    assert rows["wall_s"].is_monotonic_increasing and rows["images_per_s"].iloc[1:].gt(0).all()
    assert rows.loc[0, "alpha"] == config.alpha and rows.loc[0, "trial_id"] == "run"
    best = rows.loc[rows["fid"].idxmin()]
    generator = load_network_file(tmp_path / "run" / "best.pt")
    assert generator.img_resolution == 8
    saved = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert (saved["kimg"], saved["fid"], saved["fid_detector"]) == (best["kimg"], best["fid"], "digits-features-v1")
    kept = {snapshot_name(k) for k in {best["kimg"], rows["kimg"].iloc[-1]}}  # the default: best and last
    assert {p.name for p in (tmp_path / "run" / "snapshots").iterdir()} == kept
    assert sorted(p.name for p in (tmp_path / "run").glob("samples-*.png")) == [
        f"samples-{i:07d}.png" for i in [0, 2, 4, 6]]


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, teacher_file):
    full = tiny(teacher_file)
    run_local(full, tmp_path / "straight", device=torch.device("cpu"), resume=False, progress=False)
    # The "interrupted" run stops at 2/3 of the way (after its checkpoint), then continues to the full duration.
    run_local(tiny(teacher_file, duration_kimg=0.064), tmp_path / "resumed", device=torch.device("cpu"),
              resume=False, progress=False)
    run_local(full, tmp_path / "resumed", device=torch.device("cpu"), resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    for name in ("generator", "fake_score", "generator_ema"):
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    rows_a, rows_b = read_evaluations(tmp_path / "straight"), read_evaluations(tmp_path / "resumed")
    assert rows_b["kimg"].tolist() == rows_a["kimg"].tolist()  # no row lost, none duplicated
    assert rows_b["fid"].tolist() == pytest.approx(rows_a["fid"].tolist(), rel=1e-6)


@pytest.mark.parametrize("resumed,evaluated", [(False, [0, 2, 4, 6]), (True, [2, 4, 6])])
def test_a_distiller_restored_at_kimg_0_does_not_evaluate_kimg_0_again(teacher_file, resumed, evaluated):
    # A checkpoint is taken right after each evaluation, kimg 0 included: a Ray Train restart can restore that
    # first one, whose iteration is 0, so "resumed" cannot be inferred from the iteration.

    config = tiny(teacher_file)
    sink = RowSink()
    train(Distiller(config, load_teacher(config.teacher)), evaluator=Evaluator(config), sinks=[sink], progress=False,
          resumed=resumed)
    rows = sink.rows
    assert [row["iteration"] for row in rows] == evaluated
    assert all(0 < row["fid_std"] < row["fid"] for row in rows)  # each evaluation measures its own sampling error


def test_resume_with_a_different_config_is_refused(tmp_path, teacher_file):
    run_local(tiny(teacher_file, duration_kimg=0.032), tmp_path / "run", device=torch.device("cpu"), resume=False,
              progress=False)
    with pytest.raises(ValueError, match="different config.*alpha"):
        run_local(tiny(teacher_file, alpha=1.0), tmp_path / "run", device=torch.device("cpu"), resume=True,
                  progress=False)


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sid", "distill", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--preset", "cifar100"], "invalid choice: 'cifar100'"),
    (["--alpha", "nan"], "DistillConfig.alpha: must be finite"),
    (["--alpha", "abc"], "invalid float value: 'abc'"),
    (["--lr", "0"], "DistillConfig.lr: must be > 0"),
    (["--tmax", "2000"], "DistillConfig.tmax: must be in 1..1000"),
    (["--sigma-init", "-1"], "DistillConfig.sigma_init: must be > 0"),
    (["--batch", "100"], "DistillConfig.batch: must be divisible by batch_per_device=128"),
    (["--precision", "fp8"], "DistillConfig.precision: must be one of"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--gpus-per-worker", "-1"], "--gpus-per-worker must be >= 0"),
    (["--resume", "--out", "fresh"], "holds no checkpoint.pt"),
    (["--out", "a_file"], "exists and is not a folder"),
    (["--out", "s3://bucket/run"], "--out s3://bucket/run: expected a local or mounted shared folder"),
    (["--out", "gs://bucket/run", "--workers", "2"], "not a URL"),
    (["--teacher", "missing.pt"], "missing.pt: no such network file"),
])
def test_bad_input_is_one_clear_error_with_exit_code_2(tmp_path, args, message):
    (tmp_path / "a_file").write_text("x")
    done = cli(*args, "--duration-kimg", "0.128", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


def test_existing_run_needs_resume(tmp_path, teacher_file):
    args = ["--teacher", teacher_file, "--batch", "16", "--batch-per-device", "16", "--duration-kimg", "0.016",
            "--fid-images", "64", "--out", "run", "--no-progress"]
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "kimg      0.02" in first.stdout and "FD(64)" in first.stdout
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 2 and "pass --resume" in again.stderr


def test_digits_training_commands_write_loadable_networks(tmp_path):
    for command in ("train-teacher", "train-detector"):
        done = subprocess.run([sys.executable, "-m", "sid", "digits", command, "--steps", "3", "--out",
                               str(tmp_path / f"{command}.pt")], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    teacher = load_network_file(tmp_path / "train-teacher.pt")
    assert (teacher.img_channels, teacher.img_resolution) == (1, 8)
    features = DigitsDetector(tmp_path / "train-detector.pt")(torch.zeros(3, 1, 8, 8, dtype=torch.uint8))
    assert features.shape == (3, 64) and features.dtype == torch.float64
    done = subprocess.run([sys.executable, "-m", "sid", "digits", "train-ddpm-teacher", "--steps", "3", "--out",
                           str(tmp_path / "ddpm")], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    ddpm = load_diffusers(tmp_path / "ddpm")  # the second teacher kind: a diffusers pipeline folder
    assert (ddpm.img_channels, ddpm.img_resolution, ddpm.label_dim, ddpm.prediction_type) == (1, 8, 0, "epsilon")
    assert ddpm(torch.zeros(2, 1, 8, 8), 2.5).shape == (2, 1, 8, 8)
