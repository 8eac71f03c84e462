"""Files the project needs (EDM teachers, FID statistics, detectors): local paths used in place, URLs downloaded once.

Downloads go to the cache folder ($SID_CACHE, default ~/.cache/sid) under a file lock, so concurrent trials on a node
download once; they are written to a temporary file and renamed, and the file's sha256 is recorded in a sidecar
(`<file>.sha256`) and checked on every later use. A registered asset (`Asset`: the EDM teachers and reference
statistics in sid.teachers, the Inception detector in sid.metrics) has its sha256 pinned in the code: the pinned
digest wins over the sidecar and is checked on every load from the cache; trust on first use (the sidecar alone)
is left for URLs the user names. Downloads are https only (plain http only with a digest to check; file:// for local
and offline use), also after redirects, and at most `max_bytes` long. A download never replaces a cached file that
is still good. The cache may be shared: a cached file or its digest record planted as a link is an error, never
followed. Only the standard library and filelock: no extra dependency."""

import errno
import hashlib
import os
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from sid.files import open_atomic, write_text_atomic

URL_SCHEMES = ("https", "http", "file")   # http only with a sha256 to check
MAX_BYTES = 4 * 2 ** 30    # default size cap of a download (the largest EDM/EDM2 file is about 1.2 GB)
BIG_FILE = 16 * 2 ** 20    # print progress for downloads larger than this (bytes)
_CHUNK = 2 ** 20           # read/hash block size (bytes)


class AssetError(RuntimeError):
    """A download failed or a file's sha256 is not the expected one."""


@dataclass(frozen=True)
class Asset:
    """A registered file: where it is and its pinned sha256 (None: not pinned, trust on first use with a warning);
    `bytes`: its size where known."""
    url: str
    sha256: str | None
    bytes: int | None = None


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


def fetch(source: str, *, sha256: str | None = None, cache_dir: str | Path | None = None,
          max_bytes: int = MAX_BYTES) -> Path:
    """Path of `source` on this machine: a local path (returned in place) or an https://, http:// (only with
    `sha256`) or file:// URL (downloaded once into the cache). With `sha256` (a pinned digest), a file whose digest
    differs is refused (AssetError naming both digests), on download and on every load from the cache."""
    if not is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {str(path)!r} (expected a local file path or an "
                                    f"https:// or file:// URL)")
        check_digest(str(path), sha256_of(path) if sha256 else None, sha256)
        return path
    scheme = urllib.parse.urlparse(source).scheme
    if scheme not in URL_SCHEMES:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {source!r}; expected one of {', '.join(URL_SCHEMES)}")
    if scheme == "http" and not sha256:
        raise ValueError(f"refusing plain http:// for {source!r} without a sha256 to check it against; use https://")
    pinned = sha256.lower() if sha256 else None
    dest = cache_path(source, cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sidecar = dest.with_name(dest.name + ".sha256")
    with FileLock(str(dest) + ".lock"):
        if dest.is_symlink():  # a shared cache: another user may have planted it
            raise AssetError(f"refusing the cached {dest}: it is a symbolic link (to {os.readlink(dest)!r}); "
                             f"a cached download is a plain file: remove the link")
        recorded = _read_sidecar(sidecar)
        expected = pinned or recorded   # the pinned digest wins over the sidecar
        if dest.is_file():
            digest = sha256_of(dest)
            if expected is None:
                # A cached file without any record: the download below must give the same bytes, so a source that
                # changed meanwhile never overwrites it.
                expected = digest
            elif digest == expected:
                if recorded != digest:
                    write_text_atomic(sidecar, digest + "\n")  # a new file renamed over a link, never through it
                return dest
            else:
                print(f"sid.assets: cached {dest} is corrupt or was replaced: its sha256 is {digest}, the "
                      f"{'pinned' if pinned else 'recorded'} one {expected}; downloading again", file=sys.stderr)
        digest = _download(source, dest, expected, max_bytes=max_bytes, https_only=not pinned)
        write_text_atomic(sidecar, digest + "\n")  # after the rename: a crash in between only costs a re-download
    return dest


_NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK  # a link is an error (ELOOP), a FIFO never blocks the open


def _sidecar_error(sidecar: Path, exc: OSError) -> AssetError:
    why = "it is a symbolic link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
    return AssetError(f"refusing the digest record {sidecar}: {why}; a digest record is a plain file of this cache: "
                      f"remove it to download again")


def _read_sidecar(sidecar: Path) -> str | None:
    """The sha256 recorded beside a cached download, read without following a link (None: no record)."""
    try:
        fd = os.open(sidecar, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _sidecar_error(sidecar, exc) from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise AssetError(f"refusing the digest record {sidecar}: not a regular file")
        return f.read(1024).decode(errors="replace").strip() or None


def check_digest(what: str, digest: str | None, expected: str | None) -> None:
    if expected and digest != expected.lower():
        raise AssetError(f"sha256 mismatch for {what}: expected {expected.lower()}, got {digest}")


class _SchemeCheckingRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to https (or http where a pinned digest checks the bytes): urllib alone would also
    follow one to http or ftp."""

    def __init__(self, schemes: tuple[str, ...]):
        self.schemes = schemes

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlparse(newurl).scheme
        if scheme not in self.schemes:
            raise AssetError(f"refusing the redirect of {req.full_url} to {newurl}: only "
                             f"{' or '.join(s + '://' for s in self.schemes)} is allowed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download(url: str, dest: Path, sha256: str | None, *, max_bytes: int = MAX_BYTES,
              https_only: bool = True) -> str:
    """Stream `url` to a temporary file beside `dest` (sid.files.open_atomic), hashing as it goes; it is renamed into
    place only if it is good."""
    opener = urllib.request.build_opener(_SchemeCheckingRedirects(("https",) if https_only else ("https", "http")))
    try:
        h = hashlib.sha256()
        with open_atomic(dest) as f, opener.open(url, timeout=60) as response:
            size = int(response.headers.get("Content-Length") or 0)
            if size > max_bytes:
                raise AssetError(f"refusing to download {url}: {size} bytes, more than the limit of {max_bytes}")
            print(f"sid.assets: downloading {url} ({size / 2 ** 20:.1f} MiB) -> {dest}", file=sys.stderr)
            done, last_print = 0, time.monotonic()
            while block := response.read(_CHUNK):
                done += len(block)
                if done > max_bytes:
                    raise AssetError(f"refusing to download {url}: more than the limit of {max_bytes} bytes")
                f.write(block)
                h.update(block)
                if size > BIG_FILE and time.monotonic() - last_print > 5:
                    print(f"sid.assets: {done / 2 ** 20:.0f} / {size / 2 ** 20:.0f} MiB", file=sys.stderr)
                    last_print = time.monotonic()
            if size and done != size:
                raise AssetError(f"download of {url} ended early: {done} of {size} bytes")
            digest = h.hexdigest()
            check_digest(url, digest, sha256)  # raising inside the block leaves `dest` as it was
        return digest
    except (urllib.error.URLError, OSError) as e:
        raise AssetError(f"could not download {url}: {e}") from e
