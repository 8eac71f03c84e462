"""A study's trackers: Ray Tune's own logger callbacks (one tracker run per trial), given only what changes between
evaluations: the evaluation row's metrics (sid.cluster.watch.trial_metrics: no config field, no Tune bookkeeping
column such as `training_iteration` or `time_total_s`), stepped on images seen (kimg 0 at step 0), and the
evaluation's sample grid from the trial's run folder (`<study>/runs/<trial_id>/samples-<iteration>.png`). The trial's
flat config (searched fields and preset) is the run's config, logged once by Ray's callbacks. Imported only by a
study with trackers: Ray's MLflow and W&B integrations import their (slow to import) libraries.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor
from ray.tune.logger import TBXLoggerCallback

from sid.cluster.watch import samples_path, trial_metrics
from sid.tracking import step_of


class StudyTensorBoard(TBXLoggerCallback):
    """<study>/trial-<id>/events.out.tfevents.*: scalars `ray/tune/<metric>` and the image `samples`."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = Path(folder)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial not in self._trial_writer:
            self.log_trial_start(trial)
        writer, step, metrics = self._trial_writer[trial], step_of(result), trial_metrics(result)
        for key, value in metrics.items():
            writer.add_scalar(f"ray/tune/{key}", value, global_step=step)
        image = samples_path(self.folder, trial.trial_id, result)
        if image is not None:
            writer.add_image("samples", np.asarray(Image.open(image).convert("RGB")), global_step=step,
                             dataformats="HWC")
        self._trial_result[trial] = {f"ray/tune/{k}": v for k, v in metrics.items()}  # for the HParams summary
        writer.flush()


class StudyMLflow(MLflowLoggerCallback):
    """One MLflow run per trial: metrics stepped on images seen, the sample grids as artifacts `samples/`."""

    def __init__(self, folder: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = Path(folder)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        run_id = self._trial_runs[trial]
        self.mlflow_util.log_metrics(run_id=run_id, metrics_to_log=trial_metrics(result), step=step_of(result))
        image = samples_path(self.folder, trial.trial_id, result)
        if image is not None:
            self.mlflow_util._get_client().log_artifact(run_id, str(image), artifact_path="samples")


class _StudyWandbActor(_WandbLoggingActor):
    """Ray's W&B logging actor, stepping on images seen (Ray's steps on the report count) and turning the sample grid's
    path into an image."""

    def run(self) -> None:
        os.environ["WANDB_START_METHOD"] = "thread"
        run = self._wandb.init(*self.args, **self.kwargs)
        run.config.trial_log_path = self._logdir
        while True:
            item_type, item = self.queue.get()
            if item_type == _QueueItem.END:
                break
            if item_type != _QueueItem.RESULT:
                continue
            step, image, metrics = item
            data: dict[str, Any] = dict(metrics)
            if image is not None:
                data["samples"] = self._wandb.Image(image)
            run.log(data, step=step)
        run.finish()


class StudyWandb(WandbLoggerCallback):
    """One W&B run per trial (Ray's logging actor per trial), with the metrics and sample grids of each evaluation."""

    _logger_actor_cls = _StudyWandbActor

    def __init__(self, folder: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = Path(folder)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        if trial not in self._trial_logging_actors:
            self.log_trial_start(trial)
        image = samples_path(self.folder, trial.trial_id, result)
        self._trial_queues[trial].put((_QueueItem.RESULT, (step_of(result), str(image) if image else None,
                                                           trial_metrics(result))))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # A study that ends without its trials' ends (interrupted, timed out) would otherwise wait upload_timeout
        # (30 min) for logging actors still waiting for more results: tell them to finish first.
        for trial in list(self._trial_logging_actors):
            if trial in self._trial_queues:
                self._signal_logging_actor_stop(trial)
        super().on_experiment_end(trials, **info)
