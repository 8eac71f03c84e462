"""The fast path (sid/fast.py): precision soundness against float32, float32 state, memory format, compile without
recompiles, no host-device syncs in an iteration, micro-batch fitting, and the smaller early evaluations.

Tolerances are in the unit roundoff u of each format: bf16 2^-8; fp16 (the official use_fp16 mode) and TF32, both
with a 10-bit mantissa, 2^-11. Measured on the digits architecture with random weights (N(0, 1/fan_in)):
- the U-Net output's relative error is 3.8-7.2 u in both formats (tolerance 10 u), so bf16's is ~8x fp16's;
- the generator loss's relative error is k u |f_phi| / |f_phi - f_psi| with k = 2.6-4.2 (tolerance 10): it grows as
  the fake score nears the teacher, where rounding noise swamps the small score difference. bf16 is 8x worse than
  the official fp16 mode there, which is why 'bf16-tf32' computes the two scores of that loss in float32/TF32.
"""

import copy
import math
import sys

import pytest
import torch
from torch._dynamo.utils import counters
from torch.overrides import TorchFunctionMode

from sid import fast, micro_batch
from sid.config import ConfigError, preset
from sid.distill import Distiller
from sid.loop import Evaluator, train
from sid.losses import fake_score_loss, generator_loss, sample_fake_score_sigma, sample_generator_sigma
from sid.testing.fixtures import RowSink, flat_params, random_teacher

U = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
GiB = 2**30


@pytest.fixture(scope="module")
def teacher():
    return random_teacher("digits", seed=0)


def config(**overrides):
    base = dict(batch=16, batch_per_device=16, lr=1e-3, glr=1e-3, ema_mimg=1e-5)
    return preset("digits", **{**base, **overrides})


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def perturbed(net, rho: float, seed: int = 1):
    """A copy whose weights differ from `net`'s by a relative rho (a fake score some way into training)."""
    torch.manual_seed(seed)
    other = copy.deepcopy(net)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1 + rho * torch.randn_like(p))
    return other


# ---------------------------------------------------------------------------------------------- precision soundness
NET_TOL, GEN_LOSS_TOL = 10, 10  # in u, and k in u / gap (see the module docstring)


def low_precision_errors(fn) -> dict:
    """Relative error of fn() under bf16 and fp16 autocast against float32."""
    ref = fn()
    out = {}
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            out[dtype] = rel(fn(), ref)
    return out


@pytest.mark.parametrize("sigma", [0.002, 0.3, 2.5, 24.0])
def test_reduced_precision_unet_error_is_a_few_unit_roundoffs(teacher, sigma):
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * sigma / math.sqrt(0.25 + sigma**2)
    c_noise = torch.full((64,), math.log(sigma) / 4)
    with torch.no_grad():
        errors = low_precision_errors(lambda: teacher.model(x, c_noise, None))
    for dtype, error in errors.items():
        assert U[dtype] / 4 < error < NET_TOL * U[dtype]  # more than u / 4: autocast did engage
    assert 4 < errors[torch.bfloat16] / errors[torch.float16] < 16  # the ratio of the unit roundoffs is 8


@pytest.mark.parametrize("rho", [0.1, 0.01])
def test_generator_loss_error_grows_as_the_fake_score_nears_the_teacher(teacher, rho):
    g = torch.Generator().manual_seed(2)
    fake = perturbed(teacher, rho)
    images = torch.randn(256, 1, 8, 8, generator=g) * 0.5
    sigma = sample_generator_sigma(256, 800, generator=g)
    noise = torch.randn(images.shape, generator=g)
    errors = low_precision_errors(lambda: generator_loss(teacher, fake, images, alpha=1.2, sigma=sigma, noise=noise))
    with torch.no_grad():
        x_t = images + sigma[:, None, None, None] * noise
        f_phi, f_psi = teacher(x_t, sigma), fake(x_t, sigma)
    gap = float((f_phi - f_psi).norm() / f_phi.norm())
    for dtype, error in errors.items():
        assert error < GEN_LOSS_TOL * U[dtype] / gap
    assert 4 < errors[torch.bfloat16] / errors[torch.float16] < 16
    if rho == 0.01:  # the small gap: bf16 loses most of the loss's value, the fp16 mantissa keeps it to ~10%
        assert errors[torch.bfloat16] > 0.25 > errors[torch.float16]


def test_fake_score_loss_error_within_the_cauchy_schwarz_bound(teacher):
    # K = |a|^2 with a = sqrt(lambda) (D - y): |K' - K| / K <= 2e + e^2 for e = |a' - a| / |a| <= NET_TOL u.
    g = torch.Generator().manual_seed(3)
    images = torch.randn(256, 1, 8, 8, generator=g) * 0.5
    sigma = sample_fake_score_sigma(256, generator=g)
    noise = torch.randn(images.shape, generator=g)
    ref = fake_score_loss(teacher, images, sigma=sigma, noise=noise).sum()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = fake_score_loss(teacher, images, sigma=sigma, noise=noise)
    assert low.dtype == torch.float32  # the loss arithmetic stays float32 under autocast
    e = NET_TOL * U[torch.bfloat16]
    assert 0 < abs(float(low.sum() - ref)) / float(ref) <= 2 * e + e * e


@pytest.mark.parametrize("precision", ["bf16", "bf16-tf32"])
def test_bf16_iteration_matches_float32_within_tolerance_and_keeps_float32_state(teacher, precision):
    ref, low = Distiller(config(), teacher), Distiller(config(precision=precision), teacher)
    ref.step()
    low.step()
    a, b = low.pop_stats(), ref.pop_stats()
    e = NET_TOL * U[torch.bfloat16]
    assert 0 < abs(a["loss_fake_score"] - b["loss_fake_score"]) / b["loss_fake_score"] <= 2 * e + e * e
    assert math.isfinite(a["loss_generator"]) and a["nan_samples"] == 0
    tensors = [*low.generator.parameters(), *low.fake_score.parameters(), *low.generator_ema.parameters()]
    tensors += [p.grad for p in low.generator.parameters()] + [p.grad for p in low.fake_score.parameters()]
    tensors += [t for opt in (low.fake_opt, low.gen_opt) for s in opt.state.values() for t in s.values()]
    assert all(t.dtype == torch.float32 for t in tensors)


@pytest.mark.parametrize("precision", ["bf16", "bf16-tf32"])
def test_nan_generator_samples_are_dropped_in_bf16_modes_too(teacher, precision):
    d = Distiller(config(precision=precision, memory_format="channels_last"), teacher)
    with torch.no_grad():  # every generator sample NaN
        d.generator.model.dec["8x8_aux_conv"].bias.fill_(math.nan)
    d.step()
    assert d.pop_stats()["nan_samples"] == 32  # 16 samples in each of the two phases
    assert all(torch.isfinite(p).all() for p in d.fake_score.parameters())


@pytest.mark.parametrize("precision,scores_in_bf16,rest_in_bf16", [
    ("fp32", False, False), ("tf32", False, False), ("fp16", False, False),
    ("bf16", True, True), ("bf16-tf32", False, True),
])
def test_autocast_covers_the_networks_each_mode_names(precision, scores_in_bf16, rest_in_bf16):
    cpu = torch.device("cpu")
    for scores, expected in ((True, scores_in_bf16), (False, rest_in_bf16)):
        with fast.autocast(precision, cpu, scores=scores):
            assert torch.is_autocast_enabled("cpu") == expected


# ---------------------------------------------------------------------------------------------- switches
def test_channels_last_iteration_equals_contiguous(teacher):
    ref, cl = Distiller(config(), teacher), Distiller(config(memory_format="channels_last"), teacher)
    weight = cl.generator.model.enc["8x8_block0"].conv0.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    for d in (ref, cl):
        d.step()
        d.step()
    a, b = cl.pop_stats(), ref.pop_stats()
    assert a["loss_fake_score"] == pytest.approx(b["loss_fake_score"], rel=1e-5)
    assert a["loss_generator"] == pytest.approx(b["loss_generator"], rel=1e-4, abs=1e-6)
    # The generators moved the same way. Adam (beta1 = 0) steps every element by about lr whatever its gradient's
    # size, so a rounding-level change flips the few near-zero gradient elements: whole updates differ by ~2%
    # (measured 2.2%) with no precision change at all. This is the floor of any precision comparison.
    update = flat_params(ref.generator) - flat_params(teacher)
    assert float((flat_params(cl.generator) - flat_params(ref.generator)).norm() / update.norm()) < 0.1
    assert all(s["exp_avg"].stride() == p.stride() for p, s in cl.gen_opt.state.items())


@pytest.mark.slow  # ~30 s of dynamo tracing on 2 cores
def test_compiled_unets_match_eager_and_stop_compiling_after_the_first_iteration(teacher):
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = Distiller(config(), teacher), Distiller(config(), teacher)
    for net in (compiled.teacher, compiled.fake_score, compiled.generator, compiled.generator_ema):
        net.model.compile(backend="aot_eager")  # guards and recompiles are dynamo's, whatever the backend
    compiled.step()
    frames = counters["frames"]["total"]
    assert 0 < frames <= 6  # few graphs despite the per-phase train/eval and requires_grad changes
    for _ in range(2):
        compiled.step()
        eager.step()
    eager.step()
    assert counters["frames"]["total"] == frames  # no recompiles
    a, b = compiled.pop_stats(), eager.pop_stats()
    assert a["loss_fake_score"] == pytest.approx(b["loss_fake_score"], rel=1e-5)
    assert a["loss_generator"] == pytest.approx(b["loss_generator"], rel=1e-4, abs=1e-6)
    torch._dynamo.reset()


def test_compile_switch_compiles_the_inner_unets_and_keeps_state_dict_names(teacher):
    d = Distiller(config(compile="default"), teacher)  # compilation itself is lazy: nothing runs here
    assert all(net.model._compiled_call_impl is not None for net in (d.teacher, d.fake_score, d.generator))
    assert list(d.generator.state_dict()) == list(teacher.state_dict())


class HostReads(TorchFunctionMode):
    """Records tensor reads into Python values (each one a device sync on a GPU) made from sid's own code."""

    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            frame = sys._getframe(1)  # the Python code that made the call (torch's own reads of CPU scalars,
            if "/sid/" in frame.f_code.co_filename:  # such as Adam's step counters, are not device syncs)
                self.calls.append(f"{func.__name__} at {frame.f_code.co_filename}:{frame.f_lineno}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("augment", [0.0, 0.12])
def test_an_iteration_reads_nothing_back_from_the_device(teacher, augment):
    d = Distiller(config(augment=augment, dropout=0.1), teacher)
    d.step()  # Adam's lazy state
    with HostReads() as reads:
        d.step()
    assert reads.calls == []


# ---------------------------------------------------------------------------------------------- micro-batch fitting
@pytest.mark.parametrize("per_rank,fixed,per_image,budget,expected", [
    (64, 2, 0.35, 20, 32),    # 2 + 0.35 m <= 20 -> m <= 51.4 -> largest divisor of 64: 32
    (64, 2, 0.35, 100, 64),   # everything fits
    (48, 1, 1, 14, 12),       # m <= 13 -> divisors of 48: 12
    (7, 1, 1, 5, 1),          # a prime batch: only 1 fits
])
def test_pick_micro_batch_takes_the_largest_divisor_that_fits(per_rank, fixed, per_image, budget, expected):
    assert micro_batch.pick_micro_batch(per_rank, fixed * GiB, per_image * GiB, budget * GiB) == expected


@pytest.mark.parametrize("fixed,per_image,budget,match", [(10, 1, 5, "one image per micro-batch needs 11.0 GiB"),
                                                          (math.nan, 1, 5, "finite")])
def test_pick_micro_batch_rejects_what_cannot_fit(fixed, per_image, budget, match):
    with pytest.raises(ValueError, match=match):
        micro_batch.pick_micro_batch(64, fixed * GiB, per_image * GiB, budget * GiB)


def test_largest_that_fits_is_one_micro_batch_per_rank_on_cpu(teacher):
    cfg = config(batch=32, batch_per_device=0)
    fitted = micro_batch.fit_micro_batch(cfg, teacher, device=torch.device("cpu"), world_size=2)
    d = Distiller(cfg, teacher, rank=1, world_size=2, micro_batch=fitted)
    assert (d.micro_batch, d.rounds) == (16, 1)
    with pytest.raises(ValueError, match="needs the measured micro_batch"):
        Distiller(cfg, teacher, rank=1, world_size=2)
    with pytest.raises(ConfigError, match="batch_per_device: 0"):
        config(batch_per_device=0).accumulation_rounds()


def test_cpu_backend_flags_stay_untouched():
    before = torch.backends.cudnn.benchmark
    fast.set_precision_flags("tf32", torch.device("cpu"))
    assert torch.backends.cudnn.benchmark == before
    assert fast.optimizer_kwargs(torch.device("cpu")) == dict(foreach=True)
    assert fast.optimizer_kwargs(torch.device("cuda")) == dict(fused=True)


@pytest.mark.parametrize("field,value,match", [("memory_format", "nhwc", "one of contiguous"),
                                               ("compile", "yes", "one of off"), ("precision", "bf8", "bf16-tf32"),
                                               ("batch_per_device", -1, ">= 0"), ("fid_images_final", -5, ">= 0")])
def test_fast_path_fields_reject_bad_values(field, value, match):
    with pytest.raises(ConfigError, match=match):
        config(**{field: value})


# ---------------------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("final,counts", [(0, [64, 64, 64]), (256, [64, 64, 256])])
def test_only_the_last_evaluation_uses_fid_images_final(teacher, final, counts):
    cfg = config(fid_images=64, fid_images_final=final, duration_kimg=0.032, eval_every_kimg=0.016)
    sink = RowSink()
    train(Distiller(cfg, teacher), evaluator=Evaluator(cfg), sinks=[sink], progress=False)
    rows = sink.rows
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert [r["fid_images"] for r in rows] == counts
    assert all(math.isfinite(r["fid"]) for r in rows)
