"""Real images for SiDA: an in-memory set drawn with the run's per-slot generators, the digits behind `real_batches`,
and the check that they fit the teacher.

Batches are drawn with replacement from each micro-batch slot's generator (sid.distill.slot_seed), so a run sees the
same real images whether its batch is split over ranks or accumulated, and after any resume. The official loop reads
a shuffled infinite sampler instead: the same distribution of images, another order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sid.datasets import open_dataset
from sid.digits import load_digits_images, load_digits_labels

DIGITS_DATA = "digits"  # DistillConfig.data naming the shipped digits images (sid.digits.load_digits_images)


class RealImages:
    """Images [N, C, H, W] in [-1, 1] and their class indices [N] (None: unlabeled), on one device."""

    def __init__(self, images: Tensor, classes: Tensor | None = None, *,
                 class_count: int = 0,    # classes of the data set (0: the largest index + 1)
                 num_classes: int = 0,    # size of the one-hot labels handed out (0: no labels, unconditional)
                 name: str = "") -> None:  # what the images are, for messages
        if images.ndim != 4 or images.shape[0] < 1 or images.shape[2] != images.shape[3]:
            raise ValueError(f"real images {name}: expected [N, C, R, R] with N >= 1, got {tuple(images.shape)}")
        if classes is not None and classes.shape != images.shape[:1]:
            raise ValueError(f"real images {name}: {classes.shape[0]} labels for {images.shape[0]} images")
        self.images, self.classes, self.num_classes, self.name = images, classes, num_classes, name
        self.class_count = 0 if classes is None else (class_count or int(classes.max()) + 1)

    def to(self, device: torch.device) -> RealImages:
        classes = None if self.classes is None else self.classes.to(device)
        return RealImages(self.images.to(device), classes, class_count=self.class_count,
                          num_classes=self.num_classes, name=self.name)

    def with_labels(self, num_classes: int) -> RealImages:
        """The same images handing out one-hot labels of `num_classes` (the teacher's label_dim; 0: none)."""
        return RealImages(self.images, self.classes, class_count=self.class_count, num_classes=num_classes,
                          name=self.name)

    def draw(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """n images drawn with replacement and their one-hot labels (None without labels)."""
        index = torch.randint(self.images.shape[0], (n,), generator=generator, device=generator.device)
        index = index.to(self.images.device)
        labels = None
        if self.num_classes:
            labels = nn.functional.one_hot(self.classes[index], self.num_classes).float()
        return self.images[index], labels


def check_real_images(real: RealImages, teacher: nn.Module) -> None:
    """ValueError, one line, when the real images cannot train against `teacher`: another resolution or channel
    count, or labels that do not match a conditional teacher's classes."""
    have = "x".join(map(str, real.images.shape[1:]))
    want = "x".join(map(str, (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)))
    problems = []
    if have != want:
        problems.append(f"images are {have} (CxHxW), the teacher's {want}")
    if teacher.label_dim and real.classes is None:
        problems.append(f"they have no labels, the teacher is conditional on {teacher.label_dim} classes")
    elif teacher.label_dim and real.class_count != teacher.label_dim:
        problems.append(f"they have {real.class_count} classes, the teacher {teacher.label_dim}")
    if problems:
        raise ValueError(f"real images {real.name or '(given)'} do not fit the teacher: {'; '.join(problems)}")


def real_batches(config, *, device: torch.device | str = "cpu", label_dim: int = 0) -> RealImages:
    """The real images `config.data` names, on `device`, handing out one-hot labels of `label_dim` classes (the
    teacher's; 0: none): `digits` (the shipped digits images, 1,797 of 1x8x8, 10 classes, as the digits teacher was
    trained on them), else an image folder, an EDM dataset_tool zip or an npz through the one dataset reader
    (sid.datasets, with its budgets), held in memory. ValueError ("--data needed") when none is named."""
    if not config.data.strip():
        raise ValueError("real images: --data needed (an image folder, an EDM dataset zip, an npz, or 'digits')")
    if config.data == DIGITS_DATA:
        real = RealImages(load_digits_images(), load_digits_labels(), name=DIGITS_DATA)
    else:
        dataset = open_dataset(config.data)
        images, classes = [], []
        for batch, labels in dataset.batches(256):
            images.append(batch.float().div(127.5).sub(1))  # uint8 -> [-1, 1], as the teacher's training data
            classes.append(labels)
        known = all(c is not None for c in classes)
        real = RealImages(torch.cat(images), torch.cat(classes) if known else None,
                          class_count=dataset.info.label_dim if known else 0, name=config.data)
    return real.with_labels(label_dim).to(torch.device(device))
