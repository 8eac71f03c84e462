"""SiD losses against independent float64 computations, NaN guard, gradient paths and the two sigma samplers."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from sid.losses import fake_score_loss, finite_samples, generator_loss, sample_fake_score_sigma, sample_generator_sigma
from sid.testing.losses import ToyDenoiser

N, C, H, W = 6, 3, 4, 4


def inputs(seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(N, C, H, W, generator=g, dtype=dtype)
    sigma = torch.tensor([0.002, 0.05, 0.3, 1.0, 2.5, 24.4], dtype=dtype)
    noise = torch.randn(N, C, H, W, generator=g, dtype=dtype)
    return images, sigma, noise


def reference_generator_loss(teacher, fake, images, sigma, noise, alpha, labels=None):
    """Paper Eq. 23 form in float64: [(1 - alpha)||f_phi - f_psi||^2 + <f_phi - f_psi, f_psi - x_g>] / w."""
    x_t = images + sigma.reshape(-1, 1, 1, 1) * noise
    f_phi, f_psi = teacher(x_t, sigma, labels), fake(x_t, sigma, labels)
    d = (f_phi - f_psi).flatten(1)
    w = (images - f_phi).detach().abs().flatten(1).mean(1).clamp_min(1e-5)
    return ((1 - alpha) * (d * d).sum(1) + (d * (f_psi - images).flatten(1)).sum(1)) / w


def reference_fake_score_loss(fake, images, sigma, noise, labels=None):
    lam = (sigma**2 + 0.25) / (0.5 * sigma) ** 2
    err = fake(images + sigma.reshape(-1, 1, 1, 1) * noise, sigma, labels) - images
    return lam * torch.linalg.vector_norm(err.flatten(1), dim=1) ** 2


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.2])
@pytest.mark.parametrize("conditional", [False, True])
def test_generator_loss_matches_float64_reference(alpha, conditional):
    teacher, fake = ToyDenoiser(1, label_dim=4).requires_grad_(False), ToyDenoiser(2, label_dim=4).requires_grad_(False)
    images, sigma, noise = inputs()
    labels = torch.eye(4)[torch.arange(N) % 4] if conditional else None
    got = generator_loss(teacher, fake, images, labels, alpha=alpha, sigma=sigma, noise=noise)
    want = reference_generator_loss(teacher.double(), fake.double(), images.double(), sigma.double(), noise.double(),
                                    alpha, None if labels is None else labels.double())
    assert got.shape == (N,) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_generator_loss_alpha_one_is_inner_product_with_fake_residual():
    # Hand-derived special case: alpha = 1 leaves <f_phi - f_psi, f_psi - x_g> / w; identical networks give 0.
    teacher = ToyDenoiser(1).requires_grad_(False)
    images, sigma, noise = inputs()
    got = generator_loss(teacher, teacher, images, alpha=1.0, sigma=sigma, noise=noise)
    assert torch.equal(got, torch.zeros(N))


@pytest.mark.parametrize("with_augment_labels", [False, True])
def test_fake_score_loss_matches_float64_reference(with_augment_labels):
    fake = ToyDenoiser(3)
    images, sigma, noise = inputs(1)
    aug = torch.randn(N, 9) if with_augment_labels else None
    got = fake_score_loss(fake, images, sigma=sigma, noise=noise, augment_labels=aug)
    want = reference_fake_score_loss(fake.double(), images.double(), sigma.double(), noise.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-3)


def test_fake_score_weight_is_edm_lambda():
    # Denoiser returning 0 at x = 0 with noise 0: loss = lambda(sigma) * ||y||^2 with y = 1 everywhere.
    sigma = torch.tensor([1.0, 0.3, 100.0])
    loss = fake_score_loss(lambda x, s, class_labels=None, augment_labels=None: torch.zeros_like(x),
                           torch.ones(3, 1, 2, 2), sigma=sigma, noise=torch.zeros(3, 1, 2, 2))
    torch.testing.assert_close(loss / 4, torch.tensor([5.0, 0.34 / 0.0225, 4.0001]))


def test_generator_gradient_reaches_generator_through_frozen_networks():
    teacher, fake = ToyDenoiser(1).requires_grad_(False), ToyDenoiser(2).requires_grad_(False)
    gen = torch.nn.Linear(8, C * H * W)
    _, sigma, noise = inputs()
    images = gen(torch.randn(N, 8, generator=torch.Generator().manual_seed(5))).reshape(N, C, H, W)
    captured = []
    def watched(net):
        def call(x, s, class_labels=None, augment_labels=None):
            x.retain_grad()
            captured.append(x)
            return net(x, s, class_labels, augment_labels)
        return call
    generator_loss(watched(teacher), watched(fake), images, alpha=1.2, sigma=sigma, noise=noise).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    assert all(p.grad is None for p in [*teacher.parameters(), *fake.parameters()])
    x_teacher, x_fake = captured
    assert x_teacher is x_fake and x_teacher.grad.abs().sum() > 0


def test_generator_gradient_matches_reference_with_only_weight_detached():
    teacher, fake = ToyDenoiser(1).requires_grad_(False), ToyDenoiser(2).requires_grad_(False)
    images, sigma, noise = inputs()
    x32 = images.clone().requires_grad_(True)
    generator_loss(teacher, fake, x32, alpha=1.2, sigma=sigma, noise=noise).sum().backward()
    x64 = images.double().requires_grad_(True)
    reference_generator_loss(teacher.double(), fake.double(), x64, sigma.double(), noise.double(), 1.2).sum().backward()
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-3, atol=1e-3)


def nan_in_row(net, row: int, value: float):
    def call(x, s, class_labels=None, augment_labels=None):
        bad = (torch.arange(x.shape[0]) == row).reshape(-1, 1, 1, 1)
        return net(x, s, class_labels, augment_labels) + torch.where(bad, value, 0.0)
    return call


@pytest.mark.parametrize("where", ["images", "teacher", "fake"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_generator_loss_drops_nonfinite_samples_with_finite_grads(where, value):
    teacher, fake = ToyDenoiser(1).requires_grad_(False), ToyDenoiser(2).requires_grad_(False)
    images, sigma, noise = inputs()
    clean = generator_loss(teacher, fake, images, alpha=1.2, sigma=sigma, noise=noise)
    if where == "images":
        images[2, 1, 0, 0] = value
    nets = {"teacher": teacher, "fake": fake}
    if where in nets:
        nets[where] = nan_in_row(nets[where], 2, value)
    x = images.requires_grad_(True)
    loss, kept = generator_loss(nets["teacher"], nets["fake"], x, alpha=1.2, sigma=sigma, noise=noise,
                                return_kept=True)
    loss.sum().backward()
    keep = torch.arange(N) != 2
    assert torch.equal(kept, keep) and loss[2] == 0 and torch.equal(loss[keep], clean[keep])
    assert torch.isfinite(x.grad).all() and x.grad[2].abs().sum() == 0 and x.grad[keep].abs().sum() > 0


@pytest.mark.parametrize("value", [math.nan, -math.inf])
def test_fake_score_loss_drops_nonfinite_samples_with_finite_grads(value):
    fake = ToyDenoiser(3)
    images, sigma, noise = inputs()
    clean = fake_score_loss(fake, images, sigma=sigma, noise=noise)
    loss, kept = fake_score_loss(nan_in_row(fake, 4, value), images, sigma=sigma, noise=noise, return_kept=True)
    loss.sum().backward()
    assert kept.tolist() == [True] * 4 + [False, True] and loss[4] == 0 and torch.equal(loss[:4], clean[:4])
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in (fake.A, fake.b))


def test_finite_samples_counts_rows_with_any_nonfinite_element():
    a, b = torch.zeros(5, 2, 3), torch.zeros(5, 7)
    a[1, 0, 2], b[3, 6], b[1, 0] = math.nan, -math.inf, math.inf
    assert finite_samples(a, b).tolist() == [True, False, True, False, True]
    with pytest.raises(ValueError, match="same batch size"):
        finite_samples(a, torch.zeros(4))


@pytest.mark.parametrize("bad", [dict(sigma=torch.ones(N, 1)), dict(noise=torch.zeros(N, C, H, W + 1))])
@pytest.mark.parametrize("loss", [
    lambda images, **kw: fake_score_loss(ToyDenoiser(3), images, **kw),
    lambda images, **kw: generator_loss(ToyDenoiser(1), ToyDenoiser(2), images, alpha=1.2, **kw),
])
def test_losses_reject_misshaped_sigma_and_noise(bad, loss):
    images, sigma, noise = inputs()
    with pytest.raises(ValueError, match="sigma must|noise must"):
        loss(images, **(dict(sigma=sigma, noise=noise) | bad))


def generator_t(sigma: torch.Tensor) -> np.ndarray:
    """Inverse of the rho schedule, written out on its own: t = 1 - (s^(1/7) - hi) / (lo - hi)."""
    s = sigma.double().numpy() ** (1 / 7)
    return 1 - (s - 80 ** (1 / 7)) / (0.002 ** (1 / 7) - 80 ** (1 / 7))


def test_generator_sigma_range_direction_and_uniform_t():
    sigma = sample_generator_sigma(200_000, 800, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (200_000,) and sigma.dtype == torch.float32
    assert 0.002 * 0.999 <= sigma.min() < 0.0021 and 24.0 < sigma.max() <= 24.408 * 1.001
    # Spec section 2.2 numbers: median ~0.965, 26.5% below 0.1, 37.5% above 2.5.
    assert sigma.median().item() == pytest.approx(0.965, rel=0.02)
    assert (sigma < 0.1).double().mean().item() == pytest.approx(0.265, abs=0.005)
    assert (sigma > 2.5).double().mean().item() == pytest.approx(0.375, abs=0.005)
    t = generator_t(sigma)
    assert scipy.stats.kstest(t / 0.8, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("tmax, lo, hi", [(0, 0.002, 0.002), (1000, 0.002, 80.0)])
def test_generator_sigma_endpoints(tmax, lo, hi):
    sigma = sample_generator_sigma(50_000, tmax, generator=torch.Generator().manual_seed(1))
    assert sigma.min().item() == pytest.approx(lo, rel=1e-3) and sigma.max().item() == pytest.approx(hi, rel=2e-2)


@pytest.mark.parametrize("tmax", [-1, 1001])
def test_generator_sigma_rejects_tmax_outside_schedule(tmax):
    with pytest.raises(ValueError, match="tmax must be in"):
        sample_generator_sigma(4, tmax)


def test_sigma_samplers_are_reproducible_with_a_generator():
    a = sample_generator_sigma(8, 800, generator=torch.Generator().manual_seed(3))
    b = sample_generator_sigma(8, 800, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(sample_fake_score_sigma(8, generator=torch.Generator().manual_seed(3)),
                       sample_fake_score_sigma(8, generator=torch.Generator().manual_seed(3)))


def test_fake_score_sigma_is_edm_log_normal():
    log_sigma = sample_fake_score_sigma(200_000, generator=torch.Generator().manual_seed(0)).double().log().numpy()
    assert log_sigma.mean() == pytest.approx(-1.2, abs=0.01) and log_sigma.std() == pytest.approx(1.2, abs=0.01)
    assert scipy.stats.kstest(log_sigma, "norm", args=(-1.2, 1.2)).pvalue > 1e-3
