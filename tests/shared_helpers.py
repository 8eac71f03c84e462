"""Helpers shared by tests/ and tests/faults/: a tiny teacher file, the processes of a killed command, loading a
study script, and reading offline W&B runs back."""

from __future__ import annotations

import importlib.util
import json
import struct
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


def wandb_runs(folder: Path) -> dict[str, dict]:
    """The offline W&B runs under `folder` (every `run-<id>.wandb` below it; a resumed run has one file per start),
    read with wandb's own record protobuf: run id -> {'name', 'config' (the run's config), 'history' ([(step,
    {key: value})] in order; an image's keys are 'samples/path', ...), 'folders' (its offline run folders)}. The file
    is LevelDB's log format: a 7-byte ':W&B' header, then 32 KiB blocks of records with a 7-byte header (crc, length,
    kind: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto.wandb_internal_pb2 import Record  # noqa: PLC0415 (wandb is slow to import)

    runs: dict[str, dict] = {}
    for path in sorted(Path(folder).rglob("run-*.wandb"), key=lambda p: p.parent.name):
        data, pos, chunk = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B", path
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if left < 7 or (length == 0 and kind == 0):  # block trailer or padding
                pos += left
                continue
            chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
            if kind not in (1, 4):
                continue
            record = Record()
            record.ParseFromString(chunk)
            chunk = b""
            kind_name = record.WhichOneof("record_type")
            if kind_name == "run":
                run = runs.setdefault(record.run.run_id, dict(name=record.run.display_name, config={}, history=[],
                                                              folders=[]))
                run["folders"].append(path.parent)
                run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind_name == "config":
                run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind_name == "history":
                values = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                run["history"].append((record.history.step.num, values))
    return runs
