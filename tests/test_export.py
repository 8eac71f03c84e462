"""`sid export`: safetensors + strict JSON, readable without this package's loaders, bit-identical images back."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sid.commands import evaluate, export
from sid.config import preset
from sid.generators import generate, load_generator
from sid.results import read_scores
from sid.saved import SavedGenerator
from sid.teachers import load_teacher
from sid.testing.edm_pickles import ADM, random_net


def refuse_constant(name):
    raise AssertionError(f"non-strict JSON constant {name}")


@pytest.fixture
def run(tmp_path):
    net = load_teacher("digits")
    with torch.no_grad():
        next(net.parameters()).add_(0.01)  # not the teacher's weights
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(dict(init_kwargs=dict(net.init_kwargs), state_dict=net.state_dict(), sigma_init=2.5,
                    config=preset("digits").to_dict(), kimg=12.8, fid=3.25, fid_detector="digits-features-v1",
                    fid_images=2048), folder / "best.pt")
    return folder


def images(net, seeds=range(6), **kw):
    return torch.cat(list(generate(net, list(seeds), sigma_init=2.5, batch=4, **kw)))


def test_export_writes_safetensors_and_strict_json_readable_without_sid(run, capsys):
    export.main([str(run), "--format", "safetensors"])
    weights, meta_path = run / "export" / "generator.safetensors", run / "export" / "generator.json"
    assert f"wrote {weights} and {meta_path}" in capsys.readouterr().out
    meta = json.loads(meta_path.read_text(), parse_constant=refuse_constant)
    net, _ = load_generator(run)
    assert meta["format"] == "sid-generator-v1" and meta["sigma_init"] == 2.5 and meta["preset"] == "digits"
    assert meta["fid_detector"] == "digits-features-v1" and meta["best_fid"] == 3.25 and meta["fid_images"] == 2048
    assert meta["fid_ref"] == "digits" and meta["init_kwargs"]["sigma_max"] == "inf"
    assert {k: v for k, v in meta["init_kwargs"].items() if k != "sigma_max"} == \
        {k: list(v) if isinstance(v, tuple) else v for k, v in net.init_kwargs.items() if k != "sigma_max"}
    tensors = load_file(str(weights))  # the safetensors library alone: no pickle, no code
    state = net.state_dict()
    assert tensors.keys() == state.keys() and all(torch.equal(tensors[k], state[k]) for k in state)
    with safe_open(str(weights), framework="pt") as f:
        assert json.loads(f.metadata()["sid"]) == meta


def test_loading_the_export_back_gives_bit_identical_images(run, tmp_path):
    out = tmp_path / "elsewhere" / "g.safetensors"
    export.main([str(run), "--out", str(out)])
    original, _ = load_generator(run)
    for source in (out, out.with_suffix(".json")):
        saved = SavedGenerator.load(source)
        assert saved.sigma_init == 2.5 and saved.fid == 3.25 and saved.config == preset("digits").to_dict()
        assert torch.equal(images(saved.network()), images(original))
    assert torch.equal(images(load_generator(out)[0]), images(original))  # sid generate/evaluate take it too
    out.with_suffix(".json").unlink()  # the header metadata is enough on its own
    assert torch.equal(images(SavedGenerator.load(out).network()), images(original))


def test_conditional_pickle_generator_exports_too(tmp_path):
    net = random_net(ADM)
    torch.save(dict(init_kwargs=dict(net.init_kwargs), state_dict=net.state_dict()), tmp_path / "c.pt")
    weights, _ = export.export_safetensors(tmp_path / "c.pt", tmp_path / "c.safetensors")
    back = SavedGenerator.load(weights)
    assert back.sigma_init is None and back.fid is None and back.sampling_sigma_init == preset("digits").sigma_init
    assert torch.equal(images(back.network(), class_idx=7), images(net, class_idx=7))


@pytest.mark.parametrize("args, match", [
    (["EMPTY"], "not a run folder"),
    (["RUN", "--out", "g.pt"], "ending in .safetensors"),
    (["RUN", "--format", "onnx"], "invalid choice"),
])
def test_export_bad_input_exits_2_and_writes_nothing(run, tmp_path, capsys, args, match):
    (tmp_path / "empty").mkdir()
    argv = [{"EMPTY": str(tmp_path / "empty"), "RUN": str(run)}.get(a, a) for a in args]
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        export.main(argv)
    assert exit_info.value.code == 2 and match in capsys.readouterr().err.strip().splitlines()[-1]
    assert sorted(tmp_path.rglob("*")) == before


def test_an_export_is_evaluated_with_the_detector_and_reference_it_names(run, tmp_path, capsys):
    weights, _ = export.export_safetensors(run, tmp_path / "g.safetensors")
    evaluate.main([str(weights), "--fid-images", "64", "--out", str(tmp_path / "s.parquet"), "--no-progress"])
    assert "FD (digits-features-v1, 64 images)" in capsys.readouterr().out
    direct = evaluate.evaluate(str(run), detector_name="digits-features-v1", ref="digits", images=64, repeats=1,
                               progress=False)
    assert read_scores(tmp_path / "s.parquet")["fid"].tolist() == pytest.approx([direct[0]["fid"]], rel=1e-9)
