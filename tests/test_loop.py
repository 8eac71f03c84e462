"""The training loop's evaluations: one scoring rule for training and `sid evaluate` (a non-finite image makes the FD
NaN), the sinks in order (the run folder before trackers and reports; a failing tracker does not stop the run), a
Distiller that reads no file, and losses that are NaN when every sample was dropped."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sid.commands import evaluate as eval_cli
from sid.config import INCEPTION, preset
from sid.distill import Distiller
from sid.files import CHECKPOINT, samples_name
from sid.loop import Evaluator, make_row, train
from sid.metrics import get_detector, quantize
from sid.results import read_evaluations
from sid.run import RunFolder, run_rank
from sid.saved import SavedGenerator
from sid.teachers import load_teacher
from sid.testing.fixtures import RowSink, make_teacher, scipy_inception_score
from sid.tracking import RunTracker, TrackingSettings


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> str:
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def tiny(teacher: str, **overrides):
    base = dict(teacher=teacher, batch=4, batch_per_device=4, duration_kimg=0.012, eval_every_kimg=0.004,
                fid_images=16)
    return preset("digits", **{**base, **overrides})


def poison(net: torch.nn.Module) -> torch.nn.Module:
    """One output bias NaN: every image has NaN pixels (quantize would make them black)."""
    with torch.no_grad():
        net.model.dec["8x8_aux_conv"].bias[0] = math.nan
    return net


def training_score(config, generator, tmp_path) -> tuple[float, float, str | None]:
    distiller = Distiller(config, load_teacher(config.teacher))
    distiller.generator_ema.load_state_dict(generator.state_dict())
    score = Evaluator(config)(distiller, 16)
    stats = dict(loss_fake_score=1.0, loss_generator=1.0, nan_samples=0)
    row = make_row(distiller, fid=score.fd, fid_std=score.fd_std, stats=stats, wall_s=1.0, images_per_s=1.0,
                   study="", trial_id="run")
    return score.fd, score.fd_std, row["status"]


def evaluate_score(config, generator, tmp_path) -> tuple[float, float, str | None]:
    path = SavedGenerator.of(generator, sigma_init=config.sigma_init).save(tmp_path / "g.pt")
    row, = eval_cli.evaluate(str(path), detector_name=config.fid_detector, ref=config.fid_ref, images=16, repeats=1,
                             progress=False)
    return row["fid"], row["fid_std"], None  # a score row has no status


@pytest.mark.parametrize("score", [training_score, evaluate_score], ids=["training", "sid evaluate"])
@pytest.mark.parametrize("poisoned", [False, True], ids=["finite", "one NaN pixel per image"])
def test_training_and_sid_evaluate_share_the_scoring_rule_on_non_finite_images(tmp_path, teacher_file, score,
                                                                               poisoned):
    config = tiny(teacher_file)
    generator = load_teacher(teacher_file)
    if poisoned:
        poison(generator)
    fd, fd_std, status = score(config, generator, tmp_path)
    if poisoned:  # black images would give a finite, merely poor, distance
        assert math.isnan(fd) and math.isnan(fd_std) and status in ("diverged", None)
    else:
        assert math.isfinite(fd) and 0 < fd_std < fd and status in ("ok", None)


class OnDisk:
    """A sink after the run folder and the tracker: at each evaluation, checks that the row, its sample grid and the
    checkpoint of this very iteration are already on disk, and keeps the best it was handed."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder, self.seen, self.bests = folder, [], []

    def on_evaluation(self, row, distiller, best) -> None:
        assert row["kimg"] in read_evaluations(self.folder.rows_path)["kimg"].tolist()
        assert (self.folder.out / samples_name(distiller.iteration)).is_file()
        state = torch.load(self.folder.out / CHECKPOINT, weights_only=True)
        assert state["iteration"] == distiller.iteration
        self.seen.append(row["kimg"])
        self.bests.append(best["fid"])


def test_rows_are_on_disk_before_reports_and_a_failing_tracker_does_not_stop_the_run(tmp_path, teacher_file, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "tensorboard").write_text("a file where TensorBoard wants its folder")  # the tracker cannot start
    config = tiny(teacher_file)
    folder = RunFolder(out)
    tracker = RunTracker(out, config.to_dict(), TrackingSettings(("tensorboard",)))
    check, rows = OnDisk(folder), RowSink()
    run_rank(config, folder, device=torch.device("cpu"), sinks=[tracker, check, rows], progress=False)
    assert check.seen == pytest.approx(config.evaluation_kimg())  # every evaluation reached the last sink
    assert check.bests == [min(r["fid"] for r in rows.rows[: i + 1]) for i in range(len(rows.rows))]
    assert capsys.readouterr().err.count("tracking: tensorboard is off") == 1


def test_the_distiller_reads_no_file_the_caller_passes_the_init_generator(teacher_file):
    config = tiny(teacher_file, init_generator="/nowhere/generator.pt")
    with pytest.raises(ValueError, match="pass the loaded generator"):  # not "no such file": nothing was read
        Distiller(config, load_teacher(teacher_file))
    other = load_teacher(teacher_file)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    distiller = Distiller(config, load_teacher(teacher_file), generator=other)
    assert torch.equal(next(distiller.generator_ema.parameters()), next(other.parameters()))


def test_the_losses_are_nan_when_the_nan_guard_dropped_every_sample(teacher_file):
    distiller = Distiller(tiny(teacher_file), load_teacher(teacher_file))
    poison(distiller.generator)
    distiller.step()
    stats = distiller.pop_stats()  # 0/0 means, not the 0 that was summed
    assert stats["nan_samples"] == 8 and math.isnan(stats["loss_fake_score"]) and math.isnan(stats["loss_generator"])
    distiller = Distiller(tiny(teacher_file), load_teacher(teacher_file))
    distiller.step()
    stats = distiller.pop_stats()
    assert stats["nan_samples"] == 0 and math.isfinite(stats["loss_fake_score"])


W_DIGIT_FEATURES = torch.randn(64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
W_DIGIT_CLASSES = torch.randn(64, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


class DigitsStandIn(torch.nn.Module):
    """A detector of 8x8 gray images, linear in the pixels: 64 features (the digits reference's width) and 10-class
    probabilities, both recomputable in float64 numpy."""

    name, feature_dim = "digits-standin", 64

    def forward(self, images):
        return images.flatten(1).double() / 255 @ W_DIGIT_FEATURES

    def probabilities(self, images):
        return torch.softmax(images.flatten(1).double() / 64 @ W_DIGIT_CLASSES, dim=1)


@pytest.mark.parametrize("metrics", ["fd", "fd,is"])
def test_training_evaluations_record_the_inception_score_of_their_own_images(teacher_file, metrics):
    # fid_detector names Inception (the detector an Inception Score needs); the stand-in computes, so that the IS can
    # be recomputed independently: scipy's entropies of the same images' probabilities, 10 splits.
    config = tiny(teacher_file, fid_detector=INCEPTION, eval_metrics=metrics, fid_images=40)
    distiller, rows = Distiller(config, load_teacher(teacher_file)), RowSink()
    train(distiller, evaluator=Evaluator(config, detector=DigitsStandIn(), batch_size=16), sinks=[rows],
          progress=False)
    assert [r["kimg"] for r in rows.rows] == pytest.approx(config.evaluation_kimg())
    if metrics == "fd":
        assert all(math.isnan(r["is_mean"]) and math.isnan(r["is_std"]) for r in rows.rows)
        return
    assert all(math.isfinite(r["is_mean"]) and r["is_std"] >= 0 for r in rows.rows)
    images = torch.cat([distiller.sample(i, n) for i, n in enumerate([16, 16, 8])])  # the last evaluation's images
    logits = quantize(images).flatten(1).double().numpy() / 64 @ W_DIGIT_CLASSES.numpy()
    probs = np.exp(logits - logits.max(1, keepdims=True))
    want = scipy_inception_score(probs / probs.sum(1, keepdims=True), 10)
    assert (rows.rows[-1]["is_mean"], rows.rows[-1]["is_std"]) == pytest.approx(want, rel=1e-6)
    fd_only = Evaluator(config.replace(eval_metrics="fd"), detector=DigitsStandIn(), batch_size=16)
    assert rows.rows[-1]["fid"] == pytest.approx(fd_only.score(distiller.sample, 40).fd, rel=1e-12)


def test_an_inception_score_with_a_detector_without_class_probabilities_is_refused(teacher_file):
    config = tiny(teacher_file, fid_detector=INCEPTION, eval_metrics="fd,is")
    with pytest.raises(ValueError, match="detector digits-features-v1 gives no class probabilities"):
        Evaluator(config, detector=get_detector("digits-features-v1"))
