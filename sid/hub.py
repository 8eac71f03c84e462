"""Files and folders on the Hugging Face Hub: `hf://ORG/REPO[/PATH][@REVISION]` (datasets: `hf://datasets/ORG/REPO...`).

`resolve(spec)` gives the local path of a file or folder of a Hub repository through `huggingface_hub`: its cache
($HF_HOME, default ~/.cache/huggingface; $HF_HUB_OFFLINE=1 reads only the cache), its token (`hf auth login`) and its
revisions (a branch, a tag or a commit; a commit pins the bytes for good). Without PATH it is the whole repository;
REVISION defaults to main. The caller then reads the path with the same safe loaders as a local file or URL
(sid.checkpoints, sid.saved).

Digests: the Hub cache keeps each file as a blob named by its digest: the sha256 for large (LFS) files, the git blob
sha1 for small ones. Every file resolved (each file of a folder) is hashed and checked against its blob's name on every
resolve, so a corrupt or edited cache is refused (AssetError naming both digests), as sid.assets checks its own
cache; a `sha256` pinned by the caller (sid.assets.Asset) is checked too. A cache without symlinks (Windows without
developer mode) keeps plain copies: those carry no name to check.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sid.assets import AssetError, check_digest, sha256_of

SCHEME = "hf://"
REPO_TYPES = {"datasets": "dataset", "spaces": "space"}  # hf://<prefix>/ORG/REPO: a repository that is not a model
FORM = "hf://ORG/REPO[/PATH][@REVISION] (datasets: hf://datasets/ORG/REPO...)"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")  # one side of a repo id, as the Hub allows it
_REVISION = re.compile(r"[A-Za-z0-9._/-]{1,255}")     # branch, tag or commit (refs/pr/N included)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")
_CHUNK = 2 ** 20


@dataclass(frozen=True)
class HubPath:
    """A parsed `hf://` spec."""
    repo_id: str          # ORG/REPO
    path: str = ""        # a file or folder in the repository ('' = all of it)
    revision: str = ""    # branch, tag or commit ('' = main)
    repo_type: str = "model"  # model, dataset or space

    def __str__(self) -> str:
        prefix = next((p + "/" for p, t in REPO_TYPES.items() if t == self.repo_type), "")
        return (f"{SCHEME}{prefix}{self.repo_id}" + (f"/{self.path}" if self.path else "")
                + (f"@{self.revision}" if self.revision else ""))


def is_hub(spec: str) -> bool:
    return str(spec).startswith(SCHEME)


def parse(spec: str) -> HubPath:
    """The parts of an `hf://` spec; ValueError naming the expected form for anything else."""
    text = str(spec)
    if not is_hub(text):
        raise ValueError(f"{text!r}: not a Hub spec; expected {FORM}")
    rest, at, revision = text[len(SCHEME):].partition("@")
    if at and not _REVISION.fullmatch(revision) or ".." in revision or revision.endswith("/"):
        raise ValueError(f"{text!r}: bad revision {revision!r}; expected a branch, tag or commit after a single '@' "
                         f"at the end: {FORM}")
    parts = rest.split("/")
    repo_type = "model"
    if parts[0] in REPO_TYPES:
        repo_type, parts = REPO_TYPES[parts[0]], parts[1:]
    if len(parts) < 2 or not all(_NAME.fullmatch(p) for p in parts[:2]):
        raise ValueError(f"{text!r}: no repository; expected {FORM}")
    path = parts[2:]
    if any(p in ("", ".", "..") for p in path):
        raise ValueError(f"{text!r}: bad path {'/'.join(path)!r} in the repository (empty, '.' or '..' parts)")
    return HubPath("/".join(parts[:2]), "/".join(path), revision, repo_type)


def resolve(spec: str, *, sha256: str | None = None) -> Path:
    """Local path of the file or folder `spec` names (sid.hub's module doc), downloaded into the Hub cache once.
    `sha256`: a pinned digest the file must have. ValueError for a malformed spec or a repository, revision or path
    the Hub does not have; AssetError when it cannot be fetched (offline and not cached, no network) or a digest
    check fails."""
    ref = parse(spec)
    path = _download(ref)
    if sha256 is not None:
        if not path.is_file():
            raise ValueError(f"{spec}: a folder; a pinned sha256 names one file")
        check_digest(str(spec), sha256_of(path), sha256)
    for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        _check_blob(spec, file)
    return path


def _download(ref: HubPath) -> Path:
    """The path in the Hub cache: a file through hf_hub_download, else (the path is a folder) the matching part of a
    snapshot; one error line per failure."""
    # huggingface_hub: only Hub specs need it (1-2 s to import)
    from huggingface_hub import constants, hf_hub_download, snapshot_download  # noqa: PLC0415
    from huggingface_hub.errors import (  # noqa: PLC0415
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = dict(repo_id=ref.repo_id, repo_type=ref.repo_type, revision=ref.revision or None)
    at = f"{ref.repo_type} repository {ref.repo_id} at revision {ref.revision or 'main'}"
    try:
        if ref.path:
            try:
                found = Path(hf_hub_download(filename=ref.path, **where))
                if found.exists():
                    return found
            except EntryNotFoundError:  # no such file (remote, or not in the cache offline): a folder?
                pass
        root = Path(snapshot_download(allow_patterns=[f"{ref.path}/*"] if ref.path else None, **where))
    except RepositoryNotFoundError:
        raise ValueError(f"{ref}: no {ref.repo_type} repository {ref.repo_id} on the Hub (or it is private or gated: "
                         "log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise ValueError(f"{ref}: the {ref.repo_type} repository {ref.repo_id} has no revision "
                         f"{ref.revision!r}") from None
    except HFValidationError as exc:
        raise ValueError(f"{ref}: {str(exc).splitlines()[0]}") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        if constants.is_offline_mode():
            raise AssetError(f"{ref}: the {at} is not in the Hub cache ({constants.HF_HUB_CACHE}), and "
                             "HF_HUB_OFFLINE=1 forbids downloading it") from None
        raise AssetError(f"{ref}: not in the Hub cache and the Hub cannot be reached: {_first_line(exc)}") from None
    except OSError as exc:  # the Hub's other HTTP errors, a network failure, a full disk
        raise AssetError(f"{ref}: could not get it from the Hub: {_first_line(exc)}") from None
    path = root / ref.path
    if not path.exists():
        offline = " (offline: the cached files of that revision)" if constants.is_offline_mode() else ""
        raise ValueError(f"{ref}: no file or folder {ref.path!r} in the {at}{offline}")
    return path


def _first_line(exc: Exception) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file's bytes (sha1 of 'blob <size>\\0' + bytes): the Hub cache's name of a small file."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)  # git's object id
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _check_blob(spec: str, file: Path) -> None:
    """A cached file against the digest its blob is named by (see the module doc); a plain copy is not checked."""
    if not file.is_symlink():
        return
    blob = file.resolve().name
    if _SHA256.fullmatch(blob):
        digest = sha256_of(file)
    elif _GIT_SHA1.fullmatch(blob):
        digest = git_blob_sha1(file)
    else:
        return
    if digest != blob:
        raise AssetError(f"{spec}: the Hub cache's {file.name} is corrupt or was edited: its digest is {digest}, the "
                         f"blob is named {blob}; delete {file.resolve()} to download it again")
