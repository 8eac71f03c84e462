"""Teachers and reference statistics by name.

A teacher is a denoiser in EDM's convention, D(x, sigma, class_labels=None) -> the x0 it predicts, with
img_resolution, img_channels and label_dim. `load_teacher(spec)` reads a spec in one order (docs/teachers.md):

    digits, digits-ddpm          the embedded teachers (an EDM network file; a diffusers DDPM folder)
    edm:NAME                     an NVIDIA EDM checkpoint by name (EDM_TEACHERS)
    diffusers:PATH               a saved diffusers model: a pipeline folder (unet/ + scheduler/) or a UNet2DModel
                                 folder with its scheduler config (sid.networks.vp); diffusers:hf://... via the Hub
    hf://...                     a file on the Hugging Face Hub (through the Hub resolver)
    an existing path or a URL    a project network file (.pt) or an EDM/SiD pickle (.pkl), read without running code
    module:function, file.py:fn  the user's own code, called because they named it (sid.networks.factory)
"""

from __future__ import annotations

import math
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sid import hub
from sid.assets import Asset, is_url
from sid.checkpoints import build_checked, check_weights, fetch_checkpoint, fetch_fid_ref, load_edm_pickle
from sid.config import DistillConfig
from sid.digits import DDPM_TEACHER_DIR, TEACHER_FILE, TEACHER_KWARGS, DigitsDetector, load_digits_images
from sid.losses import generator_sigma_max
from sid.metrics import FeatureStats, load_reference_stats, quantize
from sid.networks.build import build_network, network_kind
from sid.networks.factory import FactoryDenoiser, call_factory, is_factory_spec
from sid.networks.kinds import EDM_KIND
from sid.networks.precond import EDMPrecond
from sid.safe_pickle import load_plain

# One registry per kind of name: the EDM assets 'edm:<name>' resolves to, each with its pinned sha256 (checked by
# sid.assets.fetch on download and on every load from the cache). No public record of the sha256 of these NVIDIA
# files was found (NVlabs/edm publishes none, and no public repository or mirror we could search lists them), so
# they are None for now: sid.checkpoints.fetch_checkpoint then warns and falls back to the digest recorded at the
# first download. Fill them in from a download you trust (`sha256sum`); the tests check the format of any set here.
_EDM_CDN = "https://nvlabs-fi-cdn.nvidia.com/edm"
EDM_TEACHERS: dict[str, Asset] = {  # pretrained EDM denoisers SiD distils ('-vp' = DDPM++, '-adm' = ADM)
    "edm:cifar10-uncond": Asset(f"{_EDM_CDN}/pretrained/edm-cifar10-32x32-uncond-vp.pkl", sha256=None),
    "edm:cifar10-cond": Asset(f"{_EDM_CDN}/pretrained/edm-cifar10-32x32-cond-vp.pkl", sha256=None),
    "edm:imagenet64-cond": Asset(f"{_EDM_CDN}/pretrained/edm-imagenet-64x64-cond-adm.pkl", sha256=None),
    "edm:ffhq64": Asset(f"{_EDM_CDN}/pretrained/edm-ffhq-64x64-uncond-vp.pkl", sha256=None),
    "edm:afhqv2-64": Asset(f"{_EDM_CDN}/pretrained/edm-afhqv2-64x64-uncond-vp.pkl", sha256=None),
}
EDM_FID_REFS: dict[str, Asset] = {  # Inception reference statistics (npz with mu, sigma) of the training sets
    "edm:cifar10-32x32": Asset(f"{_EDM_CDN}/fid-refs/cifar10-32x32.npz", sha256=None),
    "edm:imagenet-64x64": Asset(f"{_EDM_CDN}/fid-refs/imagenet-64x64.npz", sha256=None),
    "edm:ffhq-64x64": Asset(f"{_EDM_CDN}/fid-refs/ffhq-64x64.npz", sha256=None),
    "edm:afhqv2-64x64": Asset(f"{_EDM_CDN}/fid-refs/afhqv2-64x64.npz", sha256=None),
}


def load_network_file(path: str | Path) -> nn.Module:
    """A network saved by this project (`{init_kwargs, state_dict, ...}`, e.g. a run's generator.pt or the digits
    teacher), of any kind but a factory's (sid.networks.build): plain data only, loaded with weights_only=True."""
    saved = load_plain(path, "network file")
    if not (isinstance(saved, dict) and "init_kwargs" in saved and "state_dict" in saved):
        raise ValueError(f"{path}: not a network file of this project ({{init_kwargs, state_dict}})")
    if not isinstance(saved["init_kwargs"], dict) or network_kind(saved["init_kwargs"]) == EDM_KIND:
        return build_checked(saved["init_kwargs"], saved["state_dict"], path)
    try:
        with torch.device("meta"):  # names and shapes first; the weights are assigned, never copied into a random init
            net = build_network(saved["init_kwargs"])
        check_weights(net, saved["state_dict"], path)
        net.load_state_dict(saved["state_dict"], strict=True, assign=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a network file of this project ({{init_kwargs, state_dict}}): "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    return net.float().eval().requires_grad_(False)


DIFFUSERS, HUB = "diffusers:", "hf://"
TEACHER_FORMS = ("digits", "digits-ddpm", "edm:NAME", "diffusers:PATH", "diffusers:hf://ORG/REPO[/PATH][@REVISION]",
                 "hf://ORG/REPO/FILE", "an existing .pt/.pkl path or an http(s) URL", "module:function",
                 "path/to/file.py:function")


def resolve_hub(spec: str) -> Path:
    """The local path (file or folder, in the Hub cache) of an hf:// spec, through the one Hub resolver (sid.hub)."""
    return hub.resolve(spec)


def load_diffusers_teacher(path: str | Path) -> nn.Module:
    """A diffusers VP model (sid.networks.vp.load_diffusers) from a local folder or an hf:// spec."""
    from sid.networks.vp import load_diffusers  # noqa: PLC0415 (imports diffusers: only a diffusers teacher needs it)

    return load_diffusers(resolve_hub(str(path)) if str(path).startswith(HUB) else path)


def teacher_kind(spec: str) -> str | None:
    """Which form of TEACHER_FORMS `spec` has, in the documented order: 'digits', 'digits-ddpm', 'edm', 'diffusers',
    'hub', 'file' (an existing path, a .pt/.pkl path or a URL), 'factory'; None for none of them."""
    if spec in ("digits", "digits-ddpm"):
        return spec
    for prefix, kind in (("edm:", "edm"), (DIFFUSERS, "diffusers"), (HUB, "hub")):
        if spec.startswith(prefix):
            return kind
    if is_url(spec) or Path(spec).exists() or Path(spec).suffix in (".pt", ".pkl"):  # a missing one: its loader says
        return "file"
    return "factory" if is_factory_spec(spec) else None


def load_teacher(spec: str) -> nn.Module:
    """The teacher denoiser (eval, frozen, float32, CPU) named by a config's `teacher` field (the forms of
    TEACHER_FORMS, in that order). ValueError listing the forms for anything else."""
    kind = teacher_kind(spec)
    if kind == "digits":
        return load_network_file(TEACHER_FILE)
    if kind == "digits-ddpm":
        return load_diffusers_teacher(DDPM_TEACHER_DIR)
    if kind == "diffusers":
        return load_diffusers_teacher(spec[len(DIFFUSERS):])
    if kind == "hub":  # a teacher file on the Hub: read like a URL (fetch_checkpoint resolves it, digests checked)
        kind = "file"
    if kind == "factory":
        net = call_factory(spec)
        vp = sys.modules.get("sid.networks.vp")  # loaded if the factory made a VPDenoiser
        if isinstance(net, EDMPrecond) or (vp is not None and isinstance(net, vp.VPDenoiser)):
            return net.float().eval().requires_grad_(False)  # a kind this project rebuilds without the factory
        return FactoryDenoiser(spec, net=net).float().eval().requires_grad_(False)
    if kind is None:
        raise ValueError(f"teacher {spec!r}: not a teacher; expected one of: {'; '.join(TEACHER_FORMS)}")
    if spec.endswith(".pt"):
        remote = is_url(spec) or hub.is_hub(spec)
        return load_network_file(fetch_checkpoint(spec, EDM_TEACHERS, "teacher") if remote else spec)
    return load_edm_pickle(spec, registry=EDM_TEACHERS)


def sigma_range(teacher: nn.Module, config: DistillConfig) -> list[str]:
    """Start-up check of a teacher against a run: ValueError when the run's largest noise level (sigma_init, or the
    generator loss's sigma at tmax) exceeds the teacher's largest trained sigma; the notes to log once (a teacher
    whose timestep clamps below its smallest trained sigma)."""
    asked = max(config.sigma_init, generator_sigma_max(config.tmax))
    limit = float(getattr(teacher, "sigma_max", math.inf))
    if asked > limit * (1 + 1e-6):
        raise ValueError(f"teacher {config.teacher}: the run asks for sigma up to {asked:g} (sigma_init "
                         f"{config.sigma_init:g}, tmax {config.tmax:g}), above the teacher's largest trained sigma "
                         f"{limit:.4g}; lower sigma_init / tmax or use a teacher trained to that noise level")
    smallest = float(getattr(teacher, "sigma_min", 0.0) or 0.0)
    if smallest > 0:
        return [f"teacher {config.teacher}: below sigma {smallest:.4g} (its smallest trained sigma) its timestep "
                f"clamps to the first, as discrete-time denoisers do (SiD asks down to sigma 0.002)"]
    return []


@lru_cache(maxsize=1)
def _digits_reference() -> tuple[np.ndarray, np.ndarray]:
    """Feature mean and biased covariance (float64) of all 1,797 real digits on the shipped detector."""
    stats = FeatureStats()
    stats.update(DigitsDetector()(quantize(load_digits_images())))
    return stats.mean_cov()


def load_reference(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """Reference feature statistics (mu, sigma) named by a config's `fid_ref` field."""
    if spec == "digits":
        return _digits_reference()

    return load_reference_stats(fetch_fid_ref(spec, EDM_FID_REFS))


# Constructor arguments of the EDM teachers (EDM's `_init_kwargs` in each pickle; EDM's train.py settings): what a
# preset's networks look like, known without downloading them. tests/test_presets.py builds each one scaled down, so
# every preset's architecture (augment layer, labels, attention, encoder/decoder types) runs in the suite.
_DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
               channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, augment_dim=9)
EDM_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "edm:cifar10-uncond": dict(_DDPMPP, img_resolution=32, img_channels=3, label_dim=0, channel_mult=[2, 2, 2],
                               dropout=0.13, use_fp16=False),
    "edm:cifar10-cond": dict(_DDPMPP, img_resolution=32, img_channels=3, label_dim=10, channel_mult=[2, 2, 2],
                             dropout=0.13, use_fp16=False),
    "edm:ffhq64": dict(_DDPMPP, img_resolution=64, img_channels=3, label_dim=0, channel_mult=[1, 2, 2, 2],
                       dropout=0.05, use_fp16=False),
    "edm:afhqv2-64": dict(_DDPMPP, img_resolution=64, img_channels=3, label_dim=0, channel_mult=[1, 2, 2, 2],
                          dropout=0.25, use_fp16=False),
    "edm:imagenet64-cond": dict(model_type="DhariwalUNet", img_resolution=64, img_channels=3, label_dim=1000,
                                model_channels=192, channel_mult=[1, 2, 3, 4], dropout=0.1, use_fp16=True),
}


def teacher_architecture(spec: str) -> dict[str, Any]:
    """The constructor arguments of a named teacher ('digits', 'digits-ddpm' or an EDM_ARCHITECTURES name), without
    loading its weights."""
    if spec == "digits":
        return dict(TEACHER_KWARGS)
    if spec == "digits-ddpm":
        from sid.networks.vp import diffusers_kwargs  # noqa: PLC0415 (imports diffusers: only this teacher needs it)

        return diffusers_kwargs(DDPM_TEACHER_DIR)
    if spec not in EDM_ARCHITECTURES:
        known = ", ".join(EDM_ARCHITECTURES)
        raise ValueError(f"no recorded architecture for teacher {spec!r}; known: digits, digits-ddpm, {known}")
    return dict(EDM_ARCHITECTURES[spec])
