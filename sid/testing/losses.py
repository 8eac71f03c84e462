"""The toy denoiser of the loss tests (SiD's and SiDA's): small enough for float64 references written out by hand. A
library module: it imports only torch, and nothing in the library imports it.
"""

from __future__ import annotations

import torch


class ToyDenoiser(torch.nn.Module):
    """EDM-preconditioned toy denoiser whose 'network' mixes channels per pixel, with SiDA's 'encoder': h = A c_in x + b
    + E label; denoised = c_skip x + c_out tanh(h); the logits are the channel mean of 3 h, 2x2 average-pooled (a
    [N, 1, H/2, W/2] patch map, large enough to reach SiDA's +-10 clamp). `inputs`: each call's (mode, input)."""

    def __init__(self, seed: int, label_dim: int = 0, channels: int = 3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = torch.nn.Parameter(torch.randn(channels, channels, generator=g) * 0.5)
        self.b = torch.nn.Parameter(torch.randn(channels, generator=g) * 0.1)
        self.E = torch.nn.Parameter(torch.randn(max(label_dim, 1), channels, generator=g) * 0.1)
        self.inputs: list[tuple[str, torch.Tensor]] = []

    def forward(self, x, sigma, class_labels=None, augment_labels=None, mode="decoder"):
        self.inputs.append((mode, x.detach().clone()))
        s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        c_skip, c_out, c_in = 0.25 / (s**2 + 0.25), 0.5 * s / (s**2 + 0.25).sqrt(), 1 / (s**2 + 0.25).sqrt()
        h = torch.einsum("ij,njhw->nihw", self.A.to(x.dtype), c_in * x) + self.b.to(x.dtype).reshape(1, -1, 1, 1)
        if class_labels is not None:
            h = h + (class_labels.to(x.dtype) @ self.E.to(x.dtype)).reshape(-1, h.shape[1], 1, 1)
        denoised = c_skip * x + c_out * torch.tanh(h)
        if mode == "decoder":
            return denoised
        logits = torch.nn.functional.avg_pool2d(3 * h.mean(dim=1, keepdim=True), 2)
        return {"encoder": logits, "encoder_decoder": (denoised, logits)}[mode]
