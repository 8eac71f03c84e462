"""EDM's non-leaking augmentation pipe (edm: training/augment.py), restricted to what SiD enables (docs/sid-facts.md
2.1).

SiD applies it only to the fake-score inputs, with the multipliers xflip 1e8, yflip, scale, rotate_frac, aniso,
translate_frac = 1 and no colour ops. Each op is enabled per sample with probability multiplier * p, so for any
p > 0 (1e8 * p >= 1) x-flip is eligible for EVERY sample and flips half of them; at p = 0 nothing happens at all
(no flips, all-zero labels, images returned unchanged).

Random draws follow EDM's order and shapes, so with the same torch RNG state the parameters (and labels) equal
EDM's. The label layout is always [xflip, yflip, scale, cos(rot) - 1, sin(rot), aniso cos r, aniso sin r, tx, ty]
(the 9 inputs of the networks' map_augment); an op with multiplier 0 draws nothing and leaves its columns 0.

Difference from EDM, on purpose: EDM resamples through a 2x sym6-wavelet upsampling, a bilinear grid_sample with
reflect-padded margins and a wavelet downsampling (anti-aliased). Here the same inverse transform is sampled once at
1x with bilinear grid_sample and reflection padding (which repeats the edge pixel where EDM's pad does not). The
transform and labels are EDM's; the resampled pixels are slightly blurrier and alias more. Samples whose geometric
parameters are all zero are passed through untouched (EDM still filters them, up to ~1e-3 off the identity).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LABEL_DIM = 9  # augment_dim of the EDM networks


def _matrix(rows: list[list[Tensor | float]], like: Tensor) -> Tensor:
    """Batch of matrices [N, R, C] from rows mixing per-sample tensors [N] and constants."""
    elems = [e if isinstance(e, Tensor) else torch.full_like(like, e) for row in rows for e in row]
    return torch.stack(elems, dim=-1).reshape(like.shape[0], len(rows), len(rows[0]))


def _scale(sx: Tensor | float, sy: Tensor | float, like: Tensor) -> Tensor:
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], like)


def _rotate(theta: Tensor) -> Tensor:
    return _matrix([[theta.cos(), -theta.sin(), 0], [theta.sin(), theta.cos(), 0], [0, 0, 1]], theta)


def _translate(tx: Tensor, ty: Tensor) -> Tensor:
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx)


class AugmentPipe:
    """`(images, augment_labels[N, 9]) = AugmentPipe(p)(images, generator=g)` for float images [N, C, H, W]."""

    def __init__(self, p: float = 0.12, *,
                 xflip: float = 1e8,               # probability multiplier for x-flip (SiD: always eligible)
                 yflip: float = 1.0,               # probability multiplier for y-flip
                 scale: float = 1.0,               # probability multiplier for isotropic scaling
                 rotate_frac: float = 1.0,         # probability multiplier for arbitrary rotation
                 aniso: float = 1.0,               # probability multiplier for anisotropic scaling
                 translate_frac: float = 1.0,      # probability multiplier for fractional translation
                 scale_std: float = 0.2,           # log2 standard deviation of isotropic scaling
                 rotate_frac_max: float = 1.0,     # rotation range, 1 = full circle
                 aniso_std: float = 0.2,           # log2 standard deviation of anisotropic scaling
                 aniso_rotate_prob: float = 0.5,   # probability of scaling along a randomly rotated axis
                 translate_frac_std: float = 0.125,  # translation standard deviation, relative to image size
                 ) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"AugmentPipe p must be a probability in [0, 1], got {p}")
        self.p, self.xflip, self.yflip, self.scale = float(p), float(xflip), float(yflip), float(scale)
        self.rotate_frac, self.aniso, self.translate_frac = float(rotate_frac), float(aniso), float(translate_frac)
        self.scale_std, self.rotate_frac_max = float(scale_std), float(rotate_frac_max)
        self.aniso_std, self.aniso_rotate_prob = float(aniso_std), float(aniso_rotate_prob)
        self.translate_frac_std = float(translate_frac_std)

    def __call__(self, images: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"AugmentPipe expects float images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        N, _, H, W = images.shape
        dev = images.device
        rand = lambda *shape: torch.rand(shape, generator=generator, device=dev)  # noqa: E731 (EDM's names)
        randn = lambda *shape: torch.randn(shape, generator=generator, device=dev)  # noqa: E731
        labels = torch.zeros(N, LABEL_DIM, device=dev)

        for col, mult, dim in ((0, self.xflip, 3), (1, self.yflip, 2)):
            if mult > 0:
                w = torch.randint(2, (N, 1, 1, 1), generator=generator, device=dev)
                w = torch.where(rand(N, 1, 1, 1) < mult * self.p, w, torch.zeros_like(w))
                images = torch.where(w == 1, images.flip(dim), images)
                labels[:, col] = w.flatten()

        # G_inv maps output pixel coordinates (origin at the image centre) to input coordinates, composed as in EDM.
        one = torch.ones(N, device=dev)
        G_inv = _scale(1.0, 1.0, one)
        if self.scale > 0:
            w = randn(N)
            w = torch.where(rand(N) < self.scale * self.p, w, torch.zeros_like(w))
            s = w.mul(self.scale_std).exp2()
            G_inv = G_inv @ _scale(1 / s, 1 / s, one)
            labels[:, 2] = w
        if self.rotate_frac > 0:
            w = (rand(N) * 2 - 1) * (math.pi * self.rotate_frac_max)
            w = torch.where(rand(N) < self.rotate_frac * self.p, w, torch.zeros_like(w))
            G_inv = G_inv @ _rotate(w)
            labels[:, 3], labels[:, 4] = w.cos() - 1, w.sin()
        if self.aniso > 0:
            w, r = randn(N), (rand(N) * 2 - 1) * math.pi
            w = torch.where(rand(N) < self.aniso * self.p, w, torch.zeros_like(w))
            r = torch.where(rand(N) < self.aniso_rotate_prob, r, torch.zeros_like(r))
            s = w.mul(self.aniso_std).exp2()
            G_inv = G_inv @ _rotate(-r) @ _scale(1 / s, s, one) @ _rotate(r)
            # (w, r) and (-w, r + pi) share these labels although they stretch opposite axes: EDM's labels, kept as is.
            labels[:, 5], labels[:, 6] = w * r.cos(), w * r.sin()
        if self.translate_frac > 0:
            w = randn(2, N)
            w = torch.where(rand(1, N) < self.translate_frac * self.p, w, torch.zeros_like(w))
            G_inv = G_inv @ _translate(-w[0] * (W * self.translate_frac_std), -w[1] * (H * self.translate_frac_std))
            labels[:, 7], labels[:, 8] = w[0], w[1]

        # Always warp (no `if moved.any()`: that would read a device bool every micro-batch) and keep the
        # untouched images where no geometric op was drawn, so resampling never blurs them.
        moved = labels[:, 2:].ne(0).any(dim=1)
        # Pixel units -> affine_grid's [-1, 1] units (align_corners=False: pixel i sits at (2i + 1)/W - 1).
        theta = _scale(2 / W, 2 / H, one) @ G_inv @ _scale(W / 2, H / 2, one)
        grid = F.affine_grid(theta[:, :2, :].to(images.dtype), list(images.shape), align_corners=False)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        images = torch.where(moved.reshape(N, 1, 1, 1), warped, images)
        return images, labels
