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

On CPU the backend flags and fused Adam do nothing (no TF32 there: tf32 runs as fp32, and fp16 too, as EDMPrecond's
use_fp16 is CUDA-only); bf16 autocast, channels_last and compile apply on any device. The largest micro-batch that
fits is measured by sid/micro_batch.py.
"""

from __future__ import annotations

import torch
from torch import nn

TF32_PRECISIONS = ("tf32", "bf16", "bf16-tf32")
_TORCH_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


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
    if compile != "off":  # the U-Net: EDMPrecond's model, a VP denoiser's unet, else the whole network
        next((getattr(net, n) for n in ("model", "unet") if hasattr(net, n)), net).compile(mode=compile, dynamic=False)
    return net


def optimizer_kwargs(device: torch.device) -> dict:
    """Adam implementation: one fused kernel per step on CUDA, the multi-tensor path elsewhere."""
    return dict(fused=True) if device.type == "cuda" else dict(foreach=True)


def eval_batch_size(device: torch.device) -> int:
    """Images per generator/detector call when evaluating: large on GPUs, where small batches leave it idle."""
    return 1000 if device.type == "cuda" else 256
