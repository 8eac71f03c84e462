"""The embedded default's second teacher, of another kind: a diffusers UNet2DModel trained as a DDPM on the digits.

Its own module (not sid/digits.py) so that the EDM digits default never pays for importing diffusers. Trained by
`sid digits train-ddpm-teacher --out sid/data/digits-ddpm` with a fixed seed and shipped as a diffusers pipeline
folder (unet/ + scheduler/, safetensors), which `--teacher diffusers:sid/data/digits-ddpm` reads.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from sid.digits import train_on_digits

# The second embedded teacher, of another kind: a diffusers UNet2DModel trained as a DDPM (epsilon prediction, the
# linear beta schedule of Ho et al. 2020, 1000 steps), saved as a diffusers pipeline folder (safetensors) in
# sid.digits.DDPM_TEACHER_DIR that `--teacher digits-ddpm` reads through sid.networks.vp.load_diffusers.
# 0.18 M parameters (0.7 MB of safetensors): small enough to ship in the package.
DDPM_UNET = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 norm_num_groups=8, attention_head_dim=8)
DDPM_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                     prediction_type="epsilon", clip_sample=False)


def train_ddpm_teacher(out: Path, *, steps: int = 3000, batch: int = 128, lr: float = 1e-3,
                       ema_halflife_steps: float = 200.0, seed: int = 0, log_every: int = 250) -> dict:
    """Train the DDPM digits teacher (epsilon-prediction loss at uniform integer timesteps) on all 1,797 digits and
    save its EMA weights as a diffusers pipeline folder `out`; return the training facts."""
    torch.manual_seed(seed)  # the network's initialisation
    scheduler = DDPMScheduler(**DDPM_SCHEDULE)
    abar = scheduler.alphas_cumprod

    def epsilon_loss(net: UNet2DModel, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        t = torch.randint(len(abar), (len(x0),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].reshape(-1, 1, 1, 1)
        return (net(a.sqrt() * x0 + (1 - a).sqrt() * eps, t).sample - eps).square().mean()

    start = time.time()
    ema = train_on_digits(UNet2DModel(**DDPM_UNET), epsilon_loss, steps=steps, batch=batch, lr=lr,
                          ema_halflife_steps=ema_halflife_steps, seed=seed, log_every=log_every, what="ddpm teacher")
    DDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(out, safe_serialization=True)
    return dict(steps=steps, batch=batch, lr=lr, seed=seed, n_params=sum(p.numel() for p in ema.parameters()),
                train_seconds=round(time.time() - start, 1))
