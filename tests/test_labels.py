"""Labels of a conditional teacher (issue 30 item 3): drawn from the dataset's class frequencies (a counts file, else
the fid_ref file's class_counts), uniform where the dataset is balanced or no counts are given (with a warning for
an unbalanced preset); frequencies checked by a chi-square test (scipy), draws reproducible by seed, the same on
every DDP rank, and every evaluation row says where its labels came from."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from sid.config import PRESETS, preset
from sid.datasets import label_distribution, sample_classes
from sid.distill import PHASE_EVAL, PHASE_FAKE, PHASE_GENERATOR, Distiller, generator_inputs, slot_seed
from sid.metrics import save_reference_stats
from sid.results import read_evaluations
from sid.run import run_local
from sid.testing.fixtures import make_teacher, tiny_config, tiny_teacher

COUNTS = np.array([732, 1300, 900, 1000, 1100, 760])  # ImageNet-64's extremes and some between


def counts_file(path, counts=COUNTS) -> str:
    """A `sid ref`-style reference file with class_counts."""
    save_reference_stats(path, np.zeros(64), np.eye(64), class_counts=counts)
    return str(path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_label_frequencies_match_the_class_counts(tmp_path, seed):
    labels = label_distribution(tiny_config(class_counts=counts_file(tmp_path / "c.npz")), len(COUNTS))
    assert labels.source == f"class_counts of {tmp_path / 'c.npz'}"
    rng = torch.Generator().manual_seed(seed)
    _, onehot = generator_inputs(40_000, rng, img_shape=(1, 2, 2), label_dim=len(COUNTS), sigma_init=1.0,
                                 device=torch.device("cpu"), class_probs=labels.probs)
    observed = onehot.sum(0).numpy()
    assert observed.sum() == 40_000 and (onehot.sum(1) == 1).all()
    expected = COUNTS / COUNTS.sum() * 40_000
    assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3
    # ... and not uniform: the same draws reject equal frequencies
    assert scipy.stats.chisquare(observed).pvalue < 1e-6


def test_class_draws_are_reproducible_by_seed(tmp_path):
    probs = label_distribution(tiny_config(class_counts=counts_file(tmp_path / "c.npz")), len(COUNTS)).probs

    def draw(seed):
        return sample_classes(500, torch.Generator().manual_seed(seed), len(COUNTS), probs)

    assert torch.equal(draw(7), draw(7)) and not torch.equal(draw(7), draw(8))


def test_balanced_counts_give_the_uniform_draws_of_a_run_without_counts(tmp_path):
    labels = label_distribution(tiny_config(class_counts=counts_file(tmp_path / "b.npz", np.full(10, 5000))), 10)
    assert labels.probs is None and labels.source == f"uniform (class_counts of {tmp_path / 'b.npz'}: balanced)"
    drawn = sample_classes(300, torch.Generator().manual_seed(3), 10, labels.probs)
    assert torch.equal(drawn, torch.randint(10, (300,), generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("name", [p for p in PRESETS if preset(p).teacher in ("edm:cifar10-cond",
                                                                              "edm:imagenet64-cond")])
def test_a_conditional_preset_without_counts_is_uniform_and_warns_only_where_its_dataset_is_not(name):
    config = preset(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels = label_distribution(config, 10 if "cifar" in name else 1000)  # an edm: fid_ref: nothing downloaded
    assert labels.probs is None and labels.source == "uniform"
    messages = [str(w.message) for w in caught]
    if name == "imagenet64-cond":
        assert len(messages) == 1 and "732 to 1300 images per class" in messages[0] and "--class-counts" in messages[0]
    else:
        assert messages == []


def test_the_fid_refs_class_counts_are_used_unless_a_counts_file_or_uniform_is_given(tmp_path):
    ref = counts_file(tmp_path / "ref.npz")
    assert label_distribution(tiny_config(fid_ref=ref), len(COUNTS)).source == f"class_counts of {ref}"
    other = counts_file(tmp_path / "other.npz", COUNTS[::-1].copy())
    chosen = label_distribution(tiny_config(fid_ref=ref, class_counts=other), len(COUNTS))
    assert chosen.source == f"class_counts of {other}" and chosen.probs[0] == pytest.approx(760 / COUNTS.sum())
    assert label_distribution(tiny_config(fid_ref=ref, class_counts="uniform"), len(COUNTS)).probs is None
    assert label_distribution(tiny_config(fid_ref=ref), 0).source == "none"  # unconditional: nothing read


@pytest.mark.parametrize("case, match", [
    ("classes", "c.npz: class_counts has 6 classes but the teacher has 10"),
    ("no-counts", "class_counts {path}: the file has no class_counts array"),
    ("missing", "{path}"),
])
def test_bad_class_counts_are_one_error_naming_the_file(tmp_path, case, match):
    path = tmp_path / "c.npz"
    if case == "no-counts":
        save_reference_stats(path, np.zeros(4), np.eye(4))
    elif case == "classes":
        counts_file(path)
    with pytest.raises((ValueError, FileNotFoundError), match=match.format(path=path)):
        label_distribution(tiny_config(class_counts=str(path)), 10)


def test_ddp_ranks_draw_the_labels_one_process_draws(tmp_path):
    """The classes of each micro-batch slot depend on (seed, iteration, phase, slot) only: 2 ranks of 4 images draw
    what 1 process of 2 rounds of 4 draws, for training and for the evaluation (rank 0) alike."""
    labels = label_distribution(tiny_config(class_counts=counts_file(tmp_path / "c.npz")), len(COUNTS))
    teacher = tiny_teacher(label_dim=len(COUNTS))
    config = tiny_config(batch=8, batch_per_device=4)

    def slot_labels(distiller, phase):
        return [distiller._generator_inputs(4, distiller._rng(phase, r))[1] for r in range(distiller.rounds)]

    one = Distiller(config, teacher, labels=labels)
    ranks = [Distiller(config, teacher, rank=r, world_size=2, labels=labels) for r in range(2)]
    assert one.rounds == 2 and all(d.rounds == 1 for d in ranks)
    for phase in (PHASE_FAKE, PHASE_GENERATOR):
        together = torch.cat(slot_labels(one, phase))
        split = torch.cat([slot_labels(d, phase)[0] for d in ranks])
        assert torch.equal(together, split) and len(together.argmax(1).unique()) > 1
    rng = torch.Generator().manual_seed(slot_seed(config.seed, 0, PHASE_EVAL, 0))
    _, want = generator_inputs(8, rng, img_shape=(1, 8, 8), label_dim=len(COUNTS), sigma_init=config.sigma_init,
                               device=torch.device("cpu"), class_probs=labels.probs)
    seen = []  # the class labels G_ema is given at an evaluation
    one.generator_ema.register_forward_pre_hook(lambda module, args: seen.append(args[2]))
    one.sample(0, 8)
    assert torch.equal(seen[0], want)

def test_every_evaluation_row_says_where_its_labels_came_from(tmp_path):
    teacher = make_teacher(tmp_path / "cond.pt", label_dim=len(COUNTS))
    config = tiny_config(teacher=teacher, class_counts=counts_file(tmp_path / "c.npz"), fid_images=64)
    run_local(config, tmp_path / "run", device=torch.device("cpu"), resume=False, progress=False)
    rows = read_evaluations(tmp_path / "run")
    assert len(rows) == 3 and rows["labels"].eq(f"class_counts of {tmp_path / 'c.npz'}").all()
