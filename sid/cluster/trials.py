"""A study's trials table: one row per trial (TRIAL_SCHEMA), rebuilt from the trial's Parquet evaluation rows and
Tune's view of the trial; its per-trial numbers and divergence rule are sid.results' (also analysis/'s and the
running study's stopper's).

Plain pandas: no Ray import, so the table can be rebuilt and the rule tested without a cluster.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from sid.config import DistillConfig
from sid.files import EVALUATIONS_DIR, STOPS_DIR, TRIALS_FILE, write_file_atomic
from sid.results import CONFIG_COLUMNS, Divergence, read_evaluations, summarise_rows, write_trials


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
    if state == "stopped_early" and math.isfinite(record.reported_kimg):  # what the study decided on
        rows = rows[rows["kimg"] <= record.reported_kimg + 1e-9]
    summary = summarise_rows(rows, divergence)
    return dict(
        study=study, trial_id=record.trial_id, **{c: getattr(record.config, c) for c in CONFIG_COLUMNS},
        world_size=int(rows["world_size"].iloc[-1]) if not rows.empty else record.world_size,
        fid_detector=record.config.fid_detector, state=state,
        **{k: summary[k] for k in ("best_fid", "best_kimg", "last_kimg", "evaluations", "device_hours")},
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
    if not table.empty:  # a stopped trial's note: the reason its stopper gave
        stopped = table["state"] == "stopped_early"
        table.loc[stopped, "error"] = [stop_reason(folder, t) for t in table.loc[stopped, "trial_id"]]
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


def record_stop(folder: Path, trial_id: str, reason: str, kimg: float) -> None:
    """Keep why a trial was stopped, for its row in trials.parquet (the stopper runs in Tune's driver)."""
    text = json.dumps(dict(trial_id=trial_id, reason=reason, kimg=kimg))
    write_file_atomic(folder / STOPS_DIR / f"{trial_id}.json", lambda f: f.write(text.encode()))


def stop_reason(folder: Path, trial_id: str) -> str:
    """The recorded reason a trial was stopped ('' when none was recorded)."""
    try:
        return str(json.loads((folder / STOPS_DIR / f"{trial_id}.json").read_text()).get("reason", ""))
    except (OSError, ValueError, AttributeError):
        return ""
