"""DhariwalUNet: the ADM U-Net of Dhariwal & Nichol as EDM defines it (EDM's ImageNet-64 teacher)."""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sid.networks.layers import (
    DECODER,
    ENCODER,
    Conv2d,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
    check_mode,
    drop_labels,
    encoder_logits,
    init_kwargs_of,
)


class DhariwalUNet(nn.Module):
    def __init__(self, img_resolution: int, in_channels: int, out_channels: int,
                 label_dim: int = 0,                       # number of classes, 0 = unconditional
                 augment_dim: int = 0,                     # augmentation-label size, 0 = no map_augment layer
                 model_channels: int = 192,                # base channel count
                 channel_mult: Sequence[int] = (1, 2, 3, 4),  # channel multiplier per resolution level
                 channel_mult_emb: int = 4,                # embedding width = model_channels * this
                 num_blocks: int = 3,                      # residual blocks per level (decoder: one more)
                 attn_resolutions: Sequence[int] = (32, 16, 8),  # resolutions with self-attention (64 ch per head)
                 dropout: float = 0.10,                    # dropout inside residual blocks
                 label_dropout: float = 0):                # probability of zeroing class labels in training (CFG)
        init_kwargs = init_kwargs_of(locals())
        if img_resolution % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"img_resolution {img_resolution} must be divisible by 2**{len(channel_mult) - 1} "
                             f"for channel_mult={list(channel_mult)}")
        super().__init__()
        self.init_kwargs = init_kwargs
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init, init_zero=init_zero)

        # Mapping: noise level (+ augmentation labels) -> embedding; class labels are added after map_layer1.
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                init_weight=math.sqrt(label_dim)) if label_dim else None

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                augment_labels: torch.Tensor | None = None,
                mode: str = DECODER,  # 'decoder': the output; 'encoder': logits only; 'encoder_decoder': both
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        check_mode(mode)
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = drop_labels(class_labels, self.label_dropout, self.training)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        if mode == ENCODER:
            return encoder_logits(x)
        logits = encoder_logits(x) if mode != DECODER else None
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        out = self.out_conv(F.silu(self.out_norm(x)))
        return out if logits is None else (out, logits)
