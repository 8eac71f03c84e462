"""Experiment trackers of a single run: TensorBoard, MLflow and Weights & Biases through their own APIs.

After each evaluation rank 0 logs the row's numbers stepped on images seen (round(kimg * 1000), so a resumed run
continues its axis and runs of different batch sizes line up), the sample grid of that evaluation as an image, and
once the whole config as hyperparameters. Studies do the same through Ray Tune's logger callbacks
(sid/cluster/study_trackers.py), one tracker run per trial.

A tracker that cannot start or log (no such server, a library missing at run time) is switched off with one line
on stderr and the run goes on: the Parquet rows stay the record; <run>/TRACKING_OFF_FILE names it for the command's
final line (switched_off). Ray is not imported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sid.config import DistillConfig
from sid.files import MLFLOW_DIR, TENSORBOARD_DIR, TRACKING_FILE, TRACKING_OFF_FILE, samples_name, write_text_atomic

if TYPE_CHECKING:
    from sid.distill import Distiller

TRACKERS = ("tensorboard", "mlflow", "wandb")
# The package each tracker needs, and the extra of this project that installs it.
REQUIREMENTS = {"tensorboard": ("tensorboardX", "ray[tune]"), "mlflow": ("mlflow", "sid-studies[mlflow]"),
                "wandb": ("wandb", "sid-studies[wandb]")}
STEP_KEY = "timesteps_total"   # what Ray's TensorBoard and MLflow callbacks step on: the row's images seen
DEFAULT_EXPERIMENT = "sid"
# Row values that are labels, not metrics (the config's fields are logged once, as hyperparameters).
NOT_METRICS = ("iteration", "world_size")


class TrackerError(ValueError):
    """A tracker that cannot be used as asked (unknown name, library not installed)."""


def step_of(row: Mapping[str, Any]) -> int:
    """The step of an evaluation: generator images seen (kimg is iterations * batch / 1000, a float)."""
    return int(round(float(row["kimg"]) * 1000))


def metrics_of(row: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a row worth plotting: finite floats and counts; labels and config columns left out."""
    skip = {*NOT_METRICS, *(f.name for f in dataclasses.fields(DistillConfig))}
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip and math.isfinite(v)}


def check_trackers(names: Sequence[str]) -> tuple[str, ...]:
    """The trackers, each once; TrackerError (one line) for an unknown name or a library that is not installed."""
    unique = tuple(dict.fromkeys(names))
    for name in unique:
        if name not in TRACKERS:
            raise TrackerError(f"unknown tracker {name!r}: expected one of {', '.join(TRACKERS)}")
        module, extra = REQUIREMENTS[name]
        if importlib.util.find_spec(module) is None:
            raise TrackerError(f"tracker {name} needs the {module} package: pip install '{extra}'")
    return unique


@dataclass(frozen=True)
class TrackingSettings:
    """What --tracker, --tracking-uri and --experiment ask for (plain values: they travel to Ray Train workers)."""

    trackers: tuple[str, ...] = ()
    tracking_uri: str | None = None    # MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else <run>/mlruns)
    experiment: str = DEFAULT_EXPERIMENT  # MLflow experiment and W&B project

    def to_dict(self) -> dict[str, Any]:
        return dict(trackers=list(self.trackers), tracking_uri=self.tracking_uri, experiment=self.experiment)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrackingSettings:
        return cls(tuple(d.get("trackers", ())), d.get("tracking_uri"), d.get("experiment", DEFAULT_EXPERIMENT))


@contextlib.contextmanager
def _fail_fast() -> Iterator[None]:
    """MLflow retries an unreachable server for minutes by default: during the first contact, fail in seconds."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def mlflow_uri(uri: str | None, default_dir: Path) -> str:
    """The MLflow URI to use; a local file store (MLflow's maintenance-mode backend, still the one that needs no
    server or database) is allowed explicitly, since that is what the default <run>/mlruns is."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or Path(default_dir).resolve().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


class _Backend:
    name = ""

    def start(self, config: Mapping[str, Any], ids: dict[str, str]) -> None: ...
    def log(self, metrics: dict[str, float], step: int, image: Path | None) -> None: ...
    def close(self) -> None: ...


class _TensorBoard(_Backend):
    name = "tensorboard"

    def __init__(self, folder: Path, settings: TrackingSettings) -> None:
        self.logdir = folder / TENSORBOARD_DIR

    def start(self, config: Mapping[str, Any], ids: dict[str, str]) -> None:
        from tensorboardX import SummaryWriter  # noqa: PLC0415 (a tracker backend, loaded only when used)
        from tensorboardX.summary import hparams  # noqa: PLC0415 (a tracker backend, loaded only when used)

        self.writer = SummaryWriter(str(self.logdir), flush_secs=10)
        # The HParams plugin's three summaries in this run's own event file (add_hparams would open another run).
        for summary in hparams({k: v for k, v in config.items() if isinstance(v, (str, int, float, bool))},
                               {"fid": math.nan}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()))

    def log(self, metrics: dict[str, float], step: int, image: Path | None) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        if image is not None and image.exists():
            from PIL import Image  # noqa: PLC0415 (Pillow: only image files need it)

            self.writer.add_image("samples", np.asarray(Image.open(image).convert("RGB")), global_step=step,
                                  dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _MLflow(_Backend):
    name = "mlflow"

    def __init__(self, folder: Path, settings: TrackingSettings) -> None:
        self.uri, self.experiment, self.folder = mlflow_uri(settings.tracking_uri, folder / MLFLOW_DIR), \
            settings.experiment, folder

    def start(self, config: Mapping[str, Any], ids: dict[str, str]) -> None:
        from mlflow import MlflowClient  # noqa: PLC0415 (a tracker backend, installed only when used)

        self.client = MlflowClient(tracking_uri=self.uri)
        with _fail_fast():
            run_id = ids.get("mlflow_run_id")
            if run_id is None:
                experiment = self.client.get_experiment_by_name(self.experiment)
                experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
                    self.experiment)
                run_id = self.client.create_run(experiment_id, run_name=self.folder.name,
                                                tags={"sid.run_folder": str(self.folder.resolve())}).info.run_id
                self.client.log_batch(run_id, params=_params(config))
            else:
                self.client.update_run(run_id, status="RUNNING")
        self.run_id = ids["mlflow_run_id"] = run_id

    def log(self, metrics: dict[str, float], step: int, image: Path | None) -> None:
        from mlflow.entities import Metric  # noqa: PLC0415 (a tracker backend, installed only when used)

        now = _millis()
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        if image is not None and image.exists():
            self.client.log_artifact(self.run_id, str(image), artifact_path="samples")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class _Wandb(_Backend):
    """Weights & Biases; offline with WANDB_MODE=offline (then `wandb sync <run>/wandb/offline-run-*`)."""

    name = "wandb"

    def __init__(self, folder: Path, settings: TrackingSettings) -> None:
        self.folder, self.project = folder, settings.experiment

    def start(self, config: Mapping[str, Any], ids: dict[str, str]) -> None:
        import wandb  # noqa: PLC0415 (a tracker backend, installed only when used)

        self.folder.mkdir(parents=True, exist_ok=True)
        run_id = ids.get("wandb_run_id") or uuid.uuid4().hex[:16]  # wandb.util.generate_id is gone in wandb 0.31
        self.run = wandb.init(project=self.project, dir=str(self.folder), id=run_id, resume="allow",
                              name=self.folder.name, config=dict(config))
        ids["wandb_run_id"] = run_id

    def log(self, metrics: dict[str, float], step: int, image: Path | None) -> None:
        import wandb  # noqa: PLC0415 (a tracker backend, installed only when used)

        data: dict[str, Any] = dict(metrics)
        if image is not None and image.exists():
            data["samples"] = wandb.Image(str(image))
        self.run.log(data, step=step)

    def close(self) -> None:
        self.run.finish()


_BACKENDS = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _Wandb}


def _params(config: Mapping[str, Any]) -> list:
    from mlflow.entities import Param  # noqa: PLC0415 (a tracker backend, installed only when used)

    return [Param(k, str(v)) for k, v in config.items()]


def _millis() -> int:
    return int(time.time() * 1000)


class RunTracker:
    """The trackers of one run folder, started lazily at the first evaluation: a sink of the training loop
    (sid.loop.Sink), after the run folder, whose sample grid it logs."""

    def __init__(self, folder: Path, config: Mapping[str, Any], settings: TrackingSettings) -> None:
        self.folder, self.config = Path(folder), dict(config)
        self.backends: list[_Backend] = [_BACKENDS[n](self.folder, settings) for n in settings.trackers]
        self.started = False
        self.off: dict[str, str] = {}  # tracker -> why it was switched off

    def _off(self, backend: _Backend, exc: BaseException) -> None:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        print(f"tracking: {backend.name} is off for the rest of this run ({why})", file=sys.stderr, flush=True)
        self.backends.remove(backend)
        self.off[backend.name] = why
        try:  # a file, since the run may be a Ray Train worker in another process than the command
            write_text_atomic(self.folder / TRACKING_OFF_FILE, json.dumps(self.off, indent=1))
        except OSError:  # WriteError included
            pass  # the stderr line above stays

    def _start(self) -> None:
        self.started = True
        path = self.folder / TRACKING_FILE
        ids = json.loads(path.read_text()) if path.exists() else {}
        for backend in list(self.backends):
            try:
                backend.start(self.config, ids)
            except Exception as exc:  # any failure of a tracker must not stop the run
                self._off(backend, exc)
        if ids:
            write_text_atomic(path, json.dumps(ids, indent=1))

    def log(self, row: Mapping[str, Any], image: Path | None = None) -> None:
        if not self.backends:
            return
        if not self.started:
            self._start()
        metrics, step = metrics_of(row), step_of(row)
        for backend in list(self.backends):
            try:
                backend.log(metrics, step, image)
            except Exception as exc:
                self._off(backend, exc)

    def on_evaluation(self, row: dict[str, Any], distiller: Distiller, best: Mapping[str, Any] | None) -> None:
        best_fid = float(best["fid"]) if best is not None else math.nan
        self.log({**row, "best_fid": best_fid}, self.folder / samples_name(distiller.iteration))

    def close(self) -> None:
        for backend in list(self.backends):
            try:
                backend.close()
            except Exception as exc:
                self._off(backend, exc)


def switched_off(folder: Path) -> dict[str, str]:
    """The trackers a run in `folder` switched off, each with its reason (empty when none; written by RunTracker)."""
    path = Path(folder) / TRACKING_OFF_FILE
    try:
        off = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {"?": f"{path} is unreadable"}
    return {str(k): str(v) for k, v in off.items()} if isinstance(off, dict) else {}


def off_note(folder: Path) -> str:
    """'; trackers switched off: wandb (AttributeError: ...)' for a run's final line, or ''."""
    off = switched_off(folder)
    return "; trackers switched off: " + ", ".join(f"{k} ({v})" for k, v in off.items()) if off else ""
