"""The embedded default: scikit-learn's 8x8 digits, a small EDM teacher and a feature network for Frechet distance.

Both networks are trained by `sid digits` (sid/commands/digits.py) with fixed seeds and shipped as small weight files in
`sid/data/`, so the default study starts at once, offline:

    sid digits train-detector --out sid/data/digits-features-v1.pt
    sid digits train-teacher  --out sid/data/digits-teacher.pt

Files hold only plain data (`init_kwargs`, `state_dict`, `meta`) and load with `torch.load(weights_only=True)`.
Every number from the feature network is a Frechet distance on `digits-features-v1` features, not Inception FID.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from sid.config import DIGITS_FEATURES
from sid.losses import fake_score_loss, sample_fake_score_sigma
from sid.networks.precond import EDMPrecond

DATA = Path(__file__).parent / "data"
TEACHER_FILE = DATA / "digits-teacher.pt"
DETECTOR_FILE = DATA / "digits-features-v1.pt"
DDPM_TEACHER_DIR = DATA / "digits-ddpm"  # the second embedded teacher, a diffusers DDPM folder (sid/digits_ddpm.py)

# The teacher: an EDM-preconditioned DDPM++-style SongUNet at 8x8, 1 channel.
# 0.75 M parameters: one SiD iteration at batch 128 (about 12 forward-equivalents) takes ~0.5 s on 2 CPU cores.
TEACHER_KWARGS = dict(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet", model_channels=32,
                      channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.0,
                      embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                      decoder_type="standard", resample_filter=[1, 1])


def load_digits_images(held_out: bool | None = None) -> torch.Tensor:
    """All 1,797 digits as float32 [N, 1, 8, 8] in [-1, 1]; held_out=False/True gives the even/odd split."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 (scikit-learn: slow to import, only the digits data need it)

    images = torch.from_numpy(load_digits().images).float().div(16).mul(2).sub(1).unsqueeze(1)
    if held_out is None:
        return images
    return images[int(held_out)::2]


def load_digits_labels() -> torch.Tensor:
    from sklearn.datasets import load_digits  # noqa: PLC0415 (scikit-learn: slow to import, only the digits data need it)

    return torch.from_numpy(load_digits().target).long()


# ---------------------------------------------------------------------------------------------- feature network
class DigitsClassifier(nn.Module):
    """A small CNN classifier; its penultimate 64-d activations are the `digits-features-v1` features."""

    def __init__(self, feature_dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),       # 4x4
            nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),       # 2x2
            nn.Flatten(), nn.Linear(256, feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsDetector(nn.Module):
    """Detector protocol of sid.metrics: uint8 NCHW images in, float features out."""

    name = DIGITS_FEATURES
    feature_dim = 64

    def __init__(self, path: str | Path = DETECTOR_FILE) -> None:
        super().__init__()
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.net = DigitsClassifier(**saved["init_kwargs"])
        self.net.load_state_dict(saved["state_dict"])
        self.net.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.shape[1:] != (1, 8, 8):
            raise ValueError(f"{self.name} expects uint8 images of shape [N, 1, 8, 8], got {images.dtype} "
                             f"{tuple(images.shape)}")
        x = images.to(torch.float32) / 127.5 - 1
        return self.net.features(x).to(torch.float64)


def train_detector(*, steps: int = 1500, batch: int = 128, seed: int = 0, log_every: int = 250) -> dict:
    """Train the classifier on the even half of digits (light noise augmentation); report odd-half accuracy."""
    torch.manual_seed(seed)
    images, labels = load_digits_images(), load_digits_labels()
    train_x, train_y, test_x, test_y = images[0::2], labels[0::2], images[1::2], labels[1::2]
    net = DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(len(train_x), (batch,), generator=gen)
        x = train_x[idx] + 0.1 * torch.randn(train_x[idx].shape, generator=gen)
        loss = nn.functional.cross_entropy(net(x), train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"detector step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    net.eval()
    with torch.no_grad():
        accuracy = (net(test_x).argmax(1) == test_y).float().mean().item()
    return dict(init_kwargs=dict(feature_dim=64), state_dict=net.state_dict(),
                meta=dict(name=DIGITS_FEATURES, steps=steps, batch=batch, seed=seed, held_out_accuracy=accuracy))


# ---------------------------------------------------------------------------------------------- teacher
def edm_denoising_loss(net: nn.Module, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """EDM's training loss, mean over the batch: the fake-score loss of SiD on real images (sid.losses)."""
    sigma = sample_fake_score_sigma(images.shape[0], generator=generator)
    noise = torch.randn(images.shape, generator=generator)
    return fake_score_loss(net, images, sigma=sigma, noise=noise).mean()


def train_on_digits(net: nn.Module, loss_of: Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor], *,
                    steps: int, batch: int, lr: float, ema_halflife_steps: float, seed: int, log_every: int,
                    what: str) -> nn.Module:
    """Adam (a 200-step warm-up) on random batches of all 1,797 digits with `loss_of(net, images, generator)`, an EMA
    of the weights alongside; returns the EMA network. Both embedded teachers are trained by this one loop."""
    images = load_digits_images()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    beta = 0.5 ** (1 / ema_halflife_steps)
    start = time.time()
    for step in range(steps):
        loss = loss_of(net, images[torch.randint(len(images), (batch,), generator=gen)], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:  # short warm-up: the first Adam steps are large for a fresh U-Net
            group["lr"] = lr * min(1.0, (step + 1) / 200)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - beta)
        if log_every and (step + 1) % log_every == 0:
            print(f"{what} step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    return ema


def train_teacher(*, steps: int = 4000, batch: int = 128, lr: float = 1e-3, ema_halflife_steps: float = 200.0,
                  seed: int = 0, log_every: int = 250) -> dict:
    """Train the digits teacher with EDM's loss on all 1,797 digits; return its EMA weights."""
    torch.manual_seed(seed)  # the network's initialisation
    ema = train_on_digits(EDMPrecond(**TEACHER_KWARGS), edm_denoising_loss, steps=steps, batch=batch, lr=lr,
                          ema_halflife_steps=ema_halflife_steps, seed=seed, log_every=log_every, what="teacher")
    n_params = sum(p.numel() for p in ema.parameters())
    return dict(init_kwargs=dict(TEACHER_KWARGS), state_dict=ema.state_dict(),
                meta=dict(steps=steps, batch=batch, lr=lr, seed=seed, n_params=n_params))


# ---------------------------------------------------------------------------------------------- sampler
@torch.no_grad()
def edm_sample(net: nn.Module, noise: torch.Tensor, *, steps: int = 18, sigma_max: float = 80.0,
               sigma_min: float = 0.002, rho: float = 7.0) -> torch.Tensor:
    """EDM's deterministic Heun sampler (2 * steps - 1 network calls), to measure the teacher's own quality."""
    i = torch.arange(steps, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    x = noise.to(torch.float64) * t[0]
    for cur, nxt in zip(t[:-1], t[1:]):
        d = (x - net(x.float(), cur.float().expand(len(x))).double()) / cur
        x_next = x + (nxt - cur) * d
        if nxt > 0:
            d2 = (x_next - net(x_next.float(), nxt.float().expand(len(x))).double()) / nxt
            x_next = x + (nxt - cur) * (d + d2) / 2
        x = x_next
    return x.float()
