"""Feature networks beyond Inception and the digits classifier, registered by name in sid.metrics:

    dinov2-vitl14     EDM2's FD_DINOv2 detector: DINOv2 ViT-L/14 (sid/networks/dinov2.py) with EDM2's preprocessing
    <file>.pt         a feature network of your own as a TorchScript file (`--fid-detector path.pt`)

EDM2's preprocessing (calculate_metrics.py, DINOv2Detector with its default resize_mode 'torch'): uint8 images resized
to 224 x 224 by torch's bicubic interpolation with antialiasing (on the 0..255 values), divided by 255, normalised by
ImageNet's mean and std, then the network's class token: 1024 features. One-channel images are repeated to three, as
for Inception.

Trust: the DINOv2 weights are plain tensors read with torch.load(weights_only=True) after sid.safe_pickle's scan, and
checked against the network before they are assigned, so the file runs no code. A TorchScript file is a program:
torch.jit.load runs no Python (its code is TorchScript, executed by torch's interpreter, which cannot import modules or
call Python functions), but the program may compute anything with torch's operators (loop for ever, allocate any
memory), and torch's C++ deserializer is the only thing between the file's bytes and the process: load only feature
networks you trust, as you would a Python script. A row records such a detector as `<file name>@sha256:<first 16 hex
digits>` (DetectorFile.name), so two files never share a name.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

from sid.assets import Asset, fetch
from sid.checkpoints import check_weights
from sid.config import DINOV2
from sid.networks.dinov2 import VITL14, DinoVisionTransformer
from sid.safe_pickle import load_plain

# Meta's dinov2_vitl14 backbone weights (the file the hub's dinov2_vitl14 loads). No public record of its sha256 was
# found and this project cannot download it here: sha256 is None, so sid.assets.fetch trusts the first download and
# records its digest (the same rule as the EDM teachers, sid/teachers.py). Fill it in from a download you trust.
DINOV2_FILE = Asset("https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth", sha256=None)
DINOV2_RESOLUTION = 224                         # EDM2 resizes every image to this before the network
IMAGENET_MEAN = (0.485, 0.456, 0.406)           # DINOv2's input normalisation (of images in [0, 1])
IMAGENET_STD = (0.229, 0.224, 0.225)
PROBE_SHAPE = (2, 3, 64, 64)                    # the images a TorchScript detector is first run on, to read its size
MAX_FEATURES = 65_536                           # a detector's feature size (its covariance: 32 GiB in float64)


def _as_rgb(images: Tensor, name: str) -> Tensor:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name} expects uint8 images [N, 1 or 3, H, W], got {images.dtype} {tuple(images.shape)}")
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


def load_dinov2(path: str | os.PathLike, **architecture) -> DinoVisionTransformer:
    """The DINOv2 ViT of a state-dict file (default architecture: ViT-L/14), through the same checks as every network
    built from a file (sid.checkpoints.check_weights: plain CPU tensors backed by the file's bytes, the network's
    names and shapes) before any weight is assigned. One ValueError naming the file otherwise."""
    state = load_plain(path, "DINOv2 weights file")
    with torch.device("meta"):  # names and shapes only: every tensor is assigned from the file
        net = DinoVisionTransformer(**{**VITL14, **architecture})
    check_weights(net, state, path)
    net.load_state_dict(state, strict=True, assign=True)
    return net.float().eval().requires_grad_(False)


class DinoV2Detector:
    """EDM2's FD_DINOv2 feature network: 1024-d class tokens of DINOv2 ViT-L/14 on 224 x 224 bicubic resizes."""

    name = DINOV2

    def __init__(self, source: str = DINOV2_FILE.url, *, device: torch.device | str = "cpu",
                 sha256: str | None = None, net: DinoVisionTransformer | None = None) -> None:
        self.device = torch.device(device)
        if net is None:  # `net`: a network already built (tests use a tiny one with random weights)
            net = load_dinov2(fetch(source, sha256=sha256 or (DINOV2_FILE.sha256 if source == DINOV2_FILE.url
                                                               else None)))
        self.net = net.to(self.device)
        self.feature_dim = net.embed_dim

    def preprocess(self, images: Tensor) -> Tensor:
        """EDM2's input: uint8 [N, 1 or 3, H, W] -> float32 [N, 3, 224, 224], resized, scaled and normalised."""
        x = _as_rgb(images, self.name).to(self.device, torch.float32)
        x = torch.nn.functional.interpolate(x, size=(DINOV2_RESOLUTION, DINOV2_RESOLUTION), mode="bicubic",
                                            antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).reshape(1, -1, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).reshape(1, -1, 1, 1)
        return (x / 255 - mean) / std

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        return self.net(self.preprocess(images))


class DetectorFile:
    """A feature network of your own as a TorchScript file: its forward takes uint8 images [N, 3, H, W] (0..255, any
    size: resize inside, as NVIDIA's Inception does) and returns float features [N, D]. D is read from one forward
    on PROBE_SHAPE images. Every failure to load or to probe is one ValueError naming the file. See the module doc for
    what loading a TorchScript file trusts."""

    def __init__(self, path: str | os.PathLike, *, device: torch.device | str = "cpu") -> None:
        path = Path(path)
        self.device = torch.device(device)
        try:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as exc:
            raise ValueError(f"--fid-detector {path}: cannot read it ({exc.strerror or exc})") from None
        self.name = f"{path.name}@sha256:{digest[:16]}"
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated; a user's detector may still be one
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location=self.device).eval()
        except Exception as exc:  # torch's deserializer reports a foreign or torn file as RuntimeError, or worse
            raise ValueError(f"--fid-detector {path}: not a TorchScript feature network "
                             f"({_first_line(exc)}); save one with torch.jit.save(torch.jit.script(net), path)") \
                from None
        probe = self._forward(torch.full(PROBE_SHAPE, 128, dtype=torch.uint8), path)
        self.feature_dim = int(probe.shape[1])

    def _forward(self, images: Tensor, path: Path | str) -> Tensor:
        try:
            with torch.no_grad():
                features = self.net(images.to(self.device))
        except Exception as exc:  # a TorchScript program fails with torch.jit.Error, RuntimeError, ...
            raise ValueError(f"--fid-detector {path}: its forward failed on uint8 images {tuple(images.shape)} "
                             f"({_first_line(exc)})") from None
        if not (isinstance(features, Tensor) and features.ndim == 2 and features.shape[0] == images.shape[0]
                and 0 < features.shape[1] <= MAX_FEATURES and features.is_floating_point()):
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"--fid-detector {path}: a feature network returns float features [N, D] with "
                             f"D <= {MAX_FEATURES:,}; it returned {shape} for {images.shape[0]} images")
        return features

    def __call__(self, images: Tensor) -> Tensor:
        features = self._forward(_as_rgb(images, self.name), self.name)
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"{self.name} returned {features.shape[1]} features, {self.feature_dim} on its probe")
        return features


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
