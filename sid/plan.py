"""The price of a study before it runs: a calibration (what one device does with a preset) and the plan made from it
(trials, images, device-hours, wall time on a cluster, and what the stopping rule may save). One home for both file
formats, calibration.json and plan.json: `--plan` writes them into the study folder (sid/cluster/price.py), a stored
calibration is read back with `--calibration FILE`, and the study report (analysis/report.py) reads plan.json to put
the actual cost beside it. Plain Python: no torch, no Ray (the analysis side reads these files).

The arithmetic (make_plan), for T trials of W workers each, C trials at once, and a calibration measured on one
device (r = training images per second, e = evaluation images per second, s = each trial's setup seconds):

    training s per trial   = training images / (r x W)      (the batch splits over the workers: linear scaling assumed)
    evaluation s per trial = sum of the evaluations' images / e   (rank 0 evaluates alone)
    trial s                = s + training + evaluation
    device-hours           = T x trial s x W / 3600      (the devices a trial holds, evaluations and setup included)
    wall s                 = ceil(T / C) x trial s       (whole waves of trials: finish_s)

A running study's ETA (sid/cluster/watch.py) is the same model (finish_s) on what is left: each running trial's
remaining seconds, then the pending trials of trial s each, C at a time; trial s from the calibration until the
trials have measured their own rate.

Ray's start (once) and its per-trial cost are not in it: benchmarks/ray_overhead.py measures them (docs/studies.md).
The stopping rule's saving is a range of the training images: 0 (no trial stopped) to the most the rule can stop.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLAN_FILE = "plan.json"                # <study>/plan.json: the plan --plan printed
CALIBRATION_FILE = "calibration.json"  # <study>/calibration.json: the calibration behind it (reusable: --calibration)


class PlanError(ValueError):
    """A calibration or plan file that cannot be used (one line naming the file and the key)."""


@dataclass(frozen=True)
class Calibration:
    preset: str                # the preset it measured (a plan for another preset refuses it)
    device: str                # what measured it, e.g. 'cpu, 2 threads' or 'NVIDIA H200'
    train_images_per_s: float  # training images (the kimg count) per second on one device
    eval_images_per_s: float   # evaluation images per second (generator + detector + FD) on one device
    setup_s: float             # each trial's setup: teacher, networks, detector and reference statistics
    source: str                # where the numbers come from: a measurement (host, date) or a cited one

    def __post_init__(self) -> None:
        for name in ("train_images_per_s", "eval_images_per_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                                      and value > 0):
                raise PlanError(f"calibration: {name} must be a number > 0, got {value!r}")
        if isinstance(self.setup_s, bool) or not isinstance(self.setup_s, (int, float)) or \
                not (math.isfinite(self.setup_s) and self.setup_s >= 0):
            raise PlanError(f"calibration: setup_s must be a number >= 0, got {self.setup_s!r}")
        for name in ("preset", "device", "source"):
            if not isinstance(getattr(self, name), str):
                raise PlanError(f"calibration: {name} must be a string, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, path: str | Path) -> Calibration:
        """A calibration file; PlanError naming the file (and the key) for anything else."""
        data = _read_json(path, "calibration")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(data) - names), sorted(names - set(data))
        if unknown or missing:
            key = (unknown or missing)[0]
            raise PlanError(f"{path}: key {key!r}: {'not a calibration field' if unknown else 'missing'} "
                            f"(expected {', '.join(sorted(names))})")
        try:
            return cls(**data)
        except PlanError as exc:
            raise PlanError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class Plan:
    study: str
    preset: str
    trials: int               # T
    workers: int              # W: devices (DDP ranks) per trial
    concurrency: int          # C: trials at once on the cluster
    cluster: str              # the cluster it was priced for, e.g. 'GPU 8, CPU 64'
    kimg_per_trial: float     # training kimg of one trial run to its end
    images: int               # training images of all trials
    eval_images: int          # evaluation images of all trials
    setup_s: float            # per trial
    train_s: float            # per trial
    eval_s: float             # per trial
    trial_s: float            # per trial: setup + training + evaluations
    device_hours: float       # all trials, run to their end
    train_device_hours: float  # of which training (what trials.parquet's device_hours counts)
    wall_s: float             # all trials
    stopping: str             # the stopping rule ('none', 'ASHA eta=2 from kimg 1.92', ...)
    saving_low: float         # fraction of the training images the rule saves, at the least (0: it stops none)
    saving_high: float        # ... at the most
    calibration: Calibration

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "calibration": self.calibration.to_dict()}

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        data = _read_json(path, "plan")
        try:
            calibration = Calibration(**data.pop("calibration"))
            return cls(**data, calibration=calibration)
        except (KeyError, TypeError, PlanError) as exc:
            raise PlanError(f"{path}: not a plan of this project ({exc})") from None

    def summary(self) -> str:
        """The plan as the command prints it."""
        def hours(s: float) -> str:
            return f"{s / 3600:.3g} h" if s >= 3600 else f"{s / 60:.3g} min"

        c = self.calibration
        low, high = self.saving_low * self.train_device_hours, self.saving_high * self.train_device_hours
        return "\n".join([
            f"plan of study {self.study} ({self.preset}) on {self.cluster}:",
            f"  trials        {self.trials}, {self.concurrency} at once, {self.workers} device(s) each",
            f"  images        {self.images / 1e6:.4g} M training ({self.kimg_per_trial:g} kimg per trial), "
            f"{self.eval_images / 1e6:.4g} M for evaluations",
            f"  per trial     {hours(self.trial_s)}: setup {self.setup_s:.3g} s, training {hours(self.train_s)}, "
            f"evaluations {hours(self.eval_s)}",
            f"  device-hours  {self.device_hours:.4g} ({self.train_device_hours:.4g} training)",
            f"  wall time     {hours(self.wall_s)} (Ray's start and per-trial cost not included)",
            f"  stopping      {self.stopping}" + (f": saves {low:.3g}-{high:.3g} training device-hours "
                                                   f"({100 * self.saving_low:.0f}-{100 * self.saving_high:.0f}% of "
                                                   "the training images)" if self.saving_high else ""),
            f"  calibration   {c.train_images_per_s:.4g} training img/s, {c.eval_images_per_s:.4g} evaluation img/s, "
            f"setup {c.setup_s:.3g} s on {c.device} ({c.source})",
        ])


def study_calibration(folder: str | Path, preset: str, path: str | Path | None = None) -> Calibration | None:
    """The calibration a study's ETA starts from: the file at `path` if given, else the one --plan left in the study
    `folder`, else None. PlanError (one line) for an unreadable file or a calibration of another preset."""
    if path is None:
        path = Path(folder) / CALIBRATION_FILE
        if not path.is_file():
            return None
    calibration = Calibration.read(path)
    if calibration.preset != preset:
        raise PlanError(f"{path}: the calibration is of preset {calibration.preset!r}, the study runs {preset!r}")
    return calibration


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise PlanError(f"{path}: no such {what} file") from None
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise PlanError(f"{path}: not a readable {what} file ({why})") from None
    if not isinstance(data, dict):
        raise PlanError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def stopping_saving(trials: int, final_kimg: float, *, grace_kimg: float | None, eta: float,
                    curve: bool) -> tuple[float, float]:
    """(least, most) fraction of the training images a stopping rule saves over `trials` trials of `final_kimg`.
    The least is 0: the noise-aware rules stop nothing when the trials are within noise. The most: ASHA (grace_kimg
    and eta) keeps 1/eta of the trials at each rung grace x eta^k < final, and at least the best one; the curve
    forecast (curve) may stop every trial but the best at its first rung. No rule (grace_kimg None): (0, 0)."""
    if grace_kimg is None or trials < 2 or grace_kimg >= final_kimg:
        return 0.0, 0.0
    most = 0.0
    if curve:
        most = (trials - 1) / trials * (1 - grace_kimg / final_kimg)
    if math.isfinite(eta):
        rungs, rung = [], grace_kimg
        while rung < final_kimg - 1e-9:
            rungs.append(rung)
            rung *= eta
        reach = [max(eta ** -k, 1 / trials) for k in range(len(rungs) + 1)]  # share of the trials reaching rung k
        kimg = sum((reach[k] - reach[k + 1]) * r for k, r in enumerate(rungs)) + reach[-1] * final_kimg
        most = max(most, 1 - kimg / final_kimg)
    return 0.0, most


def trial_images(config: Any) -> tuple[int, int]:
    """(training, evaluation) images of one trial of `config` (a sid.config.DistillConfig) run to its end."""
    return config.iterations * config.batch, sum(config.fid_images_at(i) for i in config.evaluation_iterations())


def trial_seconds(calibration: Calibration, *, workers: int, images: int,
                  eval_images: int) -> tuple[float, float, float]:
    """(setup, training, evaluation) seconds of one trial of `images` training and `eval_images` evaluation images on
    `workers` devices by the calibration (the module docstring's arithmetic); a trial takes their sum."""
    return (calibration.setup_s, images / (calibration.train_images_per_s * workers),
            eval_images / calibration.eval_images_per_s)


def finish_s(left_s: list[float], pending: int, trial_s: float, concurrency: int) -> float:
    """Seconds until the last trial ends: the running trials end after their `left_s`, each pending trial (of
    `trial_s`) starts in the first of the `concurrency` slots to come free. Nothing running: ceil(pending /
    concurrency) x trial_s, the plan's wall time."""
    slots = [max(0.0, s) for s in left_s] + [0.0] * max(0, concurrency - len(left_s))
    if not slots:
        slots = [0.0]
    heapq.heapify(slots)
    for _ in range(pending):
        heapq.heapreplace(slots, slots[0] + trial_s)
    return max(slots)


def make_plan(*, study: str, preset: str, trials: int, workers: int, concurrency: int, cluster: str,
              images_per_trial: int, eval_images_per_trial: int, calibration: Calibration,
              stopping: str = "none", saving: tuple[float, float] = (0.0, 0.0)) -> Plan:
    """The plan's arithmetic (module docstring); PlanError when the calibration is for another preset or nothing
    fits the cluster."""
    if calibration.preset != preset:
        raise PlanError(f"the calibration is of preset {calibration.preset!r}, the study runs {preset!r}: "
                        "calibrate this preset (--plan without --calibration)")
    if concurrency < 1:
        raise PlanError(f"no trial fits on {cluster} ({workers} device(s) per trial)")
    c = calibration
    setup_s, train_s, eval_s = trial_seconds(c, workers=workers, images=images_per_trial,
                                             eval_images=eval_images_per_trial)
    trial_s = setup_s + train_s + eval_s
    return Plan(study=study, preset=preset, trials=trials, workers=workers, concurrency=concurrency, cluster=cluster,
                kimg_per_trial=images_per_trial / 1000, images=trials * images_per_trial,
                eval_images=trials * eval_images_per_trial, setup_s=setup_s, train_s=train_s, eval_s=eval_s,
                trial_s=trial_s, device_hours=trials * trial_s * workers / 3600,
                train_device_hours=trials * train_s * workers / 3600,
                wall_s=finish_s([], trials, trial_s, concurrency), stopping=stopping, saving_low=saving[0],
                saving_high=saving[1], calibration=c)

