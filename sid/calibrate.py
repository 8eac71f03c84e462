"""A short calibration of a preset on this machine's device: what `--plan` prices a study from (sid/plan.py).

It times what a trial does: the setup (teacher, the Distiller's networks, the detector and the reference
statistics), a few training iterations after one warm-up iteration, and one evaluation's worth of images through
the generator, the detector and the Frechet distance. An EDM teacher ('edm:...') is built with random weights from
its known architecture (sid.teachers.EDM_ARCHITECTURES): the same work, no download; the detector and reference are
the preset's own (a preset scored with Inception needs them cached or reachable).
"""

from __future__ import annotations

import platform
import time

import torch

from sid.config import DistillConfig
from sid.distill import Distiller
from sid.loop import Evaluator
from sid.networks.precond import EDMPrecond
from sid.plan import Calibration
from sid.results import now_utc
from sid.teachers import EDM_ARCHITECTURES, load_teacher


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def calibrate(config: DistillConfig, device: torch.device, *, iterations: int = 3,
              eval_images: int = 512) -> Calibration:  # eval_images: images timed through the evaluation
    """Calibration of `config` (its preset label) on `device`."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as run_rank: denormals made CPU iterations up to 10x slower
    start = time.perf_counter()
    if config.teacher in EDM_ARCHITECTURES:
        teacher = EDMPrecond(**EDM_ARCHITECTURES[config.teacher]).eval().requires_grad_(False)
    else:
        teacher = load_teacher(config.teacher)
    distiller = Distiller(config, teacher, device=device)
    evaluator = Evaluator(config, device)
    _synchronize(device)
    setup_s = time.perf_counter() - start
    distiller.step()  # warm-up: first-call allocations, kernel selection
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        distiller.step()
    _synchronize(device)
    train_s = time.perf_counter() - start
    images = min(eval_images, config.fid_images)
    start = time.perf_counter()
    evaluator(distiller, images)
    _synchronize(device)
    eval_s = time.perf_counter() - start
    source = (f"measured by --plan on {platform.node()} at {now_utc():%Y-%m-%d %H:%M} UTC: {iterations} iterations, "
              f"{images} evaluation images")
    return Calibration(preset=config.preset, device=device_name(device),
                       train_images_per_s=iterations * config.batch / train_s, eval_images_per_s=images / eval_s,
                       setup_s=setup_s, source=source)
