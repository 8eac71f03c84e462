"""EDM/SiD network-snapshot pickles made offline as EDM's persistence protocol writes them (@persistent_class), with
a booby-trapped module source: the tests of the safe loader (sid.checkpoints) and of the commands that read such
files build them here.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sid.networks.precond import EDMPrecond

SONG = dict(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet", model_channels=16,
            channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.13, augment_dim=9)
ADM = dict(img_resolution=8, img_channels=1, label_dim=10, model_type="DhariwalUNet", model_channels=64,
           channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.1)


class EasyDict(dict):
    """dnnlib.util.EasyDict as EDM's dataset_kwargs use it."""


EasyDict.__module__ = "dnnlib.util"


class Persistent:
    """An object EDM would pickle through torch_utils.persistence (e.g. its EDMLoss) with a given state."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state


class EDMPickler(pickle.Pickler):
    """Pickles sid.networks modules the way EDM's @persistent_class does: a call _reconstruct_persistent_obj(meta)
    with the (here: booby-trapped) module source, the object's __dict__ and its _init_args/_init_kwargs."""

    def __init__(self, file, module_src: str, top_kwargs: dict | None = None):
        super().__init__(file)
        self.module_src, self.top_kwargs = module_src, top_kwargs

    def reducer_override(self, obj):
        if isinstance(obj, Persistent):
            return self.persistent(obj.class_name, obj.state)
        if isinstance(obj, torch.nn.Module) and type(obj).__module__.startswith("sid.networks"):
            # EDM attributes such as skip_scale are numpy scalars: exercise that path too.
            state = {k: np.float64(v) if type(v) is float else v for k, v in obj.__dict__.items()}
            kwargs = state.pop("init_kwargs", None)
            if isinstance(obj, EDMPrecond) and self.top_kwargs is not None:
                kwargs = self.top_kwargs
            return self.persistent(type(obj).__name__, dict(state, _init_args=(), _init_kwargs=kwargs))
        return NotImplemented

    def persistent(self, class_name: str, state: dict):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=class_name, state=state)
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,)


@contextlib.contextmanager
def edm_code_modules():
    """Fake torch_utils.persistence and dnnlib.util, in sys.modules only while pickling (as on EDM's machines)."""
    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the loader must never call EDM's reconstruct function")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    modules = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
               "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in modules:
            del sys.modules[name]


def dump(path: Path, data: Any, marker: Path, top_kwargs: dict | None = None) -> Path:
    """Pickle `data` as EDM would, with a module source that creates `marker` if any code of the file runs."""
    with edm_code_modules(), open(path, "wb") as f:
        EDMPickler(f, f"open({str(marker)!r}, 'w').close()\n", top_kwargs).dump(data)
    return path


def random_net(config: dict) -> EDMPrecond:
    """An EDMPrecond of `config` with every tensor N(0, 0.3^2) (seed 0): outputs that tell two loads apart."""
    torch.manual_seed(0)
    net = EDMPrecond(**config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net.requires_grad_(False)


def edm_snapshot(net: EDMPrecond) -> dict:
    """A network-snapshot-*.pkl's contents as EDM's training loop writes them, with `net` as its ema."""
    dataset_kwargs = EasyDict(class_name="training.dataset.ImageFolderDataset", path="cifar10.zip")
    return dict(ema=net, augment_pipe=None, dataset_kwargs=dataset_kwargs,
                loss_fn=Persistent("EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5)))

