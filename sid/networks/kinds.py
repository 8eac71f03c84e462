"""The kinds of network this project saves, one name each: the `kind` recorded in a network's init_kwargs
(sid.networks.build dispatches on it)."""

EDM_KIND = "edm"            # EDMPrecond (precond.py): its init_kwargs carry no kind
VP_KIND = "diffusers-vp"    # VPDenoiser (vp.py): a diffusers UNet2DModel + discrete-time VP schedule
FACTORY_KIND = "factory"    # FactoryDenoiser (factory.py): the user's own network, made by a factory they name
KINDS = (EDM_KIND, VP_KIND, FACTORY_KIND)
