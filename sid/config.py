"""DistillConfig: every option of one SiD run, typed and validated, plus the official presets.

Values of the presets follow the official `run_sid.sh` (docs/sid-facts.md section 4). `digits` is the embedded default
that runs on a laptop CPU in minutes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

PRECISIONS = ("fp32", "tf32", "bf16", "bf16-tf32", "fp16")  # see sid/fast.py
MEMORY_FORMATS = ("contiguous", "channels_last")
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs")
# Feature networks of the Frechet distance, by the name every row, figure and table carries. Only INCEPTION gives FID.
INCEPTION = "inception-2015-12-05"      # NVIDIA's TorchScript Inception-v3 (EDM's and SiD's FID)
DIGITS_FEATURES = "digits-features-v1"  # the digits classifier trained by this project (sid/digits.py)
DINOV2 = "dinov2-vitl14"                # EDM2's FD_DINOv2: DINOv2 ViT-L/14 class tokens (sid/detectors.py)
DETECTORS = (INCEPTION, DIGITS_FEATURES, DINOV2)
DETECTOR_FILE_SUFFIX = ".pt"            # any other fid_detector ending so: a TorchScript feature network's file


def is_detector_file(name: str) -> bool:
    """Whether a fid_detector value names a TorchScript file of the user's (sid.detectors.DetectorFile)."""
    return name not in DETECTORS and name.endswith(DETECTOR_FILE_SUFFIX)


# fid_std, each evaluation's sampling error (sid.metrics.fd_jackknife): K groups cost K more eigendecompositions
# per evaluation and no more images.
FD_STD_GROUPS = 10
FD_STD_METHOD = f"delete-one-group jackknife s.e. over {FD_STD_GROUPS} disjoint groups of the generated images"
# What an evaluation can compute, one spelling each (eval_metrics, `sid evaluate --metrics`): the Frechet distance,
# the Inception Score (10 splits, StyleGAN3's is50k) and precision/recall (k = 3 neighbours, the official pr50k3).
METRICS = ("fd", "is", "pr")
TRAINING_METRICS = ("fd", "is")          # a training evaluation's: precision/recall needs real images (sid evaluate)
CLASS_DETECTORS = (INCEPTION,)           # detectors with class probabilities: the ones an Inception Score can use
# The registry of searchable fields (sid/cluster/space.py): each DistillConfig field a study can search, with the scale
# of its values: 'linear' (a Range is searched uniformly), 'log' (log-uniformly; figures use log axes), 'int'
# (integers; a Range covers low..high), 'categorical' (given values only: Grid or Choice). A field is searchable by
# being here; every other field is in UNSEARCHABLE with the reason (tests/test_space.py checks that each field is in
# one of the two, and docs/studies.md's table against both).
SEARCHABLE: dict[str, str] = {
    "alpha": "linear", "tmax": "int", "sigma_init": "linear", "ls": "log", "lsg": "log",
    "lr": "log", "glr": "log", "beta1": "linear", "g_beta1": "linear", "beta2": "linear", "adam_eps": "log",
    "batch": "categorical", "precision": "categorical", "dropout": "linear", "augment": "linear",
    "ema_mimg": "log", "ema_rampup": "linear", "seed": "int",
    "method": "categorical", "lsd": "log", "lsg_gan": "log", "generator_warmup_kimg": "linear",
    "adversarial_warmup_kimg": "linear",
}
_MEASUREMENT = "how trials are scored: trials are compared only when scored alike (run one study per measurement)"
_WHEN = "when the run evaluates or saves, not what it trains"
UNSEARCHABLE: dict[str, str] = {  # field (or a command's flag) -> why a study cannot search it
    "preset": "a label of the values the study started from",
    "teacher": "the model being distilled: a study compares settings for one teacher (run one study per teacher)",
    "init_generator": "a starting generator file, not a setting (run one study per starting point)",
    "batch_per_device": "memory only: accumulation rounds train the same batch to the same result",
    "memory_format": "speed only: the same training in another memory layout",
    "compile": "speed only: the same training, compiled",
    "phema": "post-hoc EMA profiles: `sid phema` rebuilds any EMA length after training (search ema_mimg to train "
             "with one)",
    "phema_every_kimg": _WHEN,
    "duration_kimg": "every trial's budget: trials are compared at equal kimg (asha stops poor trials early instead)",
    "eval_every_kimg": _WHEN, "eval_schedule": _WHEN, "eval_tick_kimg": _WHEN, "keep_snapshots": _WHEN,
    "fid_images": _MEASUREMENT, "fid_images_final": _MEASUREMENT, "fid_detector": _MEASUREMENT, "fid_ref": _MEASUREMENT,
    "out": "the output folder, a command flag: each trial writes its own, <study>/runs/<trial_id>",
    "seeds": "a count, a command flag: search seed (Grid([0, 1, 2])), or repeat the study with num_samples",
    "eval_metrics": _MEASUREMENT,
    "data": "the real images a method trains on: a study compares settings for one dataset (one study per dataset)",
    "class_counts": "the dataset's class frequencies: a fact of the data, not a setting",
}
EVAL_SCHEDULES = ("every", "official")
METHODS = ("sid", "sida")  # SiD (data-free), SiDA (the fake score's encoder as a discriminator on real images)
SNAPSHOT_KINDS = ("all", "best", "last")  # keep_snapshots: 'all', or a comma list of 'best' and 'last'
ADAM_EPS = {"fp16": 1e-6}                # the official rule: 1e-6 with fp16, else ADAM_EPS_DEFAULT
ADAM_EPS_DEFAULT = 1e-8
# The official code's progress ticks (docs/sid-facts.md section 3): a tick ends once eval_tick_kimg more kimg were used
# (run_sid.sh --tick); it evaluates after tick 0 (the first iteration), at ticks 10, 20, ..., 100 (the early, fast part
# of the curve), every --snap 50 ticks and at the end.
OFFICIAL_DENSE_TICKS, OFFICIAL_SNAP_TICKS = range(10, 101, 10), 50


SIGMA_REL_RANGE = (0.0, 0.3)  # post-hoc EMA profiles, exclusive: outside, no power-function EMA of a run


def parse_sigma_rels(text: str) -> tuple[float, ...]:
    """'0.05,0.10' -> (0.05, 0.1) (sid/phema.py); ValueError naming the expected range for anything else."""
    expected = f"expected distinct sigma_rel values in (0, 0.3) such as 0.05,0.10, got {text!r}"
    try:
        values = tuple(float(v) for v in text.split(",")) if text.strip() else ()
    except ValueError:
        raise ValueError(expected) from None
    lo, hi = SIGMA_REL_RANGE
    if any(not (math.isfinite(v) and lo < v < hi) for v in values) or len(set(values)) < len(values):
        raise ValueError(expected)
    return values


def parse_metrics(text: str, allowed: tuple[str, ...] = METRICS) -> tuple[str, ...]:
    """'fd,is' -> ('fd', 'is'); ValueError naming the allowed ones. The Frechet distance is always computed."""
    values = tuple(v.strip() for v in text.split(",")) if text.strip() else ()
    if not values or any(v not in allowed for v in values) or len(set(values)) < len(values) or "fd" not in values:
        raise ValueError(f"expected a comma list of distinct metrics from {', '.join(allowed)} that includes fd, "
                         f"got {text!r}")
    return values


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


@dataclass(frozen=True)
class DistillConfig:
    preset: str = "digits"                  # name of the preset these values started from (a label only)
    teacher: str = "digits"                 # digits, edm:<name>, diffusers:PATH, path, URL, hf://, module:function
    init_generator: str = ""                # initial generator: snapshot, run folder, .pkl, hf://... ('' = the teacher)
    method: str = "sid"                     # 'sid', or 'sida' (adversarial, needs real images: data; docs/sida.md)
    # SiD
    alpha: float = 1.2                      # weight of the ||f_phi - f_psi||^2 term in the generator loss
    tmax: int = 800                         # generator-loss noise: t ~ U[0, tmax/1000] on the rho=7 schedule
    sigma_init: float = 2.5                 # generator input noise level, fixed in training and sampling
    ls: float = 1.0                         # fake-score loss scale
    lsg: float = 100.0                      # generator loss scale (never un-scaled, as in the official code)
    # SiDA (method 'sida'; official defaults of sida_train.py)
    lsd: float = 1.0                        # scale of the discriminator (BCE) term of the fake-score loss
    lsg_gan: float = 0.01                   # scale of the adversarial term of the generator loss
    generator_warmup_kimg: float = 100.0    # the generator does not step before this many kimg (fake score alone)
    adversarial_warmup_kimg: float = 200.0  # the generator loss is SiD's alone until this many kimg, then 0.5/0.5
    # Optimisers
    lr: float = 1e-5                        # fake-score Adam learning rate
    glr: float = 1e-5                       # generator Adam learning rate
    beta1: float = 0.0                      # fake-score Adam beta1
    g_beta1: float = 0.0                    # generator Adam beta1 (0.9 on FFHQ)
    beta2: float = 0.999                    # Adam beta2, both networks
    adam_eps: float | None = None           # Adam eps; None: the official rule, 1e-6 with precision fp16, else 1e-8
    # Batch
    batch: int = 256                        # global batch per phase (generator images per iteration)
    batch_per_device: int = 16              # micro-batch per device per accumulation round (0 = largest that fits)
    # Networks
    precision: str = "fp32"                 # fp32 | tf32 | bf16 (autocast) | bf16-tf32 | fp16 (official use_fp16)
    memory_format: str = "contiguous"       # U-Net weights/activations layout: contiguous | channels_last
    compile: str = "off"                    # torch.compile of the U-Nets: off | default | max-autotune-no-cudagraphs
    dropout: float = 0.13                   # dropout of fake score and generator (teacher always eval)
    augment: float = 0.12                   # EDM augmentation probability on fake-score inputs (0 = off)
    # EMA of the generator
    ema_mimg: float = 0.5                   # EMA half-life in Mimg
    ema_rampup: float = 0.05                # half-life is at most this fraction of images seen
    phema: str = ""                         # post-hoc EMA: sigma_rel of profiles to track ('0.05,0.10'; '' = off)
    phema_every_kimg: float = 0.0           # post-hoc EMA snapshots this often (0 = at each evaluation)
    # Schedule (all in kimg = iterations * batch / 1000)
    duration_kimg: float = 500_000.0        # stop once this many generator images (thousands) were used
    eval_every_kimg: float = 512.0          # eval_schedule 'every': evaluate this often, plus at 0 and at the end
    eval_schedule: str = "every"            # 'every' (eval_every_kimg) or 'official' (SiD's ticks: dense early)
    eval_tick_kimg: float = 10.0            # eval_schedule 'official': kimg per tick (run_sid.sh --tick; ImageNet 20)
    keep_snapshots: str = "best,last"       # G_ema files kept per evaluation: 'all', or 'best', 'last', 'best,last'
    # Evaluation
    fid_images: int = 50_000                # generated images per FID evaluation
    fid_images_final: int = 0               # images of the last evaluation (0 = fid_images)
    fid_detector: str = INCEPTION           # feature network of the Frechet distance (DETECTORS or a TorchScript .pt)
    fid_ref: str = "edm:cifar10-32x32"      # reference statistics: 'digits', 'edm:<name>', .npz path or URL
    eval_metrics: str = "fd"                # metrics of each evaluation: 'fd', or 'fd,is' (+ Inception Score)
    seed: int = 0                           # run seed; per-rank noise derives from (seed, rank, iteration)
    # Data (sid/datasets.py)
    data: str = ""                          # real images for methods that train on them: folder, zip, .npz, 'digits'
    class_counts: str = ""                  # class frequencies of labels: .npz (sid ref), 'uniform', '' = fid_ref's

    def __post_init__(self) -> None:
        if self.adam_eps is None:  # frozen: resolved once here, so to_dict(), checkpoints and rows hold the value
            object.__setattr__(self, "adam_eps", ADAM_EPS.get(self.precision, ADAM_EPS_DEFAULT))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"DistillConfig.{name}: {why}, got {getattr(self, name)!r}")

        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type).split(" |")[0]
            if kind == "float" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise bad(f.name, "must be a number")
            if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                raise bad(f.name, "must be an integer")
            if kind == "str" and not isinstance(value, str):
                raise bad(f.name, "must be a string")
            if kind == "float" and not math.isfinite(value):
                raise bad(f.name, "must be finite")
        positive = ("sigma_init", "lr", "glr", "adam_eps", "batch", "ema_mimg",
                    "duration_kimg", "eval_every_kimg", "eval_tick_kimg", "fid_images", "ls", "lsg")
        for name in positive:
            if getattr(self, name) <= 0:
                raise bad(name, "must be > 0")
        if not 1 <= self.tmax <= 1000:
            raise bad("tmax", "must be in 1..1000")
        for name in ("beta1", "g_beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "must be in [0, 1)")
        for name in ("dropout", "augment", "ema_rampup"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "must be in [0, 1]")
        if self.fid_images < 2:  # a Frechet distance needs a covariance
            raise bad("fid_images", "must be >= 2")
        if self.fid_images_final == 1:
            raise bad("fid_images_final", "must be 0 (= fid_images) or >= 2")
        for name in ("batch_per_device", "fid_images_final", "phema_every_kimg"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.batch_per_device and self.batch % self.batch_per_device:
            raise bad("batch", f"must be divisible by batch_per_device={self.batch_per_device}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {', '.join(PRECISIONS)}")
        if self.memory_format not in MEMORY_FORMATS:
            raise bad("memory_format", f"must be one of {', '.join(MEMORY_FORMATS)}")
        if self.compile not in COMPILE_MODES:
            raise bad("compile", f"must be one of {', '.join(COMPILE_MODES)}")
        if self.fid_detector not in DETECTORS and not is_detector_file(self.fid_detector):
            raise bad("fid_detector", f"must be one of {', '.join(DETECTORS)} or a TorchScript file (*.pt)")
        if self.eval_schedule not in EVAL_SCHEDULES:
            raise bad("eval_schedule", f"must be one of {', '.join(EVAL_SCHEDULES)}")
        kinds = self.keep_snapshots.split(",")
        if not (kinds == ["all"] or (kinds and set(kinds) <= {"best", "last"} and len(set(kinds)) == len(kinds))):
            raise bad("keep_snapshots", "must be 'all', 'best', 'last' or 'best,last'")
        if self.seed < 0:
            raise bad("seed", "must be >= 0")
        if self.method not in METHODS:
            raise bad("method", f"must be one of {', '.join(METHODS)}")
        for name in ("lsd", "lsg_gan", "generator_warmup_kimg", "adversarial_warmup_kimg"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.method == "sida" and not self.data.strip():
            raise bad("data", "method 'sida' needs real images (--data)")
        try:
            parse_sigma_rels(self.phema)
        except ValueError as exc:
            raise bad("phema", str(exc).split(", got")[0]) from None
        if not self.teacher:
            raise bad("teacher", "must name a teacher")
        if self.class_counts not in ("", "uniform") and not self.class_counts.endswith(".npz"):
            raise bad("class_counts", "must be '', 'uniform' or an .npz with class_counts (sid ref)")
        try:
            metrics = parse_metrics(self.eval_metrics, TRAINING_METRICS)
        except ValueError as exc:
            raise bad("eval_metrics", str(exc).split(", got")[0]) from None
        if "is" in metrics and self.fid_detector not in CLASS_DETECTORS:
            raise bad("eval_metrics", f"'is' needs a detector with class probabilities ({', '.join(CLASS_DETECTORS)}),"
                                      f" not fid_detector {self.fid_detector}")

    # ------------------------------------------------------------------ helpers
    def replace(self, **overrides: Any) -> DistillConfig:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"DistillConfig has no field {', '.join(unknown)}")
        if "precision" in overrides and "adam_eps" not in overrides \
                and self.adam_eps == ADAM_EPS.get(self.precision, ADAM_EPS_DEFAULT):
            overrides["adam_eps"] = None  # it followed the rule: keep following it under the new precision
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def iterations(self) -> int:
        """Iterations needed to reach duration_kimg (kimg = iterations * batch / 1000)."""
        return math.ceil(self.duration_kimg * 1000 / self.batch)

    @property
    def final_kimg(self) -> float:
        """kimg of the last evaluation (duration_kimg rounded up to whole iterations)."""
        return self.iterations * self.batch / 1000

    def evaluation_iterations(self) -> list[int]:
        """Iterations after which the run evaluates: 0 (the teacher-initialised generator), the schedule's points,
        and the last iteration. On the official schedule the 0 takes the place of the official evaluation after the
        first iteration (the end of tick 0, unless that is also the last): every other point is the official loop's."""
        last = self.iterations
        if self.eval_schedule == "official":
            return sorted({0, last} | set(self._official_ticks()[1:]))
        every = self.eval_every_kimg * 1000 / self.batch
        return sorted({0, last} | {min(last, math.ceil(k * every - 1e-9))
                                   for k in range(1, math.ceil(last / every) + 1)})

    def _official_ticks(self) -> list[int]:
        """Iterations after which the official loop evaluates: the end of tick 0 (the first iteration), of ticks
        10, 20, ..., 100 and of every 50th tick, and the last iteration. A later tick ends at the first iteration
        whose image count reaches its start + eval_tick_kimg: 40 iterations of 256 for 10 kimg (tick 10 ends at
        iteration 401, 102.7 kimg), 3 of 8192 for ImageNet's 20 kimg (tick 10 at iteration 31, 254.0 kimg)."""
        per_tick = math.ceil(self.eval_tick_kimg * 1000 / self.batch - 1e-9)
        last_tick = (self.iterations - 1) // per_tick
        ticks = [1 + t * per_tick for t in range(last_tick + 1)
                 if t == 0 or t in OFFICIAL_DENSE_TICKS or t % OFFICIAL_SNAP_TICKS == 0]
        return ticks + [self.iterations] if ticks[-1] < self.iterations else ticks

    def phema_iterations(self) -> list[int]:
        """Iterations after which the post-hoc EMA profiles are saved (none without profiles)."""
        if not self.phema:
            return []
        if not self.phema_every_kimg:
            return [i for i in self.evaluation_iterations() if i > 0]
        every = self.phema_every_kimg * 1000 / self.batch
        count = math.ceil(self.iterations / every)
        return sorted({self.iterations} | {math.ceil(k * every - 1e-9) for k in range(1, count)})

    def evaluation_kimg(self) -> list[float]:
        return [i * self.batch / 1000 for i in self.evaluation_iterations()]

    def fid_images_at(self, iteration: int) -> int:
        """Images behind the evaluation after `iteration`: fid_images_final at the last one (when set)."""
        return self.fid_images_final or self.fid_images if iteration >= self.iterations else self.fid_images

    def accumulation_rounds(self, world_size: int = 1) -> int:
        per_rank = self.batch // world_size
        if self.batch % world_size:
            raise ConfigError(f"DistillConfig.batch: {self.batch} is not divisible by world_size={world_size}")
        if not self.batch_per_device:
            raise ConfigError("DistillConfig.batch_per_device: 0 (largest that fits) is measured on the device by the "
                              "device (sid.micro_batch.fit_micro_batch), not known to the config")
        return max(1, math.ceil(per_rank / self.batch_per_device))


_CIFAR = dict(alpha=1.2, batch=256, batch_per_device=16, lr=1e-5, glr=1e-5, precision="fp32", dropout=0.13,
              augment=0.12, ema_mimg=0.5, eval_every_kimg=512.0, eval_schedule="official", fid_images=50_000,
              fid_detector=INCEPTION, fid_ref="edm:cifar10-32x32")
_FFHQ_LIKE = dict(batch=512, batch_per_device=32, precision="fp16", dropout=0.05, augment=0.15,
                  ema_mimg=0.5, duration_kimg=500_000.0, eval_every_kimg=512.0, eval_schedule="official",
                  fid_images=50_000,
                  fid_detector=INCEPTION)

# SiDA's warm-ups on the digits. The official 100 and 200 kimg are more than a whole digits run (25.6 kimg). With the
# generator frozen, the fake score's denoising term fell 44.2, 31.6, 24.9, 21.0, 20.7 over its first five kimg and then
# held (-1.7% from kimg 4.1 to 5.1; the discriminator term only fluctuated, 75-149): the generator steps after 4.096
# kimg (32 iterations of 128), and the adversarial term joins after twice that, as in the official 100/200
# (`python benchmarks/sida_cost.py warmup`, docs/sida.md).
WARMUPS_DIGITS = dict(generator_warmup_kimg=4.096, adversarial_warmup_kimg=8.192)

PRESETS: dict[str, dict[str, Any]] = {
    # The official CIFAR-10 uncond run reports the Inception Score at each evaluation (--metrics fid50k_full,is50k);
    # every other official run only the FID.
    "cifar10-uncond": dict(_CIFAR, teacher="edm:cifar10-uncond", duration_kimg=500_000.0, eval_metrics="fd,is"),
    "cifar10-cond": dict(_CIFAR, teacher="edm:cifar10-cond", duration_kimg=800_000.0),
    "imagenet64-cond": dict(teacher="edm:imagenet64-cond", alpha=1.2, batch=8192, batch_per_device=16, lr=4e-6,
                            glr=4e-6, precision="fp16", dropout=0.1, augment=0.0, ema_mimg=2.0,
                            duration_kimg=1_000_000.0, eval_every_kimg=1024.0, eval_schedule="official",
                            eval_tick_kimg=20.0, fid_images=50_000,
                            fid_detector=INCEPTION, fid_ref="edm:imagenet-64x64"),
    "ffhq64": dict(_FFHQ_LIKE, teacher="edm:ffhq64", alpha=1.2, lr=1e-5, glr=1e-5, g_beta1=0.9,
                   fid_ref="edm:ffhq-64x64"),
    "afhqv2-64": dict(_FFHQ_LIKE, teacher="edm:afhqv2-64", alpha=1.0, lr=5e-6, glr=5e-6, fid_ref="edm:afhqv2-64x64"),
    # The embedded default: 8x8 digits, a small teacher and a project-trained feature network; minutes on a CPU.
    # EMA: a 20 kimg half-life, ramped at 0.3 x images seen; the former 2 kimg (rampup 0.05) let the curve jump 2x
    # between evaluations (docs/digits_preset.md).
    # SiDA's warm-ups from a measurement on the digits (the official 100/200 kimg exceed the run): WARMUPS_DIGITS.
    "digits": dict(teacher="digits", alpha=1.2, batch=128, batch_per_device=128, lr=1e-4, glr=1e-4,
                   precision="fp32", dropout=0.0, augment=0.0, ema_mimg=0.02, ema_rampup=0.3, duration_kimg=25.6,
                   eval_every_kimg=6.4, fid_images=2048, fid_detector=DIGITS_FEATURES, fid_ref="digits",
                   data="digits", **WARMUPS_DIGITS),
}
# The second embedded teacher, of another kind (a diffusers DDPM, sid/digits_ddpm.py), with the digits settings: its
# sigma range (sigma_init 2.5; 24.4 at tmax 800) lies within the teacher's (sigma 0.01 to 157; docs/teachers.md).
PRESETS["digits-ddpm"] = dict(PRESETS["digits"], teacher="digits-ddpm")
# The study scripts' default: the digits default at a budget for many trials (the default alpha sweep's 9 trials,
# 2 at a time on 2 CPU cores, in under 10 minutes). 4,096 images per evaluation: half the sampling error of 1,024
# for about 3% more time (docs/digits_preset.md).
PRESETS["digits-study"] = dict(PRESETS["digits"], duration_kimg=9.6, eval_every_kimg=1.92, fid_images=4096)
# SiDA on the digits default: its real images are the shipped digits.
PRESETS["digits-sida"] = dict(PRESETS["digits"], method="sida", data="digits")


def preset(name: str, **overrides: Any) -> DistillConfig:
    """The config of a named preset, with overrides applied and validated."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return DistillConfig(**{"preset": name, **PRESETS[name], **overrides})
