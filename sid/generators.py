"""One-step generators: load one from wherever it lives, and sample it image by image from seeds.

`load_generator(source)` resolves a run folder (best.pt, else generator.pt, else its newest snapshot), any saved
generator of this project (sid.saved: a snapshot `generator-<kimg>.pt`, best.pt, generator.pt, a post-hoc EMA
profile, a training checkpoint.pt, an export .safetensors/.json), an official SiD/EDM `network-snapshot-*.pkl` (path
or URL, read by the code-free loader sid.checkpoints.load_edm_pickle, which returns the EDMPrecond under 'ema'), or
a teacher spec (sid.teachers: 'digits', 'edm:<name>', 'diffusers:PATH', ...: the generator SiD starts from). Any of
these files or folders may be on the Hugging Face Hub: `hf://ORG/REPO[/PATH][@REVISION]` (sid.hub), e.g. a repository
`sid export` + `hf upload` made.

Generation follows the official one-step sampler: z = sigma_init * randn, x = G(z, sigma_init, class one-hot), with z
and the random class of image i drawn from torch.Generator(seed i) alone, so batching, sharding and device do not
change which image a seed gives. That generator is a CPU one (rng 'sid'): the same images on any machine. The official
generate_onestep.py draws from a CUDA generator per seed instead (rng 'official', official_inputs), whose numbers only
a CUDA device gives: the images of its seeds, reproduced where one exists.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from sid import hub
from sid.assets import AssetError, is_url
from sid.checkpoints import CheckpointError
from sid.files import EXPORT_FILE, RUN_FILES, SNAPSHOT_PATTERN, SNAPSHOTS
from sid.networks.precond import architecture_difference
from sid.saved import EXPORT_SUFFIXES, SavedGenerator
from sid.teachers import TEACHER_FORMS, load_teacher, teacher_kind

MAX_SEED = 2**32 - 1              # the seed range of EDM's and SiD's generate scripts
# Where each seed's latents come from: 'sid', a CPU torch.Generator (every device gives the same images); 'official',
# a torch.Generator on the CUDA device as the official generate_onestep.py (its images, on CUDA only).
RNGS = ("sid", "official")
# The --factory flag of sid generate / evaluate / export.
FACTORY_HELP = ("the module:function (or file.py:function) that made the teacher of a factory-made generator: "
                "its code runs to rebuild it (a file's recorded name never does)")


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


# ---------------------------------------------------------------------------------------------- loading
def generator_file(source: str | Path) -> str:
    """The file a generator source names: a run folder's best.pt, else generator.pt, else its newest snapshot (no
    finite FD yet), else an export's generator.safetensors (an uploaded export: a Hub repository); anything else as
    given. ValueError for a folder that is none of these."""
    text = str(source)
    path = Path(text)
    if is_url(text) or not path.is_dir():
        return text
    found = next((path / name for name in RUN_FILES if (path / name).is_file()), None)
    found = found or max((path / SNAPSHOTS).glob(SNAPSHOT_PATTERN), default=None)
    exported = path / Path(EXPORT_FILE).name
    found = found or (exported if exported.is_file() else None)
    if found is None:
        raise ValueError(f"{path}: a folder but not a run folder (expected {' or '.join(RUN_FILES)}, "
                         f"{SNAPSHOTS}/{SNAPSHOT_PATTERN} or an export's {exported.name} in it)")
    return str(found)


def load_generator(source: str | Path, *, factory: str | None = None) -> tuple[nn.Module, SavedGenerator]:
    """(G in eval mode, float32, CPU, frozen; what is known about it) for any generator source (see the module doc).
    `factory`: the module:function a factory-made generator is rebuilt with, named by the user (a file's recorded
    name never runs). The SavedGenerator's `source` is the file read (or the name); a pickle or teacher spec says
    nothing beyond its weights (sigma_init, config, fid: None); for an hf:// source it is the spec. Every failure is
    a ValueError naming the source."""
    if hub.is_hub(str(source)):
        try:
            local = hub.resolve(str(source))  # then read like the local file or folder it now is
        except AssetError as exc:
            raise ValueError(str(exc)) from exc
        net, saved = _load_local(local, factory)
        return net, dataclasses.replace(saved, source=str(source))
    return _load_local(source, factory)


def _load_local(source: str | Path, factory: str | None) -> tuple[nn.Module, SavedGenerator]:
    text = generator_file(source)
    if text.endswith((".pt", *EXPORT_SUFFIXES)) and not is_url(text):
        saved = SavedGenerator.load(text)
        return saved.network(factory=factory), saved
    # EDM/SiD pickle (path or URL), or a teacher spec: the teacher-initialised generator
    if teacher_kind(text) is None:
        raise ValueError(f"{text}: no such file or folder; expected a run folder, a .pt snapshot, "
                         f"a .safetensors export, a network-snapshot .pkl (path or URL) or a teacher "
                         f"({'; '.join(TEACHER_FORMS)})")
    try:
        net = load_teacher(text).float().eval().requires_grad_(False)
    except (CheckpointError, OSError) as exc:
        raise ValueError(str(exc)) from exc
    return net, SavedGenerator.of(net, source=text)


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


def official_inputs(seeds: Sequence[int], net: nn.Module, sigma_init: float, class_idx: int | None = None, *,
                    device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(z float64 [N, C, R, R], one-hot labels float32 [N, label_dim] or None) on `device`, drawn as the official
    generate_onestep.py draws them: one torch.Generator(device) per seed, seeded with seed mod 2^32; from each its
    image's standard normal latents (float32), then, for a conditional network, its class (randint(label_dim) of
    shape []: drawn even when class_idx fixes the class, after the latents, so it changes nothing); z = sigma_init *
    latents in float64. On a CUDA device these are the official images' inputs; a CPU device gives the same call
    order on the CPU generator (what a test without CUDA can check)."""
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    generators = [torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]
    latents = torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])
    labels = None
    if net.label_dim:
        classes = torch.stack([torch.randint(net.label_dim, size=[], generator=g, device=device) for g in generators])
        labels = torch.eye(net.label_dim, device=device)[classes]
        if class_idx is not None:
            labels[:, :] = 0
            labels[:, class_idx] = 1
    return sigma_init * latents.to(torch.float64), labels


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
             batch: int = 64, device: torch.device | str = "cpu",
             rng: str = "sid") -> Iterator[torch.Tensor]:  # of RNGS: where each seed's latents come from
    """Float images in [-1, 1] (NCHW, CPU) of `seeds`, `batch` at a time, in seed order. Quantise with
    sid.metrics.quantize, as the training-time FID does (rng 'official': in float64, as generate_onestep.py)."""
    check_class(net, class_idx)
    if batch < 1:
        raise ValueError(f"--batch: expected >= 1, got {batch}")
    check_rng(rng, device)
    net = net.to(device)
    for start in range(0, len(seeds), batch):
        part = seeds[start:start + batch]
        if rng == "official":
            z, labels = official_inputs(part, net, sigma_init, class_idx, device=device)
        else:
            z, labels = seed_inputs(part, net, sigma_init, class_idx)
        sigma = torch.full((len(z),), float(sigma_init), device=device)
        labels = None if labels is None else labels.to(device)
        yield net(z.to(device), sigma, labels).float().cpu()


def check_rng(rng: str, device: torch.device | str) -> None:
    """ValueError (one line, with the reason) for an unknown rng, or rng 'official' on a device that is not CUDA."""
    if rng not in RNGS:
        raise ValueError(f"--rng: expected one of {', '.join(RNGS)}, got {rng!r}")
    if rng == "official" and torch.device(device).type != "cuda":
        raise ValueError(f"--rng official needs a CUDA device (got {device}): the official generate_onestep.py draws "
                         f"each seed's latents from a CUDA generator, whose numbers a CPU generator does not give; "
                         f"--rng sid gives the same images on every device")
