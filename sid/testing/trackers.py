"""Reading experiment trackers back in tests: offline W&B runs from their own files (no account, no network)."""

from __future__ import annotations

import json
import struct
from pathlib import Path


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
