"""What a process loads once and reuses across the runs it hosts: the teacher, the detector and the reference
statistics. A study's one-worker trials run in Tune's trial processes, which Tune reuses from trial to trial
(sid/cluster/study.py), so each trial after the first of a process finds them here instead of loading them again.

Entries are keyed by what names them and, for a local file, its sha256: a file replaced between two trials (a
retrained teacher at the same path) is loaded again. Names ('digits', 'edm:...') and URLs are not hashed here: the
shipped files change only with the package, and sid.assets checks a download's digest on every load. One entry per
kind: a process serves one study at a time, and a teacher can be large. The cached objects are shared, so callers
must not change them (the Distiller copies the teacher's weights into its own networks; detectors are frozen).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_ENTRIES: dict[str, tuple[Hashable, Any]] = {}  # kind -> (key, value): the one entry of each kind


def file_digest(spec: str) -> str:
    """The sha256 of the local file `spec` names, or '' when it names no local file (a name or a URL)."""
    path = Path(spec)
    try:
        if not path.is_file():
            return ""
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except (OSError, ValueError):  # an unreadable path or a name that is no path: the loader gives the error
        return ""
    return digest.hexdigest()


def cached(kind: str, key: Hashable, load: Callable[[], T]) -> T:
    """The value of `kind` loaded for `key` in this process, loading it (and dropping the previous one) if the key
    differs. A load that raises caches nothing."""
    entry = _ENTRIES.get(kind)
    if entry is not None and entry[0] == key:
        return entry[1]
    _ENTRIES.pop(kind, None)  # free the old value before loading the new one
    value = load()
    _ENTRIES[kind] = (key, value)
    return value


def cached_file(kind: str, spec: str, load: Callable[[str], T], *extra: Hashable) -> T:
    """`load(spec)`, cached under the spec, the digest of the file it names (if any) and `extra` (e.g. the device)."""
    return cached(kind, (spec, file_digest(spec), *extra), lambda: load(spec))


def clear() -> None:
    """Forget every entry (tests; a process that wants its memory back)."""
    _ENTRIES.clear()
