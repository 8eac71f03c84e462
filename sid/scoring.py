"""Score rows of independent draws (sid.results.SCORE_SCHEMA): the values of one draw (Frechet distance and its
error, Inception Score, precision/recall), the real images precision/recall compares with, and the re-score of a
run's chosen generator on fresh latents, with repeats.

A run's best.pt is the evaluation with the lowest of many noisy FDs, so its training-time value is biased low (the
winner's curse); the official practice is to score the chosen generator again on fresh draws. `rescore_run` does
that with the run's own detector, reference, image count and metrics, `repeats` draws of seeds RESCORE_SEED_START..
(apart from `sid generate`'s and `sid evaluate`'s default seeds 0.., and from the training evaluations' latents,
which come from 63-bit stream seeds), one row each into `<run>/scores.parquet`, where analysis/rescore.py reads
them. A repeat whose row is there (same generator, seeds, detector, reference, images) is not done again, so an
interrupted re-score continues where it stopped. `sid evaluate --rescore` and a study at its end call it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sid.config import FD_STD_GROUPS, METRICS, parse_metrics
from sid.datasets import open_dataset
from sid.files import BEST, RUNS_DIR, SCORES_FILE, TRIALS_FILE
from sid.generators import MAX_SEED, format_seeds, generate, load_generator
from sid.metrics import Detector, check_reference, get_detector, score_images
from sid.precision_recall import precision_recall
from sid.results import SCORE_KEY, SCORE_SCHEMA, now_utc, provenance, read_parquet, read_trials, upsert
from sid.teachers import load_reference

RESCORE_REPEATS = 3            # draws of a re-score (each as many images as the run's evaluations)
RESCORE_SEED_START = 2**31     # first seed of a re-score's draw 0 (draw r: + r * images)
RESCORE_TRIALS = ("best", "all")  # a study's re-score: its best trial's generator, or every trial's


# ---------------------------------------------------------------------------------------------- image files
def real_features(source: str, detector: Detector, count: int, *, exact: bool = True,
                  batch: int = 64) -> np.ndarray:
    """Detector features [N, D] (float32) of the first `count` images of `source`, the real set of precision/recall:
    exactly `count` (ValueError when there are fewer) or, not `exact`, as many as there are up to `count`."""
    features, n = [], 0
    for images in open_dataset(source).images(batch):  # the one dataset reader (sid.datasets)
        images = images[:count - n]
        features.append(detector(images).detach().float().cpu().numpy())
        n += len(images)
        if n >= count:
            break
    if exact and n < count:
        raise ValueError(f"--pr-images: {source} holds {n} images, fewer than the {count} asked for")
    return np.concatenate(features)


# ---------------------------------------------------------------------------------------------- one draw
def score_draw(batches: Iterator[torch.Tensor], detector: Detector, ref_mu, ref_sigma, *,
               metrics: Sequence[str] = ("fd",),         # of METRICS; 'pr' needs `real`
               real: np.ndarray | None = None,           # real images' features for precision/recall
               groups: int = FD_STD_GROUPS,              # of fid_std's jackknife
               device: torch.device | str | None = None,  # where precision/recall's distances are computed
               ) -> dict[str, Any]:
    """The values of one draw's score row: fid, fid_std, fid_images, is_mean, is_std, pr_precision, pr_recall (NaN
    where not asked for, or when an image is non-finite), every metric from one detector pass over the images."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or ("pr" in metrics and real is None):
        raise ValueError(f"score_draw: metrics {list(metrics)} (known: {', '.join(METRICS)}; 'pr' needs real "
                         f"features)")
    features: list[np.ndarray] | None = [] if "pr" in metrics else None
    score = score_images(batches, detector, ref_mu, ref_sigma, groups=groups, with_is="is" in metrics,
                         features=features)
    precision = recall = math.nan
    if features is not None and score.finite:
        precision, recall = precision_recall(real, np.concatenate(features), device=device)
    return dict(fid=score.fd, fid_std=score.fd_std, fid_images=score.images, is_mean=score.is_mean,
                is_std=score.is_std, pr_precision=precision, pr_recall=recall)


# ---------------------------------------------------------------------------------------------- re-scores
def rescore_seeds(images: int, repeat: int) -> list[int]:
    """The seeds of a re-score's draw `repeat` of `images` images."""
    start = RESCORE_SEED_START + repeat * images
    if start + images - 1 > MAX_SEED:
        raise ValueError(f"a re-score of {repeat + 1} draws of {images} images runs past seed {MAX_SEED}")
    return list(range(start, start + images))


def _done(rows: pd.DataFrame, row: dict[str, Any]) -> dict[str, Any] | None:
    """The row of `rows` that holds this draw of this generator already (its key, images and generator's kimg)."""
    if rows.empty:
        return None
    same = np.ones(len(rows), dtype=bool)
    for column in (*SCORE_KEY, "fid_images"):
        same &= (rows[column] == row[column]).to_numpy() if column != "sigma_init" else \
            np.isclose(rows[column].astype(float), row[column])
    kimg = rows["generator_kimg"].astype(float).to_numpy()
    same &= np.isnan(kimg) if math.isnan(row["generator_kimg"]) else np.isclose(kimg, row["generator_kimg"])
    return rows[same].iloc[-1].to_dict() if same.any() else None


def rescore_run(run: str | os.PathLike, *, repeats: int = RESCORE_REPEATS, device: str = "cpu", batch: int = 64,
                progress: bool = False) -> pd.DataFrame:
    """Score the run folder's best.pt on `repeats` fresh draws (rescore_seeds) with the run's own detector,
    reference, images per evaluation and metrics; each missing draw's row is added to `<run>/scores.parquet` as
    soon as it is scored. Returns this re-score's rows. ValueError (one line) for a folder without best.pt or a
    best.pt that does not record its run's config."""
    run = Path(run)
    best = run / BEST
    if not best.is_file():
        raise ValueError(f"--rescore {run}: no {BEST} there (a run folder whose run has a finite evaluation)")
    if repeats < 1:
        raise ValueError(f"--repeats: expected >= 1, got {repeats}")
    net, saved = load_generator(best)
    config = saved.config or {}
    if not all(config.get(k) for k in ("fid_detector", "fid_ref", "fid_images")):
        raise ValueError(f"{best}: records no run config (fid_detector, fid_ref, fid_images): re-score it with "
                         f"sid evaluate and explicit --fid-detector, --fid-ref and --fid-images")
    images, metrics = int(config["fid_images"]), parse_metrics(config.get("eval_metrics") or "fd")
    detector = get_detector(config["fid_detector"], device)
    mu, sigma = load_reference(config["fid_ref"])
    check_reference(detector, mu, config["fid_ref"])
    out = run / SCORES_FILE
    sigma_init = saved.sampling_sigma_init
    kimg = float(saved.kimg) if saved.kimg is not None else math.nan
    rows = []
    for r in range(repeats):
        seeds = rescore_seeds(images, r)
        row = dict(source=str(best), kind="generator", repeat=r, seeds=format_seeds(seeds), sigma_init=sigma_init,
                   class_label=-1, fid_detector=detector.name, fid_images=images, fid_ref=config["fid_ref"],
                   generator_kimg=kimg, pr_ref="", pr_real_images=0)
        existing = read_parquet(out, SCORE_SCHEMA) if out.is_file() else pd.DataFrame()
        done = _done(existing, row)
        if done is not None:
            rows.append(done)
            continue
        draw = generate(net, seeds, sigma_init=sigma_init, batch=batch, device=device)
        row.update(score_draw(draw, detector, mu, sigma, metrics=metrics, device=device), written_at=now_utc())
        upsert(out, [row], SCORE_SCHEMA, SCORE_KEY, sort=False, metadata=provenance(device=device))
        rows.append(row)
        if progress:
            print(f"re-score {best} draw {r} (seeds {row['seeds']}): {detector.name} FD({images}) "
                  f"{row['fid']:.4f}", flush=True)
    return pd.DataFrame(rows)


def rescore_study(folder: str | os.PathLike, *, trials: str = "best", repeats: int = RESCORE_REPEATS,
                  device: str = "cpu", batch: int = 64, progress: bool = False) -> pd.DataFrame:
    """rescore_run of a study's best trial (the lowest best FD; `trials='best'`) or of every trial with a best.pt
    ('all'), from its trials table. Returns their rows."""
    folder = Path(folder)
    if trials not in RESCORE_TRIALS:
        raise ValueError(f"--rescore-trials: expected one of {', '.join(RESCORE_TRIALS)}, got {trials!r}")
    if not (folder / TRIALS_FILE).is_file():
        raise ValueError(f"--rescore {folder}: neither a run folder ({BEST}) nor a study folder ({TRIALS_FILE})")
    table = read_trials(folder / TRIALS_FILE)
    table = table[table["best_fid"].astype(float).map(math.isfinite)
                  & table["trial_id"].map(lambda t: (folder / RUNS_DIR / str(t) / BEST).is_file())]
    if table.empty:
        raise ValueError(f"--rescore {folder}: no trial has a {BEST} (a finite evaluation) yet")
    if trials == "best":
        table = table.sort_values(["best_fid", "trial_id"]).head(1)
    frames = [rescore_run(folder / RUNS_DIR / str(t), repeats=repeats, device=device, batch=batch, progress=progress)
              for t in table["trial_id"]]
    return pd.concat(frames, ignore_index=True)


def rescore(path: str | os.PathLike, **options: Any) -> pd.DataFrame:
    """rescore_run of a run folder, rescore_study of a study folder."""
    if (Path(path) / BEST).is_file():
        options.pop("trials", None)
        return rescore_run(path, **options)
    return rescore_study(path, **options)
