"""Shared fixtures of the tests and benchmarks (as optuna.testing): tiny networks and configs, a random teacher of each
preset's architecture, and small helpers, each defined once. A library module: it imports only the library, and
nothing in the library imports it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from sid.config import PRESETS, DistillConfig, preset
from sid.networks.precond import EDMPrecond
from sid.teachers import teacher_architecture

# A small random 8x8 teacher: tests about runs, faults and placement need no quality; an iteration takes ~0.05 s.
TEACHER_KWARGS: dict[str, Any] = dict(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet",
                                      model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[],
                                      dropout=0.0)
# The digits preset at tiny budgets: 1 iteration = 0.008 kimg, an evaluation every 2 iterations, 4 iterations.
TINY: dict[str, Any] = dict(batch=8, batch_per_device=8, fid_images=256, eval_every_kimg=0.016, duration_kimg=0.032)


def tiny_teacher(seed: int = 0, **overrides: Any) -> EDMPrecond:
    """The tiny teacher (TEACHER_KWARGS with `overrides`), EDM's initialisation drawn with `seed`, in eval mode."""
    torch.manual_seed(seed)
    return EDMPrecond(**{**TEACHER_KWARGS, **overrides}).eval().requires_grad_(False)


def save_network(net: EDMPrecond, path: str | Path) -> str:
    """Write `net` as a project network file (constructor arguments + state dict); return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(init_kwargs=net.init_kwargs, state_dict=net.state_dict()), path)
    return str(path)


def make_teacher(path: str | Path, seed: int = 0, **overrides: Any) -> str:
    """Write the tiny teacher as a project network file; return its path."""
    return save_network(tiny_teacher(seed, **overrides), path)


def tiny_config(teacher: str = "digits", **overrides: Any) -> DistillConfig:
    """The digits preset at TINY budgets with `teacher`, then `overrides`."""
    return preset("digits", teacher=teacher, **{**TINY, **overrides})


def flags(**values: Any) -> list[str]:
    """{'duration_kimg': 0.1} -> ['--duration-kimg=0.1']: config values as command-line flags."""
    return [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]


def preset_architecture(name: str, *, scaled: bool = False) -> dict[str, Any]:
    """The constructor arguments of preset `name`'s teacher (sid.teachers) with the dropout SiD trains it with.
    `scaled`: small enough for a CPU test, keeping everything that changes the computation graph (model type,
    embedding/encoder/decoder types, augment_dim, label_dim, attention): 16 px (the digits teacher keeps its 8 px),
    one block per level, 16 base channels (32 for ADM, which attends with 64 channels per head: one head at 8 px)."""
    arch = {**teacher_architecture(PRESETS[name]["teacher"]), "dropout": preset(name).dropout}
    if not scaled or PRESETS[name]["teacher"] == "digits":  # the digits teacher is small already
        return arch
    channels = 32 if arch["model_type"] == "DhariwalUNet" else 16
    return dict(arch, img_resolution=16, model_channels=channels, num_blocks=1)


def random_teacher(name: str, *, scaled: bool = False, seed: int = 0) -> EDMPrecond:
    """Preset `name`'s teacher architecture with every tensor random: weights N(0, 1/fan_in) (EDM's initialisation
    leaves output layers at 0, which would make teacher and students trivial functions and leave earlier parameters
    without gradient), biases N(0, 0.1^2), GroupNorm scales 1 + N(0, 0.1^2). Never zeros: they can time faster than
    real data."""
    torch.manual_seed(seed)
    net = EDMPrecond(**preset_architecture(name, scaled=scaled))
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1:
                p.normal_(0, 1 / math.sqrt(p[0].numel()))
            else:
                p.add_(torch.randn_like(p), alpha=0.1)
    return net.eval().requires_grad_(False)


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    """Every parameter of `module` in one float32 vector."""
    return torch.cat([p.detach().float().flatten() for p in module.parameters()])


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a timer around CUDA work measures nothing without it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def session_processes(session: int) -> list[int]:
    """Live processes of a session: a command started with start_new_session and everything it started (Ray too)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, session
            found.append(int(stat.parent.name))
    return found


def code_blocks(text: str, info: str = "python") -> list[str]:
    """The fenced blocks of a Markdown page whose info string is exactly `info` (so ```python tune blocks, which need
    a Tune study folder, are picked only when asked for)."""
    return [m.group(2) for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, flags=re.M | re.S)
            if m.group(1).strip() == info]


class RowSink:
    """A training-loop sink (sid.loop.Sink) that keeps what it is handed: each row, and the best row at that point."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.bests: list = []

    def on_evaluation(self, row, distiller, best) -> None:
        self.rows.append(row)
        self.bests.append(best)
