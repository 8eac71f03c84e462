"""The Parquet results schemas, the one upsert that writes rows, and tolerant readers.

`evaluations`: one row per evaluation of one trial (or one single run). `trials`: one row per trial with its final
state. `scores` (`sid evaluate`) and `phema` (`sid phema`): one row per draw, per rebuilt EMA length. Every file
carries SCHEMA_VERSION in its Parquet metadata, stores a value not computed as null (not NaN), and is written
atomically (sid.files.write_file_atomic), so a reader never sees half a file. Rows are keyed (EVALUATION_KEY,
SCORE_KEY, PHEMA_KEY): writing a row again, as a resumed trial does, replaces it, never duplicates it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import subprocess
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from sid.files import NOT_EVALUATIONS, SCORES_FILE, TRIALS_FILE, write_file_atomic

SCHEMA_VERSION = "1"
# What one results file may cost to read (a study's rows file: a few hundred rows, a few hundred KB decoded).
MAX_ROWS = 2_000_000
MAX_COLUMNS = 1_000
MAX_BYTES = 2 ** 30   # its size on disk, its declared column data, its decoded columns

# Columns copied from the run's config into every row (and into the trials table).
CONFIG_COLUMNS = ("preset", "teacher", "alpha", "tmax", "sigma_init", "lr", "glr", "batch", "precision", "seed")
# The other config fields that shape an evaluation's numbers, also in every row (added in schema 1 without a version
# change: readers fill them with nulls for files written before). Fields that only say when to evaluate or what to
# keep (eval_*, keep_snapshots, fid_images_final) are not columns; the complete config is in the file's metadata.
MORE_CONFIG_COLUMNS = ("init_generator", "ls", "lsg", "beta1", "g_beta1", "beta2", "adam_eps", "batch_per_device",
                       "memory_format", "compile", "dropout", "augment", "ema_mimg", "ema_rampup", "duration_kimg",
                       "fid_ref", "method", "data", "lsd", "lsg_gan", "generator_warmup_kimg",
                       "adversarial_warmup_kimg")

# The Inception Score of a set of images: the same two columns in evaluation rows and score rows.
IS_FIELDS = (
    pa.field("is_mean", pa.float64()),  # Inception Score, mean over 10 splits (null: not computed)
    pa.field("is_std", pa.float64()),   # its std over the splits (ddof 0, as StyleGAN3's is50k)
)

EVALUATION_SCHEMA = pa.schema([
    ("study", pa.string()),            # study name ('' for a single run)
    ("trial_id", pa.string()),         # Tune trial id, or the run folder's name for a single run
    ("preset", pa.string()),
    ("teacher", pa.string()),
    ("alpha", pa.float64()),
    ("tmax", pa.int64()),
    ("sigma_init", pa.float64()),
    ("lr", pa.float64()),              # fake-score learning rate
    ("glr", pa.float64()),             # generator learning rate
    ("batch", pa.int64()),             # global batch per phase
    ("precision", pa.string()),
    ("seed", pa.int64()),
    ("world_size", pa.int64()),        # DDP ranks that ran the trial
    ("kimg", pa.float64()),            # generator images used so far / 1000 (iterations * batch / 1000)
    ("iteration", pa.int64()),
    ("wall_s", pa.float64()),          # training wall time so far, evaluations excluded
    ("device_s", pa.float64()),        # wall_s x devices (GPUs, or CPU workers)
    ("fid", pa.float64()),             # Frechet distance of G_ema samples; NaN when it could not be computed
    ("fid_detector", pa.string()),     # feature network: 'inception-2015-12-05' (FID) or 'digits-features-v1' (FD)
    ("fid_images", pa.int64()),        # generated images behind this value
    ("fid_std", pa.float64()),         # its sampling standard error (sid.config.FD_STD_METHOD); NaN if not computed
    *IS_FIELDS,                        # of the same images, where the config's eval_metrics has 'is' (a later column)
    ("loss_fake_score", pa.float64()), # mean over the iterations since the previous evaluation
    ("loss_generator", pa.float64()),
    ("images_per_s", pa.float64()),    # generator images per second of training since the previous evaluation
    ("nan_samples", pa.int64()),       # samples dropped by the NaN guard since the previous evaluation
    ("status", pa.string()),           # 'ok' | 'diverged'
    ("init_generator", pa.string()),   # initial generator ('' = the teacher)
    ("ls", pa.float64()),              # fake-score loss scale
    ("lsg", pa.float64()),             # generator loss scale
    ("beta1", pa.float64()),           # fake-score Adam beta1
    ("g_beta1", pa.float64()),         # generator Adam beta1
    ("beta2", pa.float64()),           # Adam beta2
    ("adam_eps", pa.float64()),        # Adam eps (resolved)
    ("batch_per_device", pa.int64()),  # micro-batch per device (0 = the largest that fit)
    ("memory_format", pa.string()),
    ("compile", pa.string()),
    ("dropout", pa.float64()),
    ("augment", pa.float64()),         # EDM augmentation probability
    ("ema_mimg", pa.float64()),        # EMA half-life in Mimg
    ("ema_rampup", pa.float64()),
    ("duration_kimg", pa.float64()),   # the run's planned length
    ("fid_ref", pa.string()),          # reference statistics of the Frechet distance
    ("labels", pa.string()),           # where the classes of a conditional generator came from (sid.datasets)
    ("method", pa.string()),           # 'sid' | 'sida' (null in files from before SiDA: those are SiD)
    ("data", pa.string()),             # SiDA's real images ('' for SiD)
    ("lsd", pa.float64()),             # SiDA: discriminator loss scale
    ("lsg_gan", pa.float64()),         # SiDA: generator adversarial loss scale
    ("generator_warmup_kimg", pa.float64()),    # SiDA: the generator steps after this many kimg
    ("adversarial_warmup_kimg", pa.float64()),  # SiDA: the adversarial term starts after this many kimg
    ("setting", pa.string()),          # a study's label of the trial's whole setting ('' for none; null: from before)
    ("loss_discriminator", pa.float64()),  # SiDA: mean discriminator term of the fake-score loss (NaN for SiD)
    ("loss_generator_gan", pa.float64()),  # SiDA: mean adversarial term of the generator loss (NaN for SiD)
    ("written_at", pa.timestamp("us", tz="UTC")),
])
EVALUATION_KEY = ("trial_id", "kimg")  # one row per evaluation point of a trial
# Columns a file may lack because it was written before they existed: read back as nulls.
LATER_COLUMNS = frozenset((*MORE_CONFIG_COLUMNS, "fid_std", "labels", *(f.name for f in IS_FIELDS), "pr_precision",
                           "pr_recall", "pr_ref", "pr_real_images", "generator_kimg", "loss_discriminator",
                           "loss_generator_gan", "setting"))

TRIAL_STATES = ("completed", "stopped_early", "diverged", "error", "running")

TRIAL_SCHEMA = pa.schema([
    ("study", pa.string()),
    ("trial_id", pa.string()),
    *[EVALUATION_SCHEMA.field(c) for c in CONFIG_COLUMNS],
    *[EVALUATION_SCHEMA.field(c) for c in MORE_CONFIG_COLUMNS],  # any searchable field is a column (later columns)
    EVALUATION_SCHEMA.field("setting"),  # the trial's setting label (a later column)
    ("world_size", pa.int64()),
    ("fid_detector", pa.string()),
    ("state", pa.string()),            # one of TRIAL_STATES
    ("best_fid", pa.float64()),        # lowest finite fid of the trial (NaN if none)
    ("best_kimg", pa.float64()),       # kimg where best_fid occurred
    ("last_kimg", pa.float64()),       # last evaluated kimg
    ("evaluations", pa.int64()),       # number of evaluation rows
    ("device_hours", pa.float64()),    # device_s of the last row / 3600
    ("error", pa.string()),            # why: the error ('error'), divergence ('diverged') or stop ('stopped_early')
])



SCORE_SCHEMA = pa.schema([
    ("source", pa.string()),           # what was scored: run folder, snapshot, .pkl, image folder or .npz, as given
    ("kind", pa.string()),             # 'generator' | 'folder' | 'zip' | 'npz'
    ("repeat", pa.int64()),            # index of the independent draw, 0..repeats-1
    ("seeds", pa.string()),            # seeds of a generator draw ('0-49999'); image range of a file ('images 0-49999')
    ("sigma_init", pa.float64()),      # generator input noise level (NaN for image files)
    ("class_label", pa.int64()),       # --class, or -1 for random classes / unconditional / image files
    ("fid", pa.float64()),             # Frechet distance of this draw (an FID only on inception-2015-12-05 features)
    ("fid_detector", pa.string()),     # feature network, as in evaluation rows
    ("fid_images", pa.int64()),        # images in this draw, as in evaluation rows
    ("fid_std", pa.float64()),         # its sampling standard error, as in evaluation rows (a later column)
    ("fid_ref", pa.string()),          # reference statistics: 'digits', 'edm:<name>', .npz path or URL
    *IS_FIELDS,                        # of this draw
    ("pr_precision", pa.float64()),    # share of this draw inside the real images' k=3 manifold (null: not computed)
    ("pr_recall", pa.float64()),       # share of the real images inside this draw's k=3 manifold
    ("pr_ref", pa.string()),           # the real images of precision/recall: folder, zip, npz or 'digits' ('' if none)
    ("pr_real_images", pa.int64()),    # how many of them (the first, in sorted order)
    ("generator_kimg", pa.float64()),  # training kimg of the scored generator, where its file records it
    ("written_at", pa.timestamp("us", tz="UTC")),
])
# A draw is what was scored, with which images and how: scoring it again replaces its row.
SCORE_KEY = ("source", "kind", "seeds", "class_label", "sigma_init", "fid_detector", "fid_ref")



PHEMA_SCHEMA = pa.schema([
    ("study", pa.string()),
    ("trial_id", pa.string()),         # the run's trial, as in its evaluation rows
    *[EVALUATION_SCHEMA.field(c) for c in CONFIG_COLUMNS],
    ("sigma_rel", pa.float64()),       # the post-hoc EMA's length: std of its averaging profile relative to its age
    ("kimg", pa.float64()),            # the training point it was rebuilt at
    ("iteration", pa.int64()),
    ("snapshots", pa.int64()),         # profile snapshots the least-squares fit combined
    ("fid", pa.float64()),             # Frechet distance of the rebuilt G_ema on the run's evaluation latents
    ("fid_detector", pa.string()),
    ("fid_images", pa.int64()),
    ("fid_std", pa.float64()),         # its sampling standard error, as in evaluation rows (a later column)
    ("written_at", pa.timestamp("us", tz="UTC")),
])
PHEMA_KEY = ("trial_id", "kimg", "sigma_rel")  # one rebuilt EMA length at one snapshot point of a run


def now_utc() -> datetime:
    return datetime.now(UTC)


def _table(rows: pd.DataFrame | Iterable[Mapping[str, Any]], schema: pa.Schema,
           metadata: Mapping[str, str] | None = None) -> pa.Table:
    """Rows as a table of `schema`; NaN in a float column becomes null ('not computed': SQL's avg() and polars'
    mean() skip it, where a NaN would make them NaN)."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    frame = _fill_later(frame, schema)
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise ValueError(f"rows lack schema columns: {', '.join(missing)}")
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    for i, f in enumerate(table.schema):
        if pa.types.is_floating(f.type):
            column = table.column(i)
            table = table.set_column(i, f, pc.if_else(pc.is_nan(column), pa.scalar(None, f.type), column))
    meta = {b"sid_schema_version": SCHEMA_VERSION.encode(),
            **{k.encode(): str(v).encode() for k, v in (metadata or {}).items()}}
    return table.replace_schema_metadata(meta)


def _fill_later(frame: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """Nulls for the LATER_COLUMNS of `schema` that `frame` lacks (a file or rows from before they existed)."""
    lacking = [n for n in schema.names if n in LATER_COLUMNS and n not in frame.columns]
    if not lacking:
        return frame
    fill = {n: pa.nulls(len(frame), schema.field(n).type).to_pandas() for n in lacking}
    return frame.assign(**{n: v.set_axis(frame.index) for n, v in fill.items()})


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of this checkout ('' for an installed package or without git)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                              timeout=5)
        return done.stdout.strip() if done.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(config: Mapping[str, Any] | None = None, device: str | None = None) -> dict[str, str]:
    """What made a results file, for its Parquet metadata: package version, git commit (when this is a checkout),
    torch and CUDA versions, the device's name and the complete config (JSON)."""
    try:
        version = metadata.version("sid-studies")
    except metadata.PackageNotFoundError:
        version = ""
    device = device or "cpu"
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else \
        (platform.processor() or platform.machine())
    return {"sid_version": version, "sid_git_commit": git_commit(), "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda or "", "device": f"{device}: {name}",
            "sid_config": json.dumps(dict(config or {}), sort_keys=True)}


def file_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The key/value metadata of a results file (provenance() keys, sid_schema_version), pandas' own left out."""
    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k != b"pandas"}


def is_uri(path: str | os.PathLike) -> bool:
    """'s3://bucket/x' (also as Path, which folds it to 's3:/bucket/x'): results go to local or mounted folders only,
    since they are written with plain file I/O and atomic renames."""
    return re.match(r"^[A-Za-z][\w+.-]+:/", os.fspath(path)) is not None


def write_atomic(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write a Parquet file so that readers see either the old file or the complete new one (WriteError naming the
    file when it cannot be written)."""
    return write_file_atomic(path, lambda f: pq.write_table(table, f))


def write_evaluations(path: str | os.PathLike, rows: pd.DataFrame | Iterable[Mapping[str, Any]],
                      metadata: Mapping[str, str] | None = None) -> Path:
    table = _table(rows, EVALUATION_SCHEMA, metadata)
    return write_atomic(table, path)


def upsert(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], schema: pa.Schema, key: Sequence[str], *,
           sort: bool = True,                        # rows in key order (else: the file's, then the new ones)
           metadata: Mapping[str, str] | None = None,  # provenance(): the file's key/value metadata
           ) -> pd.DataFrame:
    """Merge `rows` into the results file of `schema` at `path` (created if missing), replacing any row with the same
    `key` values, and return all its rows: writing the same rows twice gives the same file. The file is written
    atomically with SCHEMA_VERSION in its metadata and null for every NaN (_table)."""
    new = pd.DataFrame(list(rows))
    old = read_parquet(path, schema) if Path(path).exists() else None
    merged = new if old is None or old.empty else pd.concat([old, new], ignore_index=True)
    merged = merged.drop_duplicates(subset=list(key), keep="last")
    if sort:
        merged = merged.sort_values(list(key))
    merged = merged.reset_index(drop=True)
    write_atomic(_table(merged, schema, metadata), path)
    return merged


def upsert_evaluations(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]],
                       metadata: Mapping[str, str] | None = None) -> pd.DataFrame:
    """upsert() of evaluation rows: one per (trial_id, kimg), in that order."""
    return upsert(path, rows, EVALUATION_SCHEMA, EVALUATION_KEY, metadata=metadata)


def read_scores(*paths: str | os.PathLike) -> pd.DataFrame:
    """All `sid evaluate` rows under the given folders / files."""
    return _read_many(_files(paths, SCORES_FILE), SCORE_SCHEMA)


def write_trials(path: str | os.PathLike, rows: pd.DataFrame | Iterable[Mapping[str, Any]]) -> Path:
    return write_atomic(_table(rows, TRIAL_SCHEMA), path)


def schema_version(path: str | os.PathLike) -> str | None:
    meta = pq.read_schema(path).metadata or {}
    value = meta.get(b"sid_schema_version")
    return value.decode() if value is not None else None


def read_parquet(path: str | os.PathLike, schema: pa.Schema | None = None) -> pd.DataFrame:
    """Read one results file; raise ValueError naming the file if it is not readable Parquet or would cost more
    than the budgets (MAX_ROWS, MAX_COLUMNS, MAX_BYTES: checked from the footer, and for text columns from their
    dictionaries, before any column is decoded; a MemoryError on the way is the same ValueError)."""
    try:
        try:
            frame = _read_bounded(path)
            if schema is not None:
                frame = _fill_later(frame, schema)
        except MemoryError:
            raise ValueError("too large to read (out of memory)") from None
    except Exception as exc:  # a cut file raises Arrow/OS errors; crafted pandas metadata Key/Type/ValueErrors
        raise ValueError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    if schema is not None:
        missing = [n for n in schema.names if n not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {', '.join(missing)}")
        frame = frame[[*schema.names, *(c for c in frame.columns if c not in schema.names)]]
    return frame


def _read_bounded(path: str | os.PathLike) -> pd.DataFrame:
    """One results file as a frame, within the budgets. A small file can ask for a lot: a 1 MB text value stored
    once in a column's dictionary and repeated on every row decodes to rows x 1 MB."""
    # One open, read whole: a path-based read may open the file again for its pages, and a writer's rename in
    # between (a trial's rank 0 while the study's stopper reads) mixes two files' footer and pages.
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_BYTES:
            raise ValueError(f"{size:,} bytes, more than a results file of at most {MAX_BYTES:,}")
        data = pa.BufferReader(f.read())
    footer = pq.ParquetFile(data)
    meta, columns = footer.metadata, footer.schema_arrow
    if meta.num_rows > MAX_ROWS or meta.num_columns > MAX_COLUMNS:
        raise ValueError(f"{meta.num_rows:,} rows and {meta.num_columns} columns (at most {MAX_ROWS:,} and "
                         f"{MAX_COLUMNS})")
    declared = sum(meta.row_group(g).column(c).total_uncompressed_size
                   for g in range(meta.num_row_groups) for c in range(meta.num_columns))
    if declared > MAX_BYTES:
        raise ValueError(f"{declared:,} bytes of column data (at most {MAX_BYTES:,})")
    nested = [f.name for f in columns if pa.types.is_nested(f.type)]
    if nested:
        raise ValueError(f"nested column {nested[0]!r} (results files hold flat columns)")
    text = [f.name for f in columns if _is_text(f.type.value_type if pa.types.is_dictionary(f.type) else f.type)]
    data.seek(0)
    table = pq.ParquetFile(data, read_dictionary=text).read()  # text stays encoded until its size is known
    decoded = table.nbytes
    for name in text:
        for chunk in table.column(name).chunks:
            lengths = pc.binary_length(chunk.dictionary).take(chunk.indices)
            decoded += (pc.sum(lengths).as_py() or 0) - chunk.dictionary.nbytes
    if decoded > MAX_BYTES:
        raise ValueError(f"its columns decode to {decoded:,} bytes (at most {MAX_BYTES:,})")
    for name in text:
        index = table.schema.get_field_index(name)
        plain = pa.chunked_array([c.dictionary_decode() for c in table.column(name).chunks],
                                 type=table.schema.field(name).type.value_type)
        table = table.set_column(index, pa.field(name, plain.type), plain)
    return table.to_pandas()


def _is_text(kind: pa.DataType) -> bool:
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind))


def _files(paths: Iterable[str | os.PathLike], pattern: str) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(q for q in p.rglob(pattern) if not q.name.startswith(".")))
        elif p.exists():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such results file or folder: {p}")
    return found


def _read_many(files: list[Path], schema: pa.Schema) -> pd.DataFrame:
    frames = []
    for f in files:
        try:
            frames.append(read_parquet(f, schema))
        except ValueError as exc:
            warnings.warn(f"skipping unreadable results file {f}: {exc}", stacklevel=3)
    if not frames:
        return schema.empty_table().to_pandas()
    return pd.concat(frames, ignore_index=True)


def read_evaluations(*paths: str | os.PathLike) -> pd.DataFrame:
    """All evaluation rows under the given study folders / run folders / files; unreadable files are skipped
    with a warning that names them."""
    files = [f for f in _files(paths, "*.parquet") if f.name not in NOT_EVALUATIONS]
    return _read_many(files, EVALUATION_SCHEMA)


def read_trials(*paths: str | os.PathLike) -> pd.DataFrame:
    return _read_many(_files(paths, TRIALS_FILE), TRIAL_SCHEMA)


# ---------------------------------------------------------------------------------------------- one trial's summary
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


def best_row(rows: pd.DataFrame) -> pd.Series | None:
    """The evaluation of a trial's lowest finite FD among its 'ok' rows (ties: the earlier kimg), or None: the
    one that best.pt holds (a diverged row has no snapshot)."""
    ok = rows[(rows["status"] == "ok") & rows["fid"].map(math.isfinite)]
    return None if ok.empty else ok.sort_values(["fid", "kimg"], kind="stable").iloc[0]


def best_of(best: Mapping[str, Any] | None, row: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """best_row's choice between the best row so far (None: none yet) and a later row of the same trial: the
    training loop's running best, as best_row would pick it from all the rows."""
    candidates = [r for r in (best, row) if r is not None]
    found = best_row(pd.DataFrame([{k: r[k] for k in ("status", "fid", "kimg")} for r in candidates]))
    return None if found is None else candidates[found.name]


def summarise_rows(rows: pd.DataFrame, divergence: Divergence | None = None) -> dict[str, Any]:
    """One trial's numbers from its evaluation rows (any order), the one definition used by studies, their trials
    table and analysis/: best (best_row), final FD (the last finite one; a diverged trial's final counts as NaN for
    its callers), last kimg, evaluations, device-hours and the divergence reason ('' when none) under `divergence`
    (default: Divergence())."""
    rows = rows.sort_values("kimg", kind="stable")
    best = best_row(rows)
    reason = (divergence or Divergence()).reason(rows) or ""
    finite = rows[rows["fid"].map(math.isfinite)]
    return dict(
        best_fid=float(best["fid"]) if best is not None else math.nan,
        best_kimg=float(best["kimg"]) if best is not None else math.nan,
        final_fid=float(finite["fid"].iloc[-1]) if not finite.empty else math.nan,
        last_kimg=float(rows["kimg"].iloc[-1]) if not rows.empty else math.nan,
        evaluations=len(rows),
        device_hours=float(rows["device_s"].iloc[-1]) / 3600 if not rows.empty else 0.0,
        diverged=reason,
    )
