"""Precision/recall as the official SiD pr50k3 (sid/precision_recall.py) against an independent float64 k-NN
(sklearn NearestNeighbors, scipy cdist): exactly where float16 is exact, within float16 round-off elsewhere, the
float16 rounding of the features deciding a borderline vector as the official metric does, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from sid.precision_recall import precision_recall


def reference(real: np.ndarray, generated: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al.'s definition in float64: a ball around each vector reaching its k-th nearest other vector
    of its set; precision = generated vectors inside the real balls, recall = real vectors inside the generated."""
    shares = []
    for manifold, probes in ((real, generated), (generated, real)):
        radii = NearestNeighbors(n_neighbors=k + 1).fit(manifold).kneighbors(manifold)[0][:, k]  # [0]: itself
        shares.append(float((cdist(probes, manifold) <= radii[None, :]).any(axis=1).mean()))
    return shares[0], shares[1]


def grid_points(rng: np.random.Generator, n: int, shift: int) -> np.ndarray:
    # Small integers: every squared distance and norm is an integer below 2048, exact in float16, so the float16
    # distances are the float64 ones rounded, and rounding keeps every <= comparison of distinct square roots here.
    return (rng.integers(0, 6, (n, 4)) + np.array([shift, 0, 0, 0])).astype(np.float32)


@pytest.mark.parametrize("blocks", [(10_000, 10_000), (16, 7), (5, 64)])  # (row_batch_size, col_batch_size)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_float64_knn_where_float16_is_exact(k, blocks):
    rng = np.random.default_rng(k)
    real, generated = grid_points(rng, 60, 0), grid_points(rng, 45, 2)  # overlapping, each with points outside
    want = reference(real.astype(np.float64), generated.astype(np.float64), k)
    assert 0 < want[0] < 1 and 0 < want[1] < 1
    got = precision_recall(real, generated, k=k, row_batch_size=blocks[0], col_batch_size=blocks[1])
    assert got == pytest.approx(want, abs=1e-7)


def test_features_are_rounded_to_float16_as_the_official_metric():
    # Real vectors on a line at 0, 1, ..., 30: the end one's ball reaches its 3rd neighbour, radius 3. A generated
    # vector at (33 + 2^-12, 0) is outside it in float64 but rounds to (33, 0) in float16 (spacing 2^-5 there):
    # inside, as the official metric counts it. The other generated vectors sit 20 away from the line. (Integer
    # coordinates, norms below 2048: the float16 distances are exact.)
    real = np.stack([np.arange(31), np.zeros(31)], axis=1).astype(np.float32)
    generated = np.stack([np.r_[33 + 2 ** -12, np.arange(29) % 4], np.r_[0, np.full(29, 20)]], axis=1)
    generated = generated.astype(np.float32)
    assert reference(real.astype(np.float64), generated.astype(np.float64)) == (0.0, 1.0)
    rounded = reference(real.astype(np.float16).astype(np.float64), generated.astype(np.float16).astype(np.float64))
    assert rounded == (pytest.approx(1 / 30), 1.0)
    assert precision_recall(real, generated) == pytest.approx(rounded, abs=1e-7)


@pytest.mark.parametrize("seed", [0, 1])
def test_inception_like_features_agree_with_float64_within_float16_round_off(seed):
    # Non-negative features like Inception's pool: float16 distances (|x|^2 + |y|^2 - 2 x.y) move a few borderline
    # vectors across a ball's edge; the shares stay within 2 vectors of the float64 ones on the rounded features.
    rng = np.random.default_rng(seed)
    real = np.abs(rng.normal(0.4, 0.5, (200, 32))).astype(np.float32)
    generated = np.abs(rng.normal(0.5, 0.5, (150, 32))).astype(np.float32)
    want = reference(real.astype(np.float16).astype(np.float64), generated.astype(np.float16).astype(np.float64))
    precision, recall = precision_recall(torch.from_numpy(real), torch.from_numpy(generated), row_batch_size=64,
                                         col_batch_size=50)
    assert abs(precision - want[0]) <= 2 / 150 and abs(recall - want[1]) <= 2 / 200
    assert (precision, recall) == precision_recall(real, generated)  # the blocks do not change the result


def test_separate_sets_have_no_precision_or_recall_and_a_set_with_itself_has_both():
    rng = np.random.default_rng(3)
    real = rng.normal(0, 1, (40, 8)).astype(np.float32)
    assert precision_recall(real, real + 10) == (0.0, 0.0)
    assert precision_recall(real, real.copy()) == (1.0, 1.0)


@pytest.mark.parametrize("real, generated, kwargs, match", [
    (np.zeros((10, 4)), np.zeros((10, 5)), {}, r"features of one width, got real \(10, 4\) and generated \(10, 5\)"),
    (np.zeros((3, 4)), np.zeros((10, 4)), {}, "more than k=3 vectors in each set, got 3 real and 10 generated"),
    (np.zeros(10), np.zeros((10, 4)), {}, r"real features as numbers \[N, D\], got torch.float64 \(10,\)"),
    (np.full((10, 4), np.nan), np.zeros((10, 4)), {}, "non-finite real features"),
    (np.zeros((10, 4)), np.zeros((10, 4)), {"k": 0}, "k, row_batch_size and col_batch_size >= 1, got 0"),
    (np.full((10, 8), 100.0), np.zeros((10, 8)), {}, r"float16 distances overflow \(squared norms up to 8e\+04"),
])
def test_bad_input_is_one_line_error(real, generated, kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        precision_recall(real, generated, **kwargs)
    assert "\n" not in str(err.value)
