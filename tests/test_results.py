import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from analysis import common
from sid.cluster.trials import TrialRecord, set_aside_orphans, trial_row
from sid.config import preset
from sid.results import (
    EVALUATION_KEY,
    EVALUATION_SCHEMA,
    PHEMA_KEY,
    PHEMA_SCHEMA,
    SCHEMA_VERSION,
    SCORE_KEY,
    SCORE_SCHEMA,
    TRIAL_SCHEMA,
    Divergence,
    best_of,
    best_row,
    is_uri,
    now_utc,
    read_evaluations,
    read_parquet,
    read_trials,
    schema_version,
    summarise_rows,
    upsert,
    upsert_evaluations,
    write_trials,
)


def row(trial="t1", kimg=0.0, fid=10.0, **kw):
    base = dict(study="s", trial_id=trial, preset="digits", teacher="digits", alpha=1.2, tmax=800, sigma_init=2.5,
                lr=1e-4, glr=1e-4, batch=128, precision="fp32", seed=0, world_size=1, kimg=kimg,
                iteration=int(kimg * 1000 / 128), wall_s=1.0, device_s=1.0, fid=fid, fid_detector="digits-features-v1",
                fid_images=2048, loss_fake_score=1.0, loss_generator=-1.0, images_per_s=100.0, nan_samples=0,
                status="ok", written_at=now_utc())
    return {**base, **kw}


def test_upsert_replaces_rows_with_the_same_trial_and_kimg(tmp_path):
    path = tmp_path / "evaluations.parquet"
    upsert_evaluations(path, [row(kimg=0.0, fid=30.0), row(kimg=6.4, fid=20.0)])
    upsert_evaluations(path, [row(kimg=6.4, fid=19.0), row(kimg=12.8, fid=15.0)])  # a resumed trial re-reports 6.4
    frame = read_evaluations(path)
    assert frame["kimg"].tolist() == [0.0, 6.4, 12.8]
    assert frame["fid"].tolist() == [30.0, 19.0, 15.0]
    assert schema_version(path) == SCHEMA_VERSION


def test_columns_and_types_follow_the_schema(tmp_path):
    path = tmp_path / "evaluations.parquet"
    upsert_evaluations(path, [row(fid=math.nan, status="diverged")])
    schema = pq.read_schema(path)
    assert schema.names == EVALUATION_SCHEMA.names
    assert schema.field("fid").type == pa.float64() and schema.field("written_at").type == pa.timestamp("us", tz="UTC")
    assert math.isnan(read_evaluations(path)["fid"].iloc[0])


def test_missing_columns_are_an_error(tmp_path):
    bad = row()
    del bad["fid"]
    with pytest.raises(ValueError, match="fid"):
        upsert_evaluations(tmp_path / "e.parquet", [bad])


def test_truncated_file_is_skipped_with_a_warning_naming_it(tmp_path):
    good, cut = tmp_path / "evaluations" / "a.parquet", tmp_path / "evaluations" / "b.parquet"
    upsert_evaluations(good, [row(trial="a")])
    upsert_evaluations(cut, [row(trial="b")])
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    with pytest.warns(UserWarning, match="b.parquet"):
        frame = read_evaluations(tmp_path)
    assert frame["trial_id"].tolist() == ["a"]


def test_failed_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "evaluations.parquet"
    upsert_evaluations(path, [row(kimg=0.0)])
    with pytest.raises(Exception):  # noqa: B017 (pyarrow's error type for a bad value varies by version)
        upsert_evaluations(path, [row(kimg=1.0, fid="not a number")])
    assert read_evaluations(path)["kimg"].tolist() == [0.0]
    assert [p.name for p in tmp_path.iterdir()] == ["evaluations.parquet"]  # no temporary left behind


def test_trials_table_round_trip(tmp_path):
    trial = {k: row()[k] for k in TRIAL_SCHEMA.names if k in row()}
    trial |= dict(state="completed", best_fid=5.0, best_kimg=12.8, last_kimg=25.6, evaluations=5, device_hours=0.01,
                  error="")
    write_trials(tmp_path / "trials.parquet", [trial])
    frame = read_trials(tmp_path)
    assert frame.loc[0, "state"] == "completed" and frame.loc[0, "best_fid"] == 5.0
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == TRIAL_SCHEMA.names


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such results"):
        read_evaluations(tmp_path / "nope")


@pytest.mark.parametrize("path, expected", [
    ("s3://bucket/results", True),
    (Path("s3://bucket/results"), True),  # Path folds '//' to '/'
    ("gs://bucket/x", True),
    ("hdfs://namenode/x", True),
    ("file:///tmp/x", True),
    ("results", False),
    ("/shared/sid-studies", False),
    ("runs/a:b", False),
    ("", False),
])
def test_is_uri(path, expected):
    assert is_uri(path) == expected


# ---------------------------------------------------------------------------------------------- one trial's summary
def trial(fids, statuses=None, losses=None):
    statuses = statuses or ["ok"] * len(fids)
    losses = losses or [math.nan] + [1.0] * (len(fids) - 1)
    return pd.DataFrame([row(kimg=6.4 * k, fid=f, status=s, loss_fake_score=loss, device_s=10.0 * (k + 1))
                         for k, (f, s, loss) in enumerate(zip(fids, statuses, losses))])


@pytest.mark.parametrize("fids, statuses, best, best_kimg, final, diverged", [
    ([30.0, 20.0, 25.0], None, 20.0, 6.4, 25.0, ""),
    ([30.0, 20.0, 20.0], None, 20.0, 6.4, 20.0, ""),                     # a tie goes to the earlier evaluation
    ([30.0, 20.0, math.nan], ["ok", "ok", "diverged"], 20.0, 6.4, 20.0, "fid nan at kimg 12.8"),
    ([30.0, 400.0], None, 30.0, 0.0, 400.0, "over 10x"),                 # 13x its start
    ([30.0, 10.0], ["ok", "diverged"], 30.0, 0.0, 10.0, ""),             # a finite FD of a diverged row: no best
    ([math.nan], ["diverged"], math.nan, math.nan, math.nan, "fid nan"),
])
def test_summarise_rows_is_the_one_definition(fids, statuses, best, best_kimg, final, diverged):
    rows = trial(fids, statuses).sample(frac=1, random_state=0)  # any order
    got = summarise_rows(rows)
    assert got["best_fid"] == pytest.approx(best, nan_ok=True) and got["best_kimg"] == pytest.approx(best_kimg,
                                                                                                  nan_ok=True)
    assert got["final_fid"] == pytest.approx(final, nan_ok=True)
    assert (diverged in got["diverged"]) if diverged else got["diverged"] == ""
    assert got["evaluations"] == len(fids) and got["device_hours"] == pytest.approx(10.0 * len(fids) / 3600)


@pytest.mark.parametrize("known", [("t1", "t2"), ("t1",), ()], ids=["none-orphaned", "one-orphaned", "all-orphaned"])
def test_rows_of_trials_the_study_does_not_know_are_set_aside_whole_and_no_longer_read_as_results(tmp_path, known):
    evaluations = tmp_path / "evaluations"
    for trial_id in ("t1", "t2"):
        upsert_evaluations(evaluations / f"{trial_id}.parquet", [row(trial_id, kimg=0.0, fid=30.0),
                                                                 row(trial_id, kimg=6.4, fid=20.0)])
    temporary = evaluations / ".t3.parquet.1234.tmp"  # a killed writer's temporary: no trial's rows
    temporary.write_bytes(b"torn")
    before = read_evaluations(evaluations)
    moved = set_aside_orphans(tmp_path, known)
    orphans = sorted({"t1", "t2"} - set(known))
    assert [p.relative_to(tmp_path).as_posix() for p in moved] == [f"orphaned/{t}.parquet.orphaned" for t in orphans]
    assert sorted(read_evaluations(tmp_path)["trial_id"].unique()) == sorted(known)  # the study folder, recursively
    for path, trial_id in zip(moved, orphans):  # kept whole: the same rows, readable
        kept = read_parquet(path, EVALUATION_SCHEMA)
        pd.testing.assert_frame_equal(kept, before[before["trial_id"] == trial_id].reset_index(drop=True))
    assert temporary.exists() and set_aside_orphans(tmp_path, known) == []  # once only


def test_analysis_and_the_study_table_agree_on_every_trial(tmp_path):
    """The same rows through analysis/ (no trials table) and through the study's trials table."""
    cases = {"fine": [30.0, 20.0, 25.0], "jump": [30.0, 400.0], "nan": [30.0, math.nan]}
    frames = [trial(f).assign(trial_id=name) for name, f in cases.items()]
    derived = common.summarise(pd.concat(frames, ignore_index=True)).set_index("trial_id")
    for name, frame in zip(cases, frames):
        record = TrialRecord(name, "terminated", "", preset("digits", duration_kimg=6.4 * (len(frame) - 1)), 1)
        table = trial_row(record, frame, "s", Divergence())
        assert (table["state"] == "diverged") == bool(derived.loc[name, "diverged"]), name
        for column in ("best_fid", "best_kimg", "last_kimg", "evaluations"):
            assert table[column] == pytest.approx(derived.loc[name, column], nan_ok=True), (name, column)


def test_fid_std_follows_fid_images_and_older_files_read_as_nan(tmp_path):
    assert EVALUATION_SCHEMA.names.index("fid_std") == EVALUATION_SCHEMA.names.index("fid_images") + 1
    new = tmp_path / "new" / "evaluations.parquet"
    upsert_evaluations(new, [row(fid_std=0.25)])
    old = tmp_path / "old" / "evaluations.parquet"
    old.parent.mkdir()
    legacy = pa.schema([f for f in EVALUATION_SCHEMA if f.name != "fid_std"])  # a file written before the column
    pq.write_table(pa.Table.from_pylist([row()], schema=legacy), old)
    frame = read_evaluations(tmp_path).sort_values("fid_std")
    assert len(frame) == 2 and frame["fid_std"].iloc[0] == 0.25 and math.isnan(frame["fid_std"].iloc[1])
    upsert_evaluations(old, [row(kimg=6.4, fid_std=0.5)])  # a resumed old trial rewrites the file with the column
    assert pq.read_schema(old).names == EVALUATION_SCHEMA.names


# ---------------------------------------------------------------------------------------------- the one upsert
def score_row(repeat=0, fid=10.0, **kw):
    """A `sid evaluate` row of an npz: no sigma_init, no Inception Score (NaN: not computed)."""
    base = dict(source="x.npz", kind="npz", repeat=repeat, seeds=f"images {repeat * 64}-{repeat * 64 + 63}",
                sigma_init=math.nan, class_label=-1, fid=fid, fid_detector="digits-features-v1", fid_images=64,
                fid_std=0.5, fid_ref="digits", is_mean=math.nan, is_std=math.nan, written_at=now_utc())
    return {**base, **kw}


def phema_row(kimg=0.064, sigma_rel=0.05, fid=10.0, **kw):
    base = {k: v for k, v in row().items() if k in PHEMA_SCHEMA.names}
    return {**base, **dict(trial_id="run", study="", sigma_rel=sigma_rel, kimg=kimg, iteration=int(kimg * 125),
                           snapshots=4, fid=fid, fid_std=0.5, written_at=now_utc()), **kw}


# (schema, key, rows to write twice, one of them written again with another value, the column left uncomputed)
KINDS = {
    "evaluations": (EVALUATION_SCHEMA, EVALUATION_KEY, [row(kimg=0.0, loss_fake_score=math.nan), row(kimg=6.4)],
                    row(kimg=6.4, fid=9.0), "loss_fake_score"),
    "scores": (SCORE_SCHEMA, SCORE_KEY, [score_row(0), score_row(1, is_mean=2.0, is_std=0.1)], score_row(1, fid=9.0),
               "is_mean"),
    "phema": (PHEMA_SCHEMA, PHEMA_KEY, [phema_row(sigma_rel=0.05, fid_std=math.nan), phema_row(sigma_rel=0.1)],
              phema_row(sigma_rel=0.1, fid=9.0), "fid_std"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_upsert_is_idempotent_keyed_versioned_and_stores_null_for_what_was_not_computed(tmp_path, kind):
    schema, key, rows, again, missing = KINDS[kind]
    path = tmp_path / f"{kind}.parquet"
    upsert(path, rows, schema, key)
    first = read_parquet(path, schema)
    upsert(path, rows, schema, key)  # the same rows again: the same rows in the file
    twice = read_parquet(path, schema)
    assert len(twice) == 2 and twice.drop(columns="written_at").equals(first.drop(columns="written_at"))
    table = pq.read_table(path)
    assert table.schema.names == schema.names
    assert table.schema.metadata[b"sid_schema_version"] == SCHEMA_VERSION.encode()
    assert table.column(missing).null_count == 1 and not pc_any_nan(table.column(missing))
    merged = upsert(path, [again], schema, key)  # a row of the same key replaces the old one
    assert len(merged) == 2 and merged["fid"].tolist() == [10.0, 9.0]


def pc_any_nan(column) -> bool:
    return bool(pc.any(pc.is_nan(column.fill_null(0.0))).as_py())


def test_the_running_best_is_best_rows_choice_one_row_at_a_time():
    rows = [row(kimg=0.0, fid=5.0), row(kimg=1.0, fid=3.0), row(kimg=2.0, fid=math.nan, status="diverged"),
            row(kimg=3.0, fid=3.0), row(kimg=4.0, fid=2.0, status="diverged"), row(kimg=5.0, fid=4.0)]
    best = None
    for i, r in enumerate(rows):
        best = best_of(best, r)
        expected = best_row(pd.DataFrame(rows[: i + 1]))
        assert best is not None and best["kimg"] == expected["kimg"]
    assert best_of(None, row(fid=math.nan, status="diverged")) is None
