"""Results files cut off in the middle (a power loss under a non-atomic copy, a disk error): the readers skip them
with a warning naming the file and keep every readable row, no analysis script crashes, and a run resumed over a
torn rows file stops with one clear error instead of overwriting it."""

from __future__ import annotations

import shutil
import sys

import pandas as pd
import pytest
import torch

import analysis.ablation
import analysis.best_table
import analysis.fid_vs_images
import analysis.hpo_report  # noqa: F401
from sid.commands.distill import main
from sid.files import EVALUATIONS
from sid.results import read_evaluations, read_trials
from sid.run import run_local
from sid.testing.fixtures import TINY, flags, make_teacher, tiny_config
from sid.testing.results import write_results

CUTS = {"empty": 0, "magic only": 4, "half": 0.5, "footer cut": -3}  # what is left of the file: bytes or a fraction


def cut(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return write_results(tmp_path_factory.mktemp("results"))


@pytest.fixture
def sweep(results, tmp_path):
    """A copy of a study folder (trials.parquet + evaluations/, one file already cut in half) to cut further."""
    folder = tmp_path / "alpha_sweep"
    shutil.copytree(results.alpha_sweep, folder)
    return folder


def warned(caught) -> str:
    return "\n".join(str(w.message) for w in caught)


@pytest.mark.parametrize("where", CUTS)
def test_readers_skip_a_cut_file_with_a_warning_naming_it_and_keep_every_other_row(sweep, where):
    whole = read_evaluations(sweep / "evaluations" / "a0.5-s0.parquet")
    trial = sweep / "evaluations" / "a1.2-s1.parquet"
    expected = len(read_evaluations(*[f for f in (sweep / "evaluations").glob("*.parquet")
                                      if f.name not in (trial.name, "zz_cut.parquet")]))
    cut(trial, CUTS[where])
    cut(sweep / "trials.parquet", CUTS[where])
    with pytest.warns(UserWarning) as caught:
        evals = read_evaluations(sweep)
        trials = read_trials(sweep)
    assert "a1.2-s1.parquet" in warned(caught) and "trials.parquet" in warned(caught)
    assert len(evals) == expected and "a1.2-s1" not in set(evals["trial_id"])
    assert evals[evals["trial_id"] == "a0.5-s0"].reset_index(drop=True).equals(whole)
    assert trials.empty and "best_fid" in trials.columns  # an empty table of the right shape, not a crash


@pytest.mark.parametrize("name, extra", [("fid_vs_images", []), ("ablation", []), ("best_table", []),
                                         ("hpo_report", [])])
def test_analysis_scripts_skip_cut_files_and_still_write_their_outputs(sweep, tmp_path, name, extra):
    cut(sweep / "trials.parquet", CUTS["footer cut"])
    cut(sweep / "evaluations" / "a1.2-s1.parquet", CUTS["magic only"])
    with pytest.warns(UserWarning) as caught:
        sys.modules[f"analysis.{name}"].main([str(sweep), "--out", str(tmp_path / "out"), *extra])
    for file in ("zz_cut.parquet", "a1.2-s1.parquet", "trials.parquet"):
        assert f"skipping unreadable results file {sweep}" in warned(caught) and file in warned(caught), file
    outputs = list((tmp_path / "out").iterdir())
    assert outputs and all(f.stat().st_size > 0 for f in outputs)


@pytest.mark.timeout(120)
def test_resume_over_a_torn_rows_file_is_one_clear_error_and_leaves_it_untouched(tmp_path, monkeypatch, capsys):
    teacher = make_teacher(tmp_path / "teacher.pt")
    out = tmp_path / "run"
    run_local(tiny_config(teacher, duration_kimg=0.016), out, device=torch.device("cpu"), resume=False,
              progress=False)
    cut(out / EVALUATIONS, CUTS["half"])
    torn = (out / EVALUATIONS).read_bytes()
    with pytest.raises(SystemExit) as exited:
        main(["--teacher", teacher, "--out", str(out), "--resume", *flags(**TINY)])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {out / EVALUATIONS}: not a readable Parquet file"), error
    assert (out / EVALUATIONS).read_bytes() == torn
    assert pd.Series([p.name for p in out.iterdir()]).str.startswith("samples-").sum() == 2  # nothing new
