"""--init-generator: a distillation whose generator (and G_ema) start from given weights, the fake score from the
teacher; a different architecture is refused."""

import subprocess
import sys

import pytest
import torch

from sid.config import preset
from sid.distill import Distiller
from sid.generators import load_generator
from sid.networks.precond import EDMPrecond
from sid.run import load_checkpoint
from sid.teachers import load_teacher
from sid.testing.fixtures import TEACHER_KWARGS, make_teacher


def save_generator(net, path, **overrides):
    kwargs = {**net.init_kwargs, **overrides}
    torch.save(dict(init_kwargs=kwargs, state_dict=net.state_dict(), sigma_init=2.5), path)
    return str(path)


@pytest.fixture
def tiny(tmp_path):
    """(teacher path, a generator file of the same architecture with other weights and another dropout)."""
    teacher_path = make_teacher(tmp_path / "teacher.pt")
    torch.manual_seed(1)
    other = EDMPrecond(**TEACHER_KWARGS)
    return teacher_path, save_generator(other, tmp_path / "best.pt", dropout=0.3), other


def config_for(teacher_path, **overrides):
    return preset("digits", teacher=teacher_path, batch=8, batch_per_device=8, fid_images=16, **overrides)


def test_generator_and_ema_start_from_the_init_generator_and_the_fake_score_from_the_teacher(tiny):
    teacher_path, init_path, other = tiny
    teacher = load_teacher(teacher_path)
    distiller = Distiller(config_for(teacher_path, init_generator=init_path), teacher,
                          generator=load_generator(init_path)[0])
    for net in (distiller.generator, distiller.generator_ema):
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(distiller.fake_score.state_dict().values(),
                                                 teacher.state_dict().values()))
    assert distiller.generator.init_kwargs["dropout"] == distiller.config.dropout  # the run's, not the file's
    distiller.step()  # trains from there
    assert not torch.equal(next(distiller.generator.parameters()), next(other.parameters()))
    plain = Distiller(config_for(teacher_path), teacher)  # '' keeps SiD's default: the teacher's weights
    assert all(torch.equal(a, b) for a, b in zip(plain.generator.state_dict().values(),
                                                 teacher.state_dict().values()))


def test_an_init_generator_of_another_architecture_is_refused(tiny, tmp_path):
    teacher_path, _, _ = tiny
    digits = save_generator(load_teacher("digits"), tmp_path / "digits.pt")
    with pytest.raises(ValueError, match=r"architecture differs from the teacher's \(.*channel_mult=\[1, 2\] vs "
                                         r"\[1\].*model_channels=32 vs 16"):
        Distiller(config_for(teacher_path, init_generator=digits), load_teacher(teacher_path),
                  generator=load_generator(digits)[0])


def test_distill_command_refuses_a_mismatched_init_generator_with_exit_2(tiny, tmp_path):
    teacher_path, _, _ = tiny
    done = subprocess.run([sys.executable, "-m", "sid", "distill", "--teacher", teacher_path, "--init-generator",
                           "digits", "--out", str(tmp_path / "run"), "--duration-kimg", "0.008", "--batch", "8",
                           "--batch-per-device", "8", "--no-progress"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "architecture differs from the teacher's" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_checkpoints_from_before_init_generator_still_resume(tiny, tmp_path):
    teacher_path, _, _ = tiny
    config = config_for(teacher_path)
    old = {k: v for k, v in config.to_dict().items() if k != "init_generator"}
    torch.save(dict(config=old), tmp_path / "checkpoint.pt")
    assert load_checkpoint(tmp_path / "checkpoint.pt", config)["config"] == old
    with pytest.raises(ValueError, match="different config"):
        load_checkpoint(tmp_path / "checkpoint.pt", config.replace(init_generator="x.pt"))
