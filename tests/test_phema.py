"""Post-hoc EMA: the power-function profiles, their exact step weights, a reconstruction that matches a directly
tracked profile of the same length, resume, and the `sid phema` command on a real run folder."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from sid.config import ConfigError, preset
from sid.distill import Distiller
from sid.phema import beta, exponent, reconstruct, sigma_rel_of, step_weights
from sid.results import PHEMA_SCHEMA, read_evaluations, read_parquet
from sid.teachers import load_network_file
from sid.testing.fixtures import make_teacher

TRACKED, TARGET = (0.05, 0.10), 0.07


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> str:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


@pytest.mark.parametrize("sigma_rel, gamma", [(0.05, 16.97), (0.10, 6.94)])  # EDM2's pairs of the two
def test_exponent_and_sigma_rel_are_inverse(sigma_rel, gamma):
    assert exponent(sigma_rel) == pytest.approx(gamma, abs=0.01)
    assert sigma_rel_of(exponent(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-12)


@pytest.mark.parametrize("gamma", [0.5, 6.94, 16.97])
def test_step_weights_are_what_the_update_rule_gives(gamma):
    # The recursion ema <- beta ema + (1 - beta) theta on one-hot "weights" gives each step's weight directly.
    steps = 40
    ema = np.zeros(steps)
    for t in range(1, steps + 1):
        theta = np.eye(steps)[t - 1]
        ema = beta(t, gamma) * ema + (1 - beta(t, gamma)) * theta
    np.testing.assert_allclose(step_weights(steps, gamma), ema, rtol=1e-12, atol=1e-15)
    assert step_weights(steps, gamma).sum() == pytest.approx(1.0)


def tracked_run(teacher_file: str, steps: int, every: int) -> tuple[Distiller, list]:
    config = preset("digits", teacher=teacher_file, batch=4, batch_per_device=4, lr=1e-3, glr=1e-3,
                    phema=",".join(map(str, (*TRACKED, TARGET))))
    distiller = Distiller(config, load_network_file(teacher_file))
    snapshots = []
    for step in range(1, steps + 1):
        distiller.step()
        if step % every == 0:
            snapshots += [(step, gamma, {k: v.clone() for k, v in net.state_dict().items()})
                          for sigma_rel, gamma, net in distiller.profiles if sigma_rel in TRACKED]
    return distiller, snapshots


def relative(a: dict, b: dict) -> float:
    num = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in b if b[k].is_floating_point())
    den = sum((b[k].double() ** 2).sum() for k in b if b[k].is_floating_point())
    return float((num / den).sqrt())


def test_a_reconstructed_profile_matches_one_tracked_directly(teacher_file):
    distiller, snapshots = tracked_run(teacher_file, steps=80, every=4)
    target = dict(distiller.profiles[2][2].state_dict())  # 0.07, tracked by the same run alongside
    assert relative(reconstruct(snapshots, 80, TARGET), target) <= 1e-4
    start = load_network_file(teacher_file).state_dict()
    assert relative(start, target) > 1e-2  # the weights moved: the match is not the initial weights twice
    same = dict(distiller.profiles[0][2].state_dict())
    assert relative(reconstruct(snapshots, 80, 0.05), same) <= 1e-6  # a tracked length comes back as itself


def test_profiles_resume_bit_exactly(teacher_file):
    config = preset("digits", teacher=teacher_file, batch=4, batch_per_device=4, phema="0.05,0.1")
    straight = Distiller(config, load_network_file(teacher_file))
    for _ in range(3):
        straight.step()
    first = Distiller(config, load_network_file(teacher_file))
    first.step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = Distiller(config, load_network_file(teacher_file))
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    resumed.step()
    resumed.step()
    for (_, _, a), (_, _, b) in zip(straight.profiles, resumed.profiles):
        assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


@pytest.mark.parametrize("value", ["0.3", "0", "-0.05", "0.05,0.05", "abc"])
def test_profiles_outside_0_to_0_3_are_refused(value):
    with pytest.raises(ConfigError, match=r"phema: expected distinct sigma_rel values in \(0, 0.3\)"):
        preset("digits", phema=value)


def sid(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sid", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=240)


def test_phema_command_scores_each_length_on_a_real_run(tmp_path, teacher_file):
    train = subprocess.run([sys.executable, "-m", "sid", "distill", "--teacher", teacher_file, "--batch", "8",
                            "--batch-per-device", "8", "--duration-kimg", "0.064", "--eval-every-kimg", "0.032",
                            "--fid-images", "64", "--phema", "0.05,0.1", "--phema-every-kimg", "0.016",
                            "--out", "run", "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert train.returncode == 0, train.stderr
    assert len(list((tmp_path / "run" / "phema").glob("*.pt"))) == 2 * 4  # 2 profiles x 4 snapshot points
    done = sid("phema", "run", "--sigma-rel", "0.02,0.08", "--last", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = read_parquet(tmp_path / "run" / "phema.parquet", PHEMA_SCHEMA)
    assert rows["sigma_rel"].tolist() == [0.02, 0.08] and (rows["kimg"] == 0.064).all()
    assert rows["fid"].map(math.isfinite).all() and (rows["snapshots"] == 8).all()
    assert (rows["fid_detector"] == "digits-features-v1").all() and "best EMA length" in done.stdout
    assert len(read_evaluations(tmp_path / "run")) == 3  # the run's own rows, not the post-hoc ones
    for args, words in [(["phema", "run", "--sigma-rel", "0.5"], "in (0, 0.3)"),
                        (["phema", str(tmp_path / "nowhere")], "no post-hoc EMA snapshots")]:
        bad = sid(*args, cwd=tmp_path)
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
