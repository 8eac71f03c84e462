"""Every kind of teacher through what users run, at tiny size: an EDM pickle, a project network file, the two embedded
teachers (digits, digits-ddpm), diffusers VP folders (epsilon, v, sample prediction; class-conditional) and the user's
own factory (module:function and file.py:function).

For each: SiD's generator is a copy of the teacher and one iteration gives finite gradients; the saved generator
(.pt and the safetensors export) rebuilds bit-exactly; a run exports and generates through the commands; bad specs
are one clear line before anything trains.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sid.commands import evaluate as evaluate_command
from sid.commands import export as export_command
from sid.commands import generate as generate_command
from sid.commands import phema as phema_command
from sid.distill import Distiller
from sid.files import CHECKPOINT, EVALUATIONS, PHEMA_FILE
from sid.generators import load_generator
from sid.networks.build import network_kind
from sid.run import run_local
from sid.saved import SavedGenerator
from sid.teachers import TEACHER_FORMS, load_teacher, sigma_range
from sid.testing.fixtures import (
    TEACHER_KINDS,
    hub_cache,
    save_pipeline,
    teacher_specs,
    tiny_config,
    use_offline_hub,
    user_teacher,
)

FACTORY_KINDS = ("factory-module", "factory-file")
KIND_OF = {"diffusers-epsilon": "diffusers-vp", "diffusers-v": "diffusers-vp", "diffusers-sample": "diffusers-vp",
           "diffusers-class": "diffusers-vp", "digits-ddpm": "diffusers-vp", "factory-module": "factory",
           "factory-file": "factory"}


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, str]:
    return teacher_specs(tmp_path_factory.mktemp("teachers"))


def factory_of(kind: str, specs: dict[str, str]) -> str | None:
    """The --factory a user names to rebuild a factory-made generator (their teacher spec)."""
    return specs[kind] if kind in FACTORY_KINDS else None


@pytest.mark.parametrize("kind", TEACHER_KINDS)
def test_the_generator_is_a_copy_of_the_teacher_and_one_iteration_has_finite_gradients(kind, specs):
    teacher = load_teacher(specs[kind])
    assert network_kind(teacher.init_kwargs) == KIND_OF.get(kind, "edm")
    d = Distiller(tiny_config(specs[kind]), teacher)
    x = torch.randn(2, teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    labels = torch.eye(teacher.label_dim)[[1, 2]] if teacher.label_dim else None
    with torch.no_grad():  # before any step the generator is the teacher (SiD's initialisation)
        torch.testing.assert_close(d.generator(x, torch.full((2,), 2.5), labels),
                                   teacher(x, torch.full((2,), 2.5), labels), rtol=0, atol=0)
    d.step()
    stats = d.pop_stats()
    assert np.isfinite([stats["loss_fake_score"], stats["loss_generator"]]).all(), stats
    for net in ("generator", "fake_score"):
        grads = [p.grad for p in getattr(d, net).parameters()]
        assert all(g is not None and g.isfinite().all() for g in grads), net
        assert sum(g.abs().sum() for g in grads) > 0, net


@pytest.mark.parametrize("kind", TEACHER_KINDS)
def test_a_saved_generator_of_each_kind_rebuilds_bit_exactly(kind, specs, tmp_path):
    teacher = load_teacher(specs[kind])
    d = Distiller(tiny_config(specs[kind]), teacher)
    d.step()
    saved = SavedGenerator.of(d.generator_ema, sigma_init=2.5, config=d.config.to_dict())
    x = torch.randn(3, teacher.img_channels, teacher.img_resolution, teacher.img_resolution,
                    generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = d.generator_ema(x, torch.full((3,), 2.5))
    for name in ("generator.pt", "generator.safetensors"):
        loaded = SavedGenerator.load(saved.save(tmp_path / name))
        assert json.dumps(loaded.init_kwargs, sort_keys=True) == json.dumps(saved.init_kwargs, sort_keys=True)
        net = loaded.network(factory=factory_of(kind, specs))
        assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.state_dict.items())
        with torch.no_grad():
            assert torch.equal(net(x, torch.full((3,), 2.5)), expected), name


@pytest.mark.parametrize("kind", FACTORY_KINDS)
def test_a_factory_made_generator_rebuilds_only_with_the_factory_named_again(kind, specs, tmp_path):
    teacher = load_teacher(specs[kind])
    path = SavedGenerator.of(teacher).save(tmp_path / "generator.safetensors")
    with pytest.raises(ValueError, match="name the factory again"):
        load_generator(path)
    assert load_generator(path, factory=specs[kind])[0].init_kwargs["factory"] == specs[kind]


@pytest.mark.parametrize("kind", ["diffusers-epsilon", "diffusers-class", "factory-module"])
def test_a_run_with_each_teacher_kind_resumes_exports_generates_evaluates_and_inits_another(kind, specs, tmp_path):
    config = tiny_config(specs[kind], duration_kimg=0.016)
    run_local(config, tmp_path / "run", device=torch.device("cpu"), resume=False, progress=False)
    run_local(config.replace(duration_kimg=0.032), tmp_path / "run", device=torch.device("cpu"), resume=True,
              progress=False)
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["iteration"] == 4
    factory = ["--factory", specs[kind]] if kind in FACTORY_KINDS else []
    export_command.main([str(tmp_path / "run"), "--out", str(tmp_path / "g.safetensors"), *factory])
    generate_command.main(["--network", str(tmp_path / "g.safetensors"), "--seeds", "0-3", "--npz",
                           str(tmp_path / "a.npz"), "--device", "cpu", "--no-progress", *factory])
    generate_command.main(["--network", str(tmp_path / "run"), "--seeds", "0-3", "--npz", str(tmp_path / "b.npz"),
                           "--device", "cpu", "--no-progress", *factory])
    a, b = np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"]
    assert a.shape == (4, 8, 8, 1) and np.array_equal(a, b)  # the export generates the run's images
    evaluate_command.main([str(tmp_path / "g.safetensors"), "--fid-images", "64", "--device", "cpu", "--no-progress",
                           "--out", str(tmp_path / "scores.parquet"), *factory])
    assert np.isfinite(pd.read_parquet(tmp_path / "scores.parquet")["fid"]).all()
    again = tiny_config(specs[kind], duration_kimg=0.008, init_generator=str(tmp_path / "g.safetensors"))
    run_local(again, tmp_path / "again", device=torch.device("cpu"), resume=False, progress=False)
    # it starts from the exported G (best.pt of the run): its first evaluation sees the same images as the best one
    assert pd.read_parquet(tmp_path / "again" / EVALUATIONS)["fid"].iloc[0] == pytest.approx(
        pd.read_parquet(tmp_path / "run" / EVALUATIONS)["fid"].min(), rel=1e-6)


def test_the_vp_teacher_clamps_below_its_smallest_sigma_and_says_so_once(specs):
    teacher = load_teacher(specs["diffusers-epsilon"])
    notes = sigma_range(teacher, tiny_config(specs["diffusers-epsilon"]))
    assert len(notes) == 1 and "clamps" in notes[0]
    assert sigma_range(load_teacher("digits"), tiny_config()) == []
    low = teacher.timestep(torch.tensor([0.002, 0.005, teacher.sigma_min]))
    assert low.tolist() == [0.0, 0.0, 0.0]  # SiD's smallest sigma runs at the first trained timestep


def test_class_conditional_vp_teachers_take_edm_one_hot_labels(specs):
    teacher = load_teacher(specs["diffusers-class"])
    assert teacher.label_dim == 10
    x = torch.randn(2, 1, 8, 8).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = teacher(x, torch.full((2,), 1.0), torch.eye(10)[[3, 7]])
    assert not torch.equal(out[0], out[1])  # same image, two classes


# ---------------------------------------------------------------------------------------------- bad specs
def bad_spec(name: str, tmp_path: Path, specs: dict[str, str]) -> str:
    if name == "missing folder":
        return f"diffusers:{tmp_path / 'nowhere'}"
    if name == "pickled weights":
        save_pipeline(tmp_path / "bin", weights=False)
        return f"diffusers:{tmp_path / 'bin'}"
    if name == "wrong object":
        (tmp_path / "wrong.py").write_text("def make():\n    return 'not a network'\n")
        return f"{tmp_path / 'wrong.py'}:make"
    if name == "wrong shape":
        (tmp_path / "shape.py").write_text("from sid.testing.fixtures import UserDenoiser\n\n\n"
                                           "class Half(UserDenoiser):\n"
                                           "    def forward(self, x, sigma, class_labels=None):\n"
                                           "        return super().forward(x, sigma)[:, :, :4]\n\n\n"
                                           "def make():\n    return Half()\n")
        return f"{tmp_path / 'shape.py'}:make"
    if name == "no such module":
        return "no_such_package_f24.nets:make"
    if name == "no such function":
        return "sid.testing.fixtures:no_such_factory"
    if name == "hub":
        return "diffusers:hf://org"  # no repository name
    return "not a teacher at all"


@pytest.mark.parametrize("name, words", [
    ("missing folder", "no such diffusers folder"),
    ("pickled weights", "pickle, which this project never loads"),
    ("wrong object", "not a torch.nn.Module denoiser"),
    ("wrong shape", "must return x's shape"),
    ("no such module", "cannot import no_such_package_f24.nets"),
    ("no such function", "has no function 'no_such_factory'"),
    ("hub", "hf://"),
    ("unknown form", "expected one of"),
])
def test_a_bad_teacher_spec_is_one_clear_line(name, words, tmp_path, specs):
    with pytest.raises(ValueError, match=words) as info:
        load_teacher(bad_spec(name, tmp_path, specs))
    assert "\n" not in str(info.value)
    if name == "unknown form":
        assert all(form in str(info.value) for form in TEACHER_FORMS)


def test_a_diffusers_teacher_on_the_hub_loads_from_the_hub_cache_as_from_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "pipeline"
    save_pipeline(folder, "v_prediction")
    files = {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}
    hub_cache(tmp_path / "hf", "org/vp-teacher", files)
    use_offline_hub(monkeypatch, tmp_path / "hf")
    local, remote = load_teacher(f"diffusers:{folder}"), load_teacher("diffusers:hf://org/vp-teacher")
    x, sigma = torch.randn(2, local.img_channels, local.img_resolution, local.img_resolution), torch.tensor([0.5, 3.0])
    assert torch.equal(local(x, sigma), remote(x, sigma))


def test_a_run_asking_for_more_noise_than_the_teacher_knows_is_refused_at_start_up(specs):
    teacher = load_teacher(specs["diffusers-epsilon"])  # linear DDPM: largest sigma ~157
    with pytest.raises(ValueError, match="above the teacher's largest trained sigma") as info:
        Distiller(tiny_config(specs["diffusers-epsilon"], sigma_init=200.0), teacher)
    assert "\n" not in str(info.value)
    sigma_range(user_teacher(), tiny_config(tmax=1000))  # no limit recorded: nothing to refuse


def test_sid_distill_with_a_bad_teacher_stops_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sid", "distill", "--teacher", "no_such_package_f24.nets:make",
                           "--out", str(tmp_path / "run"), "--duration-kimg", "0.008"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "cannot import no_such_package_f24.nets" in last and "Traceback" not in done.stderr


@pytest.mark.parametrize("kind", ["diffusers-epsilon", "factory-module"])
def test_post_hoc_ema_rebuilds_a_run_of_each_teacher_kind(kind, specs, tmp_path):
    config = tiny_config(specs[kind], duration_kimg=0.032, phema="0.05,0.1", phema_every_kimg=0.016)
    run_local(config, tmp_path / "run", device=torch.device("cpu"), resume=False, progress=False)
    factory = ["--factory", specs[kind]] if kind in FACTORY_KINDS else []
    phema_command.main([str(tmp_path / "run"), "--sigma-rel", "0.08", "--last", "--device", "cpu", *factory])
    rows = pd.read_parquet(tmp_path / "run" / PHEMA_FILE)
    assert rows["sigma_rel"].tolist() == [0.08] and np.isfinite(rows["fid"]).all()
    if factory:  # a factory-made run's snapshots are rebuilt only with the factory named again
        with pytest.raises(SystemExit) as refused:
            phema_command.main([str(tmp_path / "run"), "--sigma-rel", "0.08", "--last", "--device", "cpu"])
        assert refused.value.code == 2
