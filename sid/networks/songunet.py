"""SongUNet: the DDPM++ / NCSN++ U-Net of Song et al. as EDM defines it (same module names: `enc.32x32_block0`, ...)."""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sid.networks.layers import (
    DECODER,
    ENCODER,
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
    check_mode,
    drop_labels,
    encoder_logits,
    init_kwargs_of,
)


class SongUNet(nn.Module):
    def __init__(self, img_resolution: int, in_channels: int, out_channels: int,
                 label_dim: int = 0,                      # number of classes, 0 = unconditional
                 augment_dim: int = 0,                    # augmentation-label size, 0 = no map_augment layer
                 model_channels: int = 128,               # base channel count
                 channel_mult: Sequence[int] = (1, 2, 2, 2),  # channel multiplier per resolution level
                 channel_mult_emb: int = 4,               # embedding width = model_channels * this
                 num_blocks: int = 4,                     # residual blocks per level (decoder: one more)
                 attn_resolutions: Sequence[int] = (16,),  # resolutions with self-attention
                 dropout: float = 0.10,                   # dropout inside residual blocks
                 label_dropout: float = 0,                # probability of zeroing class labels in training (CFG)
                 embedding_type: str = "positional",      # 'positional' (DDPM++) or 'fourier' (NCSN++)
                 channel_mult_noise: int = 1,             # noise-embedding width multiplier: 1 DDPM++, 2 NCSN++
                 encoder_type: str = "standard",          # 'standard' (DDPM++), 'skip' or 'residual' (NCSN++)
                 decoder_type: str = "standard",          # 'standard' or 'skip'
                 resample_filter: Sequence[int] = (1, 1)):  # [1,1] DDPM++, [1,3,3,1] NCSN++
        init_kwargs = init_kwargs_of(locals())
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be 'positional' or 'fourier', got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be 'standard', 'skip' or 'residual', got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be 'standard' or 'skip', got {decoder_type!r}")
        if img_resolution % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"img_resolution {img_resolution} must be divisible by 2**{len(channel_mult) - 1} "
                             f"for channel_mult={list(channel_mult)}")
        super().__init__()
        self.init_kwargs = init_kwargs
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                     init=init, init_zero=init_zero, init_attn=init_attn)

        # Mapping: noise level (+ class, + augmentation labels) -> embedding vector.
        self.map_noise = PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional" \
            else FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # Encoder. 'aux' modules carry the downsampled input image alongside (NCSN++ skip/residual encoders).
        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, kernel=0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, kernel=3, down=True,
                                                                   resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        skips = [m.out_channels for name, m in self.enc.items() if "aux" not in name]

        # Decoder. The lowest level starts with in0 (always attention) and in1; the others with an upsampling block.
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
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                augment_labels: torch.Tensor | None = None,
                mode: str = DECODER,  # 'decoder': the output; 'encoder': logits only; 'encoder_decoder': both
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        check_mode(mode)
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [cos|sin] -> [sin|cos], as EDM
        if self.map_label is not None:
            labels = drop_labels(class_labels, self.label_dropout, self.training)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        if mode == ENCODER:
            return encoder_logits(x)
        logits = encoder_logits(x) if mode != DECODER else None

        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux if logits is None else (aux, logits)
