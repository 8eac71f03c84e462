"""Post-hoc EMA: the power-function profiles, their exact step weights, least-squares coefficients against EDM2's
formulas and an independent float64 fit, identical snapshots rebuilt exactly (normalised coefficients, buffers copied)
for every architecture, a reconstruction that matches a directly tracked profile of the same length, resume, and the
`sid phema` command on a real run folder."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from sid.config import ConfigError, preset
from sid.distill import Distiller
from sid.networks.precond import EDMPrecond
from sid.phema import EXACT_STEPS, beta, coefficients, exponent, reconstruct, sigma_rel_of, step_weights
from sid.results import PHEMA_SCHEMA, read_evaluations, read_parquet
from sid.teachers import load_network_file
from sid.testing.fixtures import make_teacher

TRACKED, TARGET = (0.05, 0.10), 0.07
TARGETS = (0.01, 0.05, 0.10, 0.15, 0.20, 0.25)
# Snapshot points (steps) x tracked profiles (sigma_rel): the digits preset's (each evaluation), dense ones (every
# step), one profile, and a long run (the closed-form branch of coefficients(): steps x snapshots > EXACT_STEPS).
SNAPSHOT_SETS = {
    "digits-evaluations": (tuple(preset("digits", phema="0.05,0.1").phema_iterations()), (0.05, 0.10)),
    "dense": ((197, 198, 199, 200), (0.05, 0.10)),
    "one-profile": (tuple(range(25, 201, 25)), (0.10,)),
    "long-run": ((10_000_000, 20_000_000, 30_000_000, 40_000_000), (0.05, 0.10)),
}
# Every teacher kind, tiny, with the buffers its full size has: resampling filters ([1, 1] DDPM++ and ADM, [1, 3, 3, 1]
# NCSN++) and NCSN++'s Fourier frequencies.
_TINY = dict(img_resolution=8, img_channels=3, model_channels=16, channel_mult=[1, 2], num_blocks=1, dropout=0.0)
ARCHITECTURES = {
    "ddpmpp": dict(_TINY, label_dim=0, model_type="SongUNet", attn_resolutions=[4]),
    "ncsnpp": dict(_TINY, label_dim=0, model_type="SongUNet", attn_resolutions=[], embedding_type="fourier",
                   channel_mult_noise=2, encoder_type="residual", decoder_type="skip", resample_filter=[1, 3, 3, 1]),
    "adm": dict(_TINY, label_dim=10, model_type="DhariwalUNet", attn_resolutions=[]),
}


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


def edm2_coefficients(snapshots, target) -> np.ndarray:
    """EDM2's solve_posthoc_coefficients on its own formulas (training/phema.py): the inner products of continuous
    power-function profiles in closed form, np.linalg.solve in float64, divided by the sum."""
    def correlation(t_a, g_a, t_b, g_b):
        ratio, t_exp = t_a / t_b, np.where(t_a < t_b, g_b, -g_a)
        return (g_a + 1) * (g_b + 1) * ratio ** t_exp / ((g_a + g_b + 1) * np.maximum(t_a, t_b))

    t, g = (np.array(v, dtype=np.float64) for v in zip(*snapshots))
    a = correlation(t[:, None], g[:, None], t[None, :], g[None, :])
    b = correlation(t, g, np.float64(target[0]), np.float64(target[1]))
    x = scipy.linalg.solve(a, b)
    return x / x.sum()


def profiles_of(name: str) -> list[tuple[int, float]]:
    steps, sigma_rels = SNAPSHOT_SETS[name]
    return [(s, exponent(r)) for s in steps for r in sigma_rels]


@pytest.mark.parametrize("sigma_rel", TARGETS)
def test_long_run_coefficients_are_edm2s(sigma_rel):
    snaps = profiles_of("long-run")
    for step in (40_000_000, 25_000_000):
        usable = [p for p in snaps if p[0] <= step]
        assert step * (len(usable) + 1) > EXACT_STEPS  # the closed-form branch
        got = coefficients(usable, (step, exponent(sigma_rel)))
        np.testing.assert_allclose(got, edm2_coefficients(usable, (step, exponent(sigma_rel))), rtol=1e-7, atol=1e-9)
        assert got.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("sigma_rel", TARGETS)
@pytest.mark.parametrize("name", ["digits-evaluations", "one-profile"])
def test_short_run_coefficients_are_the_least_squares_fit_of_the_exact_ema_weights(name, sigma_rel):
    # Independent: each profile's weights over steps 1..t from the update rule itself (one-hot "weights"), then
    # scipy's least squares on the weights (not on their Gram matrix), normalised to sum to 1 as EDM2.
    snaps, step = profiles_of(name), 200

    def ema_weights(t, gamma):
        ema = np.zeros(step)
        for tau in range(1, t + 1):
            ema = beta(tau, gamma) * ema + (1 - beta(tau, gamma)) * np.eye(step)[tau - 1]
        return ema

    w = np.stack([ema_weights(t, g) for t, g in snaps], axis=1)
    x = scipy.linalg.lstsq(w, ema_weights(step, exponent(sigma_rel)))[0]
    np.testing.assert_allclose(coefficients(snaps, (step, exponent(sigma_rel))), x / x.sum(), rtol=1e-6, atol=1e-8)


@pytest.fixture(scope="module")
def networks() -> dict[str, EDMPrecond]:
    """A tiny network of every teacher kind with random weights (buffers as built)."""
    torch.manual_seed(0)
    nets = {}
    for kind, arch in ARCHITECTURES.items():
        nets[kind] = EDMPrecond(**arch)
        with torch.no_grad():
            for p in nets[kind].parameters():
                p.add_(torch.randn_like(p) * 0.02)
    return nets


def buffer_names(net: torch.nn.Module) -> set[str]:
    return {name for name, _ in net.named_buffers()}


@pytest.mark.parametrize("sigma_rel", TARGETS)
@pytest.mark.parametrize("name", list(SNAPSHOT_SETS))
def test_identical_snapshots_rebuild_the_same_network(networks, name, sigma_rel):
    # Whatever the target, an average of one network is that network: the coefficients sum to 1 and the buffers
    # (resampling filters, Fourier frequencies) are copied, so every tensor comes back to float32 round-off.
    snaps = profiles_of(name)
    steps = sorted({s for s, _ in snaps})
    for kind, net in networks.items():
        state = net.state_dict()
        assert buffer_names(net) & set(state), kind  # the test covers buffers
        for step in (steps[-1], steps[len(steps) // 2], (steps[0] + steps[1]) // 2, steps[-1] + steps[0]):
            rebuilt = reconstruct([(s, g, state) for s, g in snaps], step, sigma_rel, buffers=buffer_names(net))
            assert rebuilt.keys() == state.keys()
            off = [k for k, v in state.items() if not ((rebuilt[k] - v).abs() <= 2 ** -23 * v.abs()).all()]
            assert not off, f"{kind} at step {step}: {off[:3]} differ beyond float32 round-off"


def test_buffers_come_from_the_newest_snapshot_and_parameters_are_averaged(networks):
    net = networks["ncsnpp"]
    buffers = buffer_names(net)
    snaps = [(s, g, {k: v * s / 50 if k in buffers else v + i for k, v in net.state_dict().items()})
             for i, (s, g) in enumerate(profiles_of("digits-evaluations"))]  # buffers x1 .. x4 by step
    newest = max(range(len(snaps)), key=lambda i: snaps[i][0])
    for order in (snaps, snaps[::-1]):
        rebuilt = reconstruct(order, 200, 0.07, buffers=buffers)
        x = coefficients([(s, g) for s, g, _ in order], (200, exponent(0.07)))
        for key, value in rebuilt.items():
            if key in buffers:
                assert torch.equal(value, snaps[newest][2][key]), key
            else:
                want = sum(float(c) * st[key].double() for c, (_, _, st) in zip(x, order)).float()
                torch.testing.assert_close(value, want, rtol=1e-6, atol=1e-6)


def test_snapshots_of_different_networks_are_refused(networks):
    a, b = networks["ddpmpp"].state_dict(), networks["ncsnpp"].state_dict()
    with pytest.raises(ValueError, match=r"^post-hoc EMA snapshots of different networks: snapshot 1 and the first "):
        reconstruct([(100, 6.94, a), (200, 6.94, b)], 200, 0.1, buffers=buffer_names(networks["ddpmpp"]))


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
    buffers = buffer_names(distiller.profiles[2][2])
    assert relative(reconstruct(snapshots, 80, TARGET, buffers=buffers), target) <= 1e-4
    start = load_network_file(teacher_file).state_dict()
    assert relative(start, target) > 1e-2  # the weights moved: the match is not the initial weights twice
    same = dict(distiller.profiles[0][2].state_dict())
    # a tracked length comes back as itself
    assert relative(reconstruct(snapshots, 80, 0.05, buffers=buffers), same) <= 1e-6


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
