"""sid.assets.fetch with local files and file:// URLs only (no network)."""

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

from sid.assets import AssetError, cache_path, fetch


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "src" / "weights v1.bin"  # a space: URLs quote it, the cache name unquotes it
    path.parent.mkdir()
    path.write_bytes(b"teacher weights " * 1000)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_local_path_is_returned_in_place(source, tmp_path):
    assert fetch(str(source), cache_dir=tmp_path / "cache") == source
    assert not (tmp_path / "cache").exists()


def test_local_path_with_the_right_sha256_is_accepted_and_a_wrong_one_refused(source):
    assert fetch(str(source), sha256=sha(source.read_bytes()).upper()) == source
    with pytest.raises(AssetError, match="sha256 mismatch"):
        fetch(str(source), sha256="0" * 64)


@pytest.mark.parametrize("missing", ["nowhere/teacher.pkl", "file:///nowhere/teacher.pkl"])
def test_a_missing_file_is_a_clear_error(missing, tmp_path):
    with pytest.raises((FileNotFoundError, AssetError), match="no such file|could not download"):
        fetch(missing, cache_dir=tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary download left


def test_unsupported_url_scheme_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unsupported URL scheme 's3'"):
        fetch("s3://bucket/teacher.pkl", cache_dir=tmp_path)


def test_url_is_downloaded_once_and_its_sha256_recorded(source, tmp_path, capsys):
    cache = tmp_path / "cache"
    first = fetch(source.as_uri(), cache_dir=cache)
    assert first.parent == cache and first.name.endswith("-weights v1.bin")
    assert first.read_bytes() == source.read_bytes()
    assert Path(f"{first}.sha256").read_text().strip() == sha(source.read_bytes())
    source.write_bytes(b"changed upstream")  # a second download would pick this up
    assert fetch(source.as_uri(), cache_dir=cache) == first
    assert first.read_bytes() == b"teacher weights " * 1000
    assert capsys.readouterr().err.count("downloading") == 1


def test_sid_cache_environment_variable_sets_the_default_folder(source, tmp_path, monkeypatch):
    monkeypatch.setenv("SID_CACHE", str(tmp_path / "env-cache"))
    assert fetch(source.as_uri()).parent == tmp_path / "env-cache"


def test_same_basename_from_two_urls_does_not_collide(tmp_path):
    assert cache_path("https://a.org/x/net.pkl", tmp_path) != cache_path("https://b.org/x/net.pkl", tmp_path)


def test_download_with_a_wrong_sha256_is_refused_and_not_kept(source, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(AssetError, match="sha256 mismatch .* expected 0000"):
        fetch(source.as_uri(), sha256="0" * 64, cache_dir=cache)
    assert not cache_path(source.as_uri(), cache).exists()
    assert not list(cache.glob(".*.tmp"))  # no temporary download left
    assert fetch(source.as_uri(), sha256=sha(source.read_bytes()), cache_dir=cache).is_file()


def test_cached_file_with_another_sha256_than_requested_is_refused(source, tmp_path):
    """The requested (pinned) digest wins over the one recorded at download: the cached copy is not used, the
    source is fetched again and refused naming both digests, and the cached copy stays as it was."""
    cached = fetch(source.as_uri(), cache_dir=tmp_path)
    before = cached.read_bytes()
    with pytest.raises(AssetError, match=f"expected {'f' * 64}, got {sha(source.read_bytes())}"):
        fetch(source.as_uri(), sha256="f" * 64, cache_dir=tmp_path)
    assert cached.read_bytes() == before


def test_corrupted_cache_file_is_detected_and_downloaded_again(source, tmp_path, capsys):
    cached = fetch(source.as_uri(), cache_dir=tmp_path)
    cached.write_bytes(b"bit rot")
    assert fetch(source.as_uri(), cache_dir=tmp_path).read_bytes() == source.read_bytes()
    assert "corrupt" in capsys.readouterr().err


def test_deleted_cache_copy_must_be_downloaded_again_with_the_recorded_sha256(source, tmp_path):
    cached = fetch(source.as_uri(), cache_dir=tmp_path)
    cached.unlink()                   # the copy is gone, its .sha256 record stays
    source.write_bytes(b"another file behind the same URL")
    with pytest.raises(AssetError, match="sha256 mismatch"):
        fetch(source.as_uri(), cache_dir=tmp_path)
    assert not cached.exists()


@pytest.mark.timeout(60)
def test_two_processes_fetching_the_same_url_download_once(source, tmp_path):
    cache = tmp_path / "cache"
    url = source.as_uri()
    dest = cache_path(url, cache)
    cache.mkdir()
    code = f"from sid.assets import fetch; print(fetch({url!r}, cache_dir={str(cache)!r}))"
    with FileLock(f"{dest}.lock"):  # hold the lock so both processes are waiting on it at the same time
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        time.sleep(1.0)
        assert not dest.exists() and all(p.poll() is None for p in procs)
    outs = [p.communicate(timeout=50) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert {out.strip() for out, _ in outs} == {str(dest)}
    assert sum(err.count("downloading") for _, err in outs) == 1
