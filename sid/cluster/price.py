"""`--plan`: a study's price before it runs, on a given cluster, from a calibration of its preset (measured here in
seconds, or a stored one); the formats and the arithmetic are sid/plan.py's. Writes <study>/plan.json and
<study>/calibration.json, so the study that follows finds its plan (the report puts the actual cost beside it) and
the calibration can be reused (--calibration FILE) for another study of the same preset."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from sid.cluster.resources import TrialResources
from sid.cluster.study import Study, planned_trials, trial_capacity
from sid.files import write_text_atomic
from sid.plan import (
    CALIBRATION_FILE,
    PLAN_FILE,
    Calibration,
    Plan,
    PlanError,
    make_plan,
    stopping_saving,
    trial_images,
)


def parse_cluster(text: str) -> dict[str, float]:
    """'GPU=8,CPU=64' -> {'GPU': 8.0, 'CPU': 64.0}; PlanError (one line) for anything else."""
    cluster = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip().upper()
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if key not in ("CPU", "GPU") or not (math.isfinite(number) and number >= 0):
            raise PlanError(f"--plan-cluster: expected CPU=N,GPU=M (counts >= 0), got {text!r}")
        cluster[key] = number
    cluster.setdefault("CPU", 0.0)
    return cluster


def this_machine() -> dict[str, float]:
    """The cluster a study started here without --address gets: this machine's CPUs and GPUs."""
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def price(study: Study, cluster: Mapping[str, float], calibration: Calibration) -> Plan:
    """The plan of `study` on `cluster` (sid/plan.py's arithmetic), its trials sized as plan() sizes them: one GPU
    per worker on a cluster with GPUs, else one CPU per worker (the driver's share included), unless given."""
    asked = study.resources
    gpus = asked.gpus_per_worker if asked.gpus_per_worker is not None else (1.0 if cluster.get("GPU") else 0.0)
    trial = TrialResources(workers=asked.workers, gpus_per_worker=gpus,
                           cpus_per_worker=asked.cpus_per_worker if asked.cpus_per_worker is not None else 1.0)
    concurrency = study.max_concurrent or trial_capacity(cluster, trial)
    base = study.base
    stopping, saving = "none", (0.0, 0.0)
    if study.asha or study.curve_stop:
        grace = min(study.grace_kimg or base.evaluation_kimg()[1], base.final_kimg)
        eta = study.reduction_factor if study.asha else math.inf
        rules = [f"ASHA (keeps 1/{study.reduction_factor:g} per rung)"] * study.asha + ["curve forecast"] * \
            study.curve_stop
        stopping = f"{' + '.join(rules)} from kimg {grace:g}"
        saving = stopping_saving(planned_trials(study), base.final_kimg, grace_kimg=grace, eta=eta,
                                 curve=study.curve_stop)
    shown = ", ".join(f"{k} {v:g}" for k, v in sorted(cluster.items(), reverse=True) if v)
    images, eval_images = trial_images(base)
    return make_plan(study=study.name, preset=base.preset, trials=planned_trials(study), workers=trial.workers,
                     concurrency=concurrency, cluster=shown or "no resources", images_per_trial=images,
                     eval_images_per_trial=eval_images, calibration=calibration, stopping=stopping, saving=saving)


def plan_study(study: Study, *, cluster: Mapping[str, float] | None = None, calibration: str | Path | None = None,
               device: torch.device | None = None) -> Plan:
    """--plan: calibrate the preset on `device` (default: this machine's first GPU, else its CPU) unless a stored
    `calibration` file is given, price the study on `cluster` (default: this machine), write plan.json and
    calibration.json into the study folder, and return the plan. Trains nothing. PlanError for bad input and for a
    folder that already holds a study (its plan would no longer be the one it ran with)."""
    from sid.calibrate import calibrate  # noqa: PLC0415 (the networks: only a plan without a stored calibration)

    folder = study.folder
    if folder.exists() and any(p.name not in (PLAN_FILE, CALIBRATION_FILE) for p in folder.iterdir()):
        raise PlanError(f"{folder} already holds a study; plan another --name")
    study.validate()
    cluster = cluster if cluster is not None else this_machine()
    if calibration is not None:
        measured = Calibration.read(calibration)
    else:
        if cluster.get("GPU") and not torch.cuda.is_available() and (device is None or device.type != "cuda"):
            raise PlanError("the cluster has GPUs and this machine none: run --plan on one of its nodes, or give a "
                            "stored calibration of the preset on its GPU (--calibration FILE)")
        if device is None:
            device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cpu":  # a CPU trial's worker runs one torch thread per CPU it holds (as run_in_trial)
            torch.set_num_threads(max(1, round(study.resources.cpus_per_worker or 1.0)))
        measured = calibrate(study.base, device)
    plan = price(study, cluster, measured)
    write_text_atomic(folder / CALIBRATION_FILE, json.dumps(measured.to_dict(), indent=1))
    write_text_atomic(folder / PLAN_FILE, json.dumps(plan.to_dict(), indent=1))
    return plan

