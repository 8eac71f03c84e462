"""A small results tree in the Parquet schema of sid.results, for the analysis tests (the studies' own writers
are built elsewhere). Values are synthetic but shaped like SiD runs: the Frechet distance falls as a power of
the images seen, depends on alpha and seed, and one trial diverges.

Layout written by write_results(root):
  alpha_sweep/evaluations/<trial>.parquet + trials.parquet  digits detector; alphas 0.5/1.0/1.2/1.5 x seeds 0/1;
                                                           alpha 1.5 seed 0 diverges; one NaN fid row; a third
                                                           seed of alpha 1.0 failed before any evaluation;
                                                           plus a cut-off file evaluations/zz_cut.parquet
  hpo/evaluations/<trial>.parquet (no trials.parquet)      10 Optuna-like trials over alpha, lr, glr; one
                                                           diverged before any finite value
  cifar_run/evaluations.parquet                            a single run with the Inception detector
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from sid.files import CONFIG_FILE, EVALUATIONS, EVALUATIONS_DIR, RUNS_DIR, TRIALS_FILE, samples_name
from sid.results import write_evaluations, write_trials

ALPHAS = (0.5, 1.0, 1.2, 1.5)
SEEDS = (0, 1)
KIMG = (0.0, 6.4, 12.8, 25.6, 51.2, 102.4, 204.8)
DIVERGED = ("alpha_sweep", "a1.5-s0")        # finite at the first two evaluations, then NaN with status 'diverged'
NAN_ROW = ("alpha_sweep", "a1.0-s1", 51.2)   # an evaluation that could not be computed (status stays 'ok')
ERRORED = ("alpha_sweep", "a1.0-s2")         # in trials.parquet only: failed before its first evaluation
DIGITS = ("digits-features-v1", 2048)
INCEPTION = ("inception-2015-12-05", 50_000)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Results:
    root: Path
    alpha_sweep: Path
    hpo: Path
    cifar_run: Path
    cut_file: Path
    evals: pd.DataFrame    # every readable row written (the cut file's rows are not in it)


def distance(alpha: float, seed: int, kimg: float, lr: float = 1e-4, glr: float = 1e-4) -> float:
    floor = 1.0 + 2.0 * abs(alpha - 1.15) + 0.5 * abs(math.log10(lr / 2e-4)) + 0.3 * abs(math.log10(glr / 1e-4))
    return floor + 60.0 * (1.0 + kimg / 4.0) ** -1.1 + 0.15 * seed


def row(study: str, trial: str, *, alpha: float, seed: int, kimg: float, fid: float, metric=DIGITS, order: int = 0,
        lr: float = 1e-4, glr: float = 1e-4, batch: int = 128, status: str = "ok") -> dict:
    wall = 0.5 * kimg * 1000 / batch
    return dict(study=study, trial_id=trial, preset="digits", teacher="digits", alpha=alpha, tmax=800,
                sigma_init=2.5, lr=lr, glr=glr, batch=batch, precision="fp32", seed=seed, world_size=1, kimg=kimg,
                iteration=round(kimg * 1000 / batch), wall_s=wall, device_s=wall, fid=fid, fid_detector=metric[0],
                fid_images=metric[1], loss_fake_score=0.1, loss_generator=-0.2, images_per_s=256.0, nan_samples=0,
                status=status, written_at=T0 + timedelta(hours=order, seconds=wall))


def alpha_sweep_rows() -> list[dict]:
    rows = []
    for i, (alpha, seed) in enumerate((a, s) for a in ALPHAS for s in SEEDS):
        trial = f"a{alpha}-s{seed}"
        for j, kimg in enumerate(KIMG):
            fid, status = distance(alpha, seed, kimg), "ok"
            if ("alpha_sweep", trial) == DIVERGED and j >= 2:
                fid, status = math.nan, "diverged"
            if ("alpha_sweep", trial, kimg) == NAN_ROW:
                fid = math.nan
            rows.append(row("alpha_sweep", trial, alpha=alpha, seed=seed, kimg=kimg, fid=fid, order=i, status=status))
            if status == "diverged":
                break
    return rows


def hpo_rows() -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        alpha, lr, glr = float(rng.uniform(0.8, 1.5)), *(float(10 ** rng.uniform(-5, -3)) for _ in range(2))
        for kimg in KIMG[:5]:
            diverged = i == 3  # before its first evaluation: no finite value at all
            fid = math.nan if diverged else distance(alpha, 0, kimg, lr, glr)
            rows.append(row("hpo", f"hpo_{i:05d}", alpha=alpha, seed=0, kimg=kimg, fid=fid, order=i, lr=lr, glr=glr,
                            status="diverged" if diverged else "ok"))
            if diverged:
                break
    return rows


def trials_table(evals: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (study, trial), g in evals.groupby(["study", "trial_id"]):
        finite = g[np.isfinite(g["fid"])]
        best = finite.loc[finite["fid"].idxmin()]
        first = g.iloc[0]
        out.append({**{c: first[c] for c in ("preset", "teacher", "alpha", "tmax", "sigma_init", "lr", "glr", "batch",
                                            "precision", "seed", "world_size", "fid_detector")},
                    "study": study, "trial_id": trial,
                    "state": "diverged" if (g["status"] == "diverged").any() else "completed",
                    "best_fid": best["fid"], "best_kimg": best["kimg"], "last_kimg": g["kimg"].max(),
                    "evaluations": len(g), "device_hours": g["device_s"].max() / 3600, "error": ""})
    errored = {**out[0], "trial_id": ERRORED[1], "alpha": 1.0, "seed": 2, "state": "error", "best_fid": math.nan,
               "best_kimg": math.nan, "last_kimg": math.nan, "evaluations": 0, "device_hours": 0.0,
               "error": "RuntimeError: CUDA out of memory"}
    return pd.DataFrame([*out, errored])


def write_results(root: Path) -> Results:
    sweep, hpo = pd.DataFrame(alpha_sweep_rows()), pd.DataFrame(hpo_rows())
    cifar = pd.DataFrame([row("", "cifar_run", alpha=1.2, seed=0, kimg=k * 1000, fid=distance(1.2, 0, k * 10) + 0.6,
                              metric=INCEPTION, batch=256) for k in KIMG])
    for frame in (sweep, hpo):
        for (study, trial), g in frame.groupby(["study", "trial_id"]):
            write_evaluations(root / study / EVALUATIONS_DIR / f"{trial}.parquet", g)
    write_trials(root / "alpha_sweep" / TRIALS_FILE, trials_table(sweep))
    write_evaluations(root / "cifar_run" / EVALUATIONS, cifar)
    # A writer killed mid-file (or a copy cut short): readers must skip it with a warning naming it.
    whole = write_evaluations(root / "scratch.parquet", sweep.assign(trial_id="cut", alpha=9.0))
    cut = root / "alpha_sweep" / "evaluations" / "zz_cut.parquet"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return Results(root=root, alpha_sweep=root / "alpha_sweep", hpo=root / "hpo", cifar_run=root / "cifar_run",
                   cut_file=cut, evals=pd.concat([sweep, hpo, cifar], ignore_index=True))


def write_study(root: Path, curves: dict[tuple[float, int], Sequence[float]], *, kimg: Sequence[float] | None = None,
                name: str = "sweep", fid_std: float = 0.5, states: dict | None = None, config: str | None = None,
                samples: bool = False, field: str = "alpha") -> Path:
    """A study folder `root/name` shaped like a sweep of `field`: per (value, seed) one trial with the given FD curve
    (at kimg 0, 2, 4, ... unless `kimg` says), its evaluations file and a trials table (state 'completed' unless
    `states` gives (value, seed) -> state), optionally a config.yaml text and a sample grid in each run folder."""
    folder = root / name
    rows = []
    for (alpha, seed), fids in curves.items():
        trial = f"a{alpha}-s{seed}"
        points = kimg if kimg is not None else [2.0 * i for i in range(len(fids))]
        for i, (k, fid) in enumerate(zip(points, fids)):
            rows.append(row(name, trial, alpha=1.0, seed=seed, kimg=k, fid=fid, order=i)
                        | {"fid_std": fid_std, field: alpha})
        if samples:
            grid = folder / RUNS_DIR / trial / samples_name(round(points[-1] * 1000 / 128))
            grid.parent.mkdir(parents=True, exist_ok=True)
            rgb = np.zeros((16, 16, 3), np.uint8)
            rgb[..., 0] = int(alpha * 100) % 256
            rgb[..., 1] = seed * 40 % 256
            Image.fromarray(rgb).save(grid)
    evals = pd.DataFrame(rows)
    for trial, g in evals.groupby("trial_id"):
        write_evaluations(folder / EVALUATIONS_DIR / f"{trial}.parquet", g)
    table = trials_table(evals).iloc[:-1]  # without the fixture's failed trial
    for (alpha, seed), state in (states or {}).items():
        table.loc[table["trial_id"] == f"a{alpha}-s{seed}", "state"] = state
    write_trials(folder / TRIALS_FILE, table)
    if config is not None:
        (folder / CONFIG_FILE).write_text(config)
    return folder


def gid(artists, prefix: str) -> list:
    """The matplotlib artists whose gid starts with `prefix` (the analysis figures tag what they draw)."""
    return [a for a in artists if (a.get_gid() or "").startswith(prefix)]
