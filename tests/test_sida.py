"""SiDA in the Distiller and the loop: its bad inputs refused before anything trains, the two warm-ups, the labels of
the generated images, and rows that carry the method (the losses: test_sida_losses.py; every preset's architecture
through DDP and a resume: test_presets.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sid.cluster.space import Grid, Range, StudyError, check_space, space_data
from sid.cluster.study import trial_config
from sid.config import ConfigError, preset
from sid.distill import Distiller
from sid.loop import Evaluator, train
from sid.networks.vp import VPDenoiser
from sid.real_images import RealImages, real_batches
from sid.testing.fixtures import TINY, RowSink, tiny_teacher, write_dataset
from studies import method_compare

# iterations of 8 images: nimg 0, 8, 16, ... before each; a warm-up of 0.008 kimg lasts 2 iterations (0 and 8 <= 8)
WARMUP = 0.008


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine: 2 threads crawl
    yield
    torch.set_num_threads(threads)


def sida_config(**overrides):
    return preset("digits-sida", **{**TINY, "generator_warmup_kimg": 0.0, "adversarial_warmup_kimg": 0.0,
                                    **overrides})


def generator_weights(d: Distiller) -> dict:
    return {k: v.clone() for k, v in d.generator.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides, words", [
    (dict(method="sida", data=""), ["DistillConfig.data", "method 'sida' needs real images (--data)"]),
    (dict(method="sida", data="  "), ["DistillConfig.data", "--data"]),
    (dict(method="gan"), ["DistillConfig.method", "sid, sida"]),
    (dict(lsd=-1.0), ["DistillConfig.lsd", ">= 0"]),
    (dict(generator_warmup_kimg=-1.0), ["DistillConfig.generator_warmup_kimg", ">= 0"]),
])
def test_sida_settings_that_cannot_run_are_one_config_error(overrides, words):
    with pytest.raises(ConfigError) as raised:
        preset("digits", **overrides)
    for word in words:
        assert word in str(raised.value)


def vp_teacher() -> VPDenoiser:
    unet = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=8)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    return VPDenoiser(unet=unet, alphas_cumprod=abar.tolist()).eval().requires_grad_(False)


@pytest.mark.parametrize("case, words", [
    ("unreadable data", ["folder/: no such dataset"]),
    ("other channels", ["do not fit the teacher", "images are 1x8x8 (CxHxW), the teacher's 3x8x8"]),
    ("other resolution", ["do not fit the teacher", "the teacher's 1x16x16"]),
    ("other classes", ["do not fit the teacher", "10 classes, the teacher 4"]),
    ("no labels", ["no labels, the teacher is conditional on 10 classes"]),
    ("no encoder", ["reuses the fake score's encoder", "VPDenoiser", "use method 'sid'"]),
])
def test_sida_inputs_that_do_not_fit_are_one_clear_error_before_training(case, words):
    config, teacher, real = sida_config(), tiny_teacher(), None
    if case == "unreadable data":
        config = sida_config(data="folder/")
    elif case == "other channels":
        teacher = tiny_teacher(img_channels=3)
    elif case == "other resolution":
        teacher = tiny_teacher(img_resolution=16)
    elif case == "other classes":
        teacher = tiny_teacher(label_dim=4)
    elif case == "no labels":
        teacher, real = tiny_teacher(label_dim=10), RealImages(torch.zeros(4, 1, 8, 8), name="unlabeled")
    elif case == "no encoder":
        teacher = vp_teacher()
    with pytest.raises(ValueError) as raised:
        Distiller(config, teacher, real=real)
    message = str(raised.value)
    assert "\n" not in message
    for word in words:
        assert word in message


# ---------------------------------------------------------------------------------------------- warm-ups
def test_the_generator_does_not_step_during_the_first_warm_up_while_the_fake_score_trains():
    d = Distiller(sida_config(generator_warmup_kimg=WARMUP), tiny_teacher())
    start, fake_start = generator_weights(d), {k: v.clone() for k, v in d.fake_score.state_dict().items()}
    d.step()
    assert not same(d.fake_score.state_dict(), fake_start)
    d.step()
    assert same(generator_weights(d), start)  # nimg 0 and 8: not past 0.008 kimg
    d.step()
    assert not same(generator_weights(d), start)


def test_the_adversarial_term_joins_the_generator_loss_only_after_its_warm_up():
    weak, strong = (Distiller(sida_config(adversarial_warmup_kimg=WARMUP, lsg_gan=scale), tiny_teacher())
                    for scale in (0.01, 10.0))
    for _ in range(2):
        weak.step()
        strong.step()
        assert same(generator_weights(weak), generator_weights(strong))  # SiD's term alone: the scale is unused
    weak.step()
    strong.step()
    assert not same(generator_weights(weak), generator_weights(strong))
    stats = weak.pop_stats()
    assert math.isfinite(stats["loss_discriminator"]) and math.isfinite(stats["loss_generator_gan"])


def test_sid_ignores_the_sida_settings():
    base = Distiller(preset("digits", **TINY), tiny_teacher())
    other = Distiller(preset("digits", **TINY, lsd=5.0, lsg_gan=3.0, generator_warmup_kimg=1.0), tiny_teacher())
    for _ in range(2):
        base.step()
        other.step()
    assert same(generator_weights(base), generator_weights(other))
    stats = base.pop_stats()
    assert math.isnan(stats["loss_discriminator"]) and math.isnan(stats["loss_generator_gan"])


# ---------------------------------------------------------------------------------------------- labels
def test_generated_images_take_the_labels_of_the_real_batch_in_both_phases():
    real = RealImages(torch.rand(5, 1, 8, 8) * 2 - 1, torch.full((5,), 7), class_count=10, name="sevens")
    d = Distiller(sida_config(), tiny_teacher(label_dim=10), real=real)
    seen = []
    d.generator.register_forward_pre_hook(lambda module, args: seen.append(args[2].argmax(1)))
    d.step()
    assert len(seen) == 2 and all(torch.equal(s, torch.full((8,), 7)) for s in seen)  # uniform draws would vary


# ---------------------------------------------------------------------------------------------- rows
@pytest.mark.parametrize("method", ["sid", "sida"])
def test_rows_carry_the_method_and_sida_its_adversarial_losses(method):
    config = preset("digits-sida", **TINY, method=method)
    sink = RowSink()
    train(Distiller(config, tiny_teacher()), evaluator=Evaluator(config), sinks=[sink], progress=False)
    assert [row["method"] for row in sink.rows] == [method] * len(config.evaluation_iterations())
    last = sink.rows[-1]
    assert last["status"] == "ok" and math.isfinite(last["fid"])
    assert math.isfinite(last["loss_discriminator"]) == (method == "sida")
    assert math.isfinite(last["loss_generator_gan"]) == (method == "sida")


# ---------------------------------------------------------------------------------------------- the study dimension
def test_method_is_a_study_dimension_of_names():
    check_space({"method": Grid(["sid", "sida"]), "seed": Grid([0, 1])}, "grid")
    assert space_data({"method": Grid(["sid", "sida"])}) == {"method": {"grid": ["sid", "sida"]}}
    assert trial_config({"method": "sida", "seed": 1}, preset("digits-sida")).method == "sida"
    for dimension, words in [(Range("sid", "sida"), "given values only"), (Grid([1, 2]), "expected strings")]:
        with pytest.raises(StudyError, match=words):
            check_space({"method": dimension}, "grid" if isinstance(dimension, Grid) else "optuna")


def test_method_compare_needs_real_images_except_for_the_digits(capsys):
    with pytest.raises(SystemExit) as raised:
        method_compare.main(["--preset", "cifar10-uncond", "--dry-run"])
    assert raised.value.code == 2
    assert "--data: SiDA trains on the teacher's real images" in capsys.readouterr().err


def test_sida_reads_its_real_images_through_the_one_dataset_reader(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    path = write_dataset("npz", tmp_path / "real.npz", images, labels)
    real = real_batches(sida_config(data=str(path)), label_dim=3)
    assert torch.equal(real.images, torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1))
    assert real.class_count == 3 and torch.equal(real.classes, torch.from_numpy(labels))
