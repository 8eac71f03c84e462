"""The largest micro-batch that fits (`batch_per_device=0`), chosen from the measured memory of trial iterations on
the device, before the run's Distiller is built (sid.run.run_rank)."""

from __future__ import annotations

import gc
import math

import torch
from torch import nn

from sid.config import DistillConfig
from sid.distill import Distiller

GiB = 2**30


def pick_micro_batch(per_rank: int, fixed_bytes: float, bytes_per_image: float, budget_bytes: float) -> int:
    """Largest divisor m of `per_rank` with fixed_bytes + m * bytes_per_image <= budget_bytes."""
    if per_rank < 1 or not all(math.isfinite(v) for v in (fixed_bytes, bytes_per_image, budget_bytes)):
        raise ValueError(f"pick_micro_batch needs per_rank >= 1 and finite sizes, got {per_rank}, {fixed_bytes}, "
                         f"{bytes_per_image}, {budget_bytes}")
    fits = [m for m in range(1, per_rank + 1)
            if per_rank % m == 0 and fixed_bytes + m * bytes_per_image <= budget_bytes]
    if not fits:
        need = (fixed_bytes + bytes_per_image) / GiB
        raise ValueError(f"one image per micro-batch needs {need:.1f} GiB, more than the {budget_bytes / GiB:.1f} GiB "
                         f"budget of this device")
    return fits[-1]


def _trial_peak(config: DistillConfig, teacher: nn.Module, generator: nn.Module | None, device: torch.device,
                micro_batch: int) -> int:
    """Peak allocated bytes of an iteration with one micro-batch of `micro_batch` (the second iteration, so the
    Adam state made in the first one counts). Eager even for compiled runs: no compile per trial shape, and
    compiled code rarely needs more memory than eager."""
    trial = Distiller(config.replace(batch=micro_batch, batch_per_device=micro_batch, compile="off"), teacher,
                      device=device, generator=generator)
    trial.step()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    trial.step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del trial
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def _fits(config: DistillConfig, teacher: nn.Module, generator: nn.Module | None, device: torch.device,
          micro_batch: int, budget: float) -> bool:
    try:
        return _trial_peak(config, teacher, generator, device, micro_batch) <= budget
    except torch.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        return False


def fit_micro_batch(config: DistillConfig, teacher: nn.Module, *, device: torch.device, world_size: int = 1,
                    generator: nn.Module | None = None,  # the run's init_generator (Distiller's `generator`)
                    memory_fraction: float = 0.85,  # share of the device's memory the iteration may take
                    probe: int = 8) -> int:         # smaller of the two measured micro-batches
    """The largest micro-batch that divides this rank's batch and fits in memory, from the peak memory of trial
    iterations at `probe` and 2 * `probe` images (peak = fixed + per-image * m, a straight line: activations scale
    with the batch), confirmed by a trial at the chosen size. CPU: the whole per-rank batch in one micro-batch.
    All ranks agree on the smallest choice. Noise is drawn per micro-batch, so the numbers of a run depend on the
    size chosen here (a resumed run fits again: on another GPU model it may continue with other noise)."""
    per_rank = config.batch // world_size
    if device.type != "cuda":
        return per_rank
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    budget = memory_fraction * (free + torch.cuda.memory_allocated(device))
    small, large = min(probe, per_rank), min(2 * probe, per_rank)
    peak_small = _trial_peak(config, teacher, generator, device, small)
    per_image = (_trial_peak(config, teacher, generator, device, large) - peak_small) / max(large - small, 1)
    choice = pick_micro_batch(per_rank, peak_small - small * per_image, per_image, budget)
    while choice > large and not _fits(config, teacher, generator, device, choice, budget):
        choice = max(m for m in range(1, choice) if per_rank % m == 0)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        agreed = torch.tensor([choice], device=device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        choice = int(agreed.item())  # the min of divisors of per_rank is one too
    return choice
