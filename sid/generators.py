"""One-step generators: load one from wherever it lives, and sample it image by image from seeds.

`load_generator(source)` resolves a run folder (best.pt, else generator.pt), one of this project's network files
(a snapshot `generator-<kimg>.pt`, best.pt, generator.pt or a training checkpoint.pt), an exported .safetensors file
(sid.commands.export), an official SiD/EDM `network-snapshot-*.pkl` (path or URL, read by the code-free loader
sid.checkpoints.load_edm_pickle, which returns the EDMPrecond under 'ema'), or a teacher name ('digits',
'edm:<name>': the generator SiD starts from). Generation follows the official one-step sampler: z = sigma_init * randn,
x = G(z, sigma_init, class one-hot), with z and the random class of image i drawn from torch.Generator(seed i) alone,
so batching, sharding and device do not change which image a seed gives.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sid.checkpoints import build_checked
from sid.files import RUN_FILES
from sid.networks.precond import EDMPrecond, architecture_difference

DEFAULT_SIGMA_INIT = 2.5          # SiD's sigma_init in every preset and in the official generate_onestep.py
MAX_SEED = 2**32 - 1              # the seed range of EDM's and SiD's generate scripts


# ---------------------------------------------------------------------------------------------- seeds
def parse_seeds(text: str) -> list[int]:
    """'0-9,20,30-39' -> [0, ..., 9, 20, 30, ..., 39]; ValueError naming the expected form or range."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ValueError(f"--seeds: expected ranges and lists of integers such as '0-49999' or '0-9,20,30-39', "
                             f"got {text!r}")
        lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if hi < lo or hi > MAX_SEED:
            raise ValueError(f"--seeds: expected ascending ranges within 0-{MAX_SEED}, got {part.strip()!r}")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected each seed once, got {text!r}")
    return seeds


def format_seeds(seeds: Sequence[int]) -> str:
    """The inverse of parse_seeds, compact: [0, 1, 2, 5] -> '0-2,5'."""
    parts, i = [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(f"{seeds[i]}" if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)


def devices_for(name: str) -> list[str]:
    """'auto': every CUDA device (or the CPU); else a comma list such as 'cuda:0,cuda:1' or 'cpu'."""
    if name == "auto":
        count = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(count)] if count else ["cpu"]
    devices = [d.strip() for d in name.split(",") if d.strip()]
    for d in devices:
        try:
            kind = torch.device(d)
        except RuntimeError:
            raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N (comma-separated), got {d!r}") from None
        if kind.type == "cuda" and (kind.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"--device {d}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if kind.type not in ("cpu", "cuda"):
            raise ValueError(f"--device: expected cpu or cuda devices, got {d!r}")
    if not devices:
        raise ValueError("--device: expected auto, cpu, cuda or cuda:N (comma-separated), got nothing")
    return devices


# ---------------------------------------------------------------------------------------------- loading
def _from_saved(saved: Any, path: Path) -> tuple[EDMPrecond, dict[str, Any]]:
    """A network dict of this project: {init_kwargs, state_dict, ...} or a training checkpoint (G_ema)."""
    if isinstance(saved, dict) and "generator_ema" in saved and "generator_init_kwargs" in saved:
        saved = dict(init_kwargs=saved["generator_init_kwargs"], state_dict=saved["generator_ema"],
                     config=saved.get("config"), sigma_init=(saved.get("config") or {}).get("sigma_init"))
    if not (isinstance(saved, dict) and "init_kwargs" in saved and "state_dict" in saved):
        raise ValueError(f"{path}: not a generator file of this project ({{init_kwargs, state_dict}})")
    net = build_checked(saved["init_kwargs"], saved["state_dict"], path)
    info = {k: saved.get(k) for k in ("sigma_init", "config", "kimg", "fid", "fid_detector", "fid_images")}
    return net, info


def load_generator(source: str | Path) -> tuple[EDMPrecond, dict[str, Any]]:
    """(G as EDMPrecond in eval mode, float32, CPU, frozen; info) for any generator source (see the module doc).
    info holds 'source' (the file read), 'sigma_init' (None when the source does not say) and, where known,
    'config' (DistillConfig.to_dict() of its run), 'kimg', 'fid', 'fid_detector', 'fid_images'.
    Every failure is a ValueError naming the source."""
    from sid.assets import is_url

    text = str(source)
    path = Path(text)
    if not is_url(text) and path.is_dir():
        found = next((path / name for name in RUN_FILES if (path / name).is_file()), None)
        found = found or max((path / "snapshots").glob("generator-*.pt"), default=None)  # no finite FD yet
        if found is None:
            raise ValueError(f"{path}: a folder but not a run folder (expected {' or '.join(RUN_FILES)} or "
                             f"snapshots/generator-*.pt in it)")
        path, text = found, str(found)
    if text.endswith((".safetensors", ".json")) and not is_url(text):
        net, info = load_exported(path)
    elif text.endswith(".pt") and not is_url(text):
        from sid.teachers import load_plain

        try:
            saved = load_plain(path, "generator file")
        except ValueError:
            raise
        except Exception as exc:  # unpickling torn bytes fails with almost any exception type
            raise ValueError(f"{path}: not a generator file ({type(exc).__name__}: {exc})") from exc
        net, info = _from_saved(saved, path)
    else:  # EDM/SiD pickle (path or URL), or a teacher name: the teacher-initialised generator
        from sid.checkpoints import CheckpointError
        from sid.teachers import load_teacher

        if not (is_url(text) or text == "digits" or text.startswith("edm:") or path.exists()):
            raise ValueError(f"{text}: no such file or folder; expected a run folder, a .pt snapshot, "
                             f"a .safetensors export, a network-snapshot .pkl (path or URL), 'digits' or 'edm:<name>'")
        try:
            net, info = load_teacher(text), {}
        except (CheckpointError, OSError) as exc:
            raise ValueError(str(exc)) from exc
    info = {"sigma_init": None, **info, "source": text}
    sigma = info["sigma_init"]
    if sigma is not None and not (type(sigma) in (int, float) and 0 < sigma < math.inf):
        raise ValueError(f"{text}: the recorded sigma_init {str(sigma)[:60]!r} is not a number > 0")
    return net.float().eval().requires_grad_(False), info


def check_same_architecture(net: nn.Module, reference: nn.Module, what: str) -> None:
    """ValueError listing each differing constructor argument (sid.networks.architecture_difference)."""
    diff = architecture_difference(net.init_kwargs, reference.init_kwargs)
    if diff:
        listed = ", ".join(f"{k}={x!r} vs {y!r}" for k, (x, y) in diff.items())
        raise ValueError(f"{what}: architecture differs from the teacher's ({listed})")


# ---------------------------------------------------------------------------------------------- sampling
def seed_inputs(seeds: Sequence[int], net: nn.Module, sigma_init: float,
                class_idx: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(z [N, C, R, R], one-hot labels [N, label_dim] or None) on the CPU, row i from seeds[i] alone: z first,
    then the class when it is random (class_idx None)."""
    shape = (1, net.img_channels, net.img_resolution, net.img_resolution)
    zs, classes = [], []
    for seed in seeds:
        rng = torch.Generator().manual_seed(int(seed))
        zs.append(torch.randn(shape, generator=rng))
        if net.label_dim:
            classes.append(class_idx if class_idx is not None else int(torch.randint(net.label_dim, (1,),
                                                                                     generator=rng)))
    z = torch.cat(zs) * sigma_init if zs else torch.zeros((0, *shape[1:]))
    labels = None
    if net.label_dim:
        labels = nn.functional.one_hot(torch.tensor(classes, dtype=torch.long), net.label_dim).float()
    return z, labels


def check_class(net: nn.Module, class_idx: int | None) -> None:
    if class_idx is None:
        return
    if not net.label_dim:
        raise ValueError(f"--class {class_idx}: the network is unconditional (label_dim 0); leave --class out")
    if not 0 <= class_idx < net.label_dim:
        raise ValueError(f"--class: expected a class index in 0-{net.label_dim - 1} (label_dim {net.label_dim}), "
                         f"got {class_idx}")


@torch.no_grad()
def generate(net: nn.Module, seeds: Sequence[int], *, sigma_init: float, class_idx: int | None = None,
             batch: int = 64, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Float images in [-1, 1] (NCHW, CPU) of `seeds`, `batch` at a time, in seed order. Quantise with
    sid.metrics.quantize, as the training-time FID does."""
    check_class(net, class_idx)
    if batch < 1:
        raise ValueError(f"--batch: expected >= 1, got {batch}")
    net = net.to(device)
    for start in range(0, len(seeds), batch):
        z, labels = seed_inputs(seeds[start:start + batch], net, sigma_init, class_idx)
        sigma = torch.full((len(z),), float(sigma_init), device=device)
        labels = None if labels is None else labels.to(device)
        yield net(z.to(device), sigma, labels).float().cpu()


# ---------------------------------------------------------------------------------------------- exports (sid/commands/export.py)
FORMAT = "sid-generator-v1"  # the "format" of an export's JSON


def _number(value: Any) -> Any:
    """Exports write non-finite floats as strings so that their JSON is strict."""
    return float(value) if value in ("inf", "-inf", "nan") else value


def load_exported(path: str | Path) -> tuple[EDMPrecond, dict[str, Any]]:
    """(EDMPrecond, info) from an export: FILE.safetensors or FILE.json (the other one beside it). Reads only
    tensors and JSON; info has sigma_init, fid (the best FID), fid_detector, fid_images, kimg and config
    (preset, teacher, fid_ref)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    weights, json_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    try:
        tensors = load_file(str(weights))
        if json_path.is_file():
            meta = json.loads(json_path.read_text())
        else:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["sid"])
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a generator export (.safetensors + .json): {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: expected JSON with format {FORMAT!r}, got {str(meta)[:80]!r}")
    kwargs = meta.get("init_kwargs")
    kwargs = {k: _number(v) for k, v in kwargs.items()} if isinstance(kwargs, dict) else kwargs
    net = build_checked(kwargs, tensors, weights)
    info = dict(sigma_init=meta.get("sigma_init"), fid=_number(meta.get("best_fid")),
                fid_detector=meta.get("fid_detector"), fid_images=meta.get("fid_images"), kimg=meta.get("kimg"),
                config={k: meta.get(k) for k in ("preset", "teacher", "fid_detector", "fid_ref", "sigma_init")})
    return net.float().eval().requires_grad_(False), info
