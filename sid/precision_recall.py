"""Precision and recall of generated images (Kynkaanniemi et al., "Improved Precision and Recall Metric for Assessing
Generative Models", NeurIPS 2019) as the official SiD metric `pr50k3` computes them (metrics/sid_precision_recall.py
of mingyuanzhou/SiD: StyleGAN2-ADA's precision_recall.py with the Inception-v3 pool features of the FID in place of
VGG16, as OpenAI's guided-diffusion evaluations do).

Each set's manifold is the union of balls around its feature vectors, a ball's radius being the distance to the k-th
nearest other vector of the same set (k = 3). Precision is the share of generated vectors inside the real manifold,
recall the share of real vectors inside the generated one. As the official code: features cast to float16; pairwise
Euclidean distances by torch.cdist in float16 (its |x|^2 + |y|^2 - 2 x.y form) in blocks of `row_batch_size` rows x
`col_batch_size` columns (10,000 each: a 50,000 x 50,000 distance matrix never exists whole); the k-th neighbour
found in float32 and rounded back to float16; a vector inside when its distance to some manifold vector is <= that
vector's radius (ties count as inside). Unlike the official code, distances that overflow float16 are an error.

The features come from the caller (sid.metrics detectors: INCEPTION for numbers comparable to the paper's); the
official run compares 50,000 generated images with 50,000 real ones (pr50k3; pr50k3_full takes up to 200,000 real).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

PR_NEIGHBOURS = 3       # k of the k-nearest-neighbour balls (pr50k3)
PR_BATCH_SIZE = 10_000  # rows and columns per block of distances (the official row_batch_size and col_batch_size)


def _float16(features: np.ndarray | Tensor, name: str, device: torch.device | str | None) -> Tensor:
    """[N, D] features as float16 on `device` (None: where they are), through float32 as the official features go
    (a float64 value rounded straight to float16 can round differently)."""
    x = features if isinstance(features, Tensor) else torch.from_numpy(np.asarray(features))
    if x.ndim != 2 or not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"precision_recall expects {name} features as numbers [N, D], got {x.dtype} "
                         f"{tuple(x.shape)}")
    x = x.to(device if device is not None else x.device, torch.float32)
    if not x.isfinite().all():
        raise ValueError(f"precision_recall got non-finite {name} features (NaN or inf)")
    return x.to(torch.float16)


def _distances(rows: Tensor, cols: Tensor, col_batch_size: int) -> Tensor:
    """[len(rows), len(cols)] float16 Euclidean distances, computed over column blocks as the official code splits
    them (cols zero-padded to a multiple of the block count, then chunked, the padding's columns dropped)."""
    n = cols.shape[0]
    blocks = (n - 1) // col_batch_size + 1
    padded = torch.nn.functional.pad(cols, [0, 0, 0, -n % blocks])
    # cdist's matrix-product form (|x|^2 + |y|^2 - 2 x.y), which it picks itself beyond 25 rows or columns, so at
    # the official 10,000 x 10,000 blocks; forced here for small blocks too (its direct form has no CPU float16).
    distances = torch.cat([torch.cdist(rows[None], block[None], compute_mode="use_mm_for_euclid_dist")[0]
                           for block in padded.chunk(blocks)], dim=1)[:, :n]
    if not distances.isfinite().all():  # the official code would go on with inf/NaN balls
        largest = max(float(x.float().square().sum(1).max()) for x in (rows, cols))
        raise ValueError(f"precision_recall: the float16 distances overflow (squared norms up to {largest:.4g}; "
                         f"float16 ends at 65504): features of Inception's scale are needed")
    return distances


def _inside(manifold: Tensor, probes: Tensor, k: int, row_batch_size: int, col_batch_size: int) -> Tensor:
    """Whether each probe lies within the k-nearest-neighbour manifold of `manifold` (bool [len(probes)])."""
    # The k-th neighbour is the (k+1)-th smallest distance: the smallest is the vector's own (0, or float16
    # round-off of it).
    radii = torch.cat([_distances(block, manifold, col_batch_size).to(torch.float32).kthvalue(k + 1, dim=1)
                       .values.to(torch.float16) for block in manifold.split(row_batch_size)])
    return torch.cat([(_distances(block, manifold, col_batch_size) <= radii).any(dim=1)
                      for block in probes.split(row_batch_size)])


@torch.no_grad()
def precision_recall(real: np.ndarray | Tensor, generated: np.ndarray | Tensor, *,
                     k: int = PR_NEIGHBOURS,                      # neighbours defining each ball's radius
                     row_batch_size: int = PR_BATCH_SIZE,         # rows of one block of distances
                     col_batch_size: int = PR_BATCH_SIZE,         # columns of one block of distances
                     device: torch.device | str | None = None,    # where distances are computed (None: the inputs')
                     ) -> tuple[float, float]:
    """(precision, recall) of `generated` against `real` feature vectors ([N, D] each, numpy or torch), as the
    official SiD pr50k3 metric; each set needs more than k vectors."""
    if not (isinstance(k, int) and k >= 1 and row_batch_size >= 1 and col_batch_size >= 1):
        raise ValueError(f"precision_recall expects k, row_batch_size and col_batch_size >= 1, got {k}, "
                         f"{row_batch_size} and {col_batch_size}")
    real16, gen16 = _float16(real, "real", device), _float16(generated, "generated", device)
    if real16.shape[1] != gen16.shape[1]:
        raise ValueError(f"precision_recall expects features of one width, got real {tuple(real16.shape)} and "
                         f"generated {tuple(gen16.shape)}")
    if min(len(real16), len(gen16)) <= k:
        raise ValueError(f"precision_recall needs more than k={k} vectors in each set, got {len(real16)} real and "
                         f"{len(gen16)} generated")
    precision = _inside(real16, gen16.to(real16.device), k, row_batch_size, col_batch_size)
    recall = _inside(gen16.to(real16.device), real16, k, row_batch_size, col_batch_size)
    return float(precision.to(torch.float32).mean()), float(recall.to(torch.float32).mean())
