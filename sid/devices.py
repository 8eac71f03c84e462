"""The one parser of every command's `--device`: 'auto', 'cpu', 'cuda', 'cuda:N', or a comma list of them where a
command spreads its work over several devices (`sid generate`). Every error is one ValueError starting '--device:'."""

from __future__ import annotations

import torch

FORMS = "auto, cpu, cuda or cuda:N"


def parse_devices(text: str) -> list[torch.device]:
    """'auto': every CUDA device of this machine, else the CPU; otherwise the comma-separated devices (a device may
    repeat: one worker each), each one this machine has."""
    if text.strip() == "auto":
        count = torch.cuda.device_count()
        return [torch.device(f"cuda:{i}") for i in range(count)] if count else [torch.device("cpu")]
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise ValueError(f"--device: expected {FORMS} (comma-separated), got {text!r}")
    devices = []
    for name in names:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"--device: unknown device {name!r}: expected {FORMS}") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"--device: unsupported device {name!r}: expected {FORMS}")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"--device: device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        devices.append(device)
    return devices


def parse_device(text: str) -> torch.device:
    """One device, for commands that run on one: 'auto' is the first CUDA device, else the CPU."""
    devices = parse_devices(text)
    if len(devices) > 1 and text.strip() != "auto":
        raise ValueError(f"--device: expected one device ({FORMS}), got {text!r}")
    return devices[0]


def rank_device(text: str, local_rank: int) -> torch.device:
    """The device of a torchrun rank: 'auto' is cuda:<local_rank> when this machine has CUDA devices, else the CPU;
    'cuda' is cuda:<local_rank>; 'cpu' the CPU. A fixed 'cuda:N' is refused: each rank takes its own GPU."""
    name = text.strip()
    if name not in ("auto", "cuda", "cpu"):
        raise ValueError(f"--device: under torchrun expected auto, cuda or cpu (rank k uses cuda:<LOCAL_RANK>), "
                         f"got {text!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.device_count()):
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} "
                         "CUDA device(s); start at most that many processes per node (--nproc-per-node)")
    return torch.device(f"cuda:{local_rank}")
