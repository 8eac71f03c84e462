"""SiD distillation: the Distiller (three networks, two optimisers, EMA, one iteration) and the loop in kimg.

One iteration follows the official order (docs/sid-facts.md 2.4): a fake-score update on fresh generator samples, then a
generator update on another fresh batch, each accumulated over micro-batches, NaN grads mapped to finite values
before each Adam step, then the EMA of the generator. Progress is counted like the official code:
kimg = iterations * batch / 1000 (each iteration also generates a second batch for the fake-score update).

Noise is drawn per micro-batch slot from a seed derived from (run seed, iteration, phase, global slot index), so a run
gives the same numbers whether its global batch is split over ranks or accumulated in one process, and however often
it was interrupted and resumed.

SiDA (config.method 'sida', docs/sida.md) runs in the same iteration: the fake-score update adds the discriminator
term on real images (their labels condition the generated ones), its gradients clipped by value at 1; the generator
update adds the adversarial term after adversarial_warmup_kimg, and the generator does not step before
generator_warmup_kimg.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from sid import fast, phema
from sid.augment import AugmentPipe
from sid.config import DistillConfig, parse_sigma_rels
from sid.datasets import UNCONDITIONAL, LabelDistribution, sample_classes
from sid.generators import check_same_architecture
from sid.losses import (
    fake_score_adversarial_loss,
    fake_score_loss,
    generator_adversarial_loss,
    generator_loss,
    sample_fake_score_sigma,
    sample_generator_sigma,
)
from sid.networks.precond import architecture_difference
from sid.real_images import RealImages, check_real_images, real_batches
from sid.teachers import sigma_range

PHASE_FAKE, PHASE_GENERATOR, PHASE_EVAL = 0, 1, 2
FAKE_SCORE_GRAD_CLIP = 1.0  # SiDA: the fake score's gradients are clipped by value to +-this (official)
DDP_ARGS = inspect.signature(nn.parallel.DistributedDataParallel).parameters


def rebuild(net: nn.Module, **overrides) -> nn.Module:
    """A new network of the same kind, architecture and weights, with some constructor arguments changed
    (this run's dropout, the official fp16 mode): how SiD copies the teacher into fake score and generator."""
    clone = type(net)(**{**net.init_kwargs, **overrides})
    clone.load_state_dict(net.state_dict())
    return clone


def student_kwargs(teacher_kwargs: dict, config: DistillConfig) -> dict:
    """Constructor arguments of the fake score and generator: the teacher's, with this run's dropout and fp16 mode."""
    return {**teacher_kwargs, "dropout": config.dropout, "use_fp16": config.precision == "fp16"}


def check_state_architecture(saved: dict, built: dict) -> None:
    """ValueError naming every differing constructor argument when a training state (its `saved` generator_init_kwargs)
    was made with another network than the one this run `built`."""
    differences = architecture_difference(dict(saved or {}), dict(built))
    if differences:
        diff = ", ".join(f"{k}: saved {a!r}, this run {b!r}" for k, (a, b) in differences.items())
        raise ValueError(f"the training state was made with another network architecture ({diff}); expected the "
                         f"architecture of this run's teacher")


def slot_seed(seed: int, iteration: int, phase: int, slot: int) -> int:
    return int(np.random.SeedSequence([seed, iteration, phase, slot]).generate_state(1, np.uint64)[0] >> 1)


def generator_inputs(n: int, rng: torch.Generator, *, img_shape: tuple[int, ...], label_dim: int, sigma_init: float,
                     device: torch.device,
                     class_probs: torch.Tensor | None = None,  # the dataset's class frequencies; None: uniform
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z = sigma_init * N(0, I) and one-hot labels of classes drawn from `class_probs` (sid.datasets.sample_classes;
    None for an unconditional network)."""
    z = torch.randn((n, *img_shape), generator=rng, device=device) * sigma_init
    labels = None
    if label_dim:
        labels = nn.functional.one_hot(sample_classes(n, rng, label_dim, class_probs), label_dim).float()
    return z, labels


@torch.no_grad()
def sample_evaluation_batch(net: nn.Module, config: DistillConfig, batch_index: int, n: int,
                            device: torch.device, *, class_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Images of evaluation batch `batch_index` of a run: its latents (and classes, drawn from `class_probs`) depend
    on (seed, batch) only, so every evaluation of a run, and every post-hoc EMA of it (sid/commands/phema.py), sees
    the same z."""
    rng = torch.Generator(device).manual_seed(slot_seed(config.seed, 0, PHASE_EVAL, batch_index))
    z, labels = generator_inputs(n, rng, img_shape=(net.img_channels, net.img_resolution, net.img_resolution),
                                 label_dim=net.label_dim, sigma_init=config.sigma_init, device=device,
                                 class_probs=class_probs)
    fast.set_precision_flags(config.precision, device)
    with fast.autocast(config.precision, device):
        return net(z, torch.full((n,), config.sigma_init, device=device), labels).float()


def _grads_nan_to_num(params: Iterator[nn.Parameter]) -> None:
    for p in params:
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)


class Distiller:
    """Owns teacher, fake score, generator, G_ema and both optimisers; `step()` runs one SiD iteration on this
    rank's share of the global batch. Works with or without an initialised torch.distributed process group."""

    def __init__(self, config: DistillConfig, teacher: nn.Module, *, device: str | torch.device = "cpu",
                 rank: int = 0, world_size: int = 1,
                 student: nn.Module | None = None,    # initial weights of fake score and generator (default: teacher)
                 generator: nn.Module | None = None,  # config.init_generator, loaded by the caller (load_generator)
                 micro_batch: int = 0,                # per-device micro-batch when config.batch_per_device is 0
                 labels: LabelDistribution | None = None,  # classes drawn (None: uniform)
                 real: RealImages | None = None) -> None:  # SiDA's real images (None: real_batches(config))
        """SiD (the default) starts fake score and generator from the teacher's weights. No I/O here but SiDA's
        real images when not given: the caller loads what the config names (teacher, init_generator, the labels'
        class counts: sid.datasets.label_distribution) and, with batch_per_device 0, measures `micro_batch` first
        (sid.micro_batch.fit_micro_batch)."""
        self.config, self.device, self.rank, self.world_size = config, torch.device(device), rank, world_size
        per_device = config.batch_per_device or micro_batch
        if per_device < 1:
            raise ValueError("batch_per_device=0 needs the measured micro_batch (sid.micro_batch.fit_micro_batch)")
        self.rounds = config.replace(batch_per_device=per_device).accumulation_rounds(world_size)
        self.batch_per_rank = config.batch // world_size
        if self.batch_per_rank % self.rounds:
            raise ValueError(f"batch {config.batch} over {world_size} ranks does not split into {self.rounds} "
                             f"equal micro-batches of at most {per_device}")
        self.micro_batch = self.batch_per_rank // self.rounds
        self.notes = sigma_range(teacher, config)  # refuses a run beyond the teacher's largest sigma, before training
        self.img_shape = (teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
        self.label_dim = teacher.label_dim
        self.labels = labels or LabelDistribution(None, "uniform" if self.label_dim else UNCONDITIONAL.source)
        use_fp16 = config.precision == "fp16"  # the official mode: U-Net bodies in fp16 on CUDA
        self.teacher = rebuild(teacher, use_fp16=use_fp16).to(self.device).eval().requires_grad_(False)
        student = teacher if student is None else student
        self.fake_score = rebuild(student, **student_kwargs({}, config)).to(self.device)
        init = student
        if config.init_generator:  # e.g. a released SiD generator; the fake score still starts from `student`
            if generator is None:
                raise ValueError(f"init_generator {config.init_generator}: pass the loaded generator "
                                 "(sid.generators.load_generator) as Distiller(generator=...)")
            check_same_architecture(generator, teacher, f"init_generator {config.init_generator}")
            init = generator
        self.generator = rebuild(init, **student_kwargs({}, config)).to(self.device)
        self.generator_ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        # Post-hoc EMA profiles (sid/phema.py): (sigma_rel, gamma, copy of the generator), updated with G_ema.
        self.profiles = [(s, phema.exponent(s), copy.deepcopy(self.generator_ema))
                      for s in parse_sigma_rels(config.phema)]
        for net in (self.teacher, self.fake_score, self.generator, self.generator_ema):
            fast.prepare_network(net, memory_format=config.memory_format, compile=config.compile)
        adam = dict(eps=config.adam_eps, **fast.optimizer_kwargs(self.device))
        self.fake_opt = torch.optim.Adam(self.fake_score.parameters(), lr=config.lr,
                                         betas=(config.beta1, config.beta2), **adam)
        self.gen_opt = torch.optim.Adam(self.generator.parameters(), lr=config.glr,
                                        betas=(config.g_beta1, config.beta2), **adam)
        self.augment = None
        if config.augment > 0:
            self.augment = AugmentPipe(p=config.augment)
        self.sida = config.method == "sida"
        self.real = None
        if self.sida:  # refused here, before anything trains
            if not getattr(self.fake_score, "has_encoder", False):
                raise ValueError(f"method 'sida' reuses the fake score's encoder as its discriminator; the teacher's "
                                 f"network ({type(teacher).__name__}) has none: use method 'sid'")
            if real is None:
                real = real_batches(config, device=self.device, label_dim=self.label_dim)
            check_real_images(real, teacher)
            self.real = real.with_labels(self.label_dim).to(self.device)
        self.fake_ddp, self.gen_ddp = self.fake_score, self.generator
        if world_size > 1 and torch.distributed.is_initialized():
            # Buffers (resample filters) are constants: never re-broadcast them in forward. torch >= 2.13 names
            # this forward_sync_buffers and warns on the older broadcast_buffers.
            sync = "forward_sync_buffers" if "forward_sync_buffers" in DDP_ARGS else "broadcast_buffers"
            ddp = {sync: False, "find_unused_parameters": False}
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.fake_ddp = nn.parallel.DistributedDataParallel(self.fake_score, device_ids=ids, **ddp)
            self.gen_ddp = nn.parallel.DistributedDataParallel(self.generator, device_ids=ids, **ddp)
        self.fake_score.eval().requires_grad_(False)
        self.generator.eval().requires_grad_(False)
        self.iteration = 0
        # fake loss, G loss, NaN samples, discriminator loss, G adversarial loss
        self._stats = torch.zeros(5, dtype=torch.float64, device=self.device)
        self._stat_iterations = 0

    @property
    def kimg(self) -> float:
        return self.iteration * self.config.batch / 1000

    # ------------------------------------------------------------------------------------------ noise
    def _rng(self, phase: int, round_index: int) -> torch.Generator:
        slot = self.rank * self.rounds + round_index
        seed = slot_seed(self.config.seed, self.iteration, phase, slot)
        if self.config.dropout > 0:
            torch.manual_seed(seed)  # dropout masks come from the global generator: make them per-slot too
        return torch.Generator(self.device).manual_seed(seed)

    def _generator_inputs(self, n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        return generator_inputs(n, rng, img_shape=self.img_shape, label_dim=self.label_dim,
                                sigma_init=self.config.sigma_init, device=self.device, class_probs=self.labels.probs)

    def _sigma(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.config.sigma_init, device=self.device)

    def _autocast(self, scores: bool = False) -> contextlib.AbstractContextManager:
        """`scores=True`: the teacher and fake score inside the generator loss (kept out of bf16 by 'bf16-tf32')."""
        return fast.autocast(self.config.precision, self.device, scores=scores)

    @staticmethod
    def _sync(module: nn.Module, last_round: bool) -> contextlib.AbstractContextManager:
        """All-reduce gradients only on the last accumulation round."""
        if isinstance(module, nn.parallel.DistributedDataParallel) and not last_round:
            return module.no_sync()
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------------------ one iteration
    def step(self) -> None:
        cfg, n = self.config, self.micro_batch
        fast.set_precision_flags(cfg.precision, self.device)
        # Phase A: fake-score update on fresh generator samples.
        self.fake_score.train().requires_grad_(True)
        self.fake_opt.zero_grad(set_to_none=True)
        for r in range(self.rounds):
            rng = self._rng(PHASE_FAKE, r)
            z, labels = self._generator_inputs(n, rng)
            real = None
            if self.sida:  # the generated images take the real batch's labels
                real, labels = self.real.draw(n, rng)
            with torch.no_grad(), self._autocast():
                images = self.generator(z, self._sigma(n), labels).float()
            augment_labels = real_augment_labels = None
            if self.augment is not None:  # real and generated images: each its own draw
                images, augment_labels = self.augment(images, generator=rng)
                if real is not None:
                    real, real_augment_labels = self.augment(real, generator=rng)
            sigma = sample_fake_score_sigma(n, generator=rng, device=self.device)
            noise = torch.randn(images.shape, generator=rng, device=self.device)
            with self._sync(self.fake_ddp, r == self.rounds - 1), self._autocast():
                if self.sida:
                    loss, disc, kept = fake_score_adversarial_loss(
                        self.fake_ddp, images, real, labels, sigma=sigma, noise=noise, augment_labels=augment_labels,
                        real_augment_labels=real_augment_labels, return_kept=True)
                    total = loss.sum() * (cfg.ls / self.batch_per_rank) + disc.sum() * (cfg.lsd / self.batch_per_rank)
                    self._stats[3] += disc.detach().sum() / self.batch_per_rank
                else:
                    loss, kept = fake_score_loss(self.fake_ddp, images, labels, sigma=sigma, noise=noise,
                                                 augment_labels=augment_labels, return_kept=True)
                    total = loss.sum() * (cfg.ls / self.batch_per_rank)
                total.backward()
            self._stats[0] += loss.detach().sum() / self.batch_per_rank
            self._stats[2] += (~kept).sum()
        self.fake_score.eval().requires_grad_(False)
        _grads_nan_to_num(self.fake_score.parameters())
        if self.sida:
            nn.utils.clip_grad_value_(self.fake_score.parameters(), FAKE_SCORE_GRAD_CLIP)
        self.fake_opt.step()

        # Phase B: generator update on another fresh batch, backpropagating through teacher and fake score.
        self.generator.train().requires_grad_(True)
        self.gen_opt.zero_grad(set_to_none=True)
        nimg = self.iteration * cfg.batch  # images before this iteration: the official warm-ups compare it
        adversarial = self.sida and nimg > cfg.adversarial_warmup_kimg * 1000
        for r in range(self.rounds):
            rng = self._rng(PHASE_GENERATOR, r)
            z, labels = self._generator_inputs(n, rng)
            if self.sida:
                _, labels = self.real.draw(n, rng)
            with self._sync(self.gen_ddp, r == self.rounds - 1):
                with self._autocast():
                    images = self.gen_ddp(z, self._sigma(n), labels).float()
                sigma = sample_generator_sigma(n, cfg.tmax, generator=rng, device=self.device)
                noise = torch.randn(images.shape, generator=rng, device=self.device)
                with self._autocast(scores=True):
                    if self.sida:
                        loss, gan, kept = generator_adversarial_loss(
                            self.teacher, self.fake_score, images, labels, alpha=cfg.alpha, sigma=sigma, noise=noise,
                            return_kept=True)
                        self._stats[4] += gan.detach().sum() / self.batch_per_rank
                    else:
                        loss, kept = generator_loss(self.teacher, self.fake_score, images, labels, alpha=cfg.alpha,
                                                    sigma=sigma, noise=noise, return_kept=True)
                total = loss.sum() * (cfg.lsg / self.batch_per_rank)
                if adversarial:
                    total = 0.5 * total + 0.5 * gan.sum() * (cfg.lsg_gan / self.batch_per_rank)
                total.backward()
            self._stats[1] += loss.detach().sum() / self.batch_per_rank
            self._stats[2] += (~kept).sum()
        self.generator.eval().requires_grad_(False)
        _grads_nan_to_num(self.generator.parameters())
        if not self.sida or nimg > cfg.generator_warmup_kimg * 1000:
            self.gen_opt.step()

        self._update_ema()
        self.iteration += 1
        self._stat_iterations += 1

    @torch.no_grad()
    def _update_ema(self) -> None:
        cfg = self.config
        nimg = self.iteration * cfg.batch
        halflife = min(cfg.ema_mimg * 1e6, nimg * cfg.ema_rampup)
        beta = 0.5 ** (cfg.batch / max(halflife, 1e-8))
        torch._foreach_lerp_(list(self.generator_ema.parameters()), list(self.generator.parameters()), 1 - beta)
        for _, gamma, net in self.profiles:  # power-function profiles: beta after step t = (1 - 1/t)^(gamma + 1)
            step_beta = phema.beta(self.iteration + 1, gamma)
            torch._foreach_lerp_(list(net.parameters()), list(self.generator.parameters()), 1 - step_beta)

    def pop_stats(self) -> dict[str, float]:
        """Mean losses per iteration and NaN samples since the last call (one device sync). The losses are NaN
        without an iteration, and when the NaN guard dropped every sample of both phases: their means are 0/0 then,
        not the 0 that was summed. SiDA's two adversarial terms (unscaled, like the others) are NaN for SiD. Over DDP
        ranks (every rank calls this at the same iterations): the global batch's, as one process accumulating it
        would report, not rank 0's share."""
        stats, ranks = self._stats, 1
        if self.world_size > 1 and torch.distributed.is_initialized():
            stats, ranks = stats.clone(), self.world_size
            torch.distributed.all_reduce(stats)
        fake, gen, nans, disc, gan = stats.tolist()
        k = self._stat_iterations
        measured = k > 0 and nans < 2 * k * self.batch_per_rank * ranks
        adversarial = measured and self.sida
        out = dict(loss_fake_score=fake / (k * ranks) if measured else math.nan,
                   loss_generator=gen / (k * ranks) if measured else math.nan, nan_samples=int(nans),
                   loss_discriminator=disc / (k * ranks) if adversarial else math.nan,
                   loss_generator_gan=gan / (k * ranks) if adversarial else math.nan)
        self._stats.zero_()
        self._stat_iterations = 0
        return out

    # ------------------------------------------------------------------------------------------ sampling
    def sample(self, batch_index: int, batch_size: int) -> torch.Tensor:
        """G_ema images of a fixed evaluation batch: the same z at every evaluation of a run."""
        return sample_evaluation_batch(self.generator_ema, self.config, batch_index, batch_size, self.device,
                                       class_probs=self.labels.probs)

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue bit-exactly: networks, optimisers, EMA, iteration, RNG states."""
        return dict(
            config=self.config.to_dict(), iteration=self.iteration,
            fake_score=self.fake_score.state_dict(), generator=self.generator.state_dict(),
            generator_ema=self.generator_ema.state_dict(), generator_init_kwargs=dict(self.generator.init_kwargs),
            phema=[net.state_dict() for _, _, net in self.profiles],
            fake_opt=self.fake_opt.state_dict(), gen_opt=self.gen_opt.state_dict(),
            cpu_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        )

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; a ValueError naming both architectures if it was made with another network."""
        check_state_architecture(state.get("generator_init_kwargs"), self.generator.init_kwargs)
        self.fake_score.load_state_dict(state["fake_score"])
        self.generator.load_state_dict(state["generator"])
        self.generator_ema.load_state_dict(state["generator_ema"])
        for (_, _, net), saved in zip(self.profiles, state.get("phema") or []):
            net.load_state_dict(saved)
        self.fake_opt.load_state_dict(state["fake_opt"])
        self.gen_opt.load_state_dict(state["gen_opt"])
        self.iteration = int(state["iteration"])
        torch.set_rng_state(state["cpu_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
