"""One constructor for every kind of network this project saves (sid.networks.kinds): the `kind` in its init_kwargs
says which class: EDMPrecond (none), VPDenoiser (diffusers-vp) or FactoryDenoiser (factory).

`build_network(init_kwargs)` is what every loader calls (network files, saved generators, training states), so a
generator of any kind saves and loads without pickles.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sid.networks.factory import FactoryDenoiser
from sid.networks.kinds import EDM_KIND, FACTORY_KIND, KINDS, VP_KIND
from sid.networks.precond import EDMPrecond


def network_kind(init_kwargs: dict[str, Any]) -> str:
    return str(init_kwargs.get("kind", EDM_KIND))


def build_network(init_kwargs: dict[str, Any], *, factory: str | None = None) -> nn.Module:
    """The network `init_kwargs` describe, freshly initialised. A factory-made network is rebuilt only with
    `factory` (module:function) named by the user: a recorded name is never run. ValueError for an unknown kind."""
    kind = network_kind(init_kwargs)
    if kind == EDM_KIND:
        return EDMPrecond(**init_kwargs)
    if kind == VP_KIND:
        from sid.networks.vp import VPDenoiser, check_unet_config  # noqa: PLC0415 (imports diffusers: VP only)

        if not isinstance(init_kwargs.get("unet"), dict):
            raise ValueError("the recorded VP arguments hold no UNet config")
        check_unet_config(init_kwargs["unet"], "the recorded VP arguments")  # the architecture gate, as from a folder
        return VPDenoiser(**init_kwargs)
    if kind == FACTORY_KIND:
        if not factory:
            raise ValueError(f"this network was made by the factory {init_kwargs.get('factory')!r}; a saved file "
                             f"never runs code, so name the factory again (--factory MODULE:FUNCTION) to rebuild it")
        return FactoryDenoiser(**{**init_kwargs, "factory": factory})
    raise ValueError(f"unknown network kind {kind!r}; known: {', '.join(KINDS)}")
