"""Every preset's architecture, scaled down, through what users run: one SiD iteration, DDP over 2 ranks against one
process accumulating the same micro-batches, and a resume in the middle; the same for SiDA on every EDM preset's
architecture (random real images of its shape and classes; the digits presets have their own SiDA preset).

Parametrized over sid.config.PRESETS: a preset added later is covered without a new test (its teacher needs an entry
in sid.teachers.EDM_ARCHITECTURES or be an embedded one, or this file fails for it). digits-ddpm brings the diffusers
VP kind through the same tests. The scaled-down networks keep everything of the real one that changes the computation
graph (model type, embedding/encoder/decoder types, augment_dim, label_dim, attention, the preset's dropout, augment
probability and precision flags) and shrink widths, blocks and resolution for a CPU.
The DDP ranks are two processes of torch.multiprocessing on gloo, started once for all presets."""

from __future__ import annotations

import io
import json
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sid.config import PRESETS, preset
from sid.distill import Distiller
from sid.networks.build import build_network
from sid.networks.precond import RUNTIME_KWARGS, EDMPrecond
from sid.real_images import RealImages
from sid.teachers import EDM_ARCHITECTURES, load_network_file, teacher_architecture
from sid.testing.fixtures import preset_architecture, random_teacher, save_network

NAMES = list(PRESETS)
SIDA = "+sida"  # a case's suffix: the preset run with method 'sida'
# SiDA on each distinct EDM teacher architecture (AFHQv2-64's is FFHQ-64's)
def _architecture(name: str) -> str:
    return str({k: v for k, v in teacher_architecture(PRESETS[name]["teacher"]).items() if k not in RUNTIME_KWARGS})


SIDA_NAMES = list({_architecture(name): name for name in reversed(NAMES)
                   if PRESETS[name]["teacher"].startswith("edm:")}.values())[::-1]
CASES = NAMES + [name + SIDA for name in SIDA_NAMES]
# 3 iterations of 4 images: the generator frozen in the first, SiD's term alone in the second, SiD + adversarial after
TINY_WARMUPS = dict(generator_warmup_kimg=0.002, adversarial_warmup_kimg=0.006)
ITERATIONS = 3
NETS = ("generator", "fake_score", "generator_ema")
MANIFESTS = {"edm:cifar10-uncond": "manifest_cifar10_ddpmpp_uncond", "edm:ffhq64": "manifest_ffhq64_ddpmpp_uncond",
             "edm:imagenet64-cond": "manifest_imagenet64_adm_cond"}


def tiny_config(name: str, teacher: str, **overrides):
    """The preset's own settings (dropout, augment, precision, Adam) with a tiny batch: 4 = 2 ranks x 2."""
    return preset(name, teacher=teacher, batch=4, batch_per_device=2, duration_kimg=0.012, **overrides)


def random_real(net: EDMPrecond) -> RealImages:
    """16 random images in [-1, 1] of the network's shape, with its classes (the same in every process)."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, net.img_channels, net.img_resolution, net.img_resolution, generator=g) * 2 - 1
    classes = torch.arange(16) % net.label_dim if net.label_dim else None
    return RealImages(images, classes, class_count=net.label_dim, name="random")


def distiller(case: str, teacher: str, **kwargs) -> Distiller:
    net = load_network_file(teacher)
    if case.endswith(SIDA):
        config = tiny_config(case.removesuffix(SIDA), teacher, method="sida", data="random", **TINY_WARMUPS)
        return Distiller(config, net, real=random_real(net), **kwargs)
    config = tiny_config(case, teacher)
    return Distiller(config.replace(**TINY_WARMUPS) if config.method == "sida" else config, net, **kwargs)


def preset_of(case: str) -> str:
    return case.removesuffix(SIDA)


def states(d: Distiller) -> dict:
    return {net: {k: v.detach().clone() for k, v in getattr(d, net).state_dict().items()} for net in NETS}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("teachers")
    return {name: save_network(random_teacher(name, scaled=True), folder / f"{name}.pt") for name in NAMES}


@pytest.fixture(scope="module")
def one_process(teachers) -> dict[str, dict]:
    """Each case's networks after ITERATIONS iterations in one process (2 micro-batches of 2 per iteration)."""
    out = {}
    for name in CASES:
        d = distiller(name, teachers[preset_of(name)])
        for _ in range(ITERATIONS):
            d.step()
        out[name] = states(d)
    return out


def _ddp_rank(rank: int, world_size: int, port: int, teachers: dict[str, str], out: str) -> None:
    """One DDP rank: every preset in turn; rank 0 saves the networks (or the error) per preset."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    for name in CASES:
        try:
            d = distiller(name, teachers[preset_of(name)], rank=rank, world_size=world_size)
            for _ in range(ITERATIONS):
                d.step()
            result = states(d)
        except Exception:  # recorded per preset, so one broken preset fails its own test only
            result = traceback.format_exc()
        if rank == 0:
            torch.save(result, Path(out) / f"{name}.pt")
        dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(teachers, tmp_path_factory) -> Path:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_rank, args=(2, port, teachers, str(out)), nprocs=2, join=True)
    return out


# diffusers' attention key biases: a constant shift of every logit of a softmax, so their gradient is exactly zero in
# exact arithmetic; Adam turns the float round-off into steps of +-lr whose sign depends on the summation order.
ZERO_GRADIENT = ("to_k.bias",)


def relative_difference(a: dict, b: dict) -> float:
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item() for k in b
               if b[k].is_floating_point() and not k.endswith(ZERO_GRADIENT))


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("teacher", sorted(MANIFESTS))
def test_recorded_edm_architectures_match_the_full_size_manifests(teacher):
    manifest = json.loads((Path(__file__).parent / "data" / "parity" / f"{MANIFESTS[teacher]}.json").read_text())
    with torch.device("meta"):
        net = EDMPrecond(**EDM_ARCHITECTURES[teacher])
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == manifest["tensors"]


@pytest.mark.parametrize("name", NAMES)
def test_scaled_architecture_keeps_what_shapes_the_graph(name):
    real, small = teacher_architecture(PRESETS[name]["teacher"]), preset_architecture(name, scaled=True)
    for key in ("model_type", "label_dim", "augment_dim", "embedding_type", "encoder_type", "decoder_type",
                "channel_mult", "img_channels"):
        assert small.get(key) == real.get(key), key
    net = build_network(small)
    assert any(word in k for k in net.state_dict() for word in ("attn", "qkv", "attentions")), \
        "the scaled network lost its attention"


@pytest.mark.parametrize("name", CASES)
def test_one_iteration_gives_every_parameter_a_finite_gradient(name, teachers):
    config = tiny_config(preset_of(name), teachers[preset_of(name)])
    d = distiller(name, teachers[preset_of(name)])
    assert d.fake_opt.param_groups[0]["eps"] == (1e-6 if config.precision == "fp16" else 1e-8)
    for _ in range(ITERATIONS if d.sida else 1):  # SiDA: the last iteration has the adversarial terms
        d.step()
    stats = d.pop_stats()
    losses = ["loss_fake_score", "loss_generator", *(["loss_discriminator", "loss_generator_gan"] if d.sida else [])]
    assert torch.isfinite(torch.tensor([stats[k] for k in losses])).all(), stats
    for net in ("generator", "fake_score"):
        for key, p in getattr(d, net).named_parameters():
            assert p.grad is not None, f"{net}.{key} got no gradient (DDP would stop at the next iteration)"
            assert p.grad.isfinite().all(), f"{net}.{key}"
            if d.sida and net == "fake_score":  # clipped by value, as the official SiDA loop
                assert p.grad.abs().max() <= 1.0, key
            # The generator's augment layer is fed the official zeros: in the graph, with an exactly zero gradient.
            if not (net == "generator" and "map_augment" in key):
                assert p.grad.abs().sum() > 0, f"{net}.{key} has an all-zero gradient"


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first case includes both fixtures: every case in 1 process and in 2 ranks
@pytest.mark.parametrize("name", CASES)
def test_two_ddp_ranks_equal_one_process_accumulating_the_same_micro_batches(name, one_process, two_ranks):
    result = torch.load(two_ranks / f"{name}.pt", weights_only=True)
    assert not isinstance(result, str), f"DDP failed for {name}:\n{result}"
    for net in NETS:
        difference = relative_difference(result[net], one_process[name][net])
        assert difference <= 1e-4, (net, difference)


@pytest.mark.parametrize("name", CASES)
def test_resume_in_the_middle_is_bit_exact(name, teachers, one_process):
    first = distiller(name, teachers[preset_of(name)])
    first.step()
    buffer = io.BytesIO()
    torch.save({**first.state_dict(), "wall_s": 0.0}, buffer)  # what a checkpoint file holds
    buffer.seek(0)
    resumed = distiller(name, teachers[preset_of(name)])
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(ITERATIONS - 1):
        resumed.step()
    for net, expected in one_process[name].items():
        got = getattr(resumed, net).state_dict()
        assert all(torch.equal(got[k], v) for k, v in expected.items()), net
