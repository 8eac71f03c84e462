"""A denoiser made by the user's own code: `module:function` or `path/to/file.py:function`, called with no arguments.

The code runs only because the user named it (a `--teacher` or `--factory` value they typed); a saved file records the
factory's name but never makes a loader run it (sid.networks.build refuses a recorded factory that was not named
again). The object returned must be an `nn.Module` with `D(x, sigma, class_labels)` in EDM's convention (the x0 it
predicts, same shape as x) and the ints `img_resolution`, `img_channels` and `label_dim`; one probe call checks it.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sid.networks.kinds import FACTORY_KIND

SPEC = re.compile(r"(?P<module>[A-Za-z_][\w.]*|.+\.py):(?P<function>[A-Za-z_]\w*)")  # module:function, file.py:function


def is_factory_spec(spec: str) -> bool:
    return SPEC.fullmatch(spec) is not None


def _module(name: str) -> Any:
    """The module of a factory spec: a file path ending in .py (loaded under a private name) or an importable name."""
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"no such file {name}")
        spec = importlib.util.spec_from_file_location(f"sid_factory_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)


def call_factory(spec: str) -> nn.Module:
    """The denoiser `spec` makes, checked (check_denoiser). Every failure is one ValueError naming the factory."""
    match = SPEC.fullmatch(spec)
    if match is None:
        raise ValueError(f"{spec!r} is not a factory: expected module:function or path/to/file.py:function")
    try:
        module = _module(match["module"])
    except ValueError as exc:
        raise ValueError(f"factory {spec}: {exc}") from None
    except Exception as exc:  # the user's module: any import-time error is theirs, reported in one line
        raise ValueError(f"factory {spec}: cannot import {match['module']} ({type(exc).__name__}: {exc})") from None
    function = getattr(module, match["function"], None)
    if not callable(function):
        raise ValueError(f"factory {spec}: {match['module']} has no function {match['function']!r}")
    try:
        net = function()
    except Exception as exc:  # the user's code
        raise ValueError(f"factory {spec} raised {type(exc).__name__}: {exc}") from None
    check_denoiser(net, f"factory {spec}")
    return net


def check_denoiser(net: Any, what: str) -> None:
    """ValueError unless `net` is an nn.Module with int img_resolution, img_channels, label_dim and a D(x, sigma,
    class_labels) that maps two images to two finite images of the same shape."""
    if not isinstance(net, nn.Module):
        raise ValueError(f"{what} returned a {type(net).__name__}, not a torch.nn.Module denoiser")
    for name in ("img_resolution", "img_channels", "label_dim"):
        value = getattr(net, name, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "label_dim" else 1):
            raise ValueError(f"{what}: the denoiser needs an int attribute {name} "
                             f"({'>= 0' if name == 'label_dim' else '>= 1'}), found {value!r}")
    shape = (2, net.img_channels, net.img_resolution, net.img_resolution)
    labels = torch.eye(net.label_dim)[:1].expand(2, -1) if net.label_dim else None
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            out = net(torch.zeros(shape, device=device), torch.ones(2, device=device),
                      None if labels is None else labels.to(device))
    except Exception as exc:  # the user's forward
        raise ValueError(f"{what}: D(x, sigma, class_labels) failed on x of shape {list(shape)} "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
        found = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{what}: D(x, sigma, class_labels) must return x's shape {list(shape)}, returned {found}")


class FactoryDenoiser(nn.Module):
    """The user's denoiser `net` with what SiD needs around it: init_kwargs that name its factory, augment_dim 0.

    SiD copies it as it copies any teacher (type(net)(**init_kwargs), then the weights): each copy calls the factory
    again. The run's dropout and fp16 mode do not reach the user's network (they are accepted and ignored)."""

    def __init__(self, factory: str,                  # module:function or path/to/file.py:function
                 dropout: float | None = None,        # ignored: the user's network keeps its own
                 use_fp16: bool = False,              # ignored: the user's network keeps its own precision
                 kind: str = FACTORY_KIND,            # the network kind, recorded with the weights
                 *, net: nn.Module | None = None) -> None:  # the factory's result, when already made
        super().__init__()
        if net is None:
            net = call_factory(factory)
        self.net = net
        self.img_resolution, self.img_channels = int(net.img_resolution), int(net.img_channels)
        self.label_dim, self.augment_dim = int(net.label_dim), 0
        self.sigma_min = float(getattr(net, "sigma_min", 0.0))
        self.sigma_max = float(getattr(net, "sigma_max", float("inf")))
        self.init_kwargs = dict(factory=factory, kind=kind)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma) of the user's network, in float32 (augment labels are not passed: it has no such input)."""
        return self.net(x, sigma, class_labels).to(torch.float32)
