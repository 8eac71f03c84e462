"""The saved generator: one type, one save and one load for every file that holds a generator's weights.

Run snapshots (`snapshots/generator-<kimg>.pt`), `best.pt`, post-hoc EMA profiles (`phema/<sigma_rel>-<kimg>.pt`) and
exports (`sid export`: FILE.safetensors + FILE.json) are written by `SavedGenerator.save` and read by
`SavedGenerator.load`, which also reads the files of earlier versions: `generator.pt` of run folders from before
snapshots, profiles that say `step` for `iteration`, exports without `config`, and a training `checkpoint.pt` (its
G_ema). A `.pt` file holds plain data only (a dict of tensors, numbers, strings: read with weights_only=True); an
export holds tensors and strict JSON, readable without this package.

`sigma_init` is read from the file's one `sigma_init` key (a checkpoint's from its config); a file that does not say
samples at DistillConfig's default (`sampling_sigma_init`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from sid.checkpoints import build_checked, check_weights
from sid.config import DistillConfig
from sid.files import save_torch_atomic, write_bytes_atomic, write_text_atomic
from sid.networks.build import build_network, network_kind
from sid.networks.kinds import EDM_KIND, FACTORY_KIND
from sid.safe_pickle import load_plain

FORMAT = "sid-generator-v1"  # the "format" of an export's JSON
EXPORT_SUFFIXES = (".safetensors", ".json")
# What an export's JSON repeats of its config at the top level (exports from before `config` have only these).
EXPORT_CONFIG_KEYS = ("preset", "teacher", "fid_detector", "fid_ref", "sigma_init")
NOT_SAVED = ("source", "file_bytes")  # fields that describe where the weights were read, not the generator


@dataclass(frozen=True)
class SavedGenerator:
    """A generator's weights and what is known about them. None: the file does not say."""

    init_kwargs: dict[str, Any]              # the network's constructor arguments, with its kind (sid.networks.build)
    state_dict: dict[str, torch.Tensor]      # its weights (CPU)
    sigma_init: float | None = None          # the noise level it samples at (None: sampling_sigma_init's default)
    config: dict[str, Any] | None = None     # DistillConfig.to_dict() of its run (an older export: a few fields)
    kimg: float | None = None                # training progress of these weights
    iteration: int | None = None
    fid: float | None = None                 # the Frechet distance of their evaluation (an export: best_fid)
    fid_detector: str | None = None
    fid_images: int | None = None
    sigma_rel: float | None = None           # a post-hoc EMA profile's length (sid/phema.py)
    gamma: float | None = None               # and its exponent
    source: str = ""                         # the file (or name) it was read from; an export records it as origin
    file_bytes: int | None = None            # size of the file the weights were read from (None: made in memory)

    @classmethod
    def of(cls, net: torch.nn.Module, **fields: Any) -> SavedGenerator:
        """The weights of `net` (a network of any kind of sid.networks.build; detached CPU copies) with the given
        fields."""
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        return cls(init_kwargs=dict(net.init_kwargs), state_dict=state, **fields)

    @property
    def sampling_sigma_init(self) -> float:
        """The noise level to sample at: the file's sigma_init, else DistillConfig's default."""
        return float(self.sigma_init) if self.sigma_init is not None else DistillConfig.sigma_init

    def network(self, factory: str | None = None) -> nn.Module:
        """The network (eval mode, float32, CPU, frozen) of the recorded kind (sid.networks.build), built around these
        tensors without a random init first. An EDMPrecond goes through the architecture gate
        (sid.checkpoints.build_checked: limits, plain tensors backed by the file's bytes, a meta-device build, names
        and shapes); another kind is built on the meta device and its weights checked (check_weights) before they are
        assigned. A factory-made generator needs `factory` (module:function), named by the user: the name in the
        file is never run. One ValueError naming the source otherwise."""
        nbytes = math.inf if self.file_bytes is None else self.file_bytes  # weights made in memory: no file bounds them
        source = self.source or "generator"
        kind = network_kind(self.init_kwargs)
        if kind == EDM_KIND:
            return build_checked(self.init_kwargs, self.state_dict, source, nbytes=nbytes)
        try:
            # every tensor is assigned below; the user's factory runs as usual (its buffers must be real)
            with torch.device("meta") if kind != FACTORY_KIND else contextlib.nullcontext():
                net = build_network(self.init_kwargs, factory=factory)
            check_weights(net, self.state_dict, source, nbytes=nbytes)
            net.load_state_dict(self.state_dict, strict=True, assign=True)
        except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as exc:
            raise ValueError(f"{source}: weights do not fit the recorded init_kwargs "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        return net.float().eval().requires_grad_(False)

    # ------------------------------------------------------------------------------------------ save
    def save(self, path: str | os.PathLike) -> Path:
        """Write the generator to `path`, atomically: FILE.pt as plain data (every field that is not None), or
        FILE.safetensors (float32 weights) and FILE.json beside it (export_json; also in the safetensors header
        under "sid"). Returns `path`."""
        path = Path(path)
        if path.suffix == ".safetensors":
            text = json.dumps(self.export_json(), indent=2, allow_nan=False)
            tensors = {k: (v.float() if v.is_floating_point() else v).contiguous().clone()
                       for k, v in self.state_dict.items()}
            write_bytes_atomic(path, save(tensors, metadata={"sid": text}))
            write_text_atomic(path.with_suffix(".json"), text + "\n")
            return path
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in NOT_SAVED}
        return save_torch_atomic({k: v for k, v in fields.items() if v is not None}, path)

    def export_json(self) -> dict[str, Any]:
        """The JSON of an export: format, constructor arguments, sampling settings, the score that picked these
        weights and the run's config. Strict JSON: non-finite floats as "inf"/"-inf"/"nan", tuples as lists."""
        config = self.config or {}
        return _strict(dict(
            format=FORMAT, init_kwargs=dict(self.init_kwargs), sigma_init=self.sigma_init,
            preset=config.get("preset"), teacher=config.get("teacher"),
            fid_detector=self.fid_detector, fid_ref=config.get("fid_ref"),
            best_fid=self.fid, fid_images=self.fid_images, kimg=self.kimg, source=self.source or None,
            iteration=self.iteration, config=self.config,
        ))

    # ------------------------------------------------------------------------------------------ load
    @classmethod
    def load(cls, path: str | os.PathLike) -> SavedGenerator:
        """Any generator file of this project (see the module doc). Every failure is one ValueError naming the
        file; the weights are checked against init_kwargs by network()."""
        path = Path(path)
        if path.suffix in EXPORT_SUFFIXES:
            return _load_export(path)
        try:
            saved = load_plain(path, "generator file")
        except ValueError:
            raise
        except Exception as exc:  # unpickling torn bytes fails with almost any exception type
            raise ValueError(f"{path}: not a generator file ({type(exc).__name__}: {exc})") from exc
        if isinstance(saved, dict) and "generator_ema" in saved and "generator_init_kwargs" in saved:  # checkpoint.pt
            config = saved.get("config") if isinstance(saved.get("config"), dict) else None
            saved = dict(init_kwargs=saved["generator_init_kwargs"], state_dict=saved["generator_ema"], config=config,
                         sigma_init=(config or {}).get("sigma_init"), iteration=saved.get("iteration"))
        if not (isinstance(saved, dict) and isinstance(saved.get("init_kwargs"), dict)
                and isinstance(saved.get("state_dict"), dict)):
            found = sorted(map(str, saved))[:8] if isinstance(saved, dict) else type(saved).__name__
            raise ValueError(f"{path}: not a generator file of this project (expected {{init_kwargs, state_dict, "
                             f"...}}, found {found})")
        if "iteration" not in saved and "step" in saved:  # profiles written before they were saved generators
            saved = {**saved, "iteration": saved["step"]}
        if not isinstance(saved.get("config"), dict):
            saved = {**saved, "config": None}
        known = {f.name for f in dataclasses.fields(cls)} - set(NOT_SAVED)
        return _checked(cls(**{k: v for k, v in saved.items() if k in known}, source=str(path),
                            file_bytes=os.path.getsize(path)))


def _strict(value: Any) -> Any:
    """Plain JSON values: tuples as lists, non-finite floats as strings."""
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _number(value: Any) -> Any:
    """The inverse of _strict for one value: "inf"/"-inf"/"nan" back to floats."""
    return float(value) if value in ("inf", "-inf", "nan") else value


def _load_export(path: Path) -> SavedGenerator:
    """An export: FILE.safetensors with FILE.json beside it (or the same JSON in its header). Reads only tensors
    and JSON."""
    weights, json_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    try:
        tensors = load_file(str(weights))
        if json_path.is_file():
            meta = json.loads(json_path.read_text())
        else:
            with safe_open(str(weights), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["sid"])
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a generator export (.safetensors + .json): {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("init_kwargs"), dict):
        raise ValueError(f"{path}: expected JSON with format {FORMAT!r} and init_kwargs, got {str(meta)[:80]!r}")
    if "config" in meta:  # null: the exported generator knew no config
        config = {k: _number(v) for k, v in meta["config"].items()} if isinstance(meta["config"], dict) else None
    else:  # an export from before the whole config was written
        config = {k: meta.get(k) for k in EXPORT_CONFIG_KEYS}
    return _checked(SavedGenerator(
        init_kwargs={k: _number(v) for k, v in meta["init_kwargs"].items()}, state_dict=tensors,
        sigma_init=meta.get("sigma_init"), config=config, kimg=meta.get("kimg"), iteration=meta.get("iteration"),
        fid=_number(meta.get("best_fid")), fid_detector=meta.get("fid_detector"), fid_images=meta.get("fid_images"),
        source=str(path), file_bytes=os.path.getsize(weights)))


def _checked(saved: SavedGenerator) -> SavedGenerator:
    """A loaded generator whose recorded sigma_init is a number > 0 (or absent). ValueError naming the file."""
    sigma = saved.sigma_init
    if sigma is not None and not (type(sigma) in (int, float) and 0 < sigma < math.inf):
        raise ValueError(f"{saved.source}: the recorded sigma_init {str(sigma)[:60]!r} is not a number > 0")
    return saved
