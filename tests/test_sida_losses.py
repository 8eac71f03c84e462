"""SiDA's losses against independent float64 computations: the official batch-mean BCE weightings, the same noise for
real and generated images, the NaN guard and where the gradients go."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sid.losses import fake_score_adversarial_loss, fake_score_loss, generator_adversarial_loss, generator_loss
from sid.testing.losses import ToyDenoiser

N, C, H, W = 6, 3, 4, 4


def inputs(seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(N, C, H, W, generator=g, dtype=dtype)
    real = torch.randn(N, C, H, W, generator=g, dtype=dtype).clamp(-1, 1)
    sigma = torch.tensor([0.002, 0.05, 0.3, 1.0, 2.5, 24.4], dtype=dtype)
    noise = torch.randn(N, C, H, W, generator=g, dtype=dtype)
    return images, real, sigma, noise


def softplus64(x: torch.Tensor) -> np.ndarray:
    """log(1 + e^x) in float64 numpy: BCE(l, 1) = softplus(-l), BCE(l, 0) = softplus(l)."""
    return np.logaddexp(0.0, x.detach().double().numpy())


def reference_fake_score(fake, images, real, sigma, noise, labels, keep):
    """Official SiDA loss in float64 on the kept samples: lambda ||f - y||^2 and lambda (BCE_mean(real, 1) +
    BCE_mean(fake, 0)) / 2, both BCE means over the kept samples' patch-map elements."""
    lam = ((sigma**2 + 0.25) / (0.5 * sigma) ** 2).double().numpy()
    n = sigma.reshape(-1, 1, 1, 1) * noise
    y_fake, logit_fake = fake(images.double() + n.double(), sigma.double(), labels, mode="encoder_decoder")
    logit_real = fake(real.double() + n.double(), sigma.double(), labels, mode="encoder")
    dsm = lam * ((y_fake - images.double()) ** 2).flatten(1).sum(1).detach().numpy()
    k = keep.numpy()
    bce = (softplus64(-logit_real)[k].mean() + softplus64(logit_fake)[k].mean()) / 2
    return np.where(k, dsm, 0.0), np.where(k, lam * bce, 0.0)


def reference_generator(teacher, fake, images, sigma, noise, alpha, labels):
    """SiD's term (paper Eq. 23 form) and the official adversarial weighting, CHW * BCE_mean(clamp(l), 1) / w_i."""
    x_t = (images + sigma.reshape(-1, 1, 1, 1) * noise).double()
    f_phi = teacher(x_t, sigma.double(), labels)
    f_psi, logits = fake(x_t, sigma.double(), labels, mode="encoder_decoder")
    d = (f_phi - f_psi).flatten(1)
    w = (images.double() - f_phi).abs().flatten(1).mean(1).clamp_min(1e-5)
    sid = ((1 - alpha) * (d * d).sum(1) + (d * (f_psi - images.double()).flatten(1)).sum(1)) / w
    bce = softplus64(-logits.clamp(-10, 10)).mean()
    return sid.detach().numpy(), C * H * W * bce / w.detach().numpy()


@pytest.mark.parametrize("conditional", [False, True])
def test_fake_score_losses_match_the_official_float64_computation(conditional):
    fake = ToyDenoiser(2, label_dim=4)
    images, real, sigma, noise = inputs()
    labels = torch.eye(4)[torch.arange(N) % 4] if conditional else None
    dsm, disc = fake_score_adversarial_loss(fake, images, real, labels, sigma=sigma, noise=noise)
    want_dsm, want_disc = reference_fake_score(fake.double(), images, real, sigma, noise,
                                               None if labels is None else labels.double(), torch.ones(N, dtype=bool))
    assert dsm.shape == disc.shape == (N,) and dsm.dtype == disc.dtype == torch.float32
    np.testing.assert_allclose(dsm.detach().double().numpy(), want_dsm, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(disc.detach().double().numpy(), want_disc, rtol=1e-5, atol=1e-6)
    # the denoising term is SiD's fake-score loss, unchanged
    torch.testing.assert_close(dsm, fake_score_loss(fake.float(), images, labels, sigma=sigma, noise=noise))


def test_real_and_generated_images_get_the_same_noise_and_the_real_ones_only_an_encoder_pass():
    fake = ToyDenoiser(2)
    images, real, sigma, noise = inputs()
    fake_score_adversarial_loss(fake, images, real, sigma=sigma, noise=noise)
    (mode_fake, x_fake), (mode_real, x_real) = fake.inputs
    assert (mode_fake, mode_real) == ("encoder_decoder", "encoder")
    torch.testing.assert_close(x_fake - images, x_real - real)
    torch.testing.assert_close(x_fake - images, sigma.reshape(-1, 1, 1, 1) * noise)


@pytest.mark.parametrize("alpha", [1.0, 1.2])
@pytest.mark.parametrize("conditional", [False, True])
def test_generator_losses_match_the_official_float64_computation(alpha, conditional):
    teacher, fake = ToyDenoiser(1, label_dim=4).requires_grad_(False), ToyDenoiser(2, label_dim=4).requires_grad_(False)
    images, _, sigma, noise = inputs()
    images = images * 4  # some logits beyond the +-10 clamp
    labels = torch.eye(4)[torch.arange(N) % 4] if conditional else None
    sid, adversarial = generator_adversarial_loss(teacher, fake, images, labels, alpha=alpha, sigma=sigma, noise=noise)
    want_sid, want_adv = reference_generator(teacher.double(), fake.double(), images, sigma, noise, alpha,
                                             None if labels is None else labels.double())
    np.testing.assert_allclose(sid.detach().double().numpy(), want_sid, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(adversarial.detach().double().numpy(), want_adv, rtol=1e-4)
    # the SiD term is generator_loss, unchanged
    torch.testing.assert_close(sid, generator_loss(teacher.float(), fake.float(), images, labels, alpha=alpha,
                                                   sigma=sigma, noise=noise))


def test_the_generator_weighting_is_the_batch_mean_bce_times_the_summed_inverse_normaliser():
    teacher, fake = ToyDenoiser(1).requires_grad_(False), ToyDenoiser(2).requires_grad_(False)
    images, _, sigma, noise = inputs()
    _, adversarial = generator_adversarial_loss(teacher, fake, images, alpha=1.2, sigma=sigma, noise=noise)
    x_t = images + sigma.reshape(-1, 1, 1, 1) * noise
    per_sample_bce = softplus64(-fake(x_t, sigma, mode="encoder").clamp(-10, 10)).reshape(N, -1).mean(1)
    w = (images - teacher(x_t, sigma)).abs().flatten(1).mean(1).double().numpy()
    total = adversarial.sum().item()
    np.testing.assert_allclose(total, C * H * W * per_sample_bce.mean() * (1 / w).sum(), rtol=1e-5)
    assert not np.isclose(total, C * H * W * (per_sample_bce / w).sum(), rtol=1e-3)  # the weighting is not per sample


def test_a_nan_real_image_drops_its_sample_and_the_bce_means_cover_the_kept_ones():
    fake = ToyDenoiser(2)
    images, real, sigma, noise = inputs()
    real[2, 0, 1, 1] = float("nan")
    dsm, disc, kept = fake_score_adversarial_loss(fake, images, real, sigma=sigma, noise=noise, return_kept=True)
    assert kept.tolist() == [True, True, False, True, True, True]
    want_dsm, want_disc = reference_fake_score(fake.double(), images, torch.nan_to_num(real), sigma, noise, None,
                                               kept)
    np.testing.assert_allclose(disc.detach().double().numpy(), want_disc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dsm.detach().double().numpy(), want_dsm, rtol=1e-4, atol=1e-4)
    (dsm.sum() + disc.sum()).backward()
    assert fake.A.grad.isfinite().all() and fake.b.grad.isfinite().all()


def test_fake_score_losses_train_the_fake_score_and_the_generator_losses_reach_the_images():
    fake = ToyDenoiser(2)
    images, real, sigma, noise = inputs()
    _, disc = fake_score_adversarial_loss(fake, images, real, sigma=sigma, noise=noise)
    disc.sum().backward()
    assert fake.A.grad.abs().sum() > 0 and fake.b.grad.abs().sum() > 0

    teacher, fake = ToyDenoiser(1).requires_grad_(False), ToyDenoiser(2).requires_grad_(False)
    images = images.clone().requires_grad_(True)
    _, adversarial = generator_adversarial_loss(teacher, fake, images, alpha=1.2, sigma=sigma, noise=noise)
    adversarial.sum().backward()
    assert images.grad.isfinite().all() and images.grad.abs().sum() > 0


def test_logits_beyond_the_clamp_give_the_generator_no_adversarial_gradient():
    teacher, fake = ToyDenoiser(1).requires_grad_(False), ToyDenoiser(2).requires_grad_(False)
    _, _, sigma, noise = inputs()
    with torch.no_grad():  # every logit far beyond +10: 3 * mean_c(A c_in x + b) with x large along A's row sums
        fake.A.copy_(torch.eye(C))
        fake.b.fill_(100.0)
    images = torch.zeros(N, C, H, W, requires_grad=True)
    _, adversarial = generator_adversarial_loss(teacher, fake, images, alpha=1.2, sigma=sigma, noise=noise)
    adversarial.sum().backward()
    assert torch.equal(images.grad, torch.zeros_like(images))


def test_real_images_of_another_shape_are_refused():
    fake = ToyDenoiser(2)
    images, real, sigma, noise = inputs()
    with pytest.raises(ValueError, match="real_images must have the shape"):
        fake_score_adversarial_loss(fake, images, real[:, :1], sigma=sigma, noise=noise)
