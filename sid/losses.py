"""SiD losses (docs/sid-facts.md section 2): the fake-score DSM loss, the generator loss and their two sigma samplers;
SiDA's two (docs/sida.md): the same with the fake score's encoder as a discriminator (BCE on its logits).

Pure functions: noise levels and noise are arguments, so tests and the Distiller control every random draw.
Networks are EDM preconditioned denoisers `net(x, sigma, class_labels=None, augment_labels=None) -> D(x; sigma)`
with sigma of shape [N].

Reduction: each loss returns the per-sample sum over pixels, shape [N]. The caller reduces as the official code does,
`loss.sum() * scale / batch_per_device` (ls = 1 for the fake score, lsg = 100 for the generator).

NaN guard: the official code drops samples whose images or network outputs contain NaN by row indexing before the
sum, while the divisor still counts them. Here those samples contribute exactly 0 to the returned vector instead
(same sum, same normaliser, fixed shape); `return_kept=True` also returns the mask, since a kept sample's loss
can be exactly 0 too (alpha = 1, identical networks), and `finite_samples` computes such masks. Deliberate
difference: +-inf is dropped as well as NaN; the official code would let an inf sample turn the whole batch's
gradient non-finite (which its grad nan_to_num then zeroes), so only already-broken steps differ.
Dropped samples' tensors are replaced by zeros *before* any arithmetic (images and noise before the networks see
them, outputs before the loss), so backward sends exactly 0, never 0 * NaN = NaN, to the images and network outputs
of those samples. A network whose forward turns a finite row into NaN may still produce NaN in its own backward;
the Distiller's nan_to_num on grads covers that, as in the official loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sid.networks.layers import ENCODER, ENCODER_DECODER

SIGMA_MIN = 0.002    # rho-schedule endpoints of the generator loss (EDM sampler defaults)
SIGMA_MAX = 80.0
RHO = 7.0
P_MEAN = -1.2        # EDM log-normal noise distribution of the fake-score loss
P_STD = 1.2
SIGMA_DATA = 0.5     # EDM data standard deviation (loss weight)
WEIGHT_FLOOR = 1e-5  # lower clip of the generator loss normaliser w_i
LOGIT_CLAMP = 10.0   # SiDA: the generator's adversarial term sees the discriminator's logits clamped to +-10


def finite_samples(*tensors: Tensor) -> Tensor:
    """Bool [N]: True for samples whose every element in every tensor is finite (the rows a loss keeps)."""
    if not tensors:
        raise ValueError("finite_samples needs at least one tensor of shape [N, ...]")
    keep = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        if t.shape[0] != keep.shape[0]:
            raise ValueError(f"finite_samples expected tensors with the same batch size {keep.shape[0]}, "
                             f"got {tuple(t.shape)}")
        keep &= torch.isfinite(t.detach()).reshape(t.shape[0], -1).all(dim=1)
    return keep


def _rows(v: Tensor, like: Tensor) -> Tensor:
    """View a per-sample vector [N] so that it broadcasts against `like` [N, ...]."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _zero_dropped(keep: Tensor, t: Tensor) -> Tensor:
    # torch.where's backward routes grad only to the chosen branch, so dropped rows get exactly 0, not 0 * NaN.
    return torch.where(_rows(keep, t), t, torch.zeros((), dtype=t.dtype, device=t.device))


def _finite_inputs(images: Tensor, sigma: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Validate shapes; return images and noise with non-finite samples zeroed, and the mask of kept samples."""
    if images.ndim < 2:
        raise ValueError(f"images must have shape [N, C, H, W] (at least [N, D]), got {tuple(images.shape)}")
    if sigma.shape != images.shape[:1]:
        raise ValueError(f"sigma must have shape [N] = ({images.shape[0]},), got {tuple(sigma.shape)}")
    if noise.shape != images.shape:
        raise ValueError(f"noise must have the shape of images {tuple(images.shape)}, got {tuple(noise.shape)}")
    keep = finite_samples(images, noise)   # sigma comes from the samplers: finite and positive by construction
    return _zero_dropped(keep, images), _zero_dropped(keep, noise), keep


def _pixel_sum(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


def edm_weight(sigma: Tensor) -> Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, EDM's loss weight (any shape)."""
    return (sigma ** 2 + SIGMA_DATA ** 2) / (sigma * SIGMA_DATA) ** 2


def _sid_term(images: Tensor, y_real: Tensor, y_fake: Tensor, keep: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """SiD's generator term per sample [N] and its normaliser w [N] (stop-gradient), dropped samples at 0."""
    y, y_real, y_fake = (_zero_dropped(keep, t) for t in (images, y_real, y_fake))
    with torch.no_grad():
        w = (y.float() - y_real.float()).abs().reshape(y.shape[0], -1).mean(dim=1).clamp_min(WEIGHT_FLOOR)
    diff = y_real - y_fake
    return _pixel_sum(diff * ((y_real - y) - alpha * diff) / _rows(w, y)), w


def _bce_mean(logits: Tensor, target: float, keep: Tensor) -> Tensor:
    """torch's BCEWithLogitsLoss (mean reduction) over the kept samples' logits, every element of their patch maps:
    a scalar shared by the micro-batch (0 if none is kept)."""
    logits = _zero_dropped(keep, logits)
    per = _zero_dropped(keep, F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target),
                                                                 reduction="none"))
    return per.sum() / (keep.sum() * per[0].numel()).clamp_min(1)


def generator_loss(teacher, fake_score, images: Tensor, labels: Tensor | None = None, *, alpha: float,
                   sigma: Tensor, noise: Tensor,
                   return_kept: bool = False,  # also return Bool [N] of the samples the NaN guard kept
                   ) -> Tensor | tuple[Tensor, Tensor]:
    """SiD generator loss per sample [N] (docs/sid-facts.md 2.2): sum over pixels of
    (f_phi - f_psi) * ((f_phi - x_g) - alpha (f_phi - f_psi)) / w_i, with w_i = max(mean |x_g - f_phi|, 1e-5).

    Gradient reaches `images` directly and through x_t = images + sigma * noise into both networks (their
    parameters must be frozen by the caller; outputs are deliberately not detached). Only w_i is stop-gradient.
    Augment labels are left at None, which EDMPrecond turns into the official zeros where the network has an
    augment layer (its weight then stays in the graph, as DDP needs).
    """
    images, noise, keep = _finite_inputs(images, sigma, noise)
    x_t = images + _rows(sigma, images) * noise
    y_real = teacher(x_t, sigma, class_labels=labels)
    y_fake = fake_score(x_t, sigma, class_labels=labels)
    keep = keep & finite_samples(y_real, y_fake)
    loss, _ = _sid_term(images, y_real, y_fake, keep, alpha)
    return (loss, keep) if return_kept else loss


def fake_score_loss(fake_score, images: Tensor, labels: Tensor | None = None, *, sigma: Tensor, noise: Tensor,
                    augment_labels: Tensor | None = None,
                    return_kept: bool = False,  # also return Bool [N] of the samples the NaN guard kept
                    ) -> Tensor | tuple[Tensor, Tensor]:
    """Fake-score denoising score matching per sample [N] (docs/sid-facts.md 2.1): sum over pixels of
    lambda(sigma) (f_psi(y + sigma n; sigma) - y)^2, lambda = (sigma^2 + 0.25) / (0.5 sigma)^2.

    `images` are the (possibly augmented) generator samples y; `augment_labels` the pipe's [N, 9] labels or None.
    """
    images, noise, keep = _finite_inputs(images, sigma, noise)
    s = _rows(sigma, images)
    weight = edm_weight(s)
    y_fake = fake_score(images + s * noise, sigma, class_labels=labels, augment_labels=augment_labels)
    keep = keep & finite_samples(y_fake)
    y, y_fake = _zero_dropped(keep, images), _zero_dropped(keep, y_fake)
    loss = _pixel_sum(weight * (y_fake - y) ** 2)
    return (loss, keep) if return_kept else loss


def generator_adversarial_loss(teacher, fake_score, images: Tensor, labels: Tensor | None = None, *, alpha: float,
                               sigma: Tensor, noise: Tensor,
                               return_kept: bool = False,  # also return Bool [N] of the samples the NaN guard kept
                               ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """SiDA's generator losses per sample, (sid [N], adversarial [N]) (docs/sida.md): the SiD term of
    generator_loss, and the adversarial term C*H*W * BCE_mean(clamp(logits, +-10), 1) / w_i, where the logits come
    from the same encoder+decoder pass of the fake score that gives f_psi, BCE_mean is the micro-batch mean (torch's
    BCEWithLogitsLoss) and w_i is SiD's normaliser. The caller sums each over the micro-batch: the adversarial sum is
    the official batch-mean BCE x C*H*W x sum_i 1/w_i, not a per-sample BCE / w_i."""
    images, noise, keep = _finite_inputs(images, sigma, noise)
    x_t = images + _rows(sigma, images) * noise
    y_real = teacher(x_t, sigma, class_labels=labels)
    y_fake, logits = fake_score(x_t, sigma, class_labels=labels, mode=ENCODER_DECODER)
    keep = keep & finite_samples(y_real, y_fake, logits)
    sid, w = _sid_term(images, y_real, y_fake, keep, alpha)
    bce = _bce_mean(logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP), 1.0, keep)
    adversarial = torch.where(keep, bce * images[0].numel() / w, torch.zeros((), device=images.device))
    return (sid, adversarial, keep) if return_kept else (sid, adversarial)


def fake_score_adversarial_loss(fake_score, images: Tensor, real_images: Tensor, labels: Tensor | None = None, *,
                                sigma: Tensor, noise: Tensor,
                                augment_labels: Tensor | None = None,       # the generated images' augment labels
                                real_augment_labels: Tensor | None = None,  # the real images' (their own draw)
                                return_kept: bool = False,  # also return Bool [N] of the samples the NaN guard kept
                                ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """SiDA's fake-score losses per sample, (dsm [N], discriminator [N]) (docs/sida.md): fake_score_loss's term
    from an encoder+decoder pass on the generated images y + sigma n, which also gives their logits, and
    lambda(sigma_i) (BCE_mean(real logits, 1) + BCE_mean(fake logits, 0)) / 2, the real logits from an encoder-only
    pass on real_images + sigma n (the same noise). BCE_mean is the micro-batch mean over kept samples; `labels`
    (the real batch's) condition both passes. Both inputs come augmented by the caller, each with its own draw."""
    images, noise, keep = _finite_inputs(images, sigma, noise)
    if real_images.shape != images.shape:
        raise ValueError(f"real_images must have the shape of images {tuple(images.shape)}, "
                         f"got {tuple(real_images.shape)}")
    keep = keep & finite_samples(real_images)
    real_images = _zero_dropped(keep, real_images)
    s = _rows(sigma, images)
    y_fake, logit_fake = fake_score(images + s * noise, sigma, class_labels=labels, augment_labels=augment_labels,
                                    mode=ENCODER_DECODER)
    logit_real = fake_score(real_images + s * noise, sigma, class_labels=labels,
                            augment_labels=real_augment_labels, mode=ENCODER)
    keep = keep & finite_samples(y_fake, logit_fake, logit_real)
    y, y_fake = _zero_dropped(keep, images), _zero_dropped(keep, y_fake)
    dsm = _pixel_sum(edm_weight(s) * (y_fake - y) ** 2)
    bce = (_bce_mean(logit_real, 1.0, keep) + _bce_mean(logit_fake, 0.0, keep)) / 2
    discriminator = torch.where(keep, edm_weight(sigma) * bce, torch.zeros((), device=images.device))
    return (dsm, discriminator, keep) if return_kept else (dsm, discriminator)


def _device(generator: torch.Generator | None, device) -> torch.device | None:
    return torch.device(device) if device is not None else (generator.device if generator is not None else None)


def sample_generator_sigma(n: int, tmax: float, *, generator: torch.Generator | None = None,
                           device=None) -> Tensor:
    """Noise levels [n] of the generator loss: t ~ U[0, tmax/1000], sigma = (smax^(1/rho) + (1 - t)(smin^(1/rho) -
    smax^(1/rho)))^rho. Note the (1 - t): t = 0 gives sigma_min = 0.002, t = 0.8 (tmax 800) gives 24.408."""
    if not 0 <= tmax <= 1000:
        raise ValueError(f"tmax must be in [0, 1000] (thousandths of the rho schedule), got {tmax}")
    t = torch.rand(n, generator=generator, device=_device(generator, device)) * (tmax / 1000)
    return _rho_sigma(t)


def _rho_sigma(t: Tensor | float) -> Tensor | float:
    """The generator loss's sigma at t in [0, 1]: (smax^(1/rho) + (1 - t)(smin^(1/rho) - smax^(1/rho)))^rho."""
    hi, lo = SIGMA_MAX ** (1 / RHO), SIGMA_MIN ** (1 / RHO)
    return (hi + (1 - t) * (lo - hi)) ** RHO


def generator_sigma_max(tmax: float) -> float:
    """The largest sigma the generator loss asks for at `tmax` (24.408 at tmax 800): a teacher must reach it."""
    return float(_rho_sigma(tmax / 1000))


def sample_fake_score_sigma(n: int, *, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Noise levels [n] of the fake-score loss: EDM log-normal, ln sigma ~ N(-1.2, 1.2^2) (median 0.301)."""
    return (torch.randn(n, generator=generator, device=_device(generator, device)) * P_STD + P_MEAN).exp()
