"""SiD distils: with an analytic teacher (the exact denoiser of a Gaussian mixture) the one-step generator's samples
move to the mixture's modes, and on digits the Frechet distance of G_ema falls by at least half."""

import math
import statistics

import pytest
import torch
from torch import nn

from sid.config import preset
from sid.distill import Distiller
from sid.results import read_evaluations
from sid.run import run_local
from sid.testing.fixtures import tiny_teacher


class MixtureDenoiser(nn.Module):
    """Exact E[x0 | x0 + sigma n] for x0 ~ (1/K) sum_k N(mu_k, s^2 I): a teacher that needs no training."""

    def __init__(self, means: list, std: float, **_ignored) -> None:
        super().__init__()
        self.register_buffer("means", torch.tensor(means, dtype=torch.float32))  # [K, C, H, W]
        self.std = std
        self.init_kwargs = dict(means=means, std=std)
        self.img_channels, self.img_resolution = self.means.shape[1], self.means.shape[2]
        self.label_dim = 0

    def forward(self, x, sigma, class_labels=None, augment_labels=None):
        var = self.std**2 + sigma.reshape(-1, 1).to(torch.float64) ** 2                  # [N, 1]
        diff = x.double().flatten(1)[:, None, :] - self.means.double().flatten(1)[None]   # [N, K, D]
        resp = torch.softmax(-0.5 * diff.pow(2).sum(-1) / var, dim=1)                    # [N, K]
        shrink = (self.std**2 / var)[:, :, None]                                         # [N, 1, 1]
        posterior_means = self.means.double().flatten(1)[None] + shrink * diff           # [N, K, D]
        return (resp[:, :, None] * posterior_means).sum(1).reshape(x.shape).float()


def distance_to_modes(images, means):
    d = (images.flatten(1)[:, None, :] - means.flatten(1)[None]).pow(2).mean(-1)  # per-pixel MSE to each mode
    return d.min(1).values.mean().item()


@pytest.mark.slow
def test_generator_moves_to_the_modes_of_an_analytic_teacher():
    torch.manual_seed(0)
    pattern = torch.zeros(1, 8, 8)
    pattern[:, :, :4] = 1.0
    means = torch.stack([pattern - 0.5, 0.5 - pattern])  # two 8x8 images: left or right half bright
    teacher = MixtureDenoiser(means.tolist(), std=0.1)
    student = tiny_teacher(channel_mult=[1, 1]).train().requires_grad_(True)
    config = preset("digits", batch=32, batch_per_device=32, lr=1e-3, glr=1e-3, ema_mimg=1e-4, ema_rampup=0.05)
    d = Distiller(config, teacher, student=student)
    before = distance_to_modes(d.sample(0, 256), means)
    after = []
    for step in range(1, 201):
        d.step()
        if step >= 100 and step % 10 == 0:
            after.append(distance_to_modes(d.sample(0, 256), means))
    # The generator hops between the two modes now and then (one evaluation in ~10 is back near the start, and
    # where depends on the CPU's float rounding and threads): judge the run on the median and the best of its
    # last 11 evaluations, not on a single one.
    assert all(math.isfinite(a) for a in after)
    assert statistics.median(after) < 0.35 * before and min(after) < 0.15 * before, (before, after)


@pytest.mark.slow
def test_digits_frechet_distance_falls_by_at_least_half(tmp_path):
    config = preset("digits", duration_kimg=2.56, eval_every_kimg=2.56, fid_images=1024)  # 20 iterations
    rows = read_evaluations(run_local(config, tmp_path, device=torch.device("cpu"), resume=False, progress=False))
    start, end = rows["fid"].iloc[0], rows["fid"].iloc[-1]
    assert rows["kimg"].tolist() == pytest.approx([0.0, 2.56])
    assert end < 0.5 * start, (start, end)
