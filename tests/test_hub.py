"""The Hugging Face Hub resolver (sid/hub.py) and every reader that goes through it, offline: each test lays out a Hub
cache in tmp_path as huggingface_hub writes it (HF_HOME there, HF_HUB_OFFLINE=1), so nothing touches the network."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch

from sid import hub
from sid.assets import AssetError
from sid.generators import load_generator
from sid.saved import SavedGenerator
from sid.teachers import load_reference, load_teacher
from sid.testing.edm_pickles import dump, edm_snapshot, random_net
from sid.testing.fixtures import TEACHER_KWARGS, hub_cache, tiny_teacher, use_offline_hub

COMMIT = "c0ffee" * 6 + "c0ff"  # a pinned revision (40 hex digits)
FILES = {"teacher.pt": b"main-bytes" * 10, "README.md": b"# card\n", "sub/a.json": b"{}", "sub/deeper/b.npz": b"npz"}
OLD = {"teacher.pt": b"old-bytes" * 10}


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """An offline Hub cache with org/repo at main (FILES) and at tag v1 = COMMIT (OLD), and a dataset repo."""
    home = tmp_path / "hf"
    use_offline_hub(monkeypatch, home)
    hub_cache(home, "org/repo", FILES)
    hub_cache(home, "org/repo", OLD, revision="v1", commit=COMMIT)
    hub_cache(home, "org/refs", {"stats.npz": b"npz"}, repo_type="dataset")
    return home


@pytest.mark.parametrize("spec, expected", [
    ("hf://org/repo", hub.HubPath("org/repo")),
    ("hf://org/repo/teacher.pt", hub.HubPath("org/repo", "teacher.pt")),
    ("hf://org/repo/sub/deeper/b.npz@v1", hub.HubPath("org/repo", "sub/deeper/b.npz", "v1")),
    ("hf://org/repo@refs/pr/3", hub.HubPath("org/repo", "", "refs/pr/3")),
    ("hf://datasets/org/refs/stats.npz", hub.HubPath("org/refs", "stats.npz", "", "dataset")),
    ("hf://spaces/org/demo", hub.HubPath("org/demo", "", "", "space")),
])
def test_a_spec_parses_into_repository_path_revision_and_kind_and_prints_back(spec, expected):
    assert hub.parse(spec) == expected
    assert str(expected) == spec


@pytest.mark.parametrize("spec, words", [
    ("hf://", ["no repository", "hf://ORG/REPO"]),
    ("hf://org", ["no repository"]),
    ("hf://datasets/org", ["no repository"]),
    ("hf://org/re po/x.pt", ["no repository"]),
    ("hf://org/repo@", ["bad revision ''"]),
    ("hf://org/repo/x.pt@v1@v2", ["bad revision 'v1@v2'", "single '@'"]),
    ("hf://org/repo@../main", ["bad revision"]),
    ("hf://org/repo/../x.pt", ["bad path '../x.pt'"]),
    ("hf://org/repo//x.pt", ["bad path"]),
    ("https://huggingface.co/org/repo", ["not a Hub spec"]),
])
def test_a_malformed_spec_is_one_value_error_naming_the_form(hf_home, spec, words):
    with pytest.raises(ValueError) as raised:
        hub.resolve(spec)
    assert "\n" not in str(raised.value)
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize("spec, expected", [
    ("hf://org/repo/teacher.pt", FILES["teacher.pt"]),                 # main
    ("hf://org/repo/teacher.pt@v1", OLD["teacher.pt"]),                # a tag
    (f"hf://org/repo/teacher.pt@{COMMIT}", OLD["teacher.pt"]),        # a pinned commit
    ("hf://org/repo/sub/deeper/b.npz", FILES["sub/deeper/b.npz"]),
    ("hf://datasets/org/refs/stats.npz", b"npz"),
])
def test_a_file_resolves_to_its_bytes_at_the_revision_asked(hf_home, spec, expected):
    path = hub.resolve(spec)
    assert path.is_file() and path.read_bytes() == expected


@pytest.mark.parametrize("spec, files", [
    ("hf://org/repo", sorted(FILES)),
    ("hf://org/repo/sub", ["a.json", "deeper/b.npz"]),
    (f"hf://org/repo@{COMMIT}", ["teacher.pt"]),
])
def test_a_folder_resolves_to_its_files(hf_home, spec, files):
    path = hub.resolve(spec)
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == files


@pytest.mark.parametrize("spec, error, words", [
    ("hf://org/repo/missing.pt", ValueError, ["no file or folder 'missing.pt'", "org/repo at revision main",
                                              "offline"]),
    ("hf://org/repo/teacher.pt@nope", AssetError, ["revision nope is not in the Hub cache", "HF_HUB_OFFLINE=1"]),
    ("hf://org/other/teacher.pt", AssetError, ["repository org/other at revision main is not in the Hub cache"]),
    ("hf://datasets/org/repo/teacher.pt", AssetError, ["dataset repository org/repo"]),  # a model repo, not a dataset
])
def test_what_the_offline_cache_lacks_is_one_clear_error(hf_home, spec, error, words):
    with pytest.raises(error) as raised:
        hub.resolve(spec)
    assert "\n" not in str(raised.value)
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize("name, spec", [
    ("teacher.pt", "hf://org/repo/teacher.pt"),   # an LFS blob: named by its sha256
    ("sub/a.json", "hf://org/repo/sub/a.json"),   # a small file: named by its git blob sha1
    ("sub/a.json", "hf://org/repo/sub"),          # a folder checks every file in it
])
def test_a_cached_file_that_no_longer_matches_its_blob_digest_is_refused(hf_home, name, spec):
    snapshot = hub.resolve("hf://org/repo")
    (snapshot / name).resolve().write_bytes(b"edited")
    with pytest.raises(AssetError, match="corrupt or was edited"):
        hub.resolve(spec)


def test_a_pinned_sha256_is_checked_and_names_one_file(hf_home):
    good = hashlib.sha256(FILES["teacher.pt"]).hexdigest()
    assert hub.resolve("hf://org/repo/teacher.pt", sha256=good).read_bytes() == FILES["teacher.pt"]
    with pytest.raises(AssetError, match="sha256 mismatch"):
        hub.resolve("hf://org/repo/teacher.pt@v1", sha256=good)
    with pytest.raises(ValueError, match="a folder"):
        hub.resolve("hf://org/repo/sub", sha256=good)


def saved_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["network file", "EDM pickle"])
def test_a_teacher_loads_from_the_hub_with_the_weights_of_the_file(hf_home, tmp_path, kind):
    if kind == "network file":
        net, name = tiny_teacher(seed=3), "teacher.pt"
        data = saved_bytes(dict(init_kwargs=net.init_kwargs, state_dict=net.state_dict()))
    else:
        net, name = random_net(TEACHER_KWARGS), "network-snapshot.pkl"
        data = dump(tmp_path / name, edm_snapshot(net), tmp_path / "ran").read_bytes()
        assert not (tmp_path / "ran").exists()
    hub_cache(hf_home, "lab/teacher", {name: data})
    loaded = load_teacher(f"hf://lab/teacher/{name}")
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_reference_statistics_load_from_a_hub_dataset(hf_home):
    mu, sigma = np.arange(3.0), np.eye(3) * 2
    buffer = io.BytesIO()
    np.savez(buffer, mu=mu, sigma=sigma)
    hub_cache(hf_home, "lab/refs", {"digits.npz": buffer.getvalue()}, repo_type="dataset")
    loaded_mu, loaded_sigma = load_reference("hf://datasets/lab/refs/digits.npz")
    assert np.array_equal(loaded_mu, mu) and np.array_equal(loaded_sigma, sigma)


def test_a_hub_folder_is_refused_where_a_file_is_read(hf_home):
    with pytest.raises(ValueError, match="a folder, not a file"):
        load_teacher("hf://org/repo/sub")


@pytest.mark.parametrize("layout", ["repository", "file", "pinned file"])
def test_an_uploaded_export_loads_as_the_generator_it_was(hf_home, tmp_path, layout):
    """`sid export` then `hf upload ORG/REPO EXPORT_FOLDER`: the repository holds generator.safetensors + .json."""
    net = tiny_teacher(seed=5)
    saved = SavedGenerator.of(net, sigma_init=2.5, kimg=1.0, iteration=8)
    export = saved.save(tmp_path / "export" / "generator.safetensors")
    files = {p.name: p.read_bytes() for p in export.parent.iterdir()}
    hub_cache(hf_home, "lab/sid-digits", files, revision="main", commit=COMMIT)
    spec = {"repository": "hf://lab/sid-digits", "file": "hf://lab/sid-digits/generator.safetensors",
            "pinned file": f"hf://lab/sid-digits/generator.safetensors@{COMMIT}"}[layout]
    loaded, saved = load_generator(spec)
    local, _ = load_generator(export)
    assert saved.sigma_init == 2.5 and saved.kimg == 1.0 and saved.source == spec  # the spec, not the cache path
    for key, value in local.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_generator_the_offline_cache_lacks_is_a_value_error(hf_home):
    with pytest.raises(ValueError, match="not in the Hub cache"):
        load_generator("hf://lab/nothing")
