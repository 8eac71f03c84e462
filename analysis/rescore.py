"""Re-scored generators beside their training-time best: the rows `sid evaluate` (or the study at its end) writes
into a trial's run folder, `<study>/runs/<trial_id>/scores.parquet` (sid.results.SCORE_SCHEMA), one row per
independent draw on fresh latents.

A trial's training-time best FD is the minimum over all its evaluations, each with its own sampling error: the
minimum of noisy values is biased low (the winner's curse), and the more evaluations, the lower. A re-score of the
chosen generator on fresh latents, with repeats, is the value to report (the official practice); the report shows
both, and says plainly when no re-score exists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import common
from sid.files import SCORES_FILE
from sid.results import read_scores

GROUP = ["study", "trial_id", "source", "fid_detector", "fid_images", "fid_ref"]


def read(paths: Sequence[str | Path], trials: pd.DataFrame) -> pd.DataFrame:
    """Every score row found in the trials' run folders, with the trial's study and trial_id (empty if none)."""
    frames = []
    for (study, trial), run in common.run_folders(paths, trials).items():
        if (run / SCORES_FILE).is_file():
            rows = read_scores(run / SCORES_FILE)
            if len(rows):
                frames.append(rows.assign(study=study, trial_id=trial))
    if not frames:
        return pd.DataFrame(columns=[*GROUP, "repeat", "fid", "is_mean"])
    return pd.concat(frames, ignore_index=True)


def summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Per trial, scored source and metric: repeats, FD mean, s.d. over repeats and the t-interval of the mean
    (repeats - 1 degrees of freedom), Inception Score mean where recorded."""
    rows = []
    for key, g in scores.groupby(GROUP, dropna=False, sort=True):
        fid = g["fid"].astype(float)
        fid = fid[np.isfinite(fid)]
        n = len(fid)
        sd = fid.std(ddof=1) if n > 1 else math.nan
        half = common.t_quantile(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
        rows.append({**dict(zip(GROUP, key)), "repeats": n, "mean": fid.mean() if n else math.nan, "sd": sd,
                     "lo": fid.mean() - half if n > 1 else math.nan, "hi": fid.mean() + half if n > 1 else math.nan,
                     "is_mean": g["is_mean"].astype(float).mean()})
    return pd.DataFrame(rows, columns=[*GROUP, "repeats", "mean", "sd", "lo", "hi", "is_mean"])


def winners_curse(evals: pd.DataFrame) -> str:
    """The sentence the report prints when no re-score exists."""
    per_trial = evals.groupby(common.KEYS).size()
    count = f"{int(per_trial.median())}" if len(per_trial) else "its"
    return (f"No re-scored generator was found (`<run folder>/{SCORES_FILE}`). The training-time best FD is the "
            f"minimum over {count} noisy evaluations per trial, so it is biased low (the winner's curse); the value "
            f"to report is the chosen generator re-scored on fresh latents with repeats, e.g. `python -m sid evaluate "
            f"<study>/runs/<trial_id> --repeats 5` (its rows go to that folder's {SCORES_FILE} and appear here).")


def to_markdown(scores: pd.DataFrame, trials: pd.DataFrame, evals: pd.DataFrame, x: str) -> str:
    """The re-scores beside each trial's training-time best (with that evaluation's own t-interval)."""
    table = summary(scores)
    if table.empty:
        return winners_curse(evals) + "\n"
    info = trials.set_index(common.KEYS)
    at_best = evals.merge(trials[[*common.KEYS, "best_kimg"]], on=common.KEYS)
    at_best = at_best[np.isclose(at_best["kimg"], at_best["best_kimg"])].set_index(common.KEYS)["fid_std"]
    name = common.short(x)
    lines = [f"| {name} | seed | trial | training-time best (kimg) ± {common.LEVEL:.0%} of that evaluation | "
             f"re-scored FD, mean ± s.d. (repeats) | {common.LEVEL:.0%} t-interval of the mean | images | reference | "
             f"detector | source |", "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        key = (r["study"], r["trial_id"])
        t = info.loc[key] if key in info.index else None
        best = "—"
        if t is not None and math.isfinite(t["best_fid"]):
            std = at_best.get(key, math.nan)
            std = float(std.iloc[0]) if isinstance(std, pd.Series) else float(std)
            best = f"{t['best_fid']:.3f} ({t['best_kimg']:g})" + (
                f" ± {common.fd_halfwidth(std):.3f}" if math.isfinite(std) else "")
        spread = f" ± {r['sd']:.3f}" if math.isfinite(r["sd"]) else ""
        interval = "—" if not math.isfinite(r["lo"]) else f"[{r['lo']:.3f}, {r['hi']:.3f}]"
        lines.append(f"| {common.fmt(t[x]) if t is not None else '—'} | "
                     f"{int(t['seed']) if t is not None and pd.notna(t['seed']) else '—'} | "
                     f"{common.md_text(r['trial_id'])} | {best} | {r['mean']:.3f}{spread} ({r['repeats']}) | "
                     f"{interval} | {int(r['fid_images']):,} | {common.md_text(r['fid_ref'])} | "
                     f"{common.md_text(r['fid_detector'])} | {common.md_text(Path(str(r['source'])).name)} |")
    lines += ["", f"Re-scored: independent draws on fresh latents (`sid evaluate`); ± after the training-time best is "
                  f"the {common.fd_interval_label()}. The training-time best is the minimum over many noisy "
                  f"evaluations (biased low: the winner's curse); the re-scored mean is the value to report."]
    return "\n".join(lines) + "\n"
