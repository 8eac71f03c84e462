"""The fast path of a SiD iteration on GPUs: backend precision flags, network memory format and compilation, the
Adam implementation, and the largest micro-batch that fits, chosen from measured memory.

Precision modes (DistillConfig.precision) and what each runs the three U-Nets in:
  fp32       the official setting: float32 with TF32 off for matmuls AND convolutions (cuDNN allows TF32 for
             convolutions unless told otherwise, so this must be set, not assumed)
  tf32       float32 tensors, TF32 tensor-core matmuls and convolutions (10-bit mantissa, like fp16)
  bf16       bf16 autocast around every U-Net (TF32 for what stays float32)
  bf16-tf32  bf16 autocast except the teacher and fake score inside the generator loss, which run as in tf32: that
             loss depends on the small difference f_phi - f_psi, so its relative rounding error is ~k u |f_phi| /
             |f_phi - f_psi| (tests/test_fast_path.py), large while the fake score is near the teacher, and bf16's
             unit roundoff u is 8x that of fp16 and TF32 (2^-8 vs 2^-11)
  fp16       the official use_fp16 mode: U-Net bodies in fp16, TF32 off, no reduced-precision fp16 reductions
Loss arithmetic, loss weights, gradients, Adam state and the EMA are float32 in every mode: EDMPrecond returns
float32 and the losses are elementwise outside the autocast op lists.

On CPU the backend flags, fused Adam and micro-batch fitting do nothing (no TF32 there: tf32 runs as fp32, and
fp16 too, as EDMPrecond's use_fp16 is CUDA-only); bf16 autocast, channels_last and compile apply on any device.
"""

from __future__ import annotations

import gc
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from sid.config import DistillConfig

TF32_PRECISIONS = ("tf32", "bf16", "bf16-tf32")
_TORCH_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
GiB = 2**30


def set_precision_flags(precision: str, device: torch.device) -> None:
    """Backend flags of a precision mode on CUDA (process-wide, so set before each iteration); no-op elsewhere."""
    if device.type != "cuda":
        return
    # The legacy flags on purpose: after the per-operator fp32_precision API, reading cudnn.allow_tf32 (which torch
    # and other libraries still do) raises "mix of the legacy and new APIs" in torch 2.13; these keep both readable.
    tf32 = precision in TF32_PRECISIONS
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False  # as the official code
    torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution algorithm once


def autocast(precision: str, device: torch.device, *, scores: bool = False) -> torch.autocast:
    """bf16 autocast of a precision mode; `scores=True` for the teacher and fake score of the generator loss."""
    enabled = precision == "bf16" or (precision == "bf16-tf32" and not scores)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def prepare_network(net: nn.Module, *, memory_format: str = "contiguous", compile: str = "off") -> nn.Module:
    """Convert an EDMPrecond in place to the memory format and compile its U-Net (parameter names unchanged).

    Only the inner U-Net is compiled: the preconditioning is a few elementwise ops, and `nn.Module.compile` keeps
    the state-dict keys, so checkpoints stay EDM-compatible. The Distiller's per-phase train/eval and requires_grad
    changes cost a handful of graphs in the first iteration and no recompiles after it (tests/test_fast_path.py)."""
    net.to(memory_format=_TORCH_FORMATS[memory_format])
    if compile != "off":
        net.model.compile(mode=compile, dynamic=False)
    return net


def optimizer_kwargs(device: torch.device) -> dict:
    """Adam implementation: one fused kernel per step on CUDA, the multi-tensor path elsewhere."""
    return dict(fused=True) if device.type == "cuda" else dict(foreach=True)


def eval_batch_size(device: torch.device) -> int:
    """Images per generator/detector call when evaluating: large on GPUs, where small batches leave it idle."""
    return 1000 if device.type == "cuda" else 256


# ---------------------------------------------------------------------------------------------- micro-batch fitting
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


def _trial_peak(config: DistillConfig, teacher: nn.Module, student: nn.Module | None, device: torch.device,
                micro_batch: int) -> int:
    """Peak allocated bytes of an iteration with one micro-batch of `micro_batch` (the second iteration, so the
    Adam state made in the first one counts). Eager even for compiled runs: no compile per trial shape, and
    compiled code rarely needs more memory than eager."""
    from sid.distill import Distiller

    trial = Distiller(config.replace(batch=micro_batch, batch_per_device=micro_batch, compile="off"), teacher,
                      device=device, student=student)
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


def _fits(config: DistillConfig, teacher: nn.Module, student: nn.Module | None, device: torch.device,
          micro_batch: int, budget: float) -> bool:
    try:
        return _trial_peak(config, teacher, student, device, micro_batch) <= budget
    except torch.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        return False


def fit_micro_batch(config: DistillConfig, teacher: nn.Module, *, device: torch.device, world_size: int = 1,
                    student: nn.Module | None = None,
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
    peak_small = _trial_peak(config, teacher, student, device, small)
    per_image = (_trial_peak(config, teacher, student, device, large) - peak_small) / max(large - small, 1)
    choice = pick_micro_batch(per_rank, peak_small - small * per_image, per_image, budget)
    while choice > large and not _fits(config, teacher, student, device, choice, budget):
        choice = max(m for m in range(1, choice) if per_rank % m == 0)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        agreed = torch.tensor([choice], device=device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        choice = int(agreed.item())  # the min of divisors of per_rank is one too
    return choice
