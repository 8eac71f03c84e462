"""Read NVIDIA EDM `network-snapshot-*.pkl` files and SiD snapshots without executing the code embedded in them.

EDM pickles its networks with `torch_utils.persistence`: every network object reduces to a call
`_reconstruct_persistent_obj(meta)` whose meta carries the full source of the defining module, which a normal
`pickle.load` would `exec`. Here a restricted unpickler (sid/safe_pickle.py) allows only a fixed list of globals
(tensor rebuilding, plain containers, numpy scalars) with checked arguments and maps that call to a `Record` (class
name + state), so loading runs no code from the file and changes nothing in the process. Our own `EDMPrecond` is then
built from the recorded constructor arguments (`_init_kwargs`, within ARCHITECTURE_LIMITS) and the weights are loaded
with strict=True. Names such as 'edm:cifar10-uncond' resolve through a registry passed in by the caller
(sid.teachers.EDM_TEACHERS / EDM_FID_REFS) to NVIDIA's URLs and pinned sha256 digests, fetched by sid.assets.fetch;
`hf://` specs are read through the Hugging Face Hub's cache (sid.hub.resolve)."""

import os
import reprlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sid import hub
from sid.assets import Asset, AssetError, fetch
from sid.networks.precond import EDMPrecond
from sid.safe_pickle import CheckpointError, Record, SnapshotUnpickler

__all__ = ["CheckpointError", "Record", "ARCHITECTURE_LIMITS", "fetch_checkpoint", "fetch_fid_ref", "read_snapshot",
           "load_edm_pickle", "check_architecture", "check_weights", "build_checked"]

# Bounds on the recorded constructor arguments, checked before anything is built. They admit every EDM/EDM2 network
# (largest: EDM2-XXL, 448 channels x 4 = 1792 per level, 3 blocks, 64x64 latents; ImageNet ADM: 192 x 4, 1000
# classes) with room to spare, and refuse sizes that would take minutes or gigabytes to build.
ARCHITECTURE_LIMITS = dict(
    img_resolution=1024,      # pixels per side
    img_channels=16,
    label_dim=100_000,        # classes
    augment_dim=64,
    widest_level=8192,        # model_channels * max(channel_mult)
    levels=8,                 # len(channel_mult)
    num_blocks=16,            # residual blocks per level
    channel_mult_emb=16,
    attn_resolutions=16,      # entries
    resample_filter=8,        # taps (DDPM++: 2, NCSN++: 4)
    channel_mult_noise=16,
)
MAX_DEPTH = 32  # nesting of modules in 'ema' and of constructor arguments (EDM: about 6 and 2)
MAX_NODES = 100_000  # modules in 'ema', values in the constructor arguments (EDM: about 500 and 30); a crafted file
# can share one child many times at every level, which a walk would visit exponentially often
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 4, 60, 60, 12, 30


def fetch_checkpoint(source: str, registry: Mapping[str, Asset | str], what: str) -> Path:
    """Local path of `source`: a name in `registry` (e.g. 'edm:cifar10-uncond', fetched and checked against its
    pinned sha256), a local path, a URL or a Hub file (hf://ORG/REPO/PATH[@REVISION], sid.hub)."""
    sha256 = None
    if source.startswith("edm:"):
        if source not in registry:
            raise CheckpointError(f"unknown {what} name {source!r}; known names: {', '.join(registry) or 'none'}")
        asset = registry[source]
        source, sha256 = (asset, None) if isinstance(asset, str) else (asset.url, asset.sha256)
        if sha256 is None:
            print(f"sid.checkpoints: warning: no sha256 is pinned for {what} {source}; trusting the digest "
                  f"recorded at its first download", file=sys.stderr)
    try:
        path = hub.resolve(source, sha256=sha256) if hub.is_hub(source) else fetch(source, sha256=sha256)
        if not path.is_file():
            raise ValueError(f"a folder, not a file (name the {what} file in it)")
        return path
    except (OSError, AssetError, ValueError) as e:
        raise CheckpointError(f"cannot get {what} {source!r}: {e}") from e


def fetch_fid_ref(source: str, registry: Mapping[str, Asset | str] | None = None) -> Path:
    """Local path of FID reference statistics: a name in `registry` (sid.teachers.EDM_FID_REFS), a local .npz path
    or a URL."""
    return fetch_checkpoint(source, registry or {}, "FID reference statistics")


def read_snapshot(path: str | Path) -> Any:
    """Unpickle a snapshot file with the restricted unpickler; persistent objects come back as `Record`s."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                raise CheckpointError("a torch.save zip archive (a state dict or training state?), "
                                      "not an EDM/SiD network-snapshot pickle")
            f.seek(0)
            return SnapshotUnpickler(f, path.stat().st_size).load()
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: the pickle is nested too deeply for an EDM/SiD network snapshot") from None
    except Exception as e:  # unpickling bad bytes fails with almost any exception type
        cause = str(e)[:200].replace("\n", " ")
        raise CheckpointError(f"cannot unpickle {path} ({type(e).__name__}: {cause}); expected an EDM/SiD "
                              f"network-snapshot .pkl (a truncated or corrupt download?)") from e


def load_edm_pickle(source: str | Path, *, registry: Mapping[str, Asset | str] | None = None,
                    **overrides: Any) -> EDMPrecond:
    """EDM `network-snapshot-*.pkl` or SiD snapshot -> our EDMPrecond with its 'ema' weights: eval mode, float32,
    on CPU, requires_grad False. `source`: a name in `registry` (sid.teachers.EDM_TEACHERS), a local path or a URL.
    `overrides` replace recorded constructor arguments (e.g. dropout=0.05, use_fp16=True: SiD builds its networks
    from its own flags)."""
    path = fetch_checkpoint(str(source), registry or {}, "teacher")
    try:
        return _load(path, overrides)
    except RecursionError:
        raise CheckpointError(f"{path}: the snapshot is nested too deeply for an EDM/SiD network snapshot") from None


def _load(path: Path, overrides: Mapping[str, Any]) -> EDMPrecond:
    data = read_snapshot(path)
    if not (isinstance(data, dict) and "ema" in data):
        keys = sorted(k[:60] if isinstance(k, str) else _REPR.repr(k) for k in data) if isinstance(data, dict) else []
        found = (f"a dict with keys {keys[:20]}" if isinstance(data, dict)
                 else type(data).__name__)
        raise CheckpointError(f"{path}: expected an EDM/SiD network snapshot, a dict with key 'ema' (EDM also has "
                              f"loss_fn, augment_pipe, dataset_kwargs); found {found}")
    ema = data["ema"]
    if not (isinstance(ema, Record) and ema.class_name == "EDMPrecond"):
        found = ema.class_name if isinstance(ema, Record) else type(ema).__name__
        raise CheckpointError(f"{path}: unknown architecture: 'ema' is {found}; expected EDMPrecond "
                              f"(EDM preconditioning around SongUNet or DhariwalUNet)")
    kwargs = ema.state.get("_init_kwargs")
    if not isinstance(kwargs, dict) or ema.state.get("_init_args"):
        raise CheckpointError(f"{path}: the EDMPrecond in 'ema' has no recorded keyword constructor arguments "
                              f"(_init_kwargs), so its architecture is unknown")
    try:
        kwargs = {"model_type": "DhariwalUNet", **_plain(kwargs), **overrides}  # EDM's EDMPrecond default model_type
        check_limits(kwargs)
        weights = _flatten(ema, budget=[MAX_NODES])
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return build_checked(kwargs, weights, path)


def check_architecture(kwargs: Any, path: str | os.PathLike) -> EDMPrecond:
    """The one gate before a network is built from a file's constructor arguments (EDM pickles, the project's .pt
    teachers, generators, checkpoints and post-hoc EMA snapshots, safetensors exports): a dict of plain values within
    MAX_DEPTH / MAX_NODES and ARCHITECTURE_LIMITS, then built on the meta device (no memory, no initialisation).
    Returns that meta network; every failure is one CheckpointError naming `path`."""
    if not (isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)):
        raise CheckpointError(f"{path}: the recorded constructor arguments are {_REPR.repr(kwargs)}, not a dict of "
                              f"named values")
    try:
        kwargs = _plain(kwargs)
        check_limits(kwargs)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        with torch.device("meta"):
            return EDMPrecond(**kwargs)
    except Exception as e:  # odd recorded values can fail anywhere in the constructor
        raise CheckpointError(f"{path}: unknown architecture: cannot build EDMPrecond from the recorded "
                              f"arguments {_REPR.repr(kwargs)}: {e}".replace("\n", " ")) from e


def check_weights(net: torch.nn.Module, state: Any, path: str | os.PathLike, nbytes: float | None = None) -> None:
    """`state` fits `net` (check_architecture's meta network, or any network built on the meta device): plain CPU
    tensors without a zero stride whose bytes all fit in the file's `nbytes` (default: its size), so that no tensor
    stands for more weights than the file stores, with the network's names and shapes. CheckpointError naming `path`
    otherwise."""
    _check_tensors(state, path, nbytes)
    _check_fit(net, state, path)


def build_checked(kwargs: Any, state: Any, path: str | os.PathLike, nbytes: float | None = None) -> EDMPrecond:
    """The network a file describes, through the gate: its tensors (before anything is built), check_architecture,
    their names and shapes, then the weights assigned (strict): EDMPrecond in eval mode, float32, on CPU,
    requires_grad False. One CheckpointError naming `path` for every failure."""
    _check_tensors(state, path, nbytes)
    net = check_architecture(kwargs, path)
    _check_fit(net, state, path)
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, TypeError, ValueError, AttributeError) as e:
        lines = str(e).splitlines()
        raise CheckpointError(f"{path}: the weights do not fit the {net.init_kwargs.get('model_type')} built from "
                              f"the recorded arguments: {' '.join(lines[:3])[:500]}") from e
    return net.float().eval().requires_grad_(False)


def _check_tensors(state: Any, path: str | os.PathLike, nbytes: float | None) -> None:
    if not (isinstance(state, Mapping) and all(isinstance(k, str) for k in state)):
        raise CheckpointError(f"{path}: the weights are {_REPR.repr(state)}, not a dict of named tensors")
    total = 0
    for name, tensor in state.items():
        if not (type(tensor) in (torch.Tensor, torch.nn.Parameter) and tensor.device.type == "cpu"
                and tensor.layout == torch.strided):
            raise CheckpointError(f"{path}: the weight {name[:80]} is {_REPR.repr(tensor)}, not a plain CPU tensor")
        if any(st == 0 and n > 1 for n, st in zip(tensor.shape, tensor.stride())):
            raise CheckpointError(f"{path}: refusing to load: {name[:80]} of shape {list(tensor.shape)} has a zero "
                                  f"stride (one stored value standing for many weights)")
        total += tensor.numel() * tensor.element_size()
    nbytes = os.path.getsize(path) if nbytes is None else nbytes
    if total > nbytes:
        raise CheckpointError(f"{path}: refusing to load: the weights span {total:,} bytes but the file holds "
                              f"{nbytes:,}")


def _check_fit(net: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    kind = getattr(net, "init_kwargs", {}).get("model_type") or type(net).__name__
    wanted = {name: tensor.shape for name, tensor in net.state_dict().items()}
    missing, unexpected = [k for k in wanted if k not in state], [k for k in state if k not in wanted]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the weights do not fit the {kind} built from the recorded arguments: {len(missing)} missing "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), {len(unexpected)} unexpected "
            f"({', '.join(k[:60] for k in unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})")
    for name, shape in wanted.items():
        if state[name].shape != shape:
            raise CheckpointError(f"{path}: the weights do not fit the {kind} built from the recorded arguments: "
                                  f"{name} has shape {list(state[name].shape)}, the architecture {list(shape)}")


def check_limits(kwargs: Mapping[str, Any]) -> None:
    """Refuse recorded constructor arguments outside ARCHITECTURE_LIMITS (CheckpointError naming the argument)."""
    limits = ARCHITECTURE_LIMITS

    def bad(what: str, value: Any, limit: str) -> CheckpointError:
        return CheckpointError(f"refusing to load: the recorded {what} = {_REPR.repr(value)} is outside the limits "
                               f"of sid.checkpoints.ARCHITECTURE_LIMITS ({limit})")

    def integer(name: str, low: int, high: int) -> int | None:
        value = kwargs.get(name)
        if value is not None and not (type(value) is int and low <= value <= high):
            raise bad(name, value, f"an integer {low}..{high}")
        return value

    integer("img_resolution", 1, limits["img_resolution"])
    integer("img_channels", 1, limits["img_channels"])
    integer("label_dim", 0, limits["label_dim"])
    integer("augment_dim", 0, limits["augment_dim"])
    integer("num_blocks", 0, limits["num_blocks"])
    integer("channel_mult_emb", 1, limits["channel_mult_emb"])
    integer("channel_mult_noise", 1, limits["channel_mult_noise"])
    channels = integer("model_channels", 1, limits["widest_level"])
    mult = kwargs.get("channel_mult")
    if mult is not None:
        if not (isinstance(mult, (list, tuple)) and 1 <= len(mult) <= limits["levels"]
                and all(type(m) is int and m >= 1 for m in mult)):
            raise bad("channel_mult", mult, f"1..{limits['levels']} positive integers")
        if channels is not None and channels * max(mult) > limits["widest_level"]:
            raise bad("model_channels * max(channel_mult)", channels * max(mult), f"at most {limits['widest_level']}")
    taps = kwargs.get("resample_filter")
    if taps is not None and not (isinstance(taps, (list, tuple)) and 1 <= len(taps) <= limits["resample_filter"]):
        raise bad("resample_filter", taps, f"1..{limits['resample_filter']} taps")
    attn = kwargs.get("attn_resolutions")
    if attn is not None and not (isinstance(attn, (list, tuple)) and len(attn) <= limits["attn_resolutions"]):
        raise bad("attn_resolutions", attn, f"at most {limits['attn_resolutions']} entries")


def _flatten(record: Record, prefix: str = "", depth: int = 0, budget: list[int] | None = None
             ) -> dict[str, torch.Tensor]:
    """state_dict of a tree of Records, keyed as torch names it ('model.enc.32x32_block0.conv0.weight')."""
    budget = [MAX_NODES] if budget is None else budget
    budget[0] -= 1
    if depth > MAX_DEPTH or budget[0] < 0:
        raise CheckpointError(f"malformed snapshot: modules nested deeper than {MAX_DEPTH} levels or more than "
                              f"{MAX_NODES} of them")
    state = record.state
    if not isinstance(state, Mapping):
        raise CheckpointError(f"malformed snapshot: the state of {prefix or 'ema'} is a {type(state).__name__}")
    skip = state.get("_non_persistent_buffers_set") or set()
    tensors = {**{k: v for k, v in (state.get("_parameters") or {}).items() if v is not None},
               **{k: v for k, v in (state.get("_buffers") or {}).items() if v is not None and k not in skip}}
    out = {}
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"malformed snapshot: {prefix}{name} is a {type(value).__name__}, not a tensor")
        out[prefix + str(name)] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, Record):
            raise CheckpointError(f"malformed snapshot: module {prefix}{name} is a {type(child).__name__}")
        out.update(_flatten(child, f"{prefix}{name}.", depth + 1, budget))
    return out


def _plain(value: Any, depth: int = 0, budget: list[int] | None = None) -> Any:
    """Constructor arguments as plain Python, so init_kwargs stays JSON-friendly (numpy scalars are already
    numbers: sid.safe_pickle decodes them)."""
    if depth > MAX_DEPTH:
        raise CheckpointError(f"refusing to load: constructor arguments nested deeper than {MAX_DEPTH} levels")
    budget = [MAX_NODES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise CheckpointError(f"refusing to load: constructor arguments with more than {MAX_NODES} values")
    if isinstance(value, dict):
        return {k: _plain(v, depth + 1, budget) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v, depth + 1, budget) for v in value)
    return value
