"""Teachers and reference statistics by name: 'digits' (shipped with the package), 'edm:<name>', a path or a URL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sid.networks import EDMPrecond


def load_network_file(path: str | Path) -> EDMPrecond:
    """A network saved by this project (`{init_kwargs, state_dict, ...}`, e.g. a run's generator.pt or the digits
    teacher): plain data only, loaded with weights_only=True."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = EDMPrecond(**saved["init_kwargs"])
        net.load_state_dict(saved["state_dict"])
    except FileNotFoundError:
        raise ValueError(f"{path}: no such network file") from None
    except (KeyError, TypeError, RuntimeError, OSError) as exc:
        raise ValueError(f"{path}: not a network file of this project ({{init_kwargs, state_dict}}): {exc}") from exc
    return net.eval().requires_grad_(False)


def load_teacher(spec: str) -> nn.Module:
    """The teacher denoiser (EDMPrecond, eval, frozen, float32, CPU) named by a config's `teacher` field:
    'digits', a project network file (*.pt), or an EDM/SiD pickle by name ('edm:...'), path or URL."""
    if spec == "digits":
        from sid.digits import TEACHER_FILE

        return load_network_file(TEACHER_FILE)
    if spec.endswith(".pt"):
        return load_network_file(spec)
    from sid.checkpoints import load_edm_pickle

    return load_edm_pickle(spec)


def load_reference(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """Reference feature statistics (mu, sigma) named by a config's `fid_ref` field."""
    if spec == "digits":
        from sid.digits import reference_stats

        return reference_stats()
    from sid.checkpoints import fetch_fid_ref
    from sid.metrics import load_reference_stats

    return load_reference_stats(fetch_fid_ref(spec))
