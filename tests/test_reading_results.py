"""Self-describing results: nulls for what was not computed, every shaping config field a column, provenance in the
file metadata, older files read with the new columns null, and docs/reading-results.md's examples run as written
(pandas, polars and duckdb must agree)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sid.config import preset
from sid.results import (
    EVALUATION_SCHEMA,
    MORE_CONFIG_COLUMNS,
    file_metadata,
    provenance,
    read_evaluations,
    upsert_evaluations,
    write_evaluations,
    write_trials,
)
from sid.testing.fixtures import code_blocks
from sid.testing.results import NAN_ROW, alpha_sweep_rows, trials_table

DOC = Path(__file__).resolve().parents[1] / "docs" / "reading-results.md"



@pytest.fixture
def study(tmp_path, monkeypatch) -> Path:
    """A study folder of the documented shape: one file per trial, a trials table; one file from before the
    MORE_CONFIG_COLUMNS existed."""
    folder = tmp_path / "results" / "alpha_sweep-digits-study"
    rows = pd.DataFrame(alpha_sweep_rows())
    config = preset("digits-study")
    for i, (trial, g) in enumerate(rows.groupby("trial_id")):
        path = folder / "evaluations" / f"{trial}.parquet"
        if i == 0:  # an older writer: no new columns, no provenance
            table = pa.Table.from_pandas(g.drop(columns=[c for c in MORE_CONFIG_COLUMNS if c in g]),
                                         preserve_index=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path)
        else:
            write_evaluations(path, g.assign(**{c: getattr(config, c) for c in MORE_CONFIG_COLUMNS}),
                              provenance(config.to_dict(), "cpu"))
    write_trials(folder / "trials.parquet", trials_table(rows))
    monkeypatch.chdir(tmp_path)
    return folder


def test_not_computed_is_null_and_sql_means_skip_it(tmp_path):
    path = tmp_path / "e.parquet"
    rows = [r for r in alpha_sweep_rows() if r["trial_id"] == NAN_ROW[1]]
    for r in rows:
        r["loss_fake_score"] = math.nan if r["kimg"] == 0 else r["loss_fake_score"]
    write_evaluations(path, rows)
    table = pq.read_table(path)
    assert table.column("fid").null_count == 1 and table.column("loss_fake_score").null_count == 1
    assert not np.isnan(duckdb.sql(f"SELECT avg(fid), avg(loss_fake_score) FROM '{path}'").fetchall()[0]).any()
    assert pl.read_parquet(path)["fid"].mean() == pytest.approx(pd.read_parquet(path)["fid"].mean())


def test_rows_carry_every_shaping_field_and_files_say_what_made_them(tmp_path):
    config = preset("digits", dropout=0.1, augment=0.05)
    row = dict(alpha_sweep_rows()[0], **{c: getattr(config, c) for c in MORE_CONFIG_COLUMNS})
    path = tmp_path / "e.parquet"
    upsert_evaluations(path, [row], provenance(config.to_dict(), "cpu"))
    back = read_evaluations(path).iloc[0]
    assert (back["dropout"], back["augment"], back["fid_ref"], back["ema_mimg"]) == (0.1, 0.05, "digits", 0.02)
    assert pq.read_schema(path).names == EVALUATION_SCHEMA.names
    meta = file_metadata(path)

    assert json.loads(meta["sid_config"]) == config.to_dict()
    assert meta["torch_version"] == torch.__version__ and meta["device"].startswith("cpu: ")
    assert meta["sid_version"] and set(meta) >= {"sid_git_commit", "cuda_version", "sid_schema_version"}


def test_older_files_read_with_the_new_columns_null(study):
    rows = read_evaluations(study)
    assert list(rows.columns) == EVALUATION_SCHEMA.names
    old = rows["trial_id"] == sorted(rows["trial_id"].unique())[0]
    assert rows.loc[old, "fid_ref"].isna().all() and rows.loc[~old, "fid_ref"].eq("digits").all()
    # rewriting an old file (a resumed trial) keeps its rows and gains the columns, null where unknown
    first = sorted((study / "evaluations").glob("*.parquet"))[0]
    merged = upsert_evaluations(first, [dict(rows[old].iloc[-1], kimg=999.0)])
    assert len(merged) == old.sum() + 1 and pq.read_schema(first).names == EVALUATION_SCHEMA.names


def test_the_docs_examples_run_and_pandas_polars_duckdb_agree(study):
    blocks = code_blocks(DOC.read_text())
    assert len(blocks) >= 5, "docs/reading-results.md lost its examples"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    pandas_means = namespace["by_alpha"]
    duck = namespace["by_alpha_duckdb"].set_index("alpha")["fid"]
    polar = dict(zip(*namespace["by_alpha_polars"].to_dict(as_series=False).values()))
    assert list(duck.index) == list(pandas_means.index) == sorted(polar)
    assert duck.tolist() == pytest.approx(pandas_means.tolist())
    assert [polar[a] for a in duck.index] == pytest.approx(pandas_means.tolist())
    # a diverged trial's last fid is null: every reader leaves it out of the mean instead of returning NaN
    assert all(math.isfinite(v) for v in duck)
    assert set(namespace["meta"]["key"]) >= {"sid_version", "sid_config", "device"}
