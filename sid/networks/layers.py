"""Layers of EDM's U-Nets (NVlabs/edm training/networks.py), re-implemented with the same parameter and buffer names
so that EDM state dicts load with strict=True.

Every layer casts its weights to the activation dtype: EDM keeps fp32 master weights and runs the U-Net body in fp16
by casting the input only (EDMPrecond use_fp16)."""

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# What a U-Net forward returns (SiDA reuses the fake score's encoder as its discriminator): the denoiser output, the
# encoder's logits (the channel mean of the last encoder feature map, a patch map at the lowest resolution), or both
# from one pass.
DECODER, ENCODER, ENCODER_DECODER = "decoder", "encoder", "encoder_decoder"
FORWARD_MODES = (DECODER, ENCODER, ENCODER_DECODER)


def check_mode(mode: str) -> None:
    if mode not in FORWARD_MODES:
        raise ValueError(f"mode must be one of {', '.join(FORWARD_MODES)}, got {mode!r}")


def encoder_logits(x: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] last encoder feature map -> [N, 1, h, w] logits (the official SiDA discriminator's output)."""
    return x.mean(dim=1, keepdim=True)


def init_kwargs_of(local_vars: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments (from `locals()` at the top of `__init__`) as a plain dict, deep-copied."""
    return {k: copy.deepcopy(v) for k, v in local_vars.items() if k not in ("self", "__class__")}


def drop_labels(labels: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero each sample's class labels with probability p in training (classifier-free guidance)."""
    if not (training and p):
        return labels
    keep = torch.rand([labels.shape[0], 1], device=labels.device) >= p
    return labels * keep.to(labels.dtype)


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """EDM's four initialisers (the *_uniform ones draw from U[-a, a])."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"init_mode must be xavier_uniform, xavier_normal, kaiming_uniform or kaiming_normal, "
                     f"got {mode!r}")


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int,
                 bias: bool = True,                  # learn an additive bias
                 init_mode: str = "kaiming_normal",  # see weight_init
                 init_weight: float = 1,             # multiplier of the initial weight
                 init_bias: float = 0):              # multiplier of the initial bias
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(weight_init([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(weight_init([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Conv2d(nn.Module):
    """Square convolution with optional 2x resampling by a separable FIR filter (depthwise, stride 2).
    kernel=0 gives a resampling-only layer with no weights (EDM's aux_down/aux_up and same-width ADM skips)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int,
                 bias: bool = True,                         # learn an additive bias (only if kernel > 0)
                 up: bool = False,                          # upsample 2x before the convolution
                 down: bool = False,                        # downsample 2x before the convolution
                 resample_filter: Sequence[int] = (1, 1),   # 1-D FIR taps; [1,1] box (DDPM++), [1,3,3,1] (NCSN++)
                 fused_resample: bool = False,              # down only: convolve first, then filter with stride 2
                 init_mode: str = "kaiming_normal",         # see weight_init
                 init_weight: float = 1,                    # multiplier of the initial weight
                 init_bias: float = 0):                     # multiplier of the initial bias
        super().__init__()
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive")
        if fused_resample and not (down and kernel):
            raise ValueError("Conv2d: fused_resample needs down=True and kernel > 0")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        self.weight = nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], **fans) * init_weight) \
            if kernel else None
        self.bias = nn.Parameter(weight_init([out_channels], **fans) * init_bias) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum().square()  # 2-D filter with unit DC gain
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        if self.fused_resample:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:  # x4 keeps the mean: a stride-2 transpose spreads each pixel over 4 outputs
                x = F.conv_transpose2d(x, f.mul(4).tile([self.in_channels, 1, 1, 1]), groups=self.in_channels,
                                       stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    def __init__(self, num_channels: int,
                 num_groups: int = 32,              # upper bound on the number of groups
                 min_channels_per_group: int = 4,   # fewer groups for narrow layers
                 eps: float = 1e-5):                # variance floor
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        if self.num_groups < 1:
            raise ValueError(f"GroupNorm needs at least {min_channels_per_group} channels, got {num_channels}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """Residual block with optional 2x resampling and self-attention: the union of DDPM++, NCSN++ and ADM blocks."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int,
                 up: bool = False,                          # upsample 2x (decoder transitions)
                 down: bool = False,                        # downsample 2x (encoder transitions)
                 attention: bool = False,                   # append a self-attention layer
                 num_heads: int | None = None,              # attention heads; None: out_channels // channels_per_head
                 channels_per_head: int = 64,               # used when num_heads is None (ADM)
                 dropout: float = 0,                        # dropout before the second convolution
                 skip_scale: float = 1,                     # residual sums are multiplied by this
                 eps: float = 1e-5,                         # GroupNorm eps
                 resample_filter: Sequence[int] = (1, 1),   # see Conv2d
                 resample_proj: bool = False,               # 1x1 conv on the skip path even if widths match
                 adaptive_scale: bool = True,               # embedding gives scale and shift (ADM), else a bias
                 init: dict | None = None,                  # Conv2d/Linear init kwargs of most layers
                 init_zero: dict | None = None,             # init kwargs of the last conv of each branch
                 init_attn: dict | None = None):            # init kwargs of qkv; None: same as init
        super().__init__()
        init = {} if init is None else init
        init_zero = dict(init_weight=0) if init_zero is None else init_zero
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        # ADM with fewer than channels_per_head channels gets 0 heads, i.e. no attention layer at all (as in EDM).
        self.num_heads = 0 if not attention else (
            num_heads if num_heads is not None else out_channels // channels_per_head)
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter,
                            **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init if init_attn is None else init_attn))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (orig if self.skip is None else self.skip(orig))) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self._attention(self.norm2(x))) + x) * self.skip_scale
        return x

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        heads = self.num_heads
        # EDM's qkv channel layout is (head, channel, {q,k,v}) interleaved, not [q|k|v] blocks.
        q, k, v = self.qkv(x).reshape(n, heads, c // heads, 3, h * w).unbind(3)  # each (n, heads, c/heads, hw)
        # SDPA wants (..., tokens, channels); its fused kernels accumulate the softmax in fp32 as EDM's AttentionOp.
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return a.transpose(-1, -2).reshape(n, c, h, w)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding [cos | sin] of a scalar per sample (DDPM++ and ADM noise embedding)."""

    def __init__(self, num_channels: int,
                 max_positions: int = 10000,   # longest wavelength
                 endpoint: bool = False):      # True: the last frequency is exactly 1/max_positions (DDPM++)
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        x = torch.outer(x, ((1 / self.max_positions) ** freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos | sin] (NCSN++ noise embedding); the frequencies are a saved buffer."""

    def __init__(self, num_channels: int,
                 scale: float = 16):   # std of the random frequencies
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)
