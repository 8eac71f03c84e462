"""Shared fixtures of the tests and benchmarks (as optuna.testing): tiny networks and configs, a random teacher of each
preset's architecture, and small helpers, each defined once. A library module: it imports only the library, and
nothing in the library imports it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from sid.config import PRESETS, DistillConfig, preset
from sid.files import BEST, RUNS_DIR, TRIALS_FILE
from sid.networks.build import build_network
from sid.networks.precond import EDMPrecond
from sid.results import TRIAL_SCHEMA, write_trials
from sid.teachers import teacher_architecture
from sid.testing.edm_pickles import SONG, dump, edm_snapshot, random_net

# A small random 8x8 teacher: tests about runs, faults and placement need no quality; an iteration takes ~0.05 s.
TEACHER_KWARGS: dict[str, Any] = dict(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet",
                                      model_channels=16, channel_mult=[1], num_blocks=1, attn_resolutions=[],
                                      dropout=0.0)
# The digits preset at tiny budgets: 1 iteration = 0.008 kimg, an evaluation every 2 iterations, 4 iterations.
TINY: dict[str, Any] = dict(batch=8, batch_per_device=8, fid_images=256, eval_every_kimg=0.016, duration_kimg=0.032)
# TINY for DDP: batch 8 split as 2 ranks x 4, or 1 process x 2 rounds of 4 (the same noise slots, sid/distill.py)
DDP_TINY: dict[str, Any] = dict(TINY, batch_per_device=4)


def tiny_teacher(seed: int = 0, **overrides: Any) -> EDMPrecond:
    """The tiny teacher (TEACHER_KWARGS with `overrides`), EDM's initialisation drawn with `seed`, in eval mode."""
    torch.manual_seed(seed)
    return EDMPrecond(**{**TEACHER_KWARGS, **overrides}).eval().requires_grad_(False)


def save_network(net: nn.Module, path: str | Path) -> str:
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


def write_dataset(kind: str, path: str | Path, images: np.ndarray, labels: np.ndarray | None = None) -> str:
    """Write uint8 images [N, H, W, C] (and class labels [N]) as a dataset of `kind` (sid.datasets) at `path`:
    'folder' and 'zip' as EDM's dataset_tool lays them out (00000/img00000000.png, dataset.json), 'npz' (NHWC under
    arr_0, labels under arr_1) or 'npz-nchw' (NCHW under images, labels under labels); return the path."""
    import PIL.Image  # noqa: PLC0415 (Pillow: only image files need it)

    path = Path(path)
    names = [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(images))]
    table = {"labels": None if labels is None else [[n, int(c)] for n, c in zip(names, labels)]}
    if kind.startswith("npz"):
        nchw = kind == "npz-nchw"
        arrays = {"images" if nchw else "arr_0": images.transpose(0, 3, 1, 2) if nchw else images}
        if labels is not None:
            arrays["labels" if nchw else "arr_1"] = labels
        np.savez(path, **arrays)
        return str(path)
    encoded = []
    for img in images:
        buffer = io.BytesIO()
        PIL.Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    if kind == "folder":
        for name, data in zip(names, encoded):
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        (path / "dataset.json").write_text(json.dumps(table))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, data in zip(names, encoded):
                archive.writestr(name, data)
            archive.writestr("dataset.json", json.dumps(table))
    else:
        raise ValueError(f"write_dataset: unknown kind {kind!r}")
    return str(path)


def flags(**values: Any) -> list[str]:
    """{'duration_kimg': 0.1} -> ['--duration-kimg=0.1']: config values as command-line flags."""
    return [f"--{k.replace('_', '-')}={v}" for k, v in values.items()]


def preset_architecture(name: str, *, scaled: bool = False) -> dict[str, Any]:
    """The constructor arguments of preset `name`'s teacher (sid.teachers) with the dropout SiD trains it with.
    `scaled`: small enough for a CPU test, keeping everything that changes the computation graph (model type,
    embedding/encoder/decoder types, augment_dim, label_dim, attention): 16 px (the digits teacher keeps its 8 px),
    one block per level, 16 base channels (32 for ADM, which attends with 64 channels per head: one head at 8 px). A
    diffusers VP teacher (digits-ddpm) is returned at its size."""
    arch = {**teacher_architecture(PRESETS[name]["teacher"]), "dropout": preset(name).dropout}
    if not scaled or PRESETS[name]["teacher"] == "digits" or "model_type" not in arch:  # small already, or VP
        return arch
    channels = 32 if arch["model_type"] == "DhariwalUNet" else 16
    return dict(arch, img_resolution=16, model_channels=channels, num_blocks=1)


def random_teacher(name: str, *, scaled: bool = False, seed: int = 0) -> nn.Module:
    """Preset `name`'s teacher architecture with every tensor random: weights N(0, 1/fan_in) (EDM's initialisation
    leaves output layers at 0, which would make teacher and students trivial functions and leave earlier parameters
    without gradient), biases N(0, 0.1^2), GroupNorm scales 1 + N(0, 0.1^2). Never zeros: they can time faster than
    real data."""
    torch.manual_seed(seed)
    net = build_network(preset_architecture(name, scaled=scaled))
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


def assert_same_networks(state: dict, reference: dict, *, rtol: float = 1e-5) -> None:
    """Generator, fake score and G_ema of two training states (Distiller.state_dict, checkpoint.pt) equal to float32
    rounding: each tensor within `rtol` of its largest magnitude (at least 1)."""
    for net in ("generator", "fake_score", "generator_ema"):
        for key, value in reference[net].items():
            scale = max(value.abs().max().item(), 1.0)
            assert (state[net][key] - value).abs().max().item() <= rtol * scale, (net, key)


def hub_cache(hf_home: str | Path, repo_id: str, files: dict[str, bytes], *, revision: str = "main",
              commit: str = "", repo_type: str = "model") -> Path:
    """Lay out a Hugging Face Hub cache entry as huggingface_hub writes it ($HF_HOME/hub/models--ORG--REPO/: blobs
    named by their digest, sha256 for .pt/.pkl/.npz/.safetensors (LFS on the Hub) and the git blob sha1 for the rest;
    snapshots/<commit>/PATH linked to them; refs/<revision> holding the commit); return the snapshot folder. `commit`:
    40 hex digits (default: derived from the files)."""
    root = Path(hf_home) / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = commit or hashlib.sha1(repr(sorted(files.items())).encode(), usedforsecurity=False).hexdigest()
    snapshot = root / "snapshots" / commit
    for name, data in files.items():
        if name.endswith((".pt", ".pkl", ".npz", ".safetensors")):
            blob = hashlib.sha256(data).hexdigest()
        else:
            blob = hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / blob).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(Path(name).parts) + 1), "blobs", blob))
    snapshot.mkdir(parents=True, exist_ok=True)
    if revision != commit:
        (root / "refs" / revision).parent.mkdir(parents=True, exist_ok=True)
        (root / "refs" / revision).write_text(commit)
    return snapshot


def use_offline_hub(monkeypatch, hf_home: str | Path) -> None:
    """Point huggingface_hub at the cache in `hf_home`, offline (HF_HOME, HF_HUB_OFFLINE=1): in the environment for
    subprocesses, and in huggingface_hub.constants, which this process read when it first imported it."""
    from huggingface_hub import constants  # noqa: PLC0415 (huggingface_hub: only the Hub tests need it)

    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(hf_home) / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


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


def study_of_generators(folder: Path, generator: Path, best_fids: dict[str, float]) -> Path:
    """A study folder of finished trials (trials.parquet) whose run folders each hold a copy of `generator` as their
    best.pt, with these best FDs (a NaN: a trial without a finite evaluation, and so without best.pt)."""
    rows = []
    for trial, fid in best_fids.items():
        (folder / RUNS_DIR / trial).mkdir(parents=True)
        if math.isfinite(fid):
            shutil.copy(generator, folder / RUNS_DIR / trial / BEST)
        rows.append({**{f.name: None for f in TRIAL_SCHEMA}, "study": folder.name, "trial_id": trial,
                     "state": "completed", "best_fid": fid, "best_kimg": 0.0, "evaluations": 1})
    write_trials(folder / TRIALS_FILE, pd.DataFrame(rows).astype({"best_fid": float, "best_kimg": float}))
    return folder


def scipy_inception_score(p, splits: int = 10) -> tuple[float, float]:
    """An independent Inception Score in float64: exp(mean KL(p(y|x) || p(y))) per split via scipy.stats.entropy;
    mean and (ddof 0) std over the splits, split i being rows i*N//splits .. (i+1)*N//splits - 1 as in StyleGAN3's
    inception_score.py."""
    import scipy.stats  # noqa: PLC0415 (scipy: only the tests' references need it)

    scores = []
    for part in (p[i * len(p) // splits: (i + 1) * len(p) // splits] for i in range(splits)):
        py = part.mean(axis=0)
        scores.append(math.exp(sum(scipy.stats.entropy(row, py) for row in part) / len(part)))
    return float(sum(scores) / len(scores)), float(torch.tensor(scores, dtype=torch.float64).std(correction=0))


class RowSink:
    """A training-loop sink (sid.loop.Sink) that keeps what it is handed: each row, and the best row at that point."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.bests: list = []

    def on_evaluation(self, row, distiller, best) -> None:
        self.rows.append(row)
        self.bests.append(best)


# ---------------------------------------------------------------------------------------------- teachers of each kind
# A tiny diffusers UNet2DModel (8x8, 1 channel, no attention): the VP teachers of the tests.
TINY_UNET: dict[str, Any] = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)


def save_pipeline(folder: str | Path, prediction_type: str = "epsilon", *, weights: bool = True,
                  scheduler_class: str = "DDPMScheduler", num_class_embeds: int | None = None,
                  seed: int = 0) -> nn.Module:
    """A diffusers pipeline folder as DDPMPipeline.save_pretrained writes it (unet/ + scheduler/; `weights` False: a
    pickled .bin instead of safetensors) with a tiny random UNet (diffusers' own initialisation); returns the UNet."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: PLC0415 (diffusers: slow to import)

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DModel(**TINY_UNET, num_class_embeds=num_class_embeds)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=weights)
    if scheduler_class != "DDPMScheduler":
        path = folder / "scheduler" / "scheduler_config.json"
        path.write_text(path.read_text().replace('"DDPMScheduler"', f'"{scheduler_class}"'))
    return unet


class UserDenoiser(nn.Module):
    """A researcher's own denoiser (neither EDMPrecond nor diffusers): two convolutions around EDM's scalings, made
    by the factory `sid.testing.fixtures:user_teacher` with fixed weights."""

    img_resolution, img_channels, label_dim = 8, 1, 0

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(2, 16, 3, padding=1), nn.Conv2d(16, 1, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1).expand(len(x), 1, 1, 1)
        c_skip, c_out, c_in = 0.25 / (s**2 + 0.25), s * 0.5 / (s**2 + 0.25).sqrt(), 1 / (s**2 + 0.25).sqrt()
        h = torch.cat([x * c_in, s.log().div(4).expand(-1, 1, *x.shape[2:])], dim=1)
        return c_skip * x + c_out * self.conv2(nn.functional.silu(self.conv1(h)))


def user_teacher() -> UserDenoiser:
    """The factory of the module:function teacher kind in the tests."""
    return UserDenoiser()


# Teacher kinds of the tests, each a --teacher spec that teacher_specs writes (sid.teachers.TEACHER_FORMS).
TEACHER_KINDS = ("edm-pickle", "network-file", "digits", "digits-ddpm", "diffusers-epsilon", "diffusers-v",
                 "diffusers-sample", "diffusers-class", "factory-module", "factory-file")


def teacher_specs(folder: str | Path) -> dict[str, str]:
    """{kind: --teacher spec} for every TEACHER_KINDS entry, its files written under `folder` (tiny, random)."""
    folder = Path(folder)
    specs = {"edm-pickle": str(dump(folder / "edm.pkl", edm_snapshot(random_net(SONG)), folder / "code-ran")),
             "network-file": make_teacher(folder / "teacher.pt"), "digits": "digits", "digits-ddpm": "digits-ddpm",
             "factory-module": "sid.testing.fixtures:user_teacher"}
    for kind, prediction in (("epsilon", "epsilon"), ("v", "v_prediction"), ("sample", "sample")):
        save_pipeline(folder / kind, prediction)
        specs[f"diffusers-{kind}"] = f"diffusers:{folder / kind}"
    save_pipeline(folder / "class", num_class_embeds=10)
    specs["diffusers-class"] = f"diffusers:{folder / 'class'}"
    factory_file = folder / "my_teacher.py"
    factory_file.write_text("from sid.testing.fixtures import UserDenoiser\n\n\n"
                            "def make():\n    return UserDenoiser()\n")
    specs["factory-file"] = f"{factory_file}:make"
    return specs
