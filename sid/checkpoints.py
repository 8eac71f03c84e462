"""Read NVIDIA EDM `network-snapshot-*.pkl` files and SiD snapshots without executing the code embedded in them.

EDM pickles its networks with `torch_utils.persistence`: every network object reduces to a call
`_reconstruct_persistent_obj(meta)` whose meta carries the full source of the defining module, which a normal
`pickle.load` would `exec`. Here a restricted unpickler allows only a fixed list of globals (tensor rebuilding, plain
containers, numpy scalars/arrays) and maps that call to a `Record` (class name + state), so loading runs no code from
the file. Our own `EDMPrecond` is then built from the recorded constructor arguments (`_init_kwargs`) and the weights
are loaded with strict=True. Names such as 'edm:cifar10-uncond' resolve to NVIDIA's URLs through sid.assets.fetch."""

import collections
import io
import pickle
import types
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .assets import AssetError, fetch
from .networks import EDMPrecond

_EDM_CDN = "https://nvlabs-fi-cdn.nvidia.com/edm"
EDM_TEACHERS: dict[str, str] = {  # pretrained EDM denoisers SiD distils ('-vp' = DDPM++, '-adm' = ADM)
    "edm:cifar10-uncond": f"{_EDM_CDN}/pretrained/edm-cifar10-32x32-uncond-vp.pkl",
    "edm:cifar10-cond": f"{_EDM_CDN}/pretrained/edm-cifar10-32x32-cond-vp.pkl",
    "edm:imagenet64-cond": f"{_EDM_CDN}/pretrained/edm-imagenet-64x64-cond-adm.pkl",
    "edm:ffhq64": f"{_EDM_CDN}/pretrained/edm-ffhq-64x64-uncond-vp.pkl",
    "edm:afhqv2-64": f"{_EDM_CDN}/pretrained/edm-afhqv2-64x64-uncond-vp.pkl",
}
EDM_FID_REFS: dict[str, str] = {  # Inception reference statistics (npz with mu, sigma) of the training sets
    "edm:cifar10-32x32": f"{_EDM_CDN}/fid-refs/cifar10-32x32.npz",
    "edm:imagenet-64x64": f"{_EDM_CDN}/fid-refs/imagenet-64x64.npz",
    "edm:ffhq-64x64": f"{_EDM_CDN}/fid-refs/ffhq-64x64.npz",
    "edm:afhqv2-64x64": f"{_EDM_CDN}/fid-refs/afhqv2-64x64.npz",
}


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe, or not a network snapshot we can load."""


class Record:
    """Stand-in for an object in the pickle: its class name and state (__dict__); none of its code runs."""
    class_name = ""
    state: Mapping = types.MappingProxyType({})  # until pickle's BUILD sets it

    def __init__(self, class_name: str = "", state: dict | None = None):
        self.class_name = class_name or self.class_name
        self.state = {} if state is None else state

    def __setstate__(self, state: dict) -> None:  # pickle BUILD of a plain torch.nn container
        self.state = state


def _reconstruct_persistent_obj(meta: dict) -> Record:
    """Replaces torch_utils.persistence._reconstruct_persistent_obj: keeps the state, never execs meta['module_src']."""
    if not (isinstance(meta, dict) and meta.get("type") == "class" and isinstance(meta.get("class_name"), str)
            and isinstance(meta.get("state"), dict)):
        raise CheckpointError("malformed torch_utils.persistence object: expected meta with type='class', "
                              "class_name and state")
    return Record(meta["class_name"], meta["state"])


def _load_storage(data: bytes) -> torch.storage.TypedStorage:
    """Replaces torch.storage._load_from_bytes: the nested legacy torch.save blob is read with weights_only=True."""
    return torch.load(io.BytesIO(data), weights_only=True)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_storage,
        ("torch", "Size"): torch.Size,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("dnnlib.util", "EasyDict"): dict,
        ("dnnlib", "EasyDict"): dict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1 and numpy 2 spellings
        allowed[module, "scalar"] = np._core.multiarray.scalar
        allowed[module, "_reconstruct"] = np._core.multiarray._reconstruct
    for name in ("ModuleDict", "ModuleList", "Sequential"):  # EDM's enc/dec are plain ModuleDicts
        allowed["torch.nn.modules.container", name] = type(name, (Record,), {"class_name": name})
    allowed.update({("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)})
    return allowed


_ALLOWED = _allowed_globals()


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise CheckpointError(f"refusing to load: the pickle names the global '{module}.{name}', which is not "
                                  f"on the allow-list of an EDM/SiD network snapshot (nothing was executed)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("refusing to load: the pickle uses persistent ids (a torch.save file?), "
                              "not an EDM/SiD network snapshot")


def fetch_checkpoint(source: str, registry: Mapping[str, str], what: str) -> Path:
    """Local path of `source`: a name in `registry` (e.g. 'edm:cifar10-uncond'), a local path or a URL."""
    if source.startswith("edm:"):
        if source not in registry:
            raise CheckpointError(f"unknown {what} name {source!r}; known names: {', '.join(registry)}")
        source = registry[source]
    try:
        return fetch(source)
    except (OSError, AssetError, ValueError) as e:
        raise CheckpointError(f"cannot get {what} {source!r}: {e}") from e


def fetch_fid_ref(source: str) -> Path:
    """Local path of FID reference statistics: a name in EDM_FID_REFS, a local .npz path or a URL."""
    return fetch_checkpoint(source, EDM_FID_REFS, "FID reference statistics")


def read_snapshot(path: str | Path) -> Any:
    """Unpickle a snapshot file with the restricted unpickler; persistent objects come back as `Record`s."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                raise CheckpointError("a torch.save zip archive (a state dict or training state?), "
                                      "not an EDM/SiD network-snapshot pickle")
            f.seek(0)
            return _SafeUnpickler(f).load()
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # unpickling bad bytes fails with almost any exception type
        raise CheckpointError(f"cannot unpickle {path} ({type(e).__name__}: {e}); expected an EDM/SiD "
                              f"network-snapshot .pkl (a truncated or corrupt download?)") from e


def load_edm_pickle(source: str | Path, **overrides: Any) -> EDMPrecond:
    """EDM `network-snapshot-*.pkl` or SiD snapshot -> our EDMPrecond with its 'ema' weights: eval mode, float32,
    on CPU, requires_grad False. `source`: an EDM_TEACHERS name, a local path or a URL. `overrides` replace recorded
    constructor arguments (e.g. dropout=0.05, use_fp16=True: SiD builds its networks from its own flags)."""
    path = fetch_checkpoint(str(source), EDM_TEACHERS, "teacher")
    data = read_snapshot(path)
    if not (isinstance(data, dict) and "ema" in data):
        found = f"a dict with keys {sorted(map(str, data))}" if isinstance(data, dict) else type(data).__name__
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
    kwargs = {"model_type": "DhariwalUNet", **_plain(kwargs), **overrides}  # EDM's EDMPrecond default model_type
    try:
        with torch.device("meta"):  # no time spent on random init: every tensor is replaced below
            net = EDMPrecond(**kwargs)
    except Exception as e:  # odd recorded values can fail anywhere in the constructor
        raise CheckpointError(f"{path}: unknown architecture: cannot build EDMPrecond from the recorded "
                              f"arguments {kwargs}: {e}") from e
    try:
        net.load_state_dict(_flatten(ema), strict=True, assign=True)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (RuntimeError, TypeError, ValueError, AttributeError) as e:
        lines = str(e).splitlines()
        more = f"\n\t... ({len(lines) - 6} more)" if len(lines) > 6 else ""
        raise CheckpointError(f"{path}: the weights do not fit the {kwargs['model_type']} built from the recorded "
                              f"arguments: " + "\n".join(lines[:6]) + more) from e
    return net.float().eval().requires_grad_(False)


def _flatten(record: Record, prefix: str = "") -> dict[str, torch.Tensor]:
    """state_dict of a tree of Records, keyed as torch names it ('model.enc.32x32_block0.conv0.weight')."""
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
        out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, Record):
            raise CheckpointError(f"malformed snapshot: module {prefix}{name} is a {type(child).__name__}")
        out.update(_flatten(child, f"{prefix}{name}."))
    return out


def _plain(value: Any) -> Any:
    """Constructor arguments as plain Python (numpy scalars -> numbers), so init_kwargs stays JSON-friendly."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value
