"""The distillation loop in kimg units: evaluate on the schedule, hand each evaluation to the sinks, resume.

The loop is the same for a single process and for each rank of a Ray Train run; what differs is the list of sinks,
objects with one method, `on_evaluation(row, distiller, best)`, called in order after each evaluation: the run folder
first (sid.run.RunFolder: the Parquet row, sample grid, snapshot, best.pt, checkpoint), then the trackers
(sid.tracking.RunTracker), then Ray's report (sid.cluster.distributed), so that nothing is reported before it is on
disk. `best` is the run's best evaluation row so far (results.best_of), None while there is none. Rank 0 computes the
Frechet distance; other ranks report NaN and their rows are not written.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from tqdm import tqdm

from sid.config import DistillConfig, parse_metrics
from sid.distill import Distiller
from sid.fast import eval_batch_size
from sid.metrics import Detector, Score, get_detector, score_generated
from sid.process_cache import cached_file
from sid.results import CONFIG_COLUMNS, MORE_CONFIG_COLUMNS, best_of, now_utc
from sid.teachers import load_reference
from sid.timeline import phase, record


class Sink(Protocol):
    """Where an evaluation goes: the run folder, a tracker, Ray's report."""

    def on_evaluation(self, row: dict[str, Any], distiller: Distiller, best: Mapping[str, Any] | None) -> None: ...


class Evaluator:
    """Frechet distance of G_ema samples against the config's reference statistics, and their Inception Score from
    the same detector pass where the config's eval_metrics asks for it."""

    def __init__(self, config: DistillConfig, device: torch.device | str = "cpu",
                 batch_size: int = 0,               # images per generator/detector call; 0: by device (sid.fast)
                 detector: Detector | None = None,  # the features' network (default: config.fid_detector's)
                 ) -> None:
        self.config, self.batch_size = config, batch_size or eval_batch_size(torch.device(device))
        # loaded once per process (sid.process_cache): a study's trials that share a process share them
        self.detector = detector or cached_file("detector", config.fid_detector,
                                                lambda name: get_detector(name, device), str(torch.device(device)))
        self.mu, self.sigma = cached_file("reference", config.fid_ref, load_reference)
        self.with_is = "is" in parse_metrics(config.eval_metrics)
        if self.with_is and not hasattr(self.detector, "probabilities"):
            raise ValueError(f"eval_metrics {config.eval_metrics!r}: detector {self.detector.name} gives no class "
                             f"probabilities, so no Inception Score")

    def __call__(self, distiller: Distiller, num_images: int) -> Score:
        """The score of the run's G_ema on its fixed evaluation latents."""
        return self.score(distiller.sample, num_images)

    def score(self, sample: Callable[[int, int], torch.Tensor], num_images: int) -> Score:
        """The score (sid.metrics.score_images: FD, its standard error, NaN for non-finite images) of the images
        `sample(batch_index, n)` gives (sid/commands/phema.py passes a rebuilt EMA)."""
        return score_generated(sample, num_images, self.detector, self.mu, self.sigma, batch_size=self.batch_size,
                               with_is=self.with_is)


def make_row(distiller: Distiller, *, fid: float, stats: dict, wall_s: float, images_per_s: float, study: str,
             trial_id: str, fid_std: float = math.nan, is_mean: float = math.nan, is_std: float = math.nan,
             fid_detector: str | None = None, setting: str = "") -> dict[str, Any]:
    """One evaluation row. `fid_detector`: the detector's name (a TorchScript file's carries its digest); default the
    config's. `setting`: a study's label of the trial's whole setting ('' for none)."""
    cfg = distiller.config
    finite = math.isfinite(fid) and all(math.isfinite(stats[k]) or distiller.iteration == 0
                                        for k in ("loss_fake_score", "loss_generator"))
    return dict(
        study=study, trial_id=trial_id, **{c: getattr(cfg, c) for c in CONFIG_COLUMNS},
        world_size=distiller.world_size, kimg=distiller.kimg, iteration=distiller.iteration, wall_s=wall_s,
        device_s=wall_s * distiller.world_size, fid=fid, fid_detector=fid_detector or cfg.fid_detector,
        fid_images=cfg.fid_images_at(distiller.iteration), fid_std=fid_std, is_mean=is_mean, is_std=is_std,
        images_per_s=images_per_s, **stats, status="ok" if finite else "diverged",
        **{c: getattr(cfg, c) for c in MORE_CONFIG_COLUMNS}, labels=distiller.labels.source, setting=setting,
        written_at=now_utc(),
    )


def train(distiller: Distiller, *, evaluator: Evaluator | None, sinks: Sequence[Sink] = (),
          best: Mapping[str, Any] | None = None,  # the best row before this call (a resumed run's, from its rows)
          study: str = "", trial_id: str = "run", setting: str = "", wall_s: float = 0.0, progress: bool = True,
          resumed: bool = False,
          phema_snapshot: Callable[[Distiller], None] | None = None) -> None:  # saves the post-hoc EMA profiles
    """Run `distiller` to config.duration_kimg, evaluating on the schedule. A `resumed` distiller was restored from a
    checkpoint, which is always taken right after an evaluation (kimg 0 included), so it continues without
    evaluating its current point again."""
    cfg = distiller.config
    evaluation_points = cfg.evaluation_iterations()
    phema_points = set(cfg.phema_iterations()) if phema_snapshot is not None else set()
    is_main = distiller.rank == 0
    bar = tqdm(total=cfg.final_kimg, initial=distiller.kimg, file=sys.stdout, disable=not (progress and is_main),
               dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} kimg [{elapsed}<{remaining}]")
    last_wall, last_iteration = time.perf_counter(), distiller.iteration
    while True:
        # Evaluate: score G_ema (rank 0), make the row, hand it to the sinks in order (rows before reports).
        if distiller.iteration in evaluation_points and not (resumed and distiller.iteration == last_iteration):
            if distiller.device.type == "cuda":
                torch.cuda.synchronize(distiller.device)
            elapsed = time.perf_counter() - last_wall
            wall_s += elapsed
            if distiller.iteration != last_iteration:
                record("train", time.time() - elapsed, time.time())
            images = (distiller.iteration - last_iteration) * cfg.batch
            stats = distiller.pop_stats()
            with phase("evaluate"):
                score = evaluator(distiller, cfg.fid_images_at(distiller.iteration)) \
                    if (evaluator is not None and is_main) else None
            fid, fid_std = (score.fd, score.fd_std) if score is not None else (math.nan, math.nan)
            is_mean, is_std = (score.is_mean, score.is_std) if score is not None else (math.nan, math.nan)
            row = make_row(distiller, fid=fid, fid_std=fid_std, is_mean=is_mean, is_std=is_std, stats=stats,
                           wall_s=wall_s, study=study, trial_id=trial_id, setting=setting,
                           images_per_s=images / elapsed if images else math.nan,
                           fid_detector=evaluator.detector.name if evaluator is not None and is_main else None)
            best = best_of(best, row)
            if is_main:
                inception = f"IS {is_mean:.3f} ± {is_std:.3f}  " if evaluator is not None and evaluator.with_is else ""
                bar.write(f"kimg {row['kimg']:9.2f}  {row['fid_detector']} FD({row['fid_images']}) {fid:9.4f} "
                          f"± {fid_std:<7.3g}{inception}loss_fake {stats['loss_fake_score']:10.4g}  "
                          f"loss_G {stats['loss_generator']:10.4g}  {row['images_per_s']:8.1f} img/s  "
                          f"status {row['status']}")
            with phase("write"):  # rows, snapshots, checkpoints, reports
                for sink in sinks:
                    sink.on_evaluation(row, distiller, best)
            last_wall, last_iteration = time.perf_counter(), distiller.iteration

        # Post-hoc EMA snapshot: saved again after a resume (the same file, the same weights).
        if distiller.iteration in phema_points:
            phema_snapshot(distiller)

        # Done, or one more iteration.
        if distiller.iteration >= cfg.iterations:
            break
        distiller.step()
        bar.update(distiller.kimg - bar.n)
    bar.close()
