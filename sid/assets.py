"""Files the project needs (EDM teachers, FID statistics, detectors): local paths used in place, URLs downloaded once.

Downloads go to the cache folder ($SID_CACHE, default ~/.cache/sid) under a file lock, so concurrent trials on a node
download once; they are written to a temporary file and renamed, and the file's sha256 is recorded in a sidecar
(`<file>.sha256`) and checked on every later use. Only the standard library and filelock: no extra dependency."""

import hashlib
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from filelock import FileLock

URL_SCHEMES = ("http", "https", "file")
BIG_FILE = 16 * 2 ** 20    # print progress for downloads larger than this (bytes)
_CHUNK = 2 ** 20           # read/hash block size (bytes)


class AssetError(RuntimeError):
    """A download failed or a file's sha256 is not the expected one."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("SID_CACHE") or Path.home() / ".cache" / "sid").expanduser()


def is_url(source: str) -> bool:
    return "://" in source


def cache_path(url: str, cache_dir: str | Path | None = None) -> Path:
    """Where `url` is cached: a hash of the full URL (two URLs never collide) plus the basename (readable)."""
    basename = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "download"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser() / f"{digest}-{basename}"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch(source: str, *, sha256: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Path of `source` on this machine: a local path (returned in place) or an http(s):// or file:// URL
    (downloaded once into the cache). With `sha256`, a file whose digest differs is refused (AssetError)."""
    if not is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {str(path)!r} (expected a local file path or an "
                                    f"http(s):// or file:// URL)")
        _check_digest(str(path), sha256_of(path) if sha256 else None, sha256)
        return path
    scheme = urllib.parse.urlparse(source).scheme
    if scheme not in URL_SCHEMES:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {source!r}; expected one of {', '.join(URL_SCHEMES)}")
    dest = cache_path(source, cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sidecar = dest.with_name(dest.name + ".sha256")
    with FileLock(str(dest) + ".lock"):
        expected = sha256
        if sidecar.is_file():
            recorded = sidecar.read_text().strip()
            if dest.is_file():
                digest = sha256_of(dest)
                if digest == recorded:
                    _check_digest(f"{dest} (cached copy of {source}; delete it to download again)", digest, sha256)
                    return dest
                print(f"sid.assets: cached {dest} is corrupt (sha256 {digest}, recorded {recorded}); downloading "
                      "again", file=sys.stderr)
            # The source must still serve the file first recorded (delete the .sha256 sidecar to accept another).
            expected = sha256 or recorded
        digest = _download(source, dest, expected)
        sidecar.write_text(digest + "\n")  # after the rename: a crash in between only costs a re-download
    return dest


def _check_digest(what: str, digest: str | None, expected: str | None) -> None:
    if expected and digest != expected.lower():
        raise AssetError(f"sha256 mismatch for {what}: expected {expected.lower()}, got {digest}")


def _download(url: str, dest: Path, sha256: str | None) -> str:
    """Stream `url` to a temporary file beside `dest`, hashing as it goes; rename it into place only if it is good."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            size = int(response.headers.get("Content-Length") or 0)
            print(f"sid.assets: downloading {url} ({size / 2 ** 20:.1f} MiB) -> {dest}", file=sys.stderr)
            done, last_print = 0, time.monotonic()
            while block := response.read(_CHUNK):
                f.write(block)
                h.update(block)
                done += len(block)
                if size > BIG_FILE and time.monotonic() - last_print > 5:
                    print(f"sid.assets: {done / 2 ** 20:.0f} / {size / 2 ** 20:.0f} MiB", file=sys.stderr)
                    last_print = time.monotonic()
        if size and done != size:
            raise AssetError(f"download of {url} ended early: {done} of {size} bytes")
        digest = h.hexdigest()
        _check_digest(url, digest, sha256)
        os.replace(tmp, dest)
        return digest
    except (urllib.error.URLError, OSError) as e:
        raise AssetError(f"could not download {url}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
