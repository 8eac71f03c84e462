"""Study folders as untrusted input: which files of a study run code when Ray reads them, the one gate before Ray
reads any of them, and Tune's view of a study read from plain JSON only.

Ray Tune keeps a study's state in files that Ray decodes with pickle, so whoever wrote them runs code in the process
that reads them (Ray 2.60; docs/reliability.md):

    tuner.pkl                       pickle         Tuner.restore, the first file --resume reads
    experiment_state-*.json         JSON, but every trial's state holds cloudpickled fields (hex) and any value may be
                                    a CLOUDPICKLE_FALLBACK payload: ExperimentAnalysis, ResultGrid, Tuner.restore
    basic-variant-state-*.json      a pickle despite its name: the grid searcher's state, read on restore
    searcher-state-*.pkl            pickle: the Optuna searcher's state (its sampler, study), read on restore
    search_gen_state-*.json         a pickle despite its name: the searcher's generator, read on restore
    trial-<id>/error.pkl            cloudpickle: a failed trial's exception, read by ResultGrid.errors / Result.error
    trial-<id>/params.pkl           pickle: a trial's config (written by Tune's JSON logger; Tune does not read it)
    trial_settings.json             plain JSON, but it chooses every trial's work (base config, folder, resources)

`--resume` needs Ray to read them: `untrusted_study` is its gate. Everything else reads a study without Ray's
decoders: `result_grid` (Tune's per-trial `params.json` and `result.json`, plain JSON) and the project's own Parquet
rows (sid.results). Neither needs the gate.
"""

from __future__ import annotations

import json
import math
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import Result
from ray.tune.error import TuneError

MAX_JSON_BYTES = 256 * 2 ** 20  # one trial's result.json (one line per report: a few KB each)


def untrusted_study(folder: str | os.PathLike) -> str | None:
    """Why the study folder may not be handed to Ray's decoders (None: it may). Everything in it (Tune's state, the
    searcher's, trial_settings.json, every subfolder and file: see the module doc) must be owned by this user and
    writable by nobody else, as must any file a link in it leads to outside it (no link may lead to a folder
    outside it), and the folder holding it must not let others replace it. Then only this user can have written
    what Ray unpickles. Reads metadata only, never a file's contents."""
    folder = Path(folder)
    uid = os.getuid()
    parent = folder.resolve().parent
    info = parent.stat()
    if info.st_uid not in (uid, 0) and info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        return (f"refusing {folder}: the folder holding it ({parent}, mode {info.st_mode & 0o7777:o}) lets other "
                f"users replace it, and resuming unpickles the study's files (code could run)")
    root = folder.resolve()
    for path in _entries(folder):
        info = path.lstat()
        link = stat.S_ISLNK(info.st_mode)
        why = _link_outside(path, root, uid) if link else None
        if why:
            return (f"refusing {path}: a symbolic link to {os.readlink(path)}, {why}, and resuming unpickles the "
                    f"study's files (code could run); copy the study without it to resume it")
        if info.st_uid != uid:
            return (f"refusing {path}: it is owned by user id {info.st_uid}, not by you, and resuming unpickles the "
                    f"study's files (code could run); copy the study folder to resume it")
        if not link and info.st_mode & 0o022:
            return (f"refusing {path}: it is writable by other users (mode {info.st_mode & 0o777:o}) and resuming "
                    f"unpickles the study's files (code could run); chmod -R go-w the study folder first")
    return None


def _link_outside(path: Path, root: Path, uid: int) -> str | None:
    """What is wrong with a link in a study (None: nothing). One to inside points at what the walk checks; one to
    outside (W&B links its logs to its cache) must lead to a file of this user that nobody else can write."""
    target = path.resolve()
    if target.is_relative_to(root):
        return None
    try:
        info = target.stat()
    except OSError:
        return None  # dangling: there is nothing to read through it
    if stat.S_ISDIR(info.st_mode):
        return "a folder outside the study (not checked)"
    if info.st_uid != uid or info.st_mode & 0o022:
        return "outside the study, a file other users own or can write"
    return None


def _entries(folder: Path) -> Iterator[Path]:
    """The folder (followed if it is itself a link: the name the user gave) and everything below it, links not
    followed."""
    yield folder.resolve()
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in (*dirs, *files):
            yield Path(root) / name


# ---------------------------------------------------------------------------------------------- Tune's view, offline
class StudyResults:
    """Tune's view of a study as `ray.tune.Result`s, one per trial (its flat config, last metrics, per-report history
    as `metrics_dataframe`, and `error` for a failed trial), with the reading API of Tune's ResultGrid:
    len(), indexing, iteration, `errors`, `get_best_result`, `get_dataframe`."""

    def __init__(self, results: list[Result], path: Path) -> None:
        self._results, self.experiment_path = results, str(path)

    def __len__(self) -> int:
        return len(self._results)

    def __getitem__(self, i: int) -> Result:
        return self._results[i]

    def __iter__(self) -> Iterator[Result]:
        return iter(self._results)

    @property
    def errors(self) -> list[Exception]:
        return [r.error for r in self._results if r.error]

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_best_result(self, metric: str, mode: str, scope: str = "last",
                        filter_nan_and_inf: bool = True) -> Result:
        """As ResultGrid.get_best_result: the trial whose `metric` is best ('min' or 'max') at its last report
        (scope 'last'), over all its reports ('all'), on average ('avg'), or on average over its last 5 or 10
        ('last-5-avg', 'last-10-avg')."""
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        scores = []
        for result in self._results:
            history = result.metrics_dataframe
            if history is None or metric not in history:
                continue
            values = pd.to_numeric(history[metric], errors="coerce").astype(float)
            if scope == "last":
                value = values.iloc[-1]
            elif scope == "all":
                value = values.min() if mode == "min" else values.max()
            elif scope in ("avg", "last-5-avg", "last-10-avg"):
                value = values.iloc[-int(scope.split("-")[1]):].mean() if scope != "avg" else values.mean()
            else:
                raise ValueError(f"scope must be last, all, avg, last-5-avg or last-10-avg, got {scope!r}")
            if not (filter_nan_and_inf and not math.isfinite(value)):
                scores.append((value if mode == "min" else -value, len(scores), result))
        if not scores:
            raise RuntimeError(f"no trial reported a {'finite ' if filter_nan_and_inf else ''}{metric!r}")
        return min(scores, key=lambda s: s[:2])[2]

    def get_dataframe(self) -> pd.DataFrame:
        """One row per trial: its last reported metrics (config flattened as config/<name>)."""
        return pd.json_normalize([r.metrics for r in self._results], sep="/")


def result_grid(folder: str | os.PathLike) -> StudyResults:
    """Tune's view of a study folder, offline (no cluster, nothing resumed, no Ray decoder): one Result per trial
    folder `trial-<id>/`, from Tune's plain-JSON `params.json` (the flat config: searched fields + preset) and
    `result.json` (one line per report), with the text of `error.txt` for a failed trial. Never reads Tune's
    pickles (see the module doc), so a study from anyone can be read. A trial whose files are not readable JSON is
    skipped with a warning naming the file."""
    folder = Path(folder).resolve()
    trials = sorted(p for p in folder.glob("trial-*") if p.is_dir() and not p.is_symlink())
    if not folder.is_dir() or not trials:
        raise ValueError(f"{folder}: no Tune trials (trial-<id>/ folders) in it; expected a study folder")
    results = []
    for trial in trials:
        try:
            results.append(_trial_result(trial))
        except ValueError as exc:
            warnings.warn(f"skipping unreadable trial {trial}: {exc}", stacklevel=2)
    return StudyResults(results, folder)


def _trial_result(trial: Path) -> Result:
    history = [row for row in _json_lines(trial / "result.json") if isinstance(row, dict)]
    params = _json_lines(trial / "params.json", whole=True)
    config = params[0] if params and isinstance(params[0], dict) else {}
    last = dict(history[-1]) if history else {}
    last["config"] = config
    error_file = trial / "error.txt"
    error = None
    if error_file.is_file() and not error_file.is_symlink():
        text = _read_text(error_file)
        error = TuneError(next((line for line in reversed(text.splitlines()) if line.strip()), "unknown error"))
    frame = pd.json_normalize(history, sep="/") if history else pd.DataFrame()
    return Result(metrics=last, checkpoint=None, error=error, path=str(trial), metrics_dataframe=frame)


def _read_text(path: Path) -> str:
    with open(path, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError(f"{path} is not a regular file")
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise ValueError(f"{path}: more than {MAX_JSON_BYTES} bytes")
    return data.decode("utf-8", errors="replace")


def _json_lines(path: Path, whole: bool = False) -> list[Any]:
    """The JSON values of a file (one per line, or the whole file), plain `json.loads`: Tune's decoder would expand
    a CLOUDPICKLE_FALLBACK value, this leaves it a dict. [] when the file is absent."""
    if not path.exists() or path.is_symlink():
        return []
    text = _read_text(path)
    try:
        return [json.loads(text)] if whole else [json.loads(line) for line in text.splitlines() if line.strip()]
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: not JSON ({str(exc)[:200]})") from None
