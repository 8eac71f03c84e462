"""Helpers shared by tests/ and tests/faults/: a tiny teacher file, a training-loop sink that keeps its rows, the
processes of a killed command, and loading a study script."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# A small random 8x8 teacher: tests about faults and placement need no quality, and its iterations take ~0.05 s.
TEACHER_KWARGS = dict(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet", model_channels=16,
                      channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.0)


def make_teacher(path: Path) -> str:
    """Write the tiny teacher as a project network file; return its path."""
    from sid.networks.precond import EDMPrecond

    torch.manual_seed(0)
    net = EDMPrecond(**TEACHER_KWARGS)
    torch.save(dict(init_kwargs=net.init_kwargs, state_dict=net.state_dict()), path)
    return str(path)


class RowSink:
    """A training-loop sink (sid.loop.Sink) that keeps what it is handed: each row, and the best row at that point."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.bests: list = []

    def on_evaluation(self, row, distiller, best) -> None:
        self.rows.append(row)
        self.bests.append(best)


def session_processes(session: int) -> list[int]:
    """Live processes of a session: a command started with start_new_session and everything it started (Ray too)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, session
            found.append(int(stat.parent.name))
    return found


def load_script(name: str, monkeypatch):
    """studies/<name>.py as a module (its `main(argv)` can then run in-process)."""
    monkeypatch.syspath_prepend(str(ROOT / "studies"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "studies" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_blocks(text: str, info: str = "python") -> list[str]:
    """The fenced blocks of a Markdown page whose info string is exactly `info` (so ```python tune blocks, which need
    a Tune study folder, are picked only when asked for)."""
    import re

    return [m.group(2) for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, flags=re.M | re.S)
            if m.group(1).strip() == info]
