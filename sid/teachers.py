"""Teachers and reference statistics by name: 'digits' (shipped with the package), 'edm:<name>', a path or a URL."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from sid.assets import Asset, is_url
from sid.checkpoints import build_checked, fetch_checkpoint, fetch_fid_ref, load_edm_pickle
from sid.digits import TEACHER_FILE, TEACHER_KWARGS, DigitsDetector, load_digits_images
from sid.metrics import FeatureStats, load_reference_stats, quantize
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


def load_network_file(path: str | Path) -> EDMPrecond:
    """A network saved by this project (`{init_kwargs, state_dict, ...}`, e.g. a run's generator.pt or the digits
    teacher): plain data only, loaded with weights_only=True."""
    saved = load_plain(path, "network file")
    if not (isinstance(saved, dict) and "init_kwargs" in saved and "state_dict" in saved):
        raise ValueError(f"{path}: not a network file of this project ({{init_kwargs, state_dict}})")
    return build_checked(saved["init_kwargs"], saved["state_dict"], path)


def load_teacher(spec: str) -> nn.Module:
    """The teacher denoiser (EDMPrecond, eval, frozen, float32, CPU) named by a config's `teacher` field:
    'digits', a project network file (*.pt, path or URL), or an EDM/SiD pickle by name ('edm:...'), path or URL."""
    if spec == "digits":
        return load_network_file(TEACHER_FILE)
    if spec.endswith(".pt"):
        return load_network_file(fetch_checkpoint(spec, EDM_TEACHERS, "teacher") if is_url(spec) else spec)

    return load_edm_pickle(spec, registry=EDM_TEACHERS)


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
    """The constructor arguments of a named teacher ('digits' or an EDM_ARCHITECTURES name), without loading it."""
    if spec == "digits":
        return dict(TEACHER_KWARGS)
    if spec not in EDM_ARCHITECTURES:
        known = ", ".join(EDM_ARCHITECTURES)
        raise ValueError(f"no recorded architecture for teacher {spec!r}; known: digits, {known}")
    return dict(EDM_ARCHITECTURES[spec])
