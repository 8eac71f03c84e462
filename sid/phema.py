"""Post-hoc EMA (Karras et al., "Analyzing and Improving the Training Dynamics of Diffusion Models", CVPR 2024):
track a few power-function EMA profiles of the generator during training, save their snapshots, and afterwards
reconstruct the EMA of any other length by least squares. SiD's G_ema never feeds back into training, so the EMA
length can be chosen after the run instead of paying a run per value.

A power-function EMA with exponent gamma averages the generator's weights of steps tau in [0, t] with weights
proportional to tau^gamma; its update after step t is  ema <- beta ema + (1 - beta) theta  with
beta = (1 - 1/t)^(gamma + 1). Its length is given as sigma_rel, the standard deviation of that weight profile
relative to t:  sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)).

Reconstruction: a snapshot of profile gamma_i taken at step t_i is the integral of theta against
p_i(tau) = (gamma_i + 1) tau^gamma_i / t_i^(gamma_i + 1) on [0, t_i]. The target profile p_r is approximated by
sum_i x_i p_i in L2, so x solves A x = b with A_ij = <p_i, p_j> and b_i = <p_i, p_r>, integrals in closed form.
As EDM2 (training/phema.py solve_posthoc_coefficients, reconstruct_phema.py), x is then divided by its sum, so the
reconstruction is a weighted average: the least-squares x alone sums to 0.73-0.96 for a few snapshots and would scale
every weight by that. The reconstructed parameters are sum_i x_i snapshot_i; buffers (resampling filters, Fourier
frequencies: not trained, not averaged) are copied from the newest snapshot, as EDM2 copies them from an input.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from sid.checkpoints import check_weights
from sid.saved import SavedGenerator

EXACT_STEPS = 20_000_000  # steps x profiles up to which the exact discrete weights are used (160 MB of float64)


def exponent(sigma_rel: float) -> float:
    """gamma of the power-function profile whose relative std is sigma_rel: the real root above -1 of
    s^2 g^3 + 7 s^2 g^2 + (16 s^2 - 1) g + (12 s^2 - 1) = 0."""
    s2 = sigma_rel ** 2
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    real = [r.real for r in roots if abs(r.imag) < 1e-9 and r.real > -1]
    if not real:
        raise ValueError(f"no power-function EMA has sigma_rel {sigma_rel}")
    return float(max(real))


def sigma_rel_of(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def beta(step: int, gamma: float) -> float:
    """EMA decay after training step `step` (1, 2, ...): the first step copies the weights."""
    return (1 - 1 / step) ** (gamma + 1)


def _inner(t_i: np.ndarray, g_i: np.ndarray, t_j: np.ndarray, g_j: np.ndarray) -> np.ndarray:
    """<p_i, p_j> for power-function profiles (broadcasting): integral over [0, min(t_i, t_j)] of their product."""
    m = np.minimum(t_i, t_j)
    # computed in logs: t^(gamma + 1) overflows for long runs
    log = (np.log(g_i + 1) + np.log(g_j + 1) + (g_i + g_j + 1) * np.log(m) - np.log(g_i + g_j + 1)
           - (g_i + 1) * np.log(t_i) - (g_j + 1) * np.log(t_j))
    return np.exp(log)


def step_weights(step: int, gamma: float) -> np.ndarray:
    """The exact weights of the discrete profile over the weights after steps 1..step (they sum to 1): since
    prod_{s > tau} (1 - 1/s) = tau / step, w_tau = (1 - (1 - 1/tau)^(gamma + 1)) (tau / step)^(gamma + 1)."""
    tau = np.arange(1, step + 1, dtype=np.float64)
    return (1 - (1 - 1 / tau) ** (gamma + 1)) * (tau / step) ** (gamma + 1)


def coefficients(snapshots: Sequence[tuple[int, float]], target: tuple[int, float]) -> np.ndarray:
    """x with sum_i x_i p_i closest to the target profile, normalised to sum to 1 (EDM2); `snapshots` and `target`
    are (step, gamma). Runs of up to EXACT_STEPS steps use the exact discrete weights (the continuous profile is off
    by ~gamma / (2 tau) at step tau), longer ones the closed-form integrals of the continuous profiles."""
    steps = [s for s, _ in snapshots] + [target[0]]
    if max(steps) * len(steps) <= EXACT_STEPS:
        top = max(steps)
        w = np.zeros((len(steps), top))
        for row, (s, gamma) in enumerate([*snapshots, target]):
            w[row, :s] = step_weights(s, gamma)
        a, b = w[:-1] @ w[:-1].T, w[:-1] @ w[-1]
    else:
        t = np.array([s for s, _ in snapshots], dtype=np.float64)
        g = np.array([gamma for _, gamma in snapshots], dtype=np.float64)
        a = _inner(t[:, None], g[:, None], t[None, :], g[None, :])
        b = _inner(t, g, np.float64(target[0]), np.float64(target[1]))
    x, *_ = np.linalg.lstsq(a, b, rcond=None)  # least squares: repeated snapshots make A singular
    with np.errstate(divide="ignore", invalid="ignore"):
        x = x / x.sum()  # the sum is tiny (not wrong) for a short EMA long after the last snapshot
    if not np.isfinite(x).all():
        raise ValueError(f"post-hoc EMA: no reconstruction of step {target[0]} from snapshots at steps "
                         f"{sorted({s for s, _ in snapshots})}: the least-squares weights sum to 0")
    return x


def _weights(profiles: Sequence[tuple[int, float]], step: int, sigma_rel: float) -> tuple[list[int], np.ndarray]:
    """Indices of the snapshots taken at or before `step` and their least-squares weights for the sigma_rel EMA."""
    usable = [i for i, (s, _) in enumerate(profiles) if s <= step]
    if not usable:
        raise ValueError(f"no post-hoc EMA snapshot at or before step {step}")
    return usable, coefficients([profiles[i] for i in usable], (step, exponent(sigma_rel)))


def _weighted_sum(weights: Sequence[float], states: Iterable[Mapping[str, torch.Tensor]], buffers: Collection[str],
                  newest: int) -> dict[str, torch.Tensor]:
    """sum_i w_i state_i over the parameters in float64, one state at a time, back in each tensor's dtype. Buffers
    (the names in `buffers`) and integer tensors are not averaged: they are copied from state number `newest`."""
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    keys = None
    for index, (weight, state) in enumerate(zip(weights, states)):
        if keys is None:
            keys = set(state)
        elif set(state) != keys:
            raise ValueError(f"post-hoc EMA snapshots of different networks: snapshot {index} and the first differ "
                             f"in {sorted(set(state) ^ keys)[0]!r} and {len(set(state) ^ keys) - 1} more tensors")
        for name, value in state.items():
            if name in buffers or not value.is_floating_point():
                if index == newest:
                    total[name] = value.clone()
                continue
            dtypes.setdefault(name, value.dtype)
            total[name] = total.get(name, torch.zeros_like(value, dtype=torch.float64)) + float(weight) * value.double()
    return {k: v.to(dtypes[k]) if k in dtypes else v for k, v in total.items()}


def combine(profiles: Sequence[tuple[int, float]], files: Sequence[Path], step: int, sigma_rel: float, *,
            like: torch.nn.Module) -> dict[str, torch.Tensor]:
    """reconstruct() over snapshot files (saved generators, sid.saved), loaded one at a time: a run's snapshots need
    not fit in memory together. `like`: the network they are snapshots of (sid.checkpoints.check_architecture's
    meta network); each file's weights must fit it (check_weights) before any sum, and its buffers are copied."""
    def state(path: Path) -> dict[str, torch.Tensor]:
        weights = SavedGenerator.load(path).state_dict
        check_weights(like, weights, path)
        return weights

    usable, x = _weights(profiles, step, sigma_rel)
    buffers = {name for name, _ in like.named_buffers()}
    return _weighted_sum(x, (state(files[i]) for i in usable), buffers, _newest([profiles[i] for i in usable]))


def reconstruct(snapshots: Sequence[tuple[int, float, Mapping[str, torch.Tensor]]], step: int, sigma_rel: float, *,
                buffers: Collection[str]) -> dict[str, torch.Tensor]:
    """The weights of the sigma_rel EMA at training step `step` from snapshots (step, gamma, state dict) taken at
    or before it, parameters combined in float64. `buffers`: the state-dict names of the network's buffers
    ({name for name, _ in net.named_buffers()}), copied from the newest usable snapshot."""
    usable, x = _weights([(s, g) for s, g, _ in snapshots], step, sigma_rel)
    return _weighted_sum(x, (snapshots[i][2] for i in usable), buffers,
                         _newest([snapshots[i][:2] for i in usable]))


def _newest(profiles: Sequence[tuple[int, float]]) -> int:
    """Position of the snapshot whose buffers the reconstruction keeps: the latest, of those the longest profile
    (smallest gamma), as EDM2 keeps its last input in (nimg, sigma_rel) order."""
    return max(range(len(profiles)), key=lambda i: (profiles[i][0], -profiles[i][1], i))
