"""AugmentPipe: identity at p = 0, exact flips, enable rates, and labels that describe the applied geometry."""

import math

import pytest
import torch

from sid.augment import AugmentPipe

ONLY = dict(xflip=0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0)


def blob(n: int, size: int, x: float, y: float, std: float = 1.5) -> torch.Tensor:
    """Gaussian blob at (x, y) pixels from the image centre (x right, y down), [n, 2, size, size]."""
    c = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    img = torch.exp(-((c[None, :] - x) ** 2 + (c[:, None] - y) ** 2) / (2 * std**2))
    return img.expand(n, 2, size, size).clone()


def centroid(images: torch.Tensor, around: torch.Tensor, radius: float = 10.0) -> torch.Tensor:
    """Intensity centroid [N, 2] (x, y) from the image centre within `radius` px of `around` [N, 2], first channel.
    The window keeps out the mirrored copies that reflection padding shows far from the blob."""
    size = images.shape[-1]
    c = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    cx, cy = c[None, None, :], c[None, :, None]
    near = (cx - around[:, 0, None, None]) ** 2 + (cy - around[:, 1, None, None]) ** 2 < radius**2
    m = images[:, 0].double() * near
    return torch.stack([(m * cx).sum((1, 2)), (m * cy).sum((1, 2))], 1) / m.sum((1, 2))[:, None]


def expected_position(labels: torch.Tensor, xy: tuple[float, float], size: int) -> torch.Tensor:
    """Where EDM's transform sends point xy, rebuilt from the labels alone (valid when r = 0): flips first, then the
    output point q with G_inv q = p, G_inv = S(1/s) R(rot) S(1/a, a) T(-t), composed in EDM's order."""
    out = []
    for lab in labels.double():
        p = torch.tensor([xy[0] * (1 - 2 * lab[0]), xy[1] * (1 - 2 * lab[1]), 1.0], dtype=torch.float64)
        s, a = 2 ** (0.2 * lab[2]), 2 ** (0.2 * lab[5])
        rot = math.atan2(lab[4], lab[3] + 1)
        S = torch.diag(torch.stack([1 / s, 1 / s, torch.tensor(1.0, dtype=torch.float64)]))
        R = torch.tensor([[math.cos(rot), -math.sin(rot), 0], [math.sin(rot), math.cos(rot), 0], [0, 0, 1]],
                         dtype=torch.float64)
        A = torch.diag(torch.stack([1 / a, a, torch.tensor(1.0, dtype=torch.float64)]))
        T = torch.tensor([[1, 0, -lab[7] * size * 0.125], [0, 1, -lab[8] * size * 0.125], [0, 0, 1]],
                         dtype=torch.float64)
        out.append(torch.linalg.solve(S @ R @ A @ T, p)[:2])
    return torch.stack(out)


def test_p_zero_is_exact_identity_with_zero_labels():
    images = torch.randn(16, 3, 8, 8)
    out, labels = AugmentPipe(p=0.0)(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, images) and torch.equal(labels, torch.zeros(16, 9))


def test_default_rates_xflip_always_eligible_others_at_p():
    p, n = 0.12, 20_000
    _, labels = AugmentPipe(p)(torch.zeros(n, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    rate = labels.ne(0).double().mean(0)
    assert rate[0].item() == pytest.approx(0.5, abs=0.02)       # 1e8 * p >= 1: every sample flips with prob 1/2
    assert rate[1].item() == pytest.approx(p / 2, abs=0.01)     # y-flip enabled with prob p, then a coin
    for col in (2, 3, 5, 7, 8):                                 # scale, rotation, aniso, translation
        assert rate[col].item() == pytest.approx(p, abs=0.01)
    assert labels[:, :2].unique().tolist() == [0.0, 1.0]


@pytest.mark.parametrize("op, col, dim", [("xflip", 0, 3), ("yflip", 1, 2)])
def test_flips_are_exact_and_labelled(op, col, dim):
    images = torch.randn(64, 3, 5, 7)
    out, labels = AugmentPipe(1.0, **(ONLY | {op: 1}))(images, generator=torch.Generator().manual_seed(1))
    flipped = labels[:, col].bool()
    assert 0 < flipped.sum() < 64 and labels[:, [c for c in range(9) if c != col]].eq(0).all()
    assert torch.equal(out[flipped], images[flipped].flip(dim)) and torch.equal(out[~flipped], images[~flipped])


def test_untransformed_samples_of_default_pipe_are_exact_flips():
    images = torch.randn(256, 3, 8, 8)
    out, labels = AugmentPipe(0.12)(images, generator=torch.Generator().manual_seed(2))
    still = labels[:, 2:].eq(0).all(1)
    assert still.sum() > 100
    want = torch.where(labels[:, 0].bool().reshape(-1, 1, 1, 1), images.flip(3), images)
    want = torch.where(labels[:, 1].bool().reshape(-1, 1, 1, 1), want.flip(2), want)
    assert torch.equal(out[still], want[still])


@pytest.mark.parametrize("ops", [
    dict(translate_frac=1), dict(scale=1), dict(rotate_frac=1), dict(aniso=1, aniso_rotate_prob=0.0),
    dict(xflip=1, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1, aniso_rotate_prob=0.0),
])
def test_labels_describe_the_applied_geometry(ops):
    size, xy = 64, (6.0, -4.0)
    out, labels = AugmentPipe(1.0, **(ONLY | ops))(blob(24, size, *xy), generator=torch.Generator().manual_seed(3))
    want = expected_position(labels, xy, size)
    inside = want.abs().max(1).values < size / 2 - 8     # whole blob inside the output image
    assert inside.sum() >= 12
    torch.testing.assert_close(centroid(out, want)[inside], want[inside], atol=0.05, rtol=0)


def test_same_seed_same_augmentation():
    images = torch.randn(8, 3, 16, 16)
    a = AugmentPipe(0.5)(images, generator=torch.Generator().manual_seed(4))
    b = AugmentPipe(0.5)(images, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, 4, dtype=torch.uint8)])
def test_rejects_non_float_or_non_nchw_images(bad):
    with pytest.raises(ValueError, match=r"float images \[N, C, H, W\]"):
        AugmentPipe()(bad)
