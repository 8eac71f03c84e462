"""EDM preconditioning: D(x; sigma) = c_skip x + c_out F(c_in x, c_noise), wrapping a SongUNet or DhariwalUNet.

A network is fully described by `net.init_kwargs` (a plain dict): `EDMPrecond(**net.init_kwargs)` rebuilds it, and
its state_dict has EDM's names, so EDM weights load with strict=True."""

import math
from typing import Any

import torch
from torch import nn

from sid.networks.dhariwal import DhariwalUNet
from sid.networks.layers import DECODER, ENCODER, check_mode
from sid.networks.songunet import SongUNet

MODEL_TYPES: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
# Constructor arguments that change neither the architecture nor the meaning of the weights.
RUNTIME_KWARGS = ("dropout", "use_fp16")


def architecture_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{argument: (a's, b's)} for each constructor argument that differs between two EDMPrecond's `init_kwargs`
    (RUNTIME_KWARGS apart): the one rule for "same network" (resumes, init generators)."""
    keys = (set(a) | set(b)) - set(RUNTIME_KWARGS)
    return {k: (a.get(k), b.get(k)) for k in sorted(keys) if a.get(k) != b.get(k)}


class EDMPrecond(nn.Module):
    has_encoder = True  # forward(mode='encoder' | 'encoder_decoder') gives discriminator logits (SiDA)

    def __init__(self, img_resolution: int, img_channels: int,
                 label_dim: int = 0,              # number of classes, 0 = unconditional
                 use_fp16: bool = False,          # run the U-Net body in fp16 (CUDA only; weights stay fp32)
                 sigma_min: float = 0,            # smallest supported noise level (used by samplers)
                 sigma_max: float = math.inf,     # largest supported noise level (used by samplers)
                 sigma_data: float = 0.5,         # expected std of the data
                 model_type: str = "SongUNet",    # 'SongUNet' (DDPM++/NCSN++) or 'DhariwalUNet' (ADM)
                 **model_kwargs: Any):            # the U-Net's own arguments (model_channels, channel_mult, ...)
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {sorted(MODEL_TYPES)}, got {model_type!r}")
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = MODEL_TYPES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                             out_channels=img_channels, label_dim=label_dim, **model_kwargs)
        self.augment_dim = int(model_kwargs.get("augment_dim", 0))  # width of the U-Net's map_augment (0: none)
        # Every U-Net argument, defaults included, so the rebuilt network does not depend on future defaults.
        unet_kwargs = {k: v for k, v in self.model.init_kwargs.items()
                       if k not in ("img_resolution", "in_channels", "out_channels", "label_dim")}
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                                use_fp16=use_fp16, sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data,
                                model_type=model_type, **unet_kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None,
                mode: str = DECODER,  # 'decoder': D(x; sigma); 'encoder': logits; 'encoder_decoder': (D, logits)
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (N, C, R, R); sigma: a scalar, (N,) or (N, 1, 1, 1); class_labels: (N, label_dim) one-hot or None
        (zeros); augment_labels: (N, augment_dim) or None (zeros). Returns D(x; sigma) in float32; with `mode`
        'encoder' the encoder's logits [N, 1, h, w] (the channel mean of its last feature map, the lowest
        resolution) in float32 from an encoder-only pass, with 'encoder_decoder' both from one pass (SiDA).

        None becomes zeros, as the official loop passes them: the bias-free map_augment then adds exactly 0, and its
        weight stays in the graph, which DDP with find_unused_parameters=False needs (EDM's `-vp` nets have 9)."""
        x = x.to(torch.float32)
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if sigma.shape[0] not in (1, n):
            raise ValueError(f"sigma must be a scalar or have one value per sample ({n}), got {sigma.shape[0]} values")
        sigma = sigma.expand(n, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([n, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        if self.augment_dim and augment_labels is None:
            augment_labels = torch.zeros([n, self.augment_dim], device=x.device)
        check_mode(mode)
        dtype = torch.float16 if self.use_fp16 and x.device.type == "cuda" else torch.float32

        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4

        out = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels,
                         augment_labels=augment_labels, mode=mode)
        if mode == ENCODER:
            return out.to(torch.float32)
        F_x, logits = (out, None) if mode == DECODER else out
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        return D_x if logits is None else (D_x, logits.to(torch.float32))

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """EDM samplers call this; EDM preconditioning supports any sigma."""
        return torch.as_tensor(sigma)
