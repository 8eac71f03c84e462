"""Every file and folder name of a run folder and of a study folder, defined once: writers and readers import them.

A run folder (`sid distill --out DIR`, or `<study>/runs/<trial_id>/` for a study's trial):

    config.yaml                    the complete resolved config (a file for --config), written with the first row
    evaluations.parquet            one row per evaluation (a study's trials write <study>/evaluations/<trial>.parquet)
    checkpoint.pt                  the complete training state, rewritten once per evaluation (one-run folders only:
                                   a study trial's state lives in its Tune or Ray Train checkpoints)
    snapshots/generator-<kimg>.pt  G_ema of an evaluation: weights, constructor arguments, sigma_init, config and the
                                   evaluation's FD; which ones stay is the config's keep_snapshots ('best,last')
    best.pt                        the snapshot of the lowest finite FD (ties: the earlier), a hard link or a copy
    phema/<sigma_rel>-<kimg>.pt    the post-hoc EMA profiles (config phema) at each of their snapshot points
    phema.parquet                  the scores of `sid phema`'s rebuilt EMA lengths
    scores.parquet                 the rows of `sid evaluate` (beside the source it scored)
    samples-<iteration>.png        64 G_ema samples of each evaluation
    tracking.json, tensorboard/, mlruns/   the trackers' run ids and their local stores (sid/tracking.py)
    ray/train/, workers/rank<k>.json       a Ray Train run's own checkpoints and where each rank ran (--workers N)
    export/generator.safetensors, .json    `sid export`'s default output

A study folder (`<storage>/<name>/`, sid/cluster/study.py):

    config.yaml                    the study command's resolved config
    trial_settings.json            what every trial gets: base config, resources, folder (the resume contract)
    evaluations/<trial_id>.parquet every evaluation of one trial
    trials.parquet                 one row per trial
    runs/<trial_id>/               the trial's run folder (snapshots, best.pt, sample grids)
    stops/<trial_id>.json          why the study stopped a trial
    train/train-<trial_id>/        a trial of several workers: its Ray Train run (its checkpoints)
    trial-<trial_id>/              Tune's files of the trial; a one-worker trial's checkpoints (checkpoint_*/state.pt)
    plan.json, calibration.json    the study's price before it ran (--plan; names and format: sid/plan.py)
    optuna.journal                 the Optuna study (the default storage)
    progress.log                   evaluation lines and trial ends (the `progress-file` callback, if the study names it)

Every file the project writes itself goes through the atomic writers below (the trackers' and Ray's own files are
written by those libraries): a temporary file beside its final name, fsync'd, then renamed onto it, so a reader sees
the old file or the complete new one, never half of one. Files get the mode the umask gives (0644 under umask 022),
as open() would make them, so a study on group storage is readable by the group.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

# ---------------------------------------------------------------------------------------------- a run folder
CONFIG_FILE = "config.yaml"          # the complete resolved config: the command's options and every DistillConfig field
EVALUATIONS = "evaluations.parquet"  # a one-run folder's rows
CHECKPOINT = "checkpoint.pt"         # the complete training state
SNAPSHOTS = "snapshots"              # snapshots/generator-<kimg>.pt
SNAPSHOT_PATTERN = "generator-*.pt"  # the snapshots in SNAPSHOTS (snapshot_name)
BEST = "best.pt"                     # the snapshot of the lowest finite FD
PHEMA = "phema"                      # phema/<sigma_rel>-<kimg>.pt: post-hoc EMA profiles
PHEMA_FILE = "phema.parquet"         # written by `sid phema` into each run folder; not an evaluations file
SCORES_FILE = "scores.parquet"       # written by `sid evaluate`; not an evaluations file
LEGACY_GENERATOR = "generator.pt"    # the G_ema file of run folders written before snapshots existed
RUN_FILES = (BEST, LEGACY_GENERATOR)  # what a run folder resolves to, in order (then its newest snapshot)
TRACKING_FILE = "tracking.json"      # ids of the MLflow / W&B runs of this folder, so a resume continues them
TRACKING_OFF_FILE = "tracking-off.json"  # trackers this run switched off, and why (for the command's final line)
TENSORBOARD_DIR = "tensorboard"      # <run folder>/tensorboard/events.out.tfevents.*
MLFLOW_DIR = "mlruns"                # default MLflow file store: <run folder>/mlruns
RAY_DIR = "ray"                      # ray/train/: the Ray Train storage of a --workers N run (its own checkpoints)
WORKERS_DIR = "workers"              # workers/rank<k>.json: pid, node and device of each rank of a Ray Train run
RAY_STATE_FILE = "state.pt"          # the training state inside each Ray Train checkpoint folder
EXPORT_FILE = "export/generator.safetensors"  # `sid export RUN`'s default output (its .json beside it)

# ---------------------------------------------------------------------------------------------- a study folder
SETTINGS_FILE = "trial_settings.json"  # the base config, resolved resources and folder every trial gets
EVALUATIONS_DIR = "evaluations"        # evaluations/<trial_id>.parquet: every evaluation of one trial
TRIALS_FILE = "trials.parquet"         # one row per trial
RUNS_DIR = "runs"                      # runs/<trial_id>/: the trial's snapshots, best.pt, sample grids
STOPS_DIR = "stops"                    # stops/<trial_id>.json: why the study stopped a trial (sid/cluster/search.py)
# orphaned/<trial_id>.parquet.orphaned: rows of a trial the study's Tune state does not know (sid.cluster.trials
# set_aside_orphans); the suffix keeps them out of every reader of evaluations
ORPHANS_DIR, ORPHAN_SUFFIX = "orphaned", ".orphaned"
TRAIN_DIR = "train"                    # train/train-<trial_id>: the trials' Ray Train runs
JOURNAL = "optuna.journal"             # the default Optuna storage
PROGRESS_LOG = "progress.log"          # the progress-file callback's lines (sid/cluster/callbacks.py)
NOT_EVALUATIONS = (TRIALS_FILE, SCORES_FILE, PHEMA_FILE)  # Parquet files beside evaluations that hold other rows


def snapshot_name(kimg: float) -> str:
    """'generator-000102.656.pt': zero-padded, so names sort by kimg."""
    return f"generator-{kimg:010.3f}.pt"


def samples_name(iteration: int) -> str:
    """'samples-0000050.png': the sample grid of the evaluation after `iteration`."""
    return f"samples-{iteration:07d}.png"


def samples_iteration(name: str) -> int | None:
    """The iteration of a sample grid's file name (samples_name's inverse); None for any other name."""
    m = re.fullmatch(r"samples-(\d+)\.png", name)
    return int(m[1]) if m else None


def phema_name(sigma_rel: float, kimg: float) -> str:
    """'0.0500-000102.656.pt': a post-hoc EMA profile at one snapshot point."""
    return f"{sigma_rel:.4f}-{kimg:010.3f}.pt"


# ---------------------------------------------------------------------------------------------- bounded reads
def read_regular(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of `path`, read only if it is a regular file of at most `max_bytes`: opened without blocking, so a
    FIFO or device named like a file is refused, not waited on (or read for ever). ValueError naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"{path}: cannot open this {what} ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file; refusing to read it")
        if info.st_size > max_bytes:
            raise ValueError(f"{path}: {info.st_size:,} bytes, more than a {what} may have ({max_bytes:,})")
        return f.read(max_bytes + 1)[:max_bytes]


# ---------------------------------------------------------------------------------------------- atomic writers
class WriteError(OSError):
    """A results or checkpoint file could not be written (disk full, read-only, ...); the message names the file
    and the cause."""


def _beside(path: Path) -> Path:
    """A temporary name beside `path`: hidden, and ending in .tmp, where `sid distill` removes a killed run's."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A new binary file beside `path` (`.<name>.<random>.tmp`, made with the umask's mode like any open()), fsync'd
    and renamed onto `path` when the block ends; removed, leaving `path` as it was, when the block raises.
    (tempfile.mkstemp would make every file mode 0600 whatever the umask.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _beside(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, as open() does
            break
        except FileExistsError:  # another writer's temporary of the same name: draw again
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_file_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write `path` through `write(f)` (open_atomic). A failure leaves no temporary file and raises WriteError
    naming `path` and the cause."""
    path = Path(path)
    try:
        with open_atomic(path) as f:
            write(f)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError with the OSError inside
        cause = next((e for e in (exc, exc.__context__) if isinstance(e, OSError) and e.errno), None)
        raise WriteError(f"cannot write {path}: {os.strerror(cause.errno) if cause else exc}") from exc
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return write_file_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text, atomically."""
    return write_bytes_atomic(path, text.encode())


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save of plain data (tensors and containers: read back with weights_only=True), atomically."""
    return write_file_atomic(path, lambda f: torch.save(obj, f))


def link_atomic(source: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """`dest` becomes the same file as `source` (a hard link; a copy, with the umask's mode, where the file system
    has none), atomically: a reader of `dest` sees the old file or the new one."""
    dest = Path(dest)
    tmp = _beside(dest)
    try:
        try:
            os.link(source, tmp)
        except OSError:  # no hard links on this file system (or across two): a copy
            with open(source, "rb") as src:
                return write_file_atomic(dest, lambda f: shutil.copyfileobj(src, f))
        os.replace(tmp, dest)
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return dest
