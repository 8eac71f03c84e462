"""The Distiller: one SiD iteration, EMA, gradient paths, NaN handling, and bit-exact resume."""

import math

import pytest
import torch

from sid.config import preset
from sid.distill import Distiller, slot_seed
from sid.testing.fixtures import flat_params, tiny_teacher


def tiny_config(**overrides):
    base = dict(batch=8, batch_per_device=4, lr=1e-3, glr=1e-3, duration_kimg=0.04, eval_every_kimg=0.016,
                fid_images=64, ema_mimg=1e-5, ema_rampup=0.05)  # the rampup the EMA test computes with
    return preset("digits", **{**base, **overrides})


def test_one_iteration_updates_both_students_and_never_the_teacher():
    teacher = tiny_teacher()
    before = flat_params(teacher).clone()
    d = Distiller(tiny_config(), teacher)
    g0, f0 = flat_params(d.generator).clone(), flat_params(d.fake_score).clone()
    assert torch.equal(g0, before) and torch.equal(f0, before)  # SiD starts both students from the teacher
    d.step()
    assert torch.equal(flat_params(d.teacher), before)
    assert not torch.equal(flat_params(d.fake_score), f0)
    assert not torch.equal(flat_params(d.generator), g0)
    assert d.iteration == 1 and d.kimg == pytest.approx(0.008)
    assert all(not p.requires_grad for p in d.teacher.parameters())


def test_first_ema_update_copies_the_generator_then_follows_the_rampup():
    d = Distiller(tiny_config(ema_mimg=0.5), tiny_teacher())
    d.step()  # nimg = 0 -> half-life 0 -> beta 0: G_ema := G
    assert torch.equal(flat_params(d.generator_ema), flat_params(d.generator))
    ema_before = flat_params(d.generator_ema).clone()
    d.step()
    # second update: nimg = 8 images seen, half-life = min(0.5e6, 0.05 * 8) = 0.4, beta = 0.5 ** (8 / 0.4)
    beta = 0.5 ** (8 / 0.4)
    expected = beta * ema_before + (1 - beta) * flat_params(d.generator)
    assert torch.allclose(flat_params(d.generator_ema), expected, atol=1e-7)


def test_stats_are_means_per_iteration_and_reset_when_read():
    d = Distiller(tiny_config(), tiny_teacher())
    first = d.pop_stats()
    assert math.isnan(first["loss_fake_score"]) and first["nan_samples"] == 0
    d.step()
    d.step()
    stats = d.pop_stats()
    assert math.isfinite(stats["loss_fake_score"]) and stats["loss_fake_score"] > 0  # weighted squared error
    assert math.isfinite(stats["loss_generator"])
    assert math.isnan(d.pop_stats()["loss_generator"])


def test_nan_generator_outputs_are_dropped_and_parameters_stay_finite():
    d = Distiller(tiny_config(), tiny_teacher())
    with torch.no_grad():  # poison one output channel bias so every generator sample is NaN
        d.generator.model.dec["8x8_aux_conv"].bias.fill_(math.nan)
    d.step()
    assert d.pop_stats()["nan_samples"] == 16  # 8 samples in each of the two phases
    assert torch.isfinite(flat_params(d.fake_score)).all()


def test_noise_depends_on_the_global_slot_not_the_rank_layout():
    # Rank 1 of 2 (one round each) draws the same noise as round 1 of a single process with two rounds.
    assert slot_seed(0, 5, 1, 1) == slot_seed(0, 5, 1, 1)
    assert len({slot_seed(0, 5, 1, s) for s in range(4)} | {slot_seed(1, 5, 1, 0), slot_seed(0, 6, 1, 0)}) == 6
    single = Distiller(tiny_config(), tiny_teacher())
    rank1 = Distiller(tiny_config(), tiny_teacher(), rank=1, world_size=2)
    assert (single.rounds, rank1.rounds) == (2, 1)
    a = torch.randn(3, generator=single._rng(1, round_index=1))
    b = torch.randn(3, generator=rank1._rng(1, round_index=0))
    assert torch.equal(a, b)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, dropout):
    config = tiny_config(dropout=dropout)
    straight = Distiller(config, tiny_teacher())
    for _ in range(4):
        straight.step()

    first = Distiller(config, tiny_teacher())
    for _ in range(2):
        first.step()
    torch.save(first.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(1234)  # the resumed process starts with unrelated global RNG state
    second = Distiller(config, tiny_teacher())
    second.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for _ in range(2):
        second.step()
    for name in ("generator", "fake_score", "generator_ema"):
        assert torch.equal(flat_params(getattr(straight, name)), flat_params(getattr(second, name))), name


def test_sample_is_the_same_batch_at_every_evaluation():
    d = Distiller(tiny_config(), tiny_teacher())
    assert torch.equal(d.sample(0, 4), d.sample(0, 4))
    assert not torch.equal(d.sample(0, 4), d.sample(1, 4))


def test_conditional_teacher_gets_one_hot_labels():
    teacher = tiny_teacher(label_dim=3)
    d = Distiller(tiny_config(), teacher)
    z, labels = d._generator_inputs(5, torch.Generator().manual_seed(0))
    assert labels.shape == (5, 3) and torch.equal(labels.sum(1), torch.ones(5))
    d.step()
    assert torch.isfinite(flat_params(d.generator)).all()


def test_batch_that_does_not_split_over_ranks_is_an_error():
    with pytest.raises(ValueError, match="world_size"):
        Distiller(tiny_config(batch=8, batch_per_device=8), tiny_teacher(), world_size=3)
