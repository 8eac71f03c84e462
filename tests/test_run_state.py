"""The run folder: snapshots kept by policy, best.pt at the lowest FD (ties: the earlier), nothing saved for a diverged
evaluation, checkpoints of another architecture refused."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch as _torch

from sid.config import ConfigError, preset
from sid.distill import Distiller
from sid.files import BEST, SNAPSHOTS, snapshot_name
from sid.loop import make_row
from sid.networks.precond import EDMPrecond
from sid.results import best_of
from sid.run import LATER_FIELDS, UNREAD_LATER_FIELDS, RunFolder, load_checkpoint
from sid.teachers import load_network_file
from sid.testing.fixtures import TEACHER_KWARGS, make_teacher

FIDS = [5.0, 3.0, 4.0, 3.0, 6.0]  # best: the second evaluation (the fourth ties it, later)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> str:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def config(teacher: str, **overrides):
    base = dict(teacher=teacher, batch=4, batch_per_device=4, duration_kimg=0.02, eval_every_kimg=0.004,
                fid_images=16)
    return preset("digits", **{**base, **overrides})


def write_evaluations(folder: RunFolder, distiller: Distiller, fids: list[float], best=None) -> list[float]:
    """One evaluation per FD: step, then hand the folder the row and the running best the loop would; return the
    best FD after each."""
    stats = dict(loss_fake_score=1.0, loss_generator=1.0, nan_samples=0)
    found = []
    for fid in fids:
        distiller.step()
        row = make_row(distiller, fid=fid, stats=stats, wall_s=1.0, images_per_s=1.0, study="", trial_id="run")
        best = best_of(best, row)
        folder.on_evaluation(row, distiller, best)
        found.append(float(best["fid"]) if best is not None else math.nan)
    return found


@pytest.mark.parametrize("policy, kept", [
    ("all", [0, 1, 2, 3, 4]),
    ("best", [1]),
    ("last", [4]),
    ("best,last", [1, 4]),
])
def test_snapshots_follow_the_keep_policy_and_best_is_the_earliest_lowest(tmp_path, teacher_file, policy, kept):
    distiller = Distiller(config(teacher_file, keep_snapshots=policy), load_network_file(teacher_file))
    folder = RunFolder(tmp_path)
    best = write_evaluations(folder, distiller, FIDS)
    assert best == [5.0, 3.0, 3.0, 3.0, 3.0]
    kimgs = [(i + 1) * 0.004 for i in range(len(FIDS))]
    assert sorted(p.name for p in (tmp_path / SNAPSHOTS).iterdir()) == [snapshot_name(kimgs[i]) for i in kept]
    saved = torch.load(tmp_path / BEST, weights_only=True)
    assert saved["kimg"] == pytest.approx(kimgs[1]) and saved["fid"] == 3.0 and saved["iteration"] == 2
    assert set(saved) >= {"init_kwargs", "state_dict", "sigma_init", "config", "fid_detector", "fid_images"}
    last = torch.load(tmp_path / SNAPSHOTS / snapshot_name(kimgs[4]), weights_only=True) if 4 in kept else None
    if last is not None:  # the last snapshot holds the G_ema of its own evaluation
        assert all(torch.equal(v, distiller.generator_ema.state_dict()[k]) for k, v in last["state_dict"].items())
    assert isinstance(load_network_file(tmp_path / BEST), EDMPrecond)


def test_a_diverged_evaluation_saves_no_snapshot_and_keeps_best(tmp_path, teacher_file):
    distiller = Distiller(config(teacher_file, keep_snapshots="all"), load_network_file(teacher_file))
    folder = RunFolder(tmp_path)
    write_evaluations(folder, distiller, [4.0])
    before = (tmp_path / BEST).read_bytes()
    best = folder.best_until("run", distiller.kimg)  # where a resumed run's running best starts
    assert best["fid"] == 4.0
    assert write_evaluations(folder, distiller, [math.nan], best) == [4.0]  # the best so far is still the first
    assert len(list((tmp_path / SNAPSHOTS).iterdir())) == 1
    assert (tmp_path / BEST).read_bytes() == before


@pytest.mark.parametrize("value", ["none", "best,best", "", "all,last", "first"])
def test_unknown_snapshot_policy_is_refused(value):
    with pytest.raises(ConfigError, match="keep_snapshots: must be 'all', 'best', 'last' or 'best,last'"):
        preset("digits", keep_snapshots=value)


def test_resume_with_another_architecture_is_one_error_and_overwrites_nothing(tmp_path, teacher_file):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(open(teacher_file, "rb").read())
    out = tmp_path / "run"
    args = ["--teacher", str(teacher), "--batch", "4", "--batch-per-device", "4", "--duration-kimg", "0.008",
            "--fid-images", "16", "--out", str(out), "--no-progress"]
    first = subprocess.run([sys.executable, "-m", "sid", "distill", *args], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # The same config, but the teacher file now holds another architecture (replaced on a shared disk, say).
    net = EDMPrecond(**{**TEACHER_KWARGS, "model_channels": 32})
    torch.save(dict(init_kwargs=net.init_kwargs, state_dict=net.state_dict()), teacher)
    for workers in ("1", "2"):  # in this process, and through Ray Train (refused before Ray starts)
        again = subprocess.run([sys.executable, "-m", "sid", "distill", *args, "--duration-kimg", "0.016", "--resume",
                                "--workers", workers], capture_output=True, text=True, timeout=120)
        assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
        error = again.stderr.strip().splitlines()[-1]
        assert "another network architecture" in error and "model_channels: saved 16, this run 32" in error, error
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("name, precision, expected", [
    ("cifar10-uncond", "fp32", 1e-8), ("cifar10-uncond", "fp16", 1e-6), ("ffhq64", "fp16", 1e-6),
    ("ffhq64", "fp32", 1e-8), ("imagenet64-cond", "bf16", 1e-8),
])
def test_adam_eps_follows_the_official_rule_unless_set(name, precision, expected):
    assert preset(name, precision=precision).adam_eps == expected
    assert preset(name).replace(precision=precision).adam_eps == expected
    assert preset(name, precision=precision, adam_eps=1e-7).adam_eps == 1e-7
    assert preset(name, adam_eps=1e-7).replace(precision=precision).adam_eps == 1e-7


def test_checkpoints_written_before_todays_fields_still_resume(tmp_path, teacher_file):
    cfg = config(teacher_file)
    distiller = Distiller(cfg, load_network_file(teacher_file))
    old = {k: v for k, v in cfg.to_dict().items() if k not in (*LATER_FIELDS, *UNREAD_LATER_FIELDS, "keep_snapshots")}
    _torch.save({**distiller.state_dict(), "config": old, "wall_s": 0.0}, tmp_path / "checkpoint.pt")
    assert load_checkpoint(tmp_path / "checkpoint.pt", cfg)["iteration"] == 0
    with pytest.raises(ValueError, match="different config"):  # a run that did use a later field is not one of them
        load_checkpoint(tmp_path / "checkpoint.pt", cfg.replace(phema="0.05"))
