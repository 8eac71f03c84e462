"""Pieces of crafted pickles shared by the hostile-input tests (tests/faults/): raw opcodes, so that a test can build a
file that pickle.dumps would never write."""

from __future__ import annotations

import os
from pathlib import Path

HASH_PRIME = 2 ** 61 - 1  # Python hashes an integer modulo this prime: n + k * HASH_PRIME all share n's hash


def name(module: str, attr: str) -> bytes:
    """GLOBAL module.attr (protocol 0 opcode, accepted by every protocol)."""
    return b"c" + f"{module}\n{attr}\n".encode()


def colliding_ints(count: int) -> list[bytes]:
    """`count` LONG1 integers k * (2**61 - 1), k = 1..count: all distinct, all with hash 0 (12 bytes each)."""
    return [b"\x8a\x0a" + (k * HASH_PRIME).to_bytes(10, "little", signed=True) for k in range(1, count + 1)]


class RunsCommand:
    """Unpickling this runs a shell command (the classic pickle exploit): here one that creates a marker file."""

    def __init__(self, marker: Path | str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
