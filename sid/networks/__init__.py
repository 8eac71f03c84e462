"""EDM-compatible networks: EDMPrecond around SongUNet (DDPM++/NCSN++) or DhariwalUNet (ADM), with EDM's
parameter names so EDM checkpoints load with strict=True. Leaves: they import nothing of ours but their layers."""

from .dhariwal import DhariwalUNet
from .precond import MODEL_TYPES, EDMPrecond
from .songunet import SongUNet

__all__ = ["EDMPrecond", "SongUNet", "DhariwalUNet", "MODEL_TYPES"]
