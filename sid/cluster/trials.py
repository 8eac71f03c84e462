"""A study's trials: what every trial gets (TrialSettings, saved in <study>/trial_settings.json: the resume contract)
and the trials table: one row per trial (TRIAL_SCHEMA), rebuilt from the trial's Parquet evaluation rows and Tune's
view of the trial; its per-trial numbers and divergence rule are sid.results' (also analysis/'s and the running
study's stopper's).

Plain Python and pandas: no Ray import, so the settings can be read and the table rebuilt without a cluster.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from sid.cluster.resources import TrialResources
from sid.cluster.space import Settings, StudyError, check_settings
from sid.config import ConfigError, DistillConfig
from sid.files import (
    EVALUATIONS_DIR,
    ORPHAN_SUFFIX,
    ORPHANS_DIR,
    SETTINGS_FILE,
    STOPS_DIR,
    TRIALS_FILE,
    write_text_atomic,
)
from sid.results import CONFIG_COLUMNS, MORE_CONFIG_COLUMNS, Divergence, read_evaluations, summarise_rows, write_trials


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a study gets besides its searched values (bound to Tune's trainable), saved once in
    <study>/trial_settings.json when the study starts; --resume reads it back, so it is the resume contract: a field
    added later gets a default, and a study folder written before still resumes."""

    base: DistillConfig          # every field the study does not search
    study: str                   # the study's name: the `study` column of its rows
    folder: Path                 # the study folder (absolute): rows, run folders and Train runs of every trial
    resources: TrialResources    # each Train worker's, resolved: GPUs, CPUs (less the driver's share), placement
    # The study's own, for its resume: the Optuna sampler and the callbacks, each a registry key (rebuilt) or
    # sid.cluster.space.OBJECT + the class of an object given in Python (a resume asks for it again).
    sampler: str = "tpe"
    callbacks: tuple[str, ...] = ()
    # The space's Settings dimension (sid.cluster.space.Settings): label -> {field: value}, what a trial's label
    # expands into (sid.cluster.study.trial_config); empty without one.
    setting_fields: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(base=self.base.to_dict(), study=self.study, folder=str(self.folder),
                    resources=dataclasses.asdict(self.resources), sampler=self.sampler,
                    callbacks=list(self.callbacks),
                    setting_fields={label: dict(fields) for label, fields in self.setting_fields.items()})

    @classmethod
    def from_dict(cls, data: Any, source: str) -> TrialSettings:
        """Settings from to_dict()'s data (`source`, e.g. the file, names where it came from); StudyError naming
        `source` and the bad key for anything else. A key missing from `base` or `resources` takes the field's
        default, like a missing key of the settings that has one."""
        def bad(key: str, why: str) -> StudyError:
            return StudyError(f"{source}: key {key!r}: {why}")

        if not isinstance(data, Mapping):
            raise StudyError(f"{source}: expected a JSON object of trial settings, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise bad(unknown[0], f"not a trial setting (expected {', '.join(fields)})")
        missing = [name for name, f in fields.items() if name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise bad(missing[0], "missing")
        for key, kind in (("base", dict), ("resources", dict), ("study", str), ("folder", str)):
            if not isinstance(data[key], kind):
                raise bad(key, f"expected a {'JSON object' if kind is dict else 'string'}, "
                               f"got {type(data[key]).__name__}")
        for key, kind in (("base", DistillConfig), ("resources", TrialResources)):
            extra = sorted(set(data[key]) - {f.name for f in dataclasses.fields(kind)})
            if extra:
                raise bad(key, f"{kind.__name__} has no field {extra[0]!r}")
        try:
            base = DistillConfig(**data["base"])
        except ConfigError as exc:
            raise bad("base", str(exc)) from None
        try:
            resources = TrialResources(**data["resources"])
        except ValueError as exc:
            raise bad("resources", str(exc)) from None
        for name in ("gpus_per_worker", "cpus_per_worker"):  # the placement may be open: plan() chooses it then
            if getattr(resources, name) is None:
                raise bad("resources", f"{name} is null; a study saves the value the cluster resolved")
        if not data["study"] or not Path(data["folder"]).is_absolute():
            raise bad("study" if not data["study"] else "folder", "expected a study name and an absolute folder")
        sampler, callbacks = data.get("sampler", "tpe"), data.get("callbacks", [])
        if not isinstance(sampler, str):
            raise bad("sampler", f"expected a string, got {type(sampler).__name__}")
        if not (isinstance(callbacks, list) and all(isinstance(c, str) for c in callbacks)):
            raise bad("callbacks", f"expected a list of strings, got {callbacks!r}")
        labelled = data.get("setting_fields", {})
        if not isinstance(labelled, Mapping):
            raise bad("setting_fields", f"expected a JSON object, got {type(labelled).__name__}")
        try:
            if labelled:
                check_settings(Settings(labelled))
        except StudyError as exc:
            raise bad("setting_fields", str(exc)) from None
        return cls(base=base, study=data["study"], folder=Path(data["folder"]), resources=resources,
                   sampler=sampler, callbacks=tuple(callbacks),
                   setting_fields={label: dict(values) for label, values in labelled.items()})

    def write(self) -> Path:
        """<folder>/trial_settings.json, atomically: a reader (a resume after a crash) sees the whole file or none."""
        return write_text_atomic(self.folder / SETTINGS_FILE, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def read(cls, folder: Path) -> TrialSettings:
        """The settings saved in the study folder `folder`; StudyError naming the file (and the bad key) when it is
        missing, torn, not JSON, foreign or edited into something a trial cannot run, or belongs to another folder."""
        path = Path(folder) / SETTINGS_FILE
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise StudyError(f"--resume: {folder} was written by an older version of this project (no "
                             f"{SETTINGS_FILE}); run it again under another --name") from None
        except (OSError, ValueError) as exc:  # unreadable, or not JSON (torn by a crash, edited by hand)
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise StudyError(f"{path}: not readable trial settings ({why}); the study cannot resume") from None
        settings = cls.from_dict(data, str(path))
        if settings.folder != Path(folder).resolve():
            raise StudyError(f"{path}: key 'folder': {settings.folder}, but the file is in {Path(folder).resolve()}; "
                             "a study resumes where it was started (Tune's saved state names that folder)")
        return settings


class TrialRecord(NamedTuple):
    """Tune's view of one trial."""

    trial_id: str
    tune_state: str               # 'terminated' (ended or stopped), 'error', or 'running' (pending/running/paused)
    error: str                    # the error's last line for 'error', else ''
    config: DistillConfig         # the trial's full config (base + searched values)
    world_size: int               # DDP ranks of the trial
    reported_kimg: float = math.nan  # kimg of the last result Tune received (NaN: none or unknown)
    setting: str = ""             # the label of its setting (a Settings dimension: sid.cluster.space), else ''


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
        study=study, trial_id=record.trial_id, setting=record.setting,
        **{c: getattr(record.config, c) for c in (*CONFIG_COLUMNS, *MORE_CONFIG_COLUMNS)},
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


def set_aside_orphans(folder: Path, trial_ids: Iterable[str]) -> list[Path]:
    """Move the rows file of every trial not in `trial_ids` (every trial of the study's Tune state) from
    <folder>/evaluations/ to <folder>/orphaned/<trial_id>.parquet.orphaned, where no reader of evaluations takes it
    for a result; return the moved files. Such rows come from a trial that started after Tune's last save in a study
    run before Tune's state was saved at each trial start (sid.cluster.search.SaveBeforeStart): a resume does not
    know that trial and samples another in its place, so its rows would count as a trial the study never had."""
    evaluations, known, moved = Path(folder) / EVALUATIONS_DIR, set(trial_ids), []
    for path in sorted(evaluations.glob("*.parquet")) if evaluations.is_dir() else []:
        if path.stem not in known and not path.name.startswith("."):
            target = Path(folder) / ORPHANS_DIR / f"{path.name}{ORPHAN_SUFFIX}"
            target.parent.mkdir(exist_ok=True)
            path.replace(target)  # a rename: the rows are kept as they were
            moved.append(target)
    return moved


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
    record = json.dumps(dict(trial_id=trial_id, reason=reason, kimg=kimg))
    write_text_atomic(folder / STOPS_DIR / f"{trial_id}.json", record)


def stop_reason(folder: Path, trial_id: str) -> str:
    """The recorded reason a trial was stopped ('' when none was recorded)."""
    try:
        return str(json.loads((folder / STOPS_DIR / f"{trial_id}.json").read_text()).get("reason", ""))
    except (OSError, ValueError, AttributeError):
        return ""
