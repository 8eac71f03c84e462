"""The per-process cache of teachers, detectors and references (sid/process_cache.py) and the phase timeline
(sid/timeline.py): a hit returns the loaded object, a file changed at the same path is loaded again, a failed load
caches nothing; phases from this process land in $SID_TIMELINE as the benchmark reads them."""

from __future__ import annotations

import hashlib
import os

import pytest

from sid import process_cache
from sid.teachers import load_teacher
from sid.testing.fixtures import make_teacher
from sid.timeline import TIMELINE_ENV, phase, read_timeline


@pytest.fixture(autouse=True)
def empty_cache():
    process_cache.clear()
    yield
    process_cache.clear()


def test_a_file_is_loaded_once_per_content_and_again_when_it_changes(tmp_path):
    path = make_teacher(tmp_path / "teacher.pt", seed=0)
    loads = []

    def load(spec):
        loads.append(spec)
        return load_teacher(spec)

    first = process_cache.cached_file("teacher", path, load)
    assert process_cache.cached_file("teacher", path, load) is first and loads == [path]
    assert process_cache.file_digest(path) == hashlib.sha256(open(path, "rb").read()).hexdigest()
    make_teacher(path, seed=1)  # another teacher at the same path: loaded again, with its own weights
    second = process_cache.cached_file("teacher", path, load)
    assert second is not first and loads == [path, path]
    assert not all((a == b).all() for a, b in zip(first.state_dict().values(), second.state_dict().values()))


@pytest.mark.parametrize("spec", ["digits", "edm:cifar10-uncond", "https://example.org/teacher.pt", "no/such/file"])
def test_names_urls_and_missing_paths_are_keyed_by_the_spec_alone(spec):
    assert process_cache.file_digest(spec) == ""
    assert process_cache.cached_file("x", spec, lambda s: [s]) is process_cache.cached_file("x", spec, list)


def test_one_entry_per_kind_and_a_failed_load_caches_nothing():
    a = process_cache.cached("detector", ("a", "cpu"), object)
    assert process_cache.cached("detector", ("a", "cuda:0"), object) is not a  # another device: another object
    assert process_cache.cached("detector", ("a", "cpu"), object) is not a    # one entry: `a` was dropped

    def fail():
        raise ValueError("bad file")

    with pytest.raises(ValueError, match="bad file"):
        process_cache.cached("teacher", "t", fail)
    assert process_cache.cached("teacher", "t", lambda: 1) == 1


def test_phases_are_appended_to_the_timeline_file_only_when_it_is_named(tmp_path, monkeypatch):
    path = tmp_path / "timeline.jsonl"
    monkeypatch.delenv(TIMELINE_ENV, raising=False)
    with phase("unrecorded"):
        pass
    monkeypatch.setenv(TIMELINE_ENV, str(path))
    with phase("outer"):
        with phase("inner"):
            pass
    with pytest.raises(KeyError), phase("failed"):
        raise KeyError
    lines = read_timeline(path)
    assert [line["phase"] for line in lines] == ["inner", "outer", "failed"]
    assert all(line["pid"] == os.getpid() and line["start"] <= line["end"] for line in lines)
    assert lines[1]["start"] <= lines[0]["start"] and lines[0]["end"] <= lines[1]["end"]
    assert read_timeline(tmp_path / "missing.jsonl") == []
    monkeypatch.setenv(TIMELINE_ENV, str(tmp_path / "no" / "such" / "folder.jsonl"))
    with phase("lost"):  # an unwritable timeline loses its lines, never the run
        pass
