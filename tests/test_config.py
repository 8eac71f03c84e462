import math

import pytest

from sid.config import PRESETS, ConfigError, DistillConfig, preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid(name):
    cfg = preset(name)
    assert cfg.preset == name
    assert cfg.batch % cfg.batch_per_device == 0


@pytest.mark.parametrize("name, field, value", [
    ("cifar10-uncond", "alpha", 1.2), ("cifar10-uncond", "batch", 256), ("cifar10-uncond", "lr", 1e-5),
    ("cifar10-uncond", "dropout", 0.13), ("cifar10-uncond", "augment", 0.12), ("cifar10-cond", "duration_kimg", 800e3),
    ("imagenet64-cond", "batch", 8192), ("imagenet64-cond", "glr", 4e-6), ("imagenet64-cond", "ema_mimg", 2.0),
    ("imagenet64-cond", "precision", "fp16"), ("imagenet64-cond", "augment", 0.0), ("ffhq64", "g_beta1", 0.9),
    ("ffhq64", "adam_eps", 1e-6), ("afhqv2-64", "alpha", 1.0), ("afhqv2-64", "lr", 5e-6), ("ffhq64", "batch_per_device", 32),
])
def test_presets_carry_the_official_values(name, field, value):
    assert getattr(preset(name), field) == value


@pytest.mark.parametrize("field, value, words", [
    ("alpha", math.nan, "finite"), ("alpha", math.inf, "finite"), ("lr", 0.0, "> 0"), ("glr", -1e-4, "> 0"),
    ("tmax", 0, "1..1000"), ("tmax", 1001, "1..1000"), ("sigma_init", 0.0, "> 0"), ("sigma_init", math.nan, "finite"),
    ("batch", 100, "divisible"), ("precision", "fp8", "one of"), ("dropout", 1.5, "[0, 1]"),
    ("fid_detector", "clip", "one of"), ("batch", 2.5, "integer"), ("alpha", "big", "number"), ("beta2", 1.0, "[0, 1)"),
])
def test_bad_values_are_rejected_naming_the_field(field, value, words):
    with pytest.raises(ConfigError) as err:
        preset("digits", **{field: value})
    message = str(err.value)
    assert f"DistillConfig.{field}" in message and words in message


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'cifar100'.*digits"):
        preset("cifar100")


def test_replace_revalidates_and_rejects_unknown_fields():
    cfg = preset("digits")
    assert cfg.replace(alpha=1.0).alpha == 1.0
    with pytest.raises(ConfigError, match="alpha"):
        cfg.replace(alpha=math.nan)
    with pytest.raises(ConfigError, match="no field colour"):
        cfg.replace(colour=1)


@pytest.mark.parametrize("batch, per_device, world, rounds", [(256, 16, 1, 16), (256, 16, 4, 4), (128, 128, 2, 1),
                                                               (8192, 16, 4, 128)])
def test_accumulation_rounds(batch, per_device, world, rounds):
    assert DistillConfig(batch=batch, batch_per_device=per_device).accumulation_rounds(world) == rounds


@pytest.mark.parametrize("duration, every, batch, expected", [
    (25.6, 6.4, 128, [0, 50, 100, 150, 200]),   # 6.4 kimg = 50 iterations of 128
    (1.0, 0.3, 100, [0, 3, 6, 9, 10]),          # a final partial interval is evaluated at the end
    (0.5, 10.0, 100, [0, 5]),                   # evaluation interval longer than the run
])
def test_evaluation_schedule(duration, every, batch, expected):
    cfg = preset("digits", duration_kimg=duration, eval_every_kimg=every, batch=batch, batch_per_device=batch)
    assert cfg.evaluation_iterations() == expected
    assert cfg.iterations == expected[-1]
