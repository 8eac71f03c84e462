"""Real images: the one reader of a dataset, for reference statistics (`sid ref`), class frequencies (the labels of a
conditional teacher) and the methods that train on real images (`--data`, SiDA).

A dataset is one of
- an image folder (PNG/JPEG, searched recursively) or a zip of images, such as EDM's `dataset_tool.py` writes: its
  `dataset.json` (at the top of the folder or zip) labels the images, `{"labels": [["00000/img00000000.png", 6], ...]}`;
- an .npz of uint8 images [N, H, W, C] or [N, C, H, W] under `arr_0` or `images`, with optional class labels
  [N] (or one-hot [N, classes]) under `arr_1` or `labels` (the layout of ADM's and `sid generate`'s sample files);
- `digits`: the 1,797 shipped 8x8 digits with their labels (the digits presets' data).

Files are read through sid.metrics (_encoded_images, _decode, read_npz: the budgets of untrusted input live there).
Bad data (mixed sizes or channels, labels that are missing, not class indices or do not match the teacher, an
unreadable or huge image, a zip bomb, a path that is not a regular file) is one ValueError naming the file.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sid.config import DistillConfig
from sid.digits import load_digits_images, load_digits_labels
from sid.metrics import (
    CLASS_COUNTS,
    _decode,
    _encoded_images,
    check_class_counts,
    load_class_counts,
    quantize,
    read_npz,
)

DIGITS = "digits"                  # the shipped digits (sid/digits.py)
LABELS_FILE = "dataset.json"       # EDM dataset_tool's labels, at the top of a folder or zip
MAX_LABELS_BYTES = 128 * 2 ** 20   # dataset.json (ImageNet's 1.28 M labels: ~50 MB)
MAX_CLASSES = 100_000              # the most classes a label may name (as sid.checkpoints' label_dim limit)
NPZ_IMAGES, NPZ_LABELS = ("arr_0", "images"), ("arr_1", "labels")  # accepted names of the npz arrays, in order
# Presets whose dataset is not balanced, with what the official code does that uniform labels do not.
UNBALANCED = {"imagenet64-cond": "the official code draws them from ImageNet-64's labels (732 to 1300 images per "
                                 "class)"}


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset holds, known before its pixels are read (only the first image is decoded)."""

    source: str                       # as given
    kind: str                         # 'folder' | 'zip' | 'npz' | 'digits'
    images: int                       # number of images
    shape: tuple[int, int, int]       # (C, H, W) of every image
    label_dim: int                    # classes (largest label + 1, as EDM counts them); 0 = unlabelled
    class_counts: np.ndarray | None   # int64 [label_dim]: images per class; None when unlabelled

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def resolution(self) -> int:
        """H (= W); ValueError for images that are not square."""
        if self.shape[1] != self.shape[2]:
            raise ValueError(f"{self.source}: images are {self.shape[1]} x {self.shape[2]}, expected square ones")
        return self.shape[1]

    def check_matches(self, *, resolution: int, channels: int, label_dim: int, what: str = "the teacher") -> None:
        """ValueError naming the dataset when its images or labels do not fit a network of this resolution,
        channels and label_dim (a conditional network needs labels of exactly its classes)."""
        if self.shape != (channels, resolution, resolution):
            raise ValueError(f"{self.source}: images of shape {list(self.shape)} (C, H, W) do not match {what}'s "
                             f"{[channels, resolution, resolution]}")
        if label_dim and self.label_dim != label_dim:
            have = f"labels of {self.label_dim} classes" if self.label_dim else "no labels"
            raise ValueError(f"{self.source}: {what} is conditional on {label_dim} classes but the dataset has {have}")


class Dataset:
    """One dataset (see the module docstring). `info` is known at once; `batches()` reads the pixels."""

    def __init__(self, source: str | os.PathLike) -> None:
        self.source = str(source)
        path = Path(source)
        expected = f"expected an image folder, a .zip, an .npz or '{DIGITS}'"
        if self.source == DIGITS:
            self._open_digits()
        elif not path.exists():
            raise ValueError(f"{self.source}: no such dataset ({expected})")
        elif path.is_dir():
            self._open_images(path)
        elif not path.is_file():  # a FIFO or device would block or never end
            raise ValueError(f"{self.source} is not a regular file (a FIFO or device?); refusing to read it")
        elif path.suffix.lower() == ".npz":
            self._open_npz(path)
        elif zipfile.is_zipfile(path):
            self._open_images(path)
        else:
            raise ValueError(f"{self.source}: not a dataset ({expected})")

    # ------------------------------------------------------------------ opening
    def _set_info(self, kind: str, images: int, shape: tuple[int, ...], labels: np.ndarray | None) -> None:
        counts = None
        if labels is not None:
            counts = np.bincount(labels, minlength=int(labels.max()) + 1 if len(labels) else 0).astype(np.int64)
        self._labels = labels
        self.info = DatasetInfo(self.source, kind, images, tuple(int(v) for v in shape),
                                0 if counts is None else len(counts), counts)

    def _open_digits(self) -> None:
        self._array = quantize(load_digits_images()).numpy()  # the digits' own uint8 images, NCHW
        self._set_info(DIGITS, len(self._array), self._array.shape[1:], load_digits_labels().numpy())

    def _open_npz(self, path: Path) -> None:
        try:
            with zipfile.ZipFile(path) as archive:
                members = {Path(n).stem for n in archive.namelist()}
        except (zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"{path}: not a readable npz ({exc})") from None
        image_key = next((k for k in NPZ_IMAGES if k in members), NPZ_IMAGES[0])
        label_key = next((k for k in NPZ_LABELS if k in members), None)
        arrays = read_npz(path, [image_key] + ([label_key] if label_key else []),
                          expected=f"images under {' or '.join(NPZ_IMAGES)}")
        images = arrays[image_key]
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"{path}: expected {image_key} as uint8 images [N, H, W, C] or [N, C, H, W], got "
                             f"{images.dtype} {list(images.shape)}")
        nhwc = images.shape[3] in (1, 3) and (images.shape[1] not in (1, 3) or images.shape[1] == images.shape[2])
        if not nhwc and images.shape[1] not in (1, 3):
            raise ValueError(f"{path}: expected {image_key} with 1 or 3 channels, first or last, got "
                             f"{list(images.shape)}")
        self._array = images.transpose(0, 3, 1, 2) if nhwc else images  # a view: NCHW
        labels = None
        if label_key is not None:
            labels = _class_indices(arrays[label_key], len(images), f"{path}: {label_key}")
        self._set_info("npz", len(images), self._array.shape[1:], labels)

    def _open_images(self, path: Path) -> None:
        kind = "folder" if path.is_dir() else "zip"
        names, shape = [], None
        for name, file in _encoded_images(path):
            if shape is None:
                shape = _decode(name, file).shape
            names.append(name)
        if shape is None:
            raise ValueError(f"{path}: no PNG/JPEG images found")
        self._names = names
        table = _read_labels(path)
        labels = None
        if table is not None:
            keys = [Path(n).relative_to(path).as_posix() if kind == "folder" else n for n in names]
            missing = next((n for n, k in zip(names, keys) if k not in table), None)
            if missing is not None:
                raise ValueError(f"{path}: {LABELS_FILE} has no label for {missing}")
            labels = np.array([table[k] for k in keys], dtype=np.int64)
        self._set_info(kind, len(names), (shape[2], shape[0], shape[1]), labels)

    # ------------------------------------------------------------------ reading
    def batches(self, batch_size: int = 64) -> Iterator[tuple[Tensor, Tensor | None]]:
        """(uint8 images [N, C, H, W], int64 class labels [N] or None) in the dataset's order (sorted names for
        files); ValueError naming the image that differs in size or channels from the first."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        labels = None if self._labels is None else torch.from_numpy(self._labels)
        if self.info.kind in ("npz", DIGITS):
            for start in range(0, self.info.images, batch_size):
                images = torch.from_numpy(np.ascontiguousarray(self._array[start:start + batch_size]))
                yield images, None if labels is None else labels[start:start + batch_size]
            return
        want, batch, start = (self.info.shape[1], self.info.shape[2], self.info.shape[0]), [], 0
        for index, (name, file) in enumerate(_encoded_images(Path(self.source))):
            if index >= self.info.images or name != self._names[index]:
                raise ValueError(f"{self.source} changed while it was read (at {name})")
            arr = _decode(name, file)
            if arr.shape != want:
                raise ValueError(f"{name} has shape {list(arr.shape)} (H, W, C) but the dataset's first image has "
                                 f"{list(want)}")
            batch.append(arr)
            if len(batch) == batch_size:
                yield _stack(batch), None if labels is None else labels[start:start + len(batch)]
                start, batch = start + len(batch), []
        if batch:
            yield _stack(batch), None if labels is None else labels[start:start + len(batch)]

    def images(self, batch_size: int = 64) -> Iterator[Tensor]:
        """The uint8 NCHW batches alone (what a detector takes)."""
        for images, _ in self.batches(batch_size):
            yield images


def open_dataset(source: str | os.PathLike) -> Dataset:
    """The dataset at `source` (module docstring); one ValueError naming the file for anything it cannot read."""
    return Dataset(source)


def _stack(arrays: list[np.ndarray]) -> Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _class_indices(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    """int64 [n] class indices of labels [n] (integers >= 0) or one-hot [n, classes]."""
    if labels.ndim == 2 and len(labels) == n and labels.shape[1] >= 1 and np.isin(labels, (0, 1)).all() \
            and (labels.sum(axis=1) == 1).all():
        return labels.argmax(axis=1).astype(np.int64)
    if labels.ndim != 1 or len(labels) != n or labels.dtype.kind not in "iu" \
            or (n and not 0 <= labels.min() <= labels.max() < MAX_CLASSES):
        raise ValueError(f"{where}: expected {n} class indices in 0-{MAX_CLASSES - 1} (or one-hot rows), got "
                         f"{labels.dtype} {list(labels.shape)}")
    return labels.astype(np.int64)


def _read_labels(path: Path) -> dict[str, int] | None:
    """EDM's dataset.json of a folder or zip as {image name: class}; None without the file or with "labels": null."""
    where = f"{path / LABELS_FILE if path.is_dir() else f'{path}: {LABELS_FILE}'}"
    if path.is_dir():
        file = path / LABELS_FILE
        if not file.exists() and not file.is_symlink():
            return None
        if not file.is_file():
            raise ValueError(f"{where} is not a regular file; refusing to read it")
        if file.stat().st_size > MAX_LABELS_BYTES:
            raise ValueError(f"{where}: more than {MAX_LABELS_BYTES:,} bytes")
        raw = file.read_bytes()
    else:
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo(LABELS_FILE)
            except KeyError:
                return None
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) \
                    or info.file_size > MAX_LABELS_BYTES:
                raise ValueError(f"{where} ({info.file_size:,} bytes, compression method {info.compress_type}) is "
                                 f"not a stored or deflated file of at most {MAX_LABELS_BYTES:,} bytes")
            try:
                raw = archive.read(info)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise ValueError(f"{where}: not readable ({exc})") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{where}: not valid JSON ({str(exc)[:200]})") from None
    labels = data.get("labels") if isinstance(data, dict) else data
    if labels is None and isinstance(data, dict):
        return None
    if not isinstance(labels, list) or not all(
            isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], int)
            and not isinstance(e[1], bool) and 0 <= e[1] < MAX_CLASSES for e in labels):
        raise ValueError(f'{where}: expected {{"labels": [[image name, class index in 0-{MAX_CLASSES - 1}], ...]}} '
                         f"(class labels only, as EDM's dataset_tool writes them)")
    return dict(labels)


# ---------------------------------------------------------------------------------------------- label sampling
@dataclass(frozen=True)
class LabelDistribution:
    """The classes a conditional generator is given in training and at the training evaluations (FID)."""

    probs: Tensor | None   # float64 [label_dim] class probabilities; None: uniform (torch.randint)
    source: str            # where they came from, recorded in every evaluation row ('none' when unconditional)


UNCONDITIONAL = LabelDistribution(None, "none")


def label_distribution(config: DistillConfig, label_dim: int, *, warn: bool = True) -> LabelDistribution:
    """The classes a run draws: the dataset's class frequencies from config.class_counts (a counts file), else
    from the fid_ref file's class_counts, else uniform. Counts that are all equal give uniform (torch.randint, the
    draws of a run without counts). A preset whose dataset is not balanced (UNBALANCED) without counts gets uniform
    labels and, with `warn`, one warning saying what differs from the official code."""
    if not label_dim:
        if config.class_counts:
            raise ValueError(f"class_counts {config.class_counts}: the teacher {config.teacher} is unconditional "
                             f"(no labels to draw); leave class_counts out")
        return UNCONDITIONAL
    counts, origin = None, ""
    if config.class_counts == "uniform":
        return LabelDistribution(None, "uniform (class_counts: uniform)")
    if config.class_counts:
        counts, origin = load_class_counts(config.class_counts), config.class_counts
        if counts is None:
            raise ValueError(f"class_counts {config.class_counts}: the file has no {CLASS_COUNTS} array (write it "
                             f"with `sid ref DATA` of labelled data)")
    elif _may_hold_counts(config.fid_ref):
        counts, origin = load_class_counts(config.fid_ref), config.fid_ref
    if counts is None:
        if config.preset in UNBALANCED and warn:
            warnings.warn(f"{config.preset}: training and FID labels are uniform, but {UNBALANCED[config.preset]}; "
                          f"give --class-counts FILE (from `sid ref DATA`) to draw them as it does", stacklevel=2)
        return LabelDistribution(None, "uniform")
    counts = check_class_counts(counts, origin)
    if len(counts) != label_dim:
        raise ValueError(f"{origin}: {CLASS_COUNTS} has {len(counts)} classes but the teacher has {label_dim}")
    if (counts == counts[0]).all():
        return LabelDistribution(None, f"uniform ({CLASS_COUNTS} of {origin}: balanced)")
    return LabelDistribution(torch.from_numpy(counts / counts.sum()), f"{CLASS_COUNTS} of {origin}")


def _may_hold_counts(fid_ref: str) -> bool:
    """Whether the fid_ref names a file that may hold class_counts: not 'digits' nor an 'edm:' name (EDM's fid-refs
    store mu and sigma only: a run is never made to download one for its labels)."""
    return fid_ref != DIGITS and not fid_ref.startswith("edm:")


def sample_classes(n: int, rng: torch.Generator, label_dim: int, probs: Tensor | None) -> Tensor:
    """n class indices on rng's device: uniform (torch.randint) without probs, else drawn with replacement from
    them; the same rng state gives the same classes on every rank."""
    if probs is None:
        return torch.randint(label_dim, (n,), generator=rng, device=rng.device)
    return torch.multinomial(probs.to(rng.device, torch.float64), n, replacement=True, generator=rng)

