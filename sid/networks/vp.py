"""A discrete-time VP (DDPM) diffusion network in EDM's convention: D(x; sigma) = the x0 it predicts.

A DDPM-style model is trained on x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at integer timesteps t. EDM's x is
x_t / sqrt(abar_t) = x0 + sigma_t eps with sigma_t = sqrt((1 - abar_t) / abar_t), so (docs/sid-facts.md, VP teachers):

    the network's input   x_t = x / sqrt(1 + sigma^2)
    its timestep          t(sigma): fractional, by linear interpolation in log-sigma between the two nearest
                          trained timesteps (as k-diffusion's discrete denoisers do); below the smallest trained
                          sigma it clamps to the first timestep, above the largest to the last
    D(x; sigma)           epsilon:        x - sigma * eps_theta
                          v_prediction:   sqrt(abar) x_t - sqrt(1 - abar) v_theta, abar = 1 / (1 + sigma^2)
                          sample:         the output

`VPDenoiser` wraps a diffusers `UNet2DModel` built from its config (no pickles: weights come from safetensors) and
behaves as this project's `EDMPrecond` does where SiD needs it: `img_resolution`, `img_channels`, `label_dim`, a
plain `init_kwargs` that rebuilds it (`VPDenoiser(**net.init_kwargs)`), and `forward(x, sigma, class_labels,
augment_labels)` (augment labels are ignored: the network has no augmentation conditioning, as an EDM network with
augment_dim 0).
"""

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file
from torch import nn

from sid.checkpoints import ARCHITECTURE_LIMITS
from sid.files import read_regular
from sid.networks.kinds import VP_KIND

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: a config that reads the same from JSON."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def sigmas_of(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for each trained timestep t (float64, increasing)."""
    abar = alphas_cumprod.to(torch.float64)
    return ((1 - abar) / abar).sqrt()


def timestep_of(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """The fractional timestep of each sigma: linear in log-sigma between the trained timesteps around it, clamped to
    [0, T - 1] outside the trained range."""
    log_sigma = sigma.to(log_sigmas.dtype).log().reshape(-1)
    # index of the last trained sigma <= sigma (0 below the range), at most T - 2 so that low + 1 exists
    low = (log_sigma[None, :] >= log_sigmas[:, None]).sum(dim=0).sub(1).clamp(0, len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
    return low.to(log_sigmas.dtype) + w


class VPDenoiser(nn.Module):
    def __init__(self, unet: dict[str, Any],         # the UNet2DModel's config (diffusers' config.json, plain data)
                 alphas_cumprod: list[float],        # abar_t of each trained timestep (the scheduler's)
                 prediction_type: str = "epsilon",   # what the UNet predicts: epsilon | v_prediction | sample
                 dropout: float | None = None,       # None: the config's; SiD sets its own for fake score and G
                 use_fp16: bool = False,             # run the UNet in fp16 on CUDA (weights stay fp32)
                 kind: str = VP_KIND):               # the network kind, recorded with the weights
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r} is not mapped to EDM's convention; supported: "
                             f"{', '.join(PREDICTION_TYPES)}")
        config = {k: v for k, v in dict(unet).items() if not str(k).startswith("_")}
        if dropout is not None:
            config["dropout"] = float(dropout)
        self.unet = UNet2DModel.from_config(config)
        cfg = self.unet.config
        if cfg.time_embedding_type != "positional":
            raise ValueError(f"time_embedding_type {cfg.time_embedding_type!r}: only 'positional' timestep embeddings "
                             f"take the fractional timesteps a VP teacher in EDM's convention needs")
        if cfg.in_channels != cfg.out_channels:
            raise ValueError(f"the UNet maps {cfg.in_channels} to {cfg.out_channels} channels; a denoiser needs the "
                             f"same number in and out (a learned-variance output is not supported)")
        size = cfg.sample_size
        if not isinstance(size, int):
            if len(set(size)) != 1:
                raise ValueError(f"sample_size {size}: only square images are supported")
            size = int(size[0])
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64, device="cpu")  # also under a meta-device build
        if abar.ndim != 1 or len(abar) < 2 or not bool(((abar > 0) & (abar < 1)).all()) \
                or not bool((abar[1:] < abar[:-1]).all()):
            raise ValueError("alphas_cumprod must be a decreasing sequence in (0, 1) with at least 2 timesteps")
        self.img_resolution, self.img_channels = size, int(cfg.in_channels)
        self.label_dim = int(cfg.num_class_embeds or 0) if cfg.class_embed_type is None else 0
        self.prediction_type, self.use_fp16, self.augment_dim = prediction_type, use_fp16, 0
        # float64 on the CPU, not a buffer: .float() / .half() / .to() of the network must not round the schedule
        self.log_sigmas = sigmas_of(abar).log()
        self.sigma_min, self.sigma_max = float(sigmas_of(abar)[0]), float(sigmas_of(abar)[-1])
        # Plain data (lists, not tuples: the same after a JSON round trip); dropout once, at the top level, where
        # architecture_difference knows it is a runtime setting.
        self.init_kwargs = dict(unet={k: _plain(v) for k, v in cfg.items() if not k.startswith("_") and k != "dropout"},
                                alphas_cumprod=[float(a) for a in abar], prediction_type=prediction_type,
                                dropout=float(cfg.dropout), use_fp16=use_fp16, kind=kind)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return timestep_of(sigma, self.log_sigmas.to(sigma.device))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, C, R, R) in EDM's scale; sigma: a scalar, (N,) or (N, 1, 1, 1); class_labels: (N, label_dim)
        one-hot or None (class 0). Returns D(x; sigma) in float32."""
        x = x.to(torch.float32)
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.shape[0] not in (1, n):
            raise ValueError(f"sigma must be a scalar or have one value per sample ({n}), got {sigma.shape[0]} values")
        sigma = sigma.expand(n)
        classes = None
        if self.label_dim:
            classes = torch.zeros(n, dtype=torch.long, device=x.device) if class_labels is None \
                else class_labels.reshape(n, self.label_dim).argmax(dim=1)
        s = sigma.reshape(-1, 1, 1, 1)
        abar = 1 / (1 + s.to(torch.float64) ** 2)  # the VP point of this sigma: x_t = sqrt(abar) x
        x_t = x * abar.sqrt().to(torch.float32)
        dtype = torch.float16 if self.use_fp16 and x.device.type == "cuda" else torch.float32
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = self.unet(x_t.to(dtype), self.timestep(sigma).to(torch.float32), class_labels=classes).sample
        out = out.to(torch.float32)
        if self.prediction_type == "epsilon":
            return x - s * out
        if self.prediction_type == "v_prediction":
            return (abar.sqrt() * x_t - (1 - abar).sqrt() * out).to(torch.float32)
        return out

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(sigma)



# ---------------------------------------------------------------------------------------------- a diffusers folder
UNET_CLASSES = ("UNet2DModel",)
# Discrete-time VP schedulers: each derives abar_t from the same beta-schedule keys as DDPMScheduler.
VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                 "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                 "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler")
BETA_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
             "rescale_betas_zero_snr")
WEIGHTS = "diffusion_pytorch_model.safetensors"
MAX_PARAMETERS = 4_000_000_000  # far above any pixel-space UNet2DModel; a config asking for more is refused unbuilt
MAX_CONFIG_BYTES = 2 ** 20      # a config.json / scheduler_config.json (diffusers': about 1 KB; trained_betas: 20 KB)
MAX_TIMESTEPS = 100_000         # a scheduler's num_train_timesteps (DDPM: 1000; 4000 in improved DDPM)


def _json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(read_regular(path, MAX_CONFIG_BYTES, f"diffusers {what} config"))
    except FileNotFoundError:
        raise ValueError(f"{path.parent}: not a diffusers {what} folder (no {path.name})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not a diffusers {what} config ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_unet_config(config: dict[str, Any], path: Path) -> None:
    """The UNet2DModel config within the limits of every network built from a file (sid.checkpoints
    ARCHITECTURE_LIMITS), before anything is built: the constructor's time grows with levels x blocks even on the
    meta device (10**6 layers per block hang it). ValueError naming the file and the key."""
    limits = ARCHITECTURE_LIMITS

    def integer(key: str, low: int, high: int, default: Any = None) -> None:
        value = config.get(key, default)
        if value is not None and not (type(value) is int and low <= value <= high):
            raise ValueError(f"{path}: {key} = {str(value)[:60]} is outside {low}..{high:,}, the limits of a network "
                             f"read from a file")

    integer("layers_per_block", 1, limits["num_blocks"], 2)
    integer("in_channels", 1, limits["img_channels"])
    integer("out_channels", 1, limits["img_channels"])
    integer("num_class_embeds", 0, limits["label_dim"])
    integer("norm_num_groups", 1, limits["widest_level"])
    integer("attention_head_dim", 1, limits["widest_level"])
    integer("time_embedding_dim", 1, 4 * limits["widest_level"])
    integer("num_train_timesteps", 1, MAX_TIMESTEPS)
    size = config.get("sample_size")
    sizes = size if isinstance(size, (list, tuple)) else [size]
    if not (1 <= len(sizes) <= 2 and all(type(s) is int and 1 <= s <= limits["img_resolution"] for s in sizes)):
        raise ValueError(f"{path}: sample_size = {str(size)[:60]}: expected 1..{limits['img_resolution']} pixels")
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        value = config.get(key)
        if value is not None and not (isinstance(value, (list, tuple)) and 1 <= len(value) <= limits["levels"]):
            raise ValueError(f"{path}: {key} = {str(value)[:60]}: expected 1..{limits['levels']} levels")
    channels = config.get("block_out_channels") or ()
    if not all(type(c) is int and 1 <= c <= limits["widest_level"] for c in channels):
        raise ValueError(f"{path}: block_out_channels = {str(channels)[:60]}: expected 1..{limits['widest_level']} "
                         f"channels per level")


def alphas_cumprod_of(scheduler: dict[str, Any], path: Path) -> list[float]:
    """abar_t of a discrete-time VP scheduler config, by diffusers' own beta-schedule arithmetic (DDPMScheduler)."""
    name = scheduler.get("_class_name")
    if name not in VP_SCHEDULERS:
        raise ValueError(f"{path}: scheduler {name!r} is not a discrete-time VP scheduler; supported: "
                         f"{', '.join(VP_SCHEDULERS)} (epsilon, v or sample prediction)")
    steps, betas = scheduler.get("num_train_timesteps", 1000), scheduler.get("trained_betas")
    if not (type(steps) is int and 2 <= steps <= MAX_TIMESTEPS):
        raise ValueError(f"{path}: num_train_timesteps {str(steps)[:40]} is outside 2..{MAX_TIMESTEPS:,}")
    if not (betas is None or (isinstance(betas, list) and 2 <= len(betas) <= MAX_TIMESTEPS)):
        raise ValueError(f"{path}: trained_betas must be a list of 2..{MAX_TIMESTEPS:,} numbers")
    try:
        ddpm = DDPMScheduler(**{k: scheduler[k] for k in BETA_KEYS if k in scheduler})
    except (TypeError, ValueError, NotImplementedError, IndexError) as exc:
        raise ValueError(f"{path}: scheduler config not understood ({exc})") from None
    abar = ddpm.alphas_cumprod.double()
    if not bool((abar > 0).all()):
        raise ValueError(f"{path}: the schedule reaches zero signal (abar = 0, infinite sigma: zero terminal SNR); "
                         f"EDM's convention needs a finite largest sigma")
    return abar.tolist()


def diffusers_folders(folder: str | Path) -> tuple[Path, Path]:
    """(the UNet's folder, the scheduler's folder) of a saved diffusers model: a pipeline folder (`unet/` +
    `scheduler/`, as DDPMPipeline saves) or a `UNet2DModel` folder with `scheduler_config.json` beside `config.json`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such diffusers folder")
    if (folder / "unet").is_dir():
        return folder / "unet", folder / "scheduler"
    return folder, folder


def diffusers_kwargs(folder: str | Path) -> dict[str, Any]:
    """VPDenoiser's constructor arguments of a saved diffusers model, from its two JSON configs (no weights read)."""
    unet_dir, scheduler_dir = diffusers_folders(folder)
    config = _json(unet_dir / "config.json", "model")
    if config.get("_class_name") not in UNET_CLASSES:
        raise ValueError(f"{unet_dir / 'config.json'}: {config.get('_class_name')!r} is not supported; supported: "
                         f"{', '.join(UNET_CLASSES)} (pixel-space, unconditional or class-conditional)")
    check_unet_config(config, unet_dir / "config.json")  # the architecture gate, before anything is built
    scheduler = _json(scheduler_dir / "scheduler_config.json", "scheduler")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"{scheduler_dir / 'scheduler_config.json'}: prediction_type {prediction!r} is not mapped to "
                         f"EDM's convention; supported: {', '.join(PREDICTION_TYPES)}")
    return dict(unet=config, alphas_cumprod=alphas_cumprod_of(scheduler, scheduler_dir / "scheduler_config.json"),
                prediction_type=prediction, kind=VP_KIND)


def load_diffusers(folder: str | Path) -> VPDenoiser:
    """A VP denoiser from a saved diffusers model (diffusers_folders). Weights from safetensors only; nothing is
    downloaded and no code from the folder runs."""
    kwargs = diffusers_kwargs(folder)
    unet_dir = diffusers_folders(folder)[0]
    weights = unet_dir / WEIGHTS
    if not weights.is_file():
        pickled = sorted(p.name for p in unet_dir.glob("*.bin"))
        raise ValueError(f"{unet_dir}: no {WEIGHTS}" + (f"; {', '.join(pickled)} is a pickle, which this project "
                         "never loads (it can run code): convert it to safetensors first" if pickled else ""))
    try:
        with torch.device("meta"):  # the architecture gate: count before allocating anything
            size = sum(p.numel() for p in VPDenoiser(**kwargs).parameters())
        if size > MAX_PARAMETERS:
            raise ValueError(f"{size:,} parameters, above the limit of {MAX_PARAMETERS:,}")
        net = VPDenoiser(**kwargs)
        net.unet.load_state_dict(load_file(str(weights)), strict=True)
    except Exception as exc:  # odd config values can fail anywhere in diffusers' constructors
        lines = str(exc).splitlines() or [type(exc).__name__]
        raise ValueError(f"{folder}: not a usable diffusers VP model ({lines[0][:300]})") from None
    return net.eval().requires_grad_(False)
