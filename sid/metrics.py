"""Frechet distance of generated images against reference statistics, as SiD's training-time FID computes it
(docs/sid-facts.md section 5): uint8 quantisation by truncation, detector features accumulated in float64, biased (/N)
covariance of the generated set, reference (mu, sigma) in EDM's fid-refs .npz format.

Detectors share one protocol (uint8 NCHW in, float features [N, D] out; attributes `name`, `feature_dim`) and are
looked up by name, so every number can carry the name of the detector that produced it. Only a Frechet distance on
`inception-2015-12-05` features is an FID.

`sid ref` (sid/commands/ref.py) writes reference statistics of a dataset (sid/datasets.py), with its class counts.
"""

from __future__ import annotations

import io
import math
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from sid.assets import Asset, fetch
from sid.config import DIGITS_FEATURES, DINOV2, FD_STD_GROUPS, INCEPTION, is_detector_file
from sid.detectors import DetectorFile, DinoV2Detector
from sid.files import read_regular, write_file_atomic

# NVIDIA's TorchScript Inception-v3 (the INCEPTION detector's file). Its sha256 and size are pinned as
# crowsonkb/k-diffusion pins the same URL (k_diffusion/evaluation.py, InceptionV3FeatureExtractor) and as the Git LFS
# pointers of public Hugging Face mirrors of the file (hngan/webui-models inception-2015-12-05.pt) record it.
INCEPTION_FILE = Asset("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                       "inception-2015-12-05.pt",
                       sha256="f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4", bytes=95_607_719)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CLASS_COUNTS = "class_counts"  # the reference file's array of images per class (labelled data; sid ref)
IS_SPLITS = 10  # the Inception Score's splits (StyleGAN3's is50k: mean and std over 10 parts of the images)
MAX_IMAGE_PIXELS = 4096 * 4096   # pixels of one image file (EDM2's largest images: 512 x 512), checked before decoding
MAX_IMAGE_BYTES = 256 * 2 ** 20  # one encoded image in a zip, checked before it is inflated
NPZ_MAX_RATIO = 100              # an npz member may inflate to this many times its size (np.savez_compressed of
# images: a few times; the 1.8 KB bomb of issue 29: over 10**6 times)
NPZ_SMALL = 2 ** 20              # members up to this size are exempt from the ratio (tiny arrays of zeros)
NPZ_HEADER = 10_000              # bytes of an .npy header (numpy's own default limit)
REFERENCE_BYTES = 2 ** 30        # mu and sigma together (Inception's 2048-d: 32 MiB)
_CHUNK = 2 ** 20


# ---------------------------------------------------------------------------------------------- Frechet distance
def _f64(x) -> np.ndarray:
    return (x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)).astype(np.float64)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) in float64, never complex.

    Tr sqrtm(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))): the inner matrix is symmetric PSD, so eigvalsh applies and
    round-off negatives are clipped at 0. Same value as scipy.linalg.sqrtm(S1 @ S2).real (EDM/SiD) for SPD inputs,
    and stable for the singular covariances of fewer images than feature dimensions."""
    mu1, mu2, s1, s2 = _f64(mu1), _f64(mu2), _f64(sigma1), _f64(sigma2)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if d < 1 or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance expects mu [D] and sigma [D, D] for both sets, got mu {mu1.shape}, "
                         f"{mu2.shape} and sigma {s1.shape}, {s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise ValueError("frechet_distance got non-finite statistics (NaN or inf in mu or sigma)")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    eigval, eigvec = np.linalg.eigh(s1)
    root1 = (eigvec * np.sqrt(eigval.clip(min=0))) @ eigvec.T
    inner = root1 @ s2 @ root1
    tr_sqrt = np.sqrt(np.linalg.eigvalsh((inner + inner.T) / 2).clip(min=0)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


class FeatureStats:
    """Running sum and sum of outer products of features, in float64 on the features' device."""

    def __init__(self) -> None:
        self.num_items = 0
        self.sum: Tensor | None = None
        self.sum_outer: Tensor | None = None

    def update(self, features: Tensor) -> None:
        x = features.detach().to(torch.float64)
        if x.ndim != 2 or (self.sum is not None and x.shape[1] != self.sum.shape[0]):
            want = "[N, D]" if self.sum is None else f"[N, {self.sum.shape[0]}]"
            raise ValueError(f"FeatureStats.update expects features {want}, got {tuple(features.shape)}")
        if self.sum is None:
            self.sum = x.new_zeros(x.shape[1])
            self.sum_outer = x.new_zeros(x.shape[1], x.shape[1])
        self.sum += x.sum(dim=0)
        self.sum_outer += x.T @ x
        self.num_items += x.shape[0]

    def merge(self, other: FeatureStats) -> FeatureStats:
        """A new FeatureStats of both sets' features (either may be empty)."""
        out = FeatureStats()
        for part in (self, other):
            if part.sum is not None:
                out.update_sums(part.sum, part.sum_outer, part.num_items)
        return out

    def update_sums(self, total: Tensor, outer: Tensor, n: int) -> None:
        """Add the sums of n feature vectors, as update() would have accumulated them."""
        if self.sum is None:
            self.sum, self.sum_outer = total.clone(), outer.clone()
        else:
            self.sum += total
            self.sum_outer += outer
        self.num_items += n

    def mean_cov(self, *, unbiased: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(mu [D], sigma [D, D]) as float64 numpy. Biased /N by default (SiD's training-time FID); unbiased /(N-1)
        is what EDM's `fid.py ref` stores in its reference .npz files."""
        n = self.num_items
        if n < (2 if unbiased else 1):
            raise ValueError(f"FeatureStats.mean_cov needs at least {2 if unbiased else 1} feature vectors, got {n}")
        mu = self.sum / n
        cov = (self.sum_outer - n * torch.outer(mu, mu)) / (n - 1 if unbiased else n)
        return mu.cpu().numpy(), cov.cpu().numpy()


def quantize(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Float images in [-1, 1] -> uint8 exactly as SiD: clamp(x * 127.5 + 128, 0, 255) then truncate (so -1 -> 0,
    1 -> 255, and each uint8 value k covers x in [(k - 128) / 127.5, (k - 127) / 127.5)). NaN pixels become 0, which
    the official cast gives on CPU and CUDA in practice, made explicit here because a NaN cast is undefined. `dtype`:
    the arithmetic's, float32 as SiD's training-time FID, float64 as its generate_onestep.py (a value within float32
    round-off of an integer step can truncate to the other side)."""
    if not images.is_floating_point():
        raise ValueError(f"quantize expects float images in [-1, 1], got {images.dtype}")
    x = torch.nan_to_num(images.detach().to(dtype) * 127.5 + 128, nan=0.0)
    return x.clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------- reference statistics
def read_npz(path: str | os.PathLike, names: Sequence[str], *, expected: str,
             max_bytes: float = math.inf) -> dict[str, np.ndarray]:
    """The arrays `names` of an .npz, each checked before a byte of it is decompressed: the member stored or deflated
    (not bzip2/lzma, whose ratio has no bound) and at most NPZ_MAX_RATIO times its compressed size, its .npy header
    (format 1 or 2) a plain number dtype whose shape accounts for exactly the member's declared size, all members at
    most `max_bytes`. np.load alone allocates whatever a header declares and inflates whatever a member holds (a
    1.8 KB file asked for 4.3 GiB). Every failure is one ValueError naming the file; `expected` says what the file
    should hold when a name is missing."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable npz ({exc})") from None
    with archive:
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
        if any(name not in members for name in names):
            raise ValueError(f"{path}: expected {expected}, found {sorted(members)[:20]}")
        plans = [(name, members[name], *_npy_header(archive, members[name], path)) for name in names]
        total = sum(dtype.itemsize * math.prod(shape) for _, _, dtype, shape, _, _ in plans)
        if total > max_bytes:
            raise ValueError(f"{path}: refusing to read {total:,} bytes of arrays (at most {max_bytes:,.0f} here)")
        return {name: _npy_data(archive, info, dtype, shape, fortran, offset, path)
                for name, info, dtype, shape, fortran, offset in plans}


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path) -> tuple[np.dtype, tuple, bool, int]:
    """(dtype, shape, fortran order, data offset) of one .npy member, after the checks of read_npz."""
    where = f"{path}: member {info.filename!r}"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(f"{where} is compressed with method {info.compress_type}; refusing it (np.savez stores or "
                         f"deflates, and other methods expand without bound)")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise ValueError(f"{where} declares {info.file_size} bytes but stores {info.compress_size}")
    if info.file_size > max(NPZ_MAX_RATIO * info.compress_size, NPZ_SMALL):
        raise ValueError(f"{where} would expand {info.compress_size:,} bytes to {info.file_size:,}: refusing a "
                         f"decompression bomb (at most {NPZ_MAX_RATIO}x)")
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"npy format version {version}")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f, max_header_size=NPZ_HEADER)
            offset = f.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, SyntaxError) as exc:
        raise ValueError(f"{where}: not a readable .npy header ({str(exc)[:200]})") from None
    if dtype.kind not in "biuf" or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"{where} holds {dtype}; only plain numbers are read")
    if math.prod(shape) * dtype.itemsize != info.file_size - offset:
        raise ValueError(f"{where}: its header declares {list(shape)} {dtype} ({math.prod(shape) * dtype.itemsize:,} "
                         f"bytes) but the member holds {info.file_size - offset:,}")
    return dtype, shape, fortran, offset


def _npy_data(archive: zipfile.ZipFile, info: zipfile.ZipInfo, dtype: np.dtype, shape: tuple, fortran: bool,
              offset: int, path) -> np.ndarray:
    """The array of one checked member, read into an array of its declared size (never more bytes than that)."""
    array = np.empty(math.prod(shape), dtype)
    view = memoryview(array).cast("B")
    try:
        with archive.open(info) as f:
            f.read(offset)
            done = 0
            while done < len(view):
                block = f.read(min(_CHUNK, len(view) - done))
                if not block:
                    raise ValueError("it ends early")
                view[done:done + len(block)] = block
                done += len(block)
            if f.read(1):  # also makes zipfile check the member's CRC
                raise ValueError("it holds more than its header declares")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path}: member {info.filename!r} is not readable ({str(exc)[:200]})") from None
    return array.reshape(shape, order="F" if fortran else "C")


def load_reference_stats(source: str | os.PathLike, *, sha256: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) float64 from an EDM-style .npz (keys `mu`, `sigma`) at a path or URL (downloaded once)."""
    path = fetch(str(source), sha256=sha256)
    data = read_npz(path, ("mu", "sigma"), expected="reference statistics, an .npz with arrays 'mu' and 'sigma'",
                    max_bytes=REFERENCE_BYTES)
    mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
        raise ValueError(f"{source}: expected mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    return mu, sigma


def load_class_counts(source: str | os.PathLike) -> np.ndarray | None:
    """The `class_counts` (int64 [classes], images per class of the dataset) of a reference statistics file or a
    counts file, both written by `sid ref` of labelled data; None when the file has none (EDM's fid-refs, `sid ref`
    of unlabelled images)."""
    path = fetch(str(source))
    try:
        with zipfile.ZipFile(path) as archive:
            members = {Path(n).stem for n in archive.namelist()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{source}: not a readable npz ({exc})") from None
    if CLASS_COUNTS not in members:
        return None
    counts = read_npz(path, (CLASS_COUNTS,), expected="class counts")[CLASS_COUNTS]
    return check_class_counts(counts, str(source))


def check_class_counts(counts: np.ndarray, source: str) -> np.ndarray:
    """`counts` as int64 [classes]; ValueError naming `source` unless whole numbers >= 0 with a positive sum."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or not len(counts) or counts.dtype.kind not in "iu" or (counts < 0).any() or counts.sum() < 1:
        raise ValueError(f"{source}: expected {CLASS_COUNTS} as integers >= 0 [classes] with a positive sum, got "
                         f"{counts.dtype} {counts.shape}")
    return counts.astype(np.int64)


def save_reference_stats(path: str | os.PathLike, mu, sigma, *, class_counts=None) -> Path:
    """Write (mu, sigma) as an EDM-style .npz, atomically (temporary file + rename), with the dataset's images per
    class as `class_counts` when given (labelled data; EDM's readers ignore the extra array)."""
    mu, sigma, path = _f64(mu), _f64(sigma), Path(path)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
        raise ValueError(f"save_reference_stats expects mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    arrays = dict(mu=mu, sigma=sigma)
    if class_counts is not None:
        arrays[CLASS_COUNTS] = check_class_counts(class_counts, str(path))
    return write_file_atomic(path, lambda f: np.savez(f, **arrays))


# ---------------------------------------------------------------------------------------------- detectors
class Detector(Protocol):
    name: str          # recorded with every value as fid_detector
    feature_dim: int   # D of the features and of the reference statistics

    def __call__(self, images: Tensor) -> Tensor: ...   # uint8 [N, C, H, W] -> float [N, D]
    # Optional: `probabilities(images) -> [N, classes]` (softmax), which makes sid evaluate report an Inception Score,
    # and `features_and_probabilities(images) -> ([N, D], [N, classes])`, both from one forward pass.


class InceptionDetector:
    """NVIDIA's TorchScript Inception-v3 (as EDM/SiD use it): 2048-d pool features, resizing done inside the net."""

    name = INCEPTION
    feature_dim = 2048

    def __init__(self, source: str = INCEPTION_FILE.url, *, device: torch.device | str = "cpu",
                 sha256: str | None = None) -> None:
        self.device = torch.device(device)
        if sha256 is None and source == INCEPTION_FILE.url:
            sha256 = INCEPTION_FILE.sha256   # the TorchScript runs when loaded: only the pinned file is acceptable
        path = fetch(source, sha256=sha256)
        with warnings.catch_warnings():   # TorchScript is deprecated, but the reference detector exists only as one
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(path), map_location=self.device).eval()

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"{self.name} expects uint8 images [N, 1 or 3, H, W], got {images.dtype} "
                             f"{tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        features = self.net(images.to(self.device), return_features=True)
        if features.shape != (images.shape[0], self.feature_dim):
            raise ValueError(f"{self.name} returned features {tuple(features.shape)}, expected "
                             f"({images.shape[0]}, {self.feature_dim})")
        return features

    @torch.no_grad()
    def features_and_probabilities(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(pool features [N, 2048], softmax class probabilities [N, 1008]) from one forward pass: the probabilities
        are what the network's own `no_output_bias=True` call gives (StyleGAN3's and SiD's is50k), softmax of
        linear(features, output.weight) without the bias, here computed from the features instead of a second pass."""
        features = self(images)
        output = getattr(self.net, "output", None)
        if not isinstance(getattr(output, "weight", None), Tensor):
            raise ValueError(f"{self.name}: this network has no output layer (output.weight), so no class "
                             f"probabilities or Inception Score")
        return features, torch.softmax(torch.nn.functional.linear(features, output.weight), dim=1)

    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax class probabilities [N, 1008] without the output bias, as StyleGAN3's Inception Score."""
        return self.features_and_probabilities(images)[1]


_DETECTORS: dict[str, Callable[[torch.device], Detector]] = {}


def register_detector(name: str, factory: Callable[[torch.device], Detector]) -> None:
    """Make `get_detector(name, device)` return `factory(device)`."""
    _DETECTORS[name] = factory


def detector_names() -> list[str]:
    """The registered detectors' names, sorted."""
    return sorted(_DETECTORS)


def get_detector(name: str, device: torch.device | str = "cpu") -> Detector:
    """The detector registered as `name`, or the TorchScript feature network of the file `name` (*.pt)."""
    if name in _DETECTORS:
        return _DETECTORS[name](torch.device(device))
    if is_detector_file(name):
        return DetectorFile(name, device=torch.device(device))
    raise ValueError(f"unknown detector {name!r}; registered: {', '.join(sorted(_DETECTORS))}, or a TorchScript "
                     f"file (*.pt)")


def _digits_detector(device: torch.device) -> Detector:
    from sid.digits import DigitsDetector  # noqa: PLC0415 (lazy: the digits module pulls in the networks)

    return DigitsDetector().to(device)


register_detector(INCEPTION, lambda device: InceptionDetector(device=device))
register_detector(DIGITS_FEATURES, _digits_detector)
register_detector(DINOV2, lambda device: DinoV2Detector(device=device))


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def feature_stats(images: Iterable[Tensor], detector: Detector, *,
                  probabilities: list[np.ndarray] | None = None,
                  features: list[np.ndarray] | None = None,
                  into: GroupedFeatureStats | None = None) -> FeatureStats | GroupedFeatureStats:
    """FeatureStats of the detector features of uint8 NCHW batches: the one accumulation behind every FD here.
    With a `probabilities` list (Inception Score), each batch's class probabilities are appended to it too, from the
    same forward pass where the detector has features_and_probabilities; with a `features` list (precision/recall),
    each batch's features as float32. `into` (a GroupedFeatureStats, say) accumulates instead of a new FeatureStats
    and is returned."""
    if probabilities is not None and not hasattr(detector, "probabilities"):
        raise ValueError(f"detector {detector.name} gives no class probabilities: no Inception Score")
    one_pass = probabilities is not None and hasattr(detector, "features_and_probabilities")
    stats = FeatureStats() if into is None else into
    for batch in images:
        if one_pass:
            feats, probs = detector.features_and_probabilities(batch)
        else:
            feats = detector(batch)
            probs = detector.probabilities(batch) if probabilities is not None else None
        stats.update(feats)
        if features is not None:
            features.append(feats.detach().float().cpu().numpy())
        if probs is not None:
            probabilities.append(probs.detach().float().cpu().numpy())
    return stats


class GroupedFeatureStats:
    """FeatureStats of `groups` disjoint image groups (image i goes to group i mod groups): their union gives the
    Frechet distance, the groups its jackknife standard error (fd_jackknife)."""

    def __init__(self, groups: int) -> None:
        if groups < 2:
            raise ValueError(f"GroupedFeatureStats needs >= 2 groups, got {groups}")
        self.groups = [FeatureStats() for _ in range(groups)]
        self.num_items = 0

    def update(self, features: Tensor) -> None:
        k = len(self.groups)
        for g in range(k):  # rows g, g+k, ... of this batch continue group (num_items + row) mod k
            part = features[(g - self.num_items) % k::k]
            if len(part):
                self.groups[g].update(part)
        self.num_items += features.shape[0]

    def total(self) -> FeatureStats:
        out = FeatureStats()
        for g in self.groups:
            out = out.merge(g)
        return out


def fd_jackknife(grouped: GroupedFeatureStats, ref_mu, ref_sigma) -> tuple[float, float]:
    """(FD of all images, its delete-one-group jackknife standard error): with K groups and FD_-g the distance
    without group g, se = sqrt((K-1)/K * sum_g (FD_-g - mean FD_-g)^2). It estimates the spread of the FD over
    independent draws of as many images (a plug-in statistic of the features, smooth in their mean and covariance),
    at the cost of K more distances and no more detector passes. NaN when a group is empty."""
    total = grouped.total()
    fd = frechet_distance(*total.mean_cov(), ref_mu, ref_sigma)
    k = len(grouped.groups)
    if any(g.num_items == 0 for g in grouped.groups) or total.num_items - max(g.num_items for g in grouped.groups) < 2:
        return fd, math.nan
    loo = []
    for g in grouped.groups:
        rest = FeatureStats()
        rest.update_sums(total.sum - g.sum, total.sum_outer - g.sum_outer, total.num_items - g.num_items)
        loo.append(frechet_distance(*rest.mean_cov(), ref_mu, ref_sigma))
    loo = np.asarray(loo)
    return fd, float(np.sqrt((k - 1) / k * np.square(loo - loo.mean()).sum()))


@dataclass(frozen=True)
class Score:
    """The score of one set of images against reference statistics."""

    fd: float       # Frechet distance; NaN when any image is non-finite
    fd_std: float   # its sampling standard error (fd_jackknife); NaN when any image is non-finite or groups are empty
    images: int     # images scored
    finite: bool    # every image was finite (stored uint8 images always are)
    is_mean: float = math.nan  # Inception Score, mean over IS_SPLITS splits (NaN: not asked for, or non-finite images)
    is_std: float = math.nan   # its std over the splits


@torch.no_grad()
def score_images(batches: Iterable[Tensor], detector: Detector, ref_mu, ref_sigma, *, groups: int = FD_STD_GROUPS,
                 with_is: bool = False,                       # also the Inception Score, from the same detector pass
                 features: list[np.ndarray] | None = None,    # gets each batch's features (precision/recall)
                 ) -> Score:
    """The one score of images behind every Frechet distance and Inception Score here (training evaluations, `sid
    phema`, `sid evaluate`): detector features accumulated in `groups` disjoint groups (GroupedFeatureStats), their
    union's distance and its jackknife standard error (fd_jackknife); `with_is`, the Inception Score of the class
    probabilities of the same forward pass (inception_score, IS_SPLITS splits: StyleGAN3's and SiD's is50k). Float
    batches in [-1, 1] are quantized as SiD does; if any of their pixels is non-finite, every value is NaN: quantize
    maps NaN pixels to black, and a score of black images would pass a diverged generator off as a finite, merely
    poor, one. uint8 batches (stored images) are scored as they are."""
    finite: list[Tensor] = []  # one flag per float batch on its device, read once at the end (not a sync per batch)
    probabilities: list[np.ndarray] | None = [] if with_is else None

    def quantized() -> Iterator[Tensor]:
        for batch in batches:
            if batch.is_floating_point():
                finite.append(batch.isfinite().all())
                batch = quantize(batch)
            yield batch

    grouped = GroupedFeatureStats(groups)
    feature_stats(quantized(), detector, probabilities=probabilities, features=features, into=grouped)
    fd, fd_std = fd_jackknife(grouped, ref_mu, ref_sigma)
    all_finite = bool(torch.stack(finite).all()) if finite else True
    is_mean, is_std = inception_score(np.concatenate(probabilities)) if with_is and all_finite else (math.nan,) * 2
    if not all_finite:
        fd = fd_std = math.nan
    return Score(fd=fd, fd_std=fd_std, images=grouped.num_items, finite=all_finite, is_mean=is_mean, is_std=is_std)


def score_generated(generate: Callable[[int, int], Tensor], num_images: int, detector: Detector, ref_mu, ref_sigma,
                    *, batch_size: int = 256, groups: int = FD_STD_GROUPS, with_is: bool = False) -> Score:
    """score_images of `num_images` generated images: `generate(batch_index, n)` returns n float images in [-1, 1],
    NCHW; the last batch is short when batch_size does not divide num_images. `with_is`: the Inception Score of the
    same images too, each batch through the detector once (the official CIFAR-10 uncond run reports both at each
    training evaluation: `--metrics fid50k_full,is50k`)."""
    return score_images(_generated_batches(generate, num_images, batch_size), detector, ref_mu, ref_sigma,
                        groups=groups, with_is=with_is)


def _generated_batches(generate: Callable[[int, int], Tensor], num_images: int, batch_size: int) -> Iterator[Tensor]:
    if num_images < 2 or batch_size < 1:
        raise ValueError(f"scoring needs num_images >= 2 and batch_size >= 1, got {num_images} and {batch_size}")
    for index in range(math.ceil(num_images / batch_size)):
        n = min(batch_size, num_images - index * batch_size)
        images = generate(index, n)
        if images.ndim != 4 or images.shape[0] != n:
            raise ValueError(f"generate({index}, {n}) must return {n} images [N, C, H, W], "
                             f"got {tuple(images.shape)}")
        yield images


def inception_score(probabilities: np.ndarray, splits: int = IS_SPLITS) -> tuple[float, float]:
    """(mean, std) over `splits` equal consecutive parts of exp(mean_i KL(p(y|x_i) || p(y))), p(y) the part's mean:
    StyleGAN3's is50k (float64 here; std over splits with ddof 0, as there)."""
    p = _f64(probabilities)
    if p.ndim != 2 or p.shape[0] < splits or splits < 1:
        raise ValueError(f"inception_score expects probabilities [N >= splits, classes] and splits >= 1, "
                         f"got {p.shape} and {splits}")
    scores = []
    for i in range(splits):
        part = p[i * len(p) // splits: (i + 1) * len(p) // splits]
        with np.errstate(divide="ignore", invalid="ignore"):  # 0 * log 0 = 0
            kl = np.where(part > 0, part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True))), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def check_reference(detector: Detector, ref_mu, ref_name: str) -> None:
    """ValueError naming both when the reference statistics were not made with this detector's feature width."""
    dim = np.shape(ref_mu)[0]
    if dim != detector.feature_dim:
        raise ValueError(f"reference {ref_name} has {dim}-d statistics but detector {detector.name} gives "
                         f"{detector.feature_dim}-d features: use reference statistics of {detector.name}")


@torch.no_grad()
def reference_stats_for_images(images: Iterable[Tensor], detector: Detector, *,
                               unbiased: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the detector features of uint8 NCHW batches; unbiased /(N-1) like EDM's fid-refs files."""
    return feature_stats(images, detector).mean_cov(unbiased=unbiased)


def _image_files(folder: Path) -> Iterator[Path]:
    """The image files under `folder`, recursively, without following links to folders; a non-regular file (a FIFO,
    a device, a link to one) named like an image is an error, never opened."""
    entries = []
    with os.scandir(folder) as scan:
        for entry in scan:
            if entry.is_dir(follow_symlinks=False):
                entries.append((entry.name, True))
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                if not entry.is_file():  # stat follows a link: a link to a regular file is read
                    raise ValueError(f"{entry.path} is not a regular file (a FIFO, device or dangling link?); "
                                     f"refusing to read it")
                entries.append((entry.name, False))
    for name, is_dir in sorted(entries):
        if is_dir:
            yield from _image_files(folder / name)
        else:
            yield folder / name


def _open_regular(path: Path) -> io.BytesIO:
    """The bytes of an image file, read only if it is a regular file (a FIFO swapped in after the folder was listed
    is refused, not waited on) of at most MAX_IMAGE_BYTES."""
    return io.BytesIO(read_regular(path, MAX_IMAGE_BYTES, "image file"))


def _encoded_images(source: Path) -> Iterator[tuple[str, Path | io.BytesIO]]:
    """(name, file) of each PNG/JPEG in a folder (recursively) or a zip, in sorted name order."""
    if source.is_dir():
        for path in _image_files(source):
            yield str(path), path
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            infos = sorted((i for i in archive.infolist() if Path(i.filename).suffix.lower() in IMAGE_SUFFIXES),
                           key=lambda i: i.filename)
            for info in infos:
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) \
                        or info.file_size > MAX_IMAGE_BYTES:
                    raise ValueError(f"{source}: member {info.filename!r} ({info.file_size:,} bytes, compression "
                                     f"method {info.compress_type}) is not a stored or deflated image file of at "
                                     f"most {MAX_IMAGE_BYTES:,} bytes")
                yield info.filename, io.BytesIO(archive.read(info))
    else:
        raise ValueError(f"expected a folder or a .zip of PNG/JPEG images, got {str(source)!r}")


def _decode(name: str, file: Path | io.BytesIO) -> np.ndarray:
    """One image as uint8 [H, W, C]: its size and mode checked right after the header is read, before any pixel is
    decoded (PIL decodes lazily: a 20 KB PNG can decode to 2 GiB)."""
    import PIL.Image  # noqa: PLC0415 (Pillow: only image files need it)

    try:
        with PIL.Image.open(_open_regular(file) if isinstance(file, Path) else file) as img:
            width, height = img.size
            if not 0 < width * height <= MAX_IMAGE_PIXELS:
                raise ValueError(f"{width} x {height} pixels (at most {MAX_IMAGE_PIXELS:,} are decoded)")
            arr = np.array(img if img.mode in ("L", "RGB") else img.convert("RGB"))
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError, zlib.error) as exc:
        raise ValueError(f"{name}: not a readable image ({str(exc)[:200]})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def iter_image_batches(source: str | os.PathLike, batch_size: int = 64) -> Iterator[Tensor]:
    """uint8 [N, C, H, W] batches of the PNG/JPEG images in a folder (recursively) or a zip, in sorted name order.
    Grayscale stays 1 channel; palette, RGBA, ... become RGB (detectors take 1 or 3 channels); one size for all.
    Only regular files are read, each image's size is checked before it is decoded (MAX_IMAGE_PIXELS)."""
    batch, shape = [], None
    for name, file in _encoded_images(Path(source)):
        arr = _decode(name, file)
        if shape is not None and arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape} (H, W, C) but earlier images have {shape}")
        shape = arr.shape
        batch.append(arr)
        if len(batch) == batch_size:
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()
            batch = []
    if shape is None:
        raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} images found in {str(source)!r}")
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()
