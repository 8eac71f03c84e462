"""A study's trials table: one row per trial (TRIAL_SCHEMA), rebuilt from the trial's Parquet evaluation rows and
Tune's view of the trial, plus the divergence rule that both this table and the running study's stopper apply.

Plain pandas: no Ray import, so the table can be rebuilt and the rule tested without a cluster.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from sid.config import DistillConfig
from sid.results import CONFIG_COLUMNS, read_evaluations, write_trials

EVALUATIONS_DIR = "evaluations"   # <study>/evaluations/<trial_id>.parquet: every evaluation of one trial
RUNS_DIR = "runs"                 # <study>/runs/<trial_id>/: the trial's snapshots, best.pt, sample grids
TRIALS_FILE = "trials.parquet"    # <study>/trials.parquet: one row per trial


@dataclass(frozen=True)
class Divergence:
    """When a trial counts as diverged (the study stops it at once and records state 'diverged')."""

    fid_factor: float = 10.0      # its FID exceeds this multiple of its own first (kimg 0) FID
    loss_patience: int = 2        # its losses were non-finite at this many consecutive evaluations

    def reason(self, rows: pd.DataFrame) -> str | None:
        """Why this trial's rows (one trial, any order) show divergence, or None. Rows at iteration 0 carry no
        losses (nothing was trained yet) and do not count for the loss rule."""
        if rows.empty:
            return None
        rows = rows.sort_values("kimg")
        fid = rows["fid"].astype(float)
        bad = rows[~fid.map(math.isfinite)]
        if not bad.empty:
            return f"fid {bad['fid'].iloc[0]} at kimg {bad['kimg'].iloc[0]:g}"
        start = fid.iloc[0]
        high = rows[fid > self.fid_factor * start]
        if not high.empty:
            return (f"fid {high['fid'].iloc[0]:.4g} at kimg {high['kimg'].iloc[0]:g} is over {self.fid_factor:g}x "
                    f"its start {start:.4g}")
        trained = rows[rows["iteration"] > 0]
        finite = trained[["loss_fake_score", "loss_generator"]].map(math.isfinite).all(axis=1)
        run = longest = 0
        for ok in finite:
            run = 0 if ok else run + 1
            longest = max(longest, run)
        if longest >= self.loss_patience:
            return f"losses non-finite at {longest} consecutive evaluations"
        return None


class TrialRecord(NamedTuple):
    """Tune's view of one trial."""

    trial_id: str
    tune_state: str               # 'terminated' (ended or stopped), 'error', or 'running' (pending/running/paused)
    error: str                    # the error's last line for 'error', else ''
    config: DistillConfig         # the trial's full config (base + searched values)
    world_size: int               # DDP ranks of the trial
    reported_kimg: float = math.nan  # kimg of the last result Tune received (NaN: none or unknown)


def trial_state(record: TrialRecord, rows: pd.DataFrame, divergence: Divergence) -> tuple[str, str]:
    """(state, note): error > diverged > completed (reached its last evaluation) > stopped_early (ended before it) >
    running (unfinished: an interrupted study)."""
    if record.tune_state == "error":
        return "error", record.error
    reason = divergence.reason(rows)
    if reason is not None:
        return "diverged", reason
    if record.tune_state == "terminated":
        # Tune's last result, not the rows: a worker may still write the next evaluation while its stop travels.
        reached = record.reported_kimg if math.isfinite(record.reported_kimg) else (
            rows["kimg"].max() if not rows.empty else math.nan)
        done = reached >= record.config.final_kimg - 1e-9
        return ("completed" if done else "stopped_early"), ""
    return "running", ""


def trial_row(record: TrialRecord, rows: pd.DataFrame, study: str, divergence: Divergence) -> dict:
    state, note = trial_state(record, rows, divergence)
    rows = rows.sort_values("kimg")
    if state == "stopped_early" and math.isfinite(record.reported_kimg):  # what the study decided on
        rows = rows[rows["kimg"] <= record.reported_kimg + 1e-9]
    finite = rows[rows["fid"].map(math.isfinite)]
    best = finite.loc[finite["fid"].idxmin()] if not finite.empty else None
    return dict(
        study=study, trial_id=record.trial_id, **{c: getattr(record.config, c) for c in CONFIG_COLUMNS},
        world_size=int(rows["world_size"].iloc[-1]) if not rows.empty else record.world_size,
        fid_detector=record.config.fid_detector, state=state,
        best_fid=float(best["fid"]) if best is not None else math.nan,
        best_kimg=float(best["kimg"]) if best is not None else math.nan,
        last_kimg=float(rows["kimg"].iloc[-1]) if not rows.empty else math.nan,
        evaluations=len(rows),
        device_hours=float(rows["device_s"].iloc[-1]) / 3600 if not rows.empty else 0.0,
        error=note,
    )


def write_trials_table(folder: Path, study: str, records: Iterable[TrialRecord],
                       divergence: Divergence) -> pd.DataFrame:
    """Rebuild <folder>/trials.parquet from <folder>/evaluations/ and Tune's trial states; return the table."""
    evaluations = folder / EVALUATIONS_DIR
    rows = read_evaluations(evaluations) if evaluations.exists() else read_evaluations()
    by_trial = dict(tuple(rows.groupby("trial_id", sort=False)))
    table = pd.DataFrame([trial_row(r, by_trial.get(r.trial_id, rows.iloc[:0]), study, divergence)
                          for r in sorted(records, key=lambda r: r.trial_id)])
    if not table.empty:
        write_trials(folder / TRIALS_FILE, table)
    return table


def summary(trials: pd.DataFrame, searched: Sequence[str]) -> str:
    """The trials as a text table, best first: searched values, best FD, where it occurred, last kimg, state."""
    if trials.empty:
        return "(no trials)"
    detector = trials["fid_detector"].iloc[0]
    label = "best FID" if detector.startswith("inception") else f"best FD ({detector})"
    table = trials.sort_values(["best_fid", "trial_id"], na_position="last")
    table = table[["trial_id", *searched, "best_fid", "best_kimg", "last_kimg", "state", "device_hours"]]
    table = table.rename(columns={"best_fid": label, "best_kimg": "at kimg", "last_kimg": "last kimg",
                                  "device_hours": "device h"})
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
