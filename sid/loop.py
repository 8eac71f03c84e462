"""The distillation loop in kimg units: evaluate on the schedule, report rows, checkpoint, resume.

The loop is the same for a single process and for each rank of a Ray Train run; what differs is `on_evaluation`,
which receives the Parquet row and the Distiller (whose `state_dict()` plus the row's `wall_s` is the complete
training state). Rank 0 computes the Frechet
distance; other ranks report NaN and their rows are not written.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from sid.config import DistillConfig
from sid.distill import Distiller
from sid.results import CONFIG_COLUMNS, MORE_CONFIG_COLUMNS, now_utc

OnEvaluation = Callable[[dict[str, Any], Distiller], None]


class Evaluator:
    """Frechet distance of G_ema samples against the config's reference statistics."""

    def __init__(self, config: DistillConfig, device: torch.device | str = "cpu",
                 batch_size: int = 0) -> None:  # images per generator/detector call; 0: by device (sid.fast)
        from sid.fast import eval_batch_size
        from sid.metrics import get_detector
        from sid.teachers import load_reference

        self.config, self.batch_size = config, batch_size or eval_batch_size(torch.device(device))
        self.detector = get_detector(config.fid_detector, device)
        self.mu, self.sigma = load_reference(config.fid_ref)

    def __call__(self, distiller: Distiller, num_images: int) -> tuple[float, float]:
        """(distance, its sampling standard error: sid.config.FD_STD_METHOD) of the run's G_ema."""
        return self.score(distiller.sample, num_images, distiller.device)

    def score(self, sample: Callable[[int, int], torch.Tensor], num_images: int,
              device: torch.device) -> tuple[float, float]:
        """(distance, standard error) of the images `sample(batch_index, n)` gives (sid/commands/phema.py passes a rebuilt
        EMA), both NaN if any image is non-finite: quantize maps NaN pixels to black, and a distance to black images
        would pass a diverged generator off as a finite, merely poor, FID."""
        from sid.metrics import compute_fd_std

        finite = torch.ones((), dtype=torch.bool, device=device)  # read once, not a sync per batch

        def generate(index: int, n: int) -> torch.Tensor:
            images = sample(index, n)
            finite.logical_and_(images.isfinite().all())
            return images

        fd, std = compute_fd_std(generate, num_images, self.detector, self.mu, self.sigma,
                                 batch_size=self.batch_size)
        return (fd, std) if bool(finite) else (math.nan, math.nan)


def make_row(distiller: Distiller, *, fid: float, stats: dict, wall_s: float, images_per_s: float, study: str,
             trial_id: str, fid_std: float = math.nan) -> dict[str, Any]:
    cfg = distiller.config
    finite = math.isfinite(fid) and all(math.isfinite(stats[k]) or distiller.iteration == 0
                                        for k in ("loss_fake_score", "loss_generator"))
    return dict(
        study=study, trial_id=trial_id, **{c: getattr(cfg, c) for c in CONFIG_COLUMNS},
        world_size=distiller.world_size, kimg=distiller.kimg, iteration=distiller.iteration, wall_s=wall_s,
        device_s=wall_s * distiller.world_size, fid=fid, fid_detector=cfg.fid_detector,
        fid_images=cfg.fid_images_at(distiller.iteration), fid_std=fid_std,
        images_per_s=images_per_s, **stats, status="ok" if finite else "diverged",
        **{c: getattr(cfg, c) for c in MORE_CONFIG_COLUMNS}, written_at=now_utc(),
    )


def train(distiller: Distiller, *, evaluator: Evaluator | None, on_evaluation: OnEvaluation, study: str = "",
          trial_id: str = "run", wall_s: float = 0.0, progress: bool = True, resumed: bool = False,
          on_snapshot: Callable[[Distiller], None] | None = None) -> None:  # post-hoc EMA snapshots (rank 0)
    """Run `distiller` to config.duration_kimg, evaluating on the schedule. A `resumed` distiller was restored from a
    checkpoint, which is always taken right after an evaluation (kimg 0 included), so it continues without
    evaluating its current point again."""
    cfg = distiller.config
    points = cfg.evaluation_iterations()
    snapshots = set(cfg.phema_iterations()) if on_snapshot is not None else set()
    is_main = distiller.rank == 0
    bar = tqdm(total=cfg.final_kimg, initial=distiller.kimg, file=sys.stdout, disable=not (progress and is_main),
               dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} kimg [{elapsed}<{remaining}]")
    last_wall, last_iteration = time.perf_counter(), distiller.iteration
    while True:
        if distiller.iteration in points and not (resumed and distiller.iteration == last_iteration):
            if distiller.device.type == "cuda":
                torch.cuda.synchronize(distiller.device)
            elapsed = time.perf_counter() - last_wall
            wall_s += elapsed
            images = (distiller.iteration - last_iteration) * cfg.batch
            stats = distiller.pop_stats()
            if images and stats["nan_samples"] >= 2 * (distiller.iteration - last_iteration) * distiller.batch_per_rank:
                # the NaN guard dropped every sample of both phases: the mean losses are 0/0, not the 0 summed
                stats.update(loss_fake_score=math.nan, loss_generator=math.nan)
            fid, fid_std = evaluator(distiller, cfg.fid_images_at(distiller.iteration)) \
                if (evaluator is not None and is_main) else (math.nan, math.nan)
            row = make_row(distiller, fid=fid, fid_std=fid_std, stats=stats, wall_s=wall_s, study=study,
                           trial_id=trial_id,
                           images_per_s=images / elapsed if images else math.nan)
            if is_main:
                bar.write(f"kimg {row['kimg']:9.2f}  {cfg.fid_detector} FD({row['fid_images']}) {fid:9.4f} ± {fid_std:<7.3g}"
                          f"loss_fake {stats['loss_fake_score']:10.4g}  loss_G {stats['loss_generator']:10.4g}  "
                          f"{row['images_per_s']:8.1f} img/s  status {row['status']}")
            on_evaluation(row, distiller)
            last_wall, last_iteration = time.perf_counter(), distiller.iteration
        if distiller.iteration in snapshots:  # saved again after a resume: the same file, the same weights
            on_snapshot(distiller)
        if distiller.iteration >= cfg.iterations:
            break
        distiller.step()
        bar.update(distiller.kimg - bar.n)
    bar.close()
