import math
import re

import numpy as np
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
    ("ffhq64", "adam_eps", 1e-6), ("afhqv2-64", "alpha", 1.0), ("afhqv2-64", "lr", 5e-6),
    ("ffhq64", "batch_per_device", 32),
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


# run_sid.sh's --tick (kimg per tick) of each official preset; a preset added with eval_schedule 'official' needs its
# entry here, read from the official script.
RUN_SID_TICK_KIMG = {"cifar10-uncond": 10, "cifar10-cond": 10, "imagenet64-cond": 20, "ffhq64": 10, "afhqv2-64": 10}
OFFICIAL = [name for name, values in PRESETS.items() if values.get("eval_schedule") == "official"]


def official_loop_evaluations(batch: int, total_kimg: int, kimg_per_tick: int, snapshot_ticks: int = 50) -> list[int]:
    """Iterations after which SiD's training loop (training/sid_training_loop.py of mingyuanzhou/SiD) evaluates,
    re-enacted step by step in integers: cur_nimg grows by the batch after each iteration; `done` once it reaches
    total_kimg * 1000; an iteration ends a tick unless (not done, not tick 0, and cur_nimg < the tick's start +
    kimg_per_tick * 1000); a tick's end evaluates when done, cur_tick % snapshot_ticks == 0 or cur_tick in
    [10, 20, ..., 100]; then cur_tick += 1 and the next tick starts at cur_nimg."""
    cur_nimg = cur_tick = tick_start_nimg = iteration = 0
    evaluated = []
    while True:
        iteration += 1
        cur_nimg += batch
        done = cur_nimg >= total_kimg * 1000
        if not done and cur_tick != 0 and cur_nimg < tick_start_nimg + kimg_per_tick * 1000:
            continue
        if done or cur_tick % snapshot_ticks == 0 or cur_tick in [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]:
            evaluated.append(iteration)
        cur_tick += 1
        tick_start_nimg = cur_nimg
        if done:
            return evaluated


def test_the_official_presets_evaluate_on_the_official_schedule():
    assert set(OFFICIAL) == set(RUN_SID_TICK_KIMG) and preset("digits").eval_schedule == "every"


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_presets_use_run_sids_tick(name):
    assert preset(name).eval_tick_kimg == RUN_SID_TICK_KIMG[name]


# Each official preset at shortened durations (a whole tick count, one ending inside a tick, one inside the dense
# part) and at its full duration where re-enacting it is quick (ImageNet's 122,071 iterations; CIFAR-10's millions
# take seconds).
SCHEDULE_CASES = [(name, kimg) for name in OFFICIAL for kimg in (60_000, 1_234, 250)] + [
    (name, int(PRESETS[name]["duration_kimg"])) for name in OFFICIAL if preset(name).iterations <= 200_000]


@pytest.mark.parametrize("name, duration_kimg", SCHEDULE_CASES)
def test_official_schedule_is_the_official_loops_with_the_baseline_at_0_for_its_first(name, duration_kimg):
    # The official loop's first evaluation is after iteration 1 (tick 0); this project's is at 0 kimg, before any
    # step. Every later point is the official one.
    cfg = preset(name, duration_kimg=float(duration_kimg))
    official = official_loop_evaluations(cfg.batch, duration_kimg, RUN_SID_TICK_KIMG[name])
    assert official[0] == 1 and cfg.evaluation_iterations() == [0, *official[1:]]
    assert cfg.iterations == official[-1]


def test_official_schedule_follows_any_tick_length():
    cfg = preset("digits", eval_schedule="official", eval_tick_kimg=0.5, duration_kimg=64.0)  # 4 iterations a tick
    assert cfg.evaluation_iterations() == [0, *official_loop_evaluations(128, 64, 0.5)[1:]]
    assert cfg.evaluation_iterations()[:4] == [0, 41, 81, 121]
    one = cfg.replace(duration_kimg=0.1)  # a run of one iteration: the official loop evaluates its end, so does this
    assert official_loop_evaluations(128, 0.1, 0.5) == [1] and one.evaluation_iterations() == [0, 1]


def test_imagenet_evaluates_823_times_in_1000_mimg_as_the_official_loop():
    cfg = preset("imagenet64-cond")  # batch 8192, a 20 kimg tick: 3 iterations (24.6 kimg) a tick
    kimg = cfg.evaluation_kimg()
    assert len(kimg) == 823  # the official loop's 823, the first (8.192 kimg, tick 0) at 0 kimg
    assert kimg[:5] == pytest.approx([0.0, 253.952, 499.712, 745.472, 991.232])  # ticks 10, 20, 30, 40
    assert np.diff(kimg[11:-1]) == pytest.approx(1228.8)  # from tick 100 on: every 50 ticks of 24.576 kimg
    assert kimg[-1] == cfg.final_kimg == pytest.approx(1_000_005.632)  # 122,071 iterations: the first >= 1000 Mimg


def test_official_schedule_at_batch_256_evaluates_densely_then_every_50_ticks():
    cifar = preset("cifar10-uncond")  # a tick is 40 iterations (10.24 kimg); tick 0 ends after iteration 1
    kimg = cifar.evaluation_kimg()
    assert kimg[:3] == pytest.approx([0.0, 102.656, 205.056])
    assert kimg[10] == pytest.approx(1024.256) and kimg[11] - kimg[10] == pytest.approx(512.0)
    assert kimg[-1] == pytest.approx(cifar.final_kimg)


# The metrics of each official run_sid.sh (--metrics): the CIFAR-10 uncond run reports the Inception Score too.
RUN_SID_METRICS = {"cifar10-uncond": "fid50k_full,is50k", "cifar10-cond": "fid50k_full",
                   "imagenet64-cond": "fid50k_full", "ffhq64": "fid50k_full", "afhqv2-64": "fid50k_full"}
OFFICIAL_NAMES = {"fid50k_full": "fd", "is50k": "is"}


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_computes_the_official_runs_metrics_at_its_evaluations(name):
    official = RUN_SID_METRICS.get(name, "fid50k_full")  # digits: the FD only
    assert preset(name).eval_metrics == ",".join(OFFICIAL_NAMES[m] for m in official.split(","))


@pytest.mark.parametrize("overrides, match", [
    (dict(eval_metrics="fd,pr"), "eval_metrics: expected a comma list of distinct metrics from fd, is that includes"),
    (dict(eval_metrics="is"), "that includes fd"),
    (dict(eval_metrics="fd,fd"), "distinct metrics"),
    (dict(eval_metrics="fd,is"), "'is' needs a detector with class probabilities (inception-2015-12-05), not "
                                 "fid_detector digits-features-v1"),
])
def test_bad_eval_metrics_are_one_line_errors(overrides, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        preset("digits", **overrides)
