"""The DINOv2 vision transformer (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", 2023) as
a feature network: the backbone EDM2's FD_DINOv2 runs (`dinov2_vitl14` of facebookresearch/dinov2's hub, which EDM2's
calculate_metrics.py loads through torch.hub), written here so that no downloaded code runs.

What it computes is the hub model's `forward` in eval mode: 14 x 14 patches embedded by a convolution, a class token
prepended, learned position embeddings (trained for a 37 x 37 grid, i.e. 518 px) resampled bicubically to the input's
grid with DINOv2's scale factors ((grid + 0.1) / 37, no antialiasing), 24 pre-norm blocks (LayerNorm eps 1e-6,
multi-head attention with qkv bias, GELU MLP of 4x width, each branch scaled by its LayerScale gamma), a final
LayerNorm, and the class token of the result: 1024 features. Parameter names are the official checkpoint's
(`dinov2_vitl14_pretrain.pth`), so its state dict loads with strict=True; `mask_token` is only used in training and
is kept for that.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# dinov2_vitl14 (hub/backbones.py: vit_large, patch 14, img_size 518, init_values 1.0, block_chunks 0, no registers)
VITL14 = dict(img_size=518, patch_size=14, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0)
INTERPOLATE_OFFSET = 0.1  # DINOv2's position-embedding resampling: scale factor (grid + 0.1) / trained grid


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attn, self.ls1 = nn.LayerNorm(dim, eps=1e-6), Attention(dim, num_heads), LayerScale(dim)
        self.norm2, self.mlp, self.ls2 = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, int(dim * mlp_ratio)), LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, patches, dim], patches row by row


class DinoVisionTransformer(nn.Module):
    def __init__(self, img_size: int = 518,      # the grid the position embeddings were trained for (img / patch)
                 patch_size: int = 14,           # pixels per patch side
                 in_chans: int = 3,
                 embed_dim: int = 1024,          # features per token (the output's size)
                 depth: int = 24,                # transformer blocks
                 num_heads: int = 16,
                 mlp_ratio: float = 4.0):        # MLP width / embed_dim
        super().__init__()
        self.patch_size, self.embed_dim = patch_size, embed_dim
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # training only (masked patches); in the checkpoint
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """The position embeddings [1, 1 + h*w, dim] for an input of height x width pixels: the trained ones, or
        resampled bicubically to (height // patch) x (width // patch) as DINOv2 does."""
        h, w = height // self.patch_size, width // self.patch_size
        trained = self.pos_embed.shape[1] - 1
        if h * w == trained and h == w:
            return self.pos_embed
        side = math.isqrt(trained)
        patches = self.pos_embed[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patches = nn.functional.interpolate(
            patches, scale_factor=((h + INTERPOLATE_OFFSET) / side, (w + INTERPOLATE_OFFSET) / side),
            mode="bicubic", antialias=False)
        if patches.shape[-2:] != (h, w):
            raise ValueError(f"position embeddings resampled to {tuple(patches.shape[-2:])}, expected {(h, w)}")
        patches = patches.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([self.pos_embed[:, :1].float(), patches], dim=1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [N, C, H, W], normalised as the network was trained (ImageNet mean and std); returns the class
        token after the final norm, [N, embed_dim]."""
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(x.shape[-2], x.shape[-1])
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]
