"""The saved generator (sid.saved): one save and one load for snapshots, best.pt, post-hoc EMA profiles and exports,
which also reads every form earlier versions wrote; sigma_init from one key, DistillConfig's default when a file does
not say."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from sid.config import DistillConfig, preset
from sid.generators import generate, load_generator
from sid.networks.precond import EDMPrecond
from sid.saved import FORMAT, SavedGenerator
from sid.testing.fixtures import TEACHER_KWARGS

CONFIG = preset("digits").to_dict()
# What each kind of file says about its weights: a run snapshot (and best.pt), a post-hoc EMA profile, and a file
# that says nothing beyond the weights.
KINDS = {
    "snapshot": dict(sigma_init=2.0, config=CONFIG, kimg=12.8, iteration=100, fid=3.25,
                     fid_detector="digits-features-v1", fid_images=2048),
    "profile": dict(sigma_init=2.5, config=CONFIG, kimg=6.4, iteration=50, sigma_rel=0.05, gamma=16.97),
    "weights only": {},
}


@pytest.fixture(scope="module")
def net() -> EDMPrecond:
    torch.manual_seed(2)
    return EDMPrecond(**TEACHER_KWARGS).eval().requires_grad_(False)


def images(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat(list(generate(net, [0, 1, 2], sigma_init=2.5, batch=2)))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_saved_generator_round_trips_its_fields_and_gives_bit_identical_images(tmp_path, net, kind, suffix):
    saved = SavedGenerator.of(net, **KINDS[kind])
    path = saved.save(tmp_path / "sub" / f"g{suffix}")
    back = SavedGenerator.load(path)
    assert back.source == str(path)
    fields = ("sigma_init", "config", "kimg", "iteration", "fid", "fid_detector", "fid_images")
    fields += ("sigma_rel", "gamma") if suffix == ".pt" else ()  # an export is a generator to sample, not a profile
    assert {f: getattr(back, f) for f in fields} == {f: getattr(saved, f) for f in fields}
    assert back.state_dict.keys() == saved.state_dict.keys()
    assert all(torch.equal(back.state_dict[k], v) for k, v in saved.state_dict.items())
    assert torch.equal(images(back.network()), images(net))
    network, via_loader = load_generator(path)  # what sid generate / evaluate / export / --init-generator read
    assert torch.equal(images(network), images(net)) and via_loader.kimg == saved.kimg
    if suffix == ".safetensors":  # the JSON beside it is the same file's description
        assert SavedGenerator.load(path.with_suffix(".json")).fid == saved.fid
        assert json.loads(path.with_suffix(".json").read_text())["format"] == FORMAT


def test_a_pt_file_holds_plain_data_only(tmp_path, net):
    path = SavedGenerator.of(net, **KINDS["snapshot"]).save(tmp_path / "g.pt")
    saved = torch.load(path, weights_only=True)  # no class of this project inside
    assert list(saved) == ["init_kwargs", "state_dict", "sigma_init", "config", "kimg", "iteration", "fid",
                           "fid_detector", "fid_images"]


@pytest.mark.parametrize("written, expected", [(2.0, 2.0), (None, DistillConfig.sigma_init)])
def test_sigma_init_is_read_from_its_key_and_defaults_to_distill_configs(tmp_path, net, written, expected):
    SavedGenerator.of(net, sigma_init=written).save(tmp_path / "g.pt")
    back = SavedGenerator.load(tmp_path / "g.pt")
    assert back.sigma_init == written and back.sampling_sigma_init == expected


# ---------------------------------------------------------------------------------------------- earlier versions' files
def legacy_generator_pt(net, path):
    """generator.pt of run folders from before snapshots."""
    torch.save(dict(init_kwargs=dict(net.init_kwargs), state_dict=net.state_dict(), sigma_init=2.5, kimg=1.28), path)
    return dict(sigma_init=2.5, kimg=1.28, config=None)


def legacy_profile(net, path):
    """A post-hoc EMA profile as written before profiles were saved generators: `step`, no sigma_init."""
    torch.save(dict(sigma_rel=0.05, gamma=16.97, step=7, kimg=0.056, state_dict=net.state_dict(),
                    init_kwargs=dict(net.init_kwargs), config=CONFIG), path)
    return dict(sigma_init=None, iteration=7, kimg=0.056, sigma_rel=0.05, config=CONFIG)


def checkpoint(net, path):
    """A training checkpoint.pt: its G_ema, sigma_init from its config."""
    torch.save(dict(config={**CONFIG, "sigma_init": 2.0}, iteration=5, generator_ema=net.state_dict(),
                    generator_init_kwargs=dict(net.init_kwargs), generator=net.state_dict()), path)
    return dict(sigma_init=2.0, iteration=5, fid=None)


def legacy_export(net, path):
    """An export as `sid export` wrote it before `config` and `iteration` were in its JSON."""
    meta = dict(format=FORMAT, init_kwargs={**net.init_kwargs, "sigma_max": "inf"}, sigma_init=2.5, preset="digits",
                teacher="digits", fid_detector="digits-features-v1", fid_ref="digits", best_fid="nan", fid_images=2048,
                kimg=12.8, source="runs/x/best.pt")
    text = json.dumps(meta)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata={"sid": text})
    path.with_suffix(".json").write_text(text)
    return dict(sigma_init=2.5, kimg=12.8, fid_images=2048, iteration=None,
                config=dict(preset="digits", teacher="digits", fid_detector="digits-features-v1", fid_ref="digits",
                            sigma_init=2.5))


@pytest.mark.parametrize("write, name", [(legacy_generator_pt, "generator.pt"), (legacy_profile, "0.0500-7.pt"),
                                         (checkpoint, "checkpoint.pt"), (legacy_export, "g.safetensors")])
def test_files_written_by_earlier_versions_still_load(tmp_path, net, write, name):
    expected = write(net, tmp_path / name)
    back = SavedGenerator.load(tmp_path / name)
    assert {k: getattr(back, k) for k in expected} == expected
    assert torch.equal(images(back.network()), images(net))
    if write is legacy_export:
        assert math.isnan(back.fid) and back.init_kwargs["sigma_max"] == math.inf


@pytest.mark.parametrize("content, match", [
    (b"torn", "not a generator file"),
    ([1, 2], "not a generator file of this project"),
    (dict(init_kwargs={}, weights={}), "not a generator file of this project"),
    (dict(init_kwargs=dict(TEACHER_KWARGS), state_dict={}), "weights do not fit the SongUNet built from the recorded"),
    (dict(init_kwargs=dict(TEACHER_KWARGS, model_channels=32), state_dict="NET"), "weights do not fit"),
])
def test_a_file_that_is_not_a_saved_generator_is_one_error_naming_it(tmp_path, net, content, match):
    path = tmp_path / "g.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        if isinstance(content, dict) and content.get("state_dict") == "NET":
            content = {**content, "state_dict": net.state_dict()}
        torch.save(content, path)
    with pytest.raises(ValueError, match=match) as error:
        SavedGenerator.load(path).network()
    assert str(path) in str(error.value) and "\n" not in str(error.value)
