"""Confirming a search's winner (studies/confirm.py): a Settings dimension (sid.cluster.space) runs whole labelled
settings as a grid, each label expanded into its fields, and refuses bad settings with one StudyError naming them; a
tiny finished Optuna search is confirmed end to end through real Ray Tune: its best trial's values ('best') and the
base config's ('preset') on fresh seeds, every row and trial carrying its label, compare.py and report.py paired by
seed over `--x setting`, and the finished confirmation resumed without running anything again."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest
import ray
import yaml

from analysis import common, compare, report
from sid.cluster.resources import TrialResources
from sid.cluster.search import tune_space
from sid.cluster.space import SETTING, Choice, Grid, Range, Settings, StudyError, space_data, space_from_data
from sid.cluster.study import Study, planned_trials, trial_config
from sid.cluster.trials import TrialSettings
from sid.config import preset
from sid.files import SETTINGS_FILE
from sid.results import read_evaluations, read_trials, write_evaluations, write_trials
from sid.testing.fixtures import TINY, flags
from sid.testing.results import row, trials_table
from studies import confirm, hpo

ARMS = {"preset": {"alpha": 1.2, "lr": 1e-4}, "best": {"alpha": 0.8, "lr": 3e-4, "sigma_init": 2.0}}


def study(space, searcher="grid") -> Study:
    return Study(name="c", base=preset("digits", **TINY), space=space, searcher=searcher)


# ---------------------------------------------------------------------------------------------- Settings, no Ray
def test_a_settings_dimension_runs_each_label_with_its_fields_and_every_seed():
    space = {SETTING: Settings(ARMS), "seed": Grid([7, 8])}
    mine = study(space)
    mine.validate()
    got = [(c.alpha, c.lr, c.sigma_init, c.seed) for c in mine.trial_configs()]
    base = mine.base.sigma_init  # a field the 'preset' setting leaves out keeps the base config's value
    assert got == [(1.2, 1e-4, base, 7), (1.2, 1e-4, base, 8), (0.8, 3e-4, 2.0, 7), (0.8, 3e-4, 2.0, 8)]
    assert planned_trials(mine) == 4
    assert tune_space(space)[SETTING] == {"grid_search": ["preset", "best"]}  # Tune sees labels only
    assert space_from_data(yaml.safe_load(yaml.safe_dump(space_data(space)))) == space  # the study's config.yaml
    config = trial_config({SETTING: "best", "seed": 8, "preset": "digits"}, mine.base, ARMS)
    assert (config.alpha, config.lr, config.sigma_init, config.seed) == (0.8, 3e-4, 2.0, 8)
    with pytest.raises(StudyError, match="trial setting 'other': not a label of the study's Settings"):
        trial_config({SETTING: "other"}, mine.base, ARMS)


@pytest.mark.parametrize("space, searcher, words", [
    ({SETTING: Settings({})}, "grid", "setting: Settings is empty"),
    ({SETTING: Settings({"a": {"teacher": "digits"}})}, "grid", "setting 'a': cannot search teacher"),
    ({SETTING: Settings({"a": {"lr_typo": 1e-4}})}, "grid", "setting 'a': cannot search lr_typo: not a DistillConfig"),
    ({SETTING: Settings({"a": {"seed": 3}})}, "grid", "setting 'a': seed: seeds pair the settings"),
    ({SETTING: Settings({"a": {"lr": 0.0}})}, "grid", "setting 'a': lr=0.0: expected values > 0"),
    ({SETTING: Settings({"a": {"tmax": 1.5}})}, "grid", "setting 'a': tmax=1.5: expected integers"),
    ({SETTING: Settings({"a": {"alpha": 1.0}, "b": {"alpha": 1.0}})}, "grid", "'b' gives the same values as 'a'"),
    ({SETTING: Settings({"": {"alpha": 1.0}})}, "grid", "a label is a non-empty string"),
    ({SETTING: Settings({"a": [1.0]})}, "grid", "setting 'a': expected a mapping of fields to values"),
    ({SETTING: Settings(ARMS), "alpha": Grid([1.0])}, "grid", "setting 'preset': alpha: also a dimension"),
    ({SETTING: Settings(ARMS), "tmax": Choice([600, 800])}, "optuna", "optuna searcher: setting is a Settings"),
    ({"alpha": Settings(ARMS)}, "grid", "alpha: a Settings dimension sits under the key 'setting'"),
    ({SETTING: Grid(["preset"])}, "grid", "setting: expected Settings({label: {field: value, ...}, ...})"),
    ({SETTING: Range(0.0, 1.0)}, "optuna", "setting: expected Settings("),
])
def test_bad_settings_are_one_study_error_naming_the_label_and_field(space, searcher, words):
    with pytest.raises(StudyError, match=re.escape(words)) as raised:
        study(space, searcher).validate()
    assert str(raised.value).startswith("study 'c': ") and "\n" not in str(raised.value)


@pytest.mark.parametrize("data, words", [
    ({SETTING: {"grid": ["preset"]}}, "space: setting: expected {settings: {label: {field: value, ...}, ...}}"),
    ({SETTING: {"settings": ["preset"]}}, "space: setting: expected {settings:"),
    ({SETTING: {"settings": {"a": {"teacher": "x"}}}}, "space: setting 'a': cannot search teacher"),
    ({"alpha": {"settings": {"a": {"lr": 1e-4}}}}, "space: alpha: expected one of {grid: [...]}"),
])
def test_a_bad_settings_in_yaml_is_one_error_naming_it(data, words):
    with pytest.raises(StudyError, match=re.escape(words)):
        space_from_data(data)


def test_the_trial_settings_keep_the_settings_for_a_resume_and_refuse_edited_ones(tmp_path):
    mine = TrialSettings(base=preset("digits", **TINY), study="c", folder=tmp_path.resolve(),
                         resources=confirm_resources(), setting_fields=ARMS)
    mine.write()
    assert TrialSettings.read(tmp_path).setting_fields == ARMS
    data = json.loads((tmp_path / SETTINGS_FILE).read_text())
    del data["setting_fields"]  # a study folder from before the field: no Settings
    assert TrialSettings.from_dict(data, "old").setting_fields == {}
    data["setting_fields"] = {"a": {"teacher": "x"}}
    with pytest.raises(StudyError, match=re.escape("edited: key 'setting_fields': setting 'a': cannot search teacher")):
        TrialSettings.from_dict(data, "edited")


def confirm_resources() -> TrialResources:
    return TrialResources(workers=1, gpus_per_worker=0.0, cpus_per_worker=0.99, placement_strategy="PACK")


@pytest.mark.parametrize("argv, words", [
    (["NOWHERE"], "no study folder (trial_settings.json missing)"),
    (["STUDY", "--seeds", "0"], "--seeds: expected a count >= 1"),
    (["STUDY", "--setting", "alpha"], "--setting: expected [LABEL:]FIELD=VALUE"),
    (["STUDY", "--setting", "x:teacher=digits"], "cannot search teacher"),
    (["STUDY", "--setting", "x:tmax=abc"], "tmax='abc' is not a value of tmax (int)"),
    (["STUDY", "--setting", "best:alpha=1.0"], "the label 'best' is taken"),
])
def test_bad_confirm_input_is_one_error_with_exit_code_2(tmp_path, capsys, argv, words):
    searched = fake_search(tmp_path / "hpo")
    argv = [str(searched) if a == "STUDY" else str(tmp_path / a) if a == "NOWHERE" else a for a in argv]
    connected = ray.is_initialized()
    with pytest.raises(SystemExit) as exited:
        confirm.main([*argv, "--storage", str(tmp_path / "out")])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in error and words in error, error
    assert not (tmp_path / "out").exists() and ray.is_initialized() == connected


def fake_search(folder):
    """A finished search's folder as far as confirm reads it before anything runs: its trial settings, the rows and
    trials of two complete trials (alpha and lr searched)."""
    base = preset("digits", **TINY)
    TrialSettings(base=base, study=folder.name, folder=folder.resolve(), resources=confirm_resources()).write()
    rows = [row(folder.name, f"t{i}", alpha=alpha, lr=lr, batch=8, seed=0, kimg=k, fid=f)
            for i, (alpha, lr, fid0) in enumerate([(0.7, 2e-4, 40.0), (1.1, 5e-4, 30.0)])
            for k, f in [(0.0, 100.0), (0.016, fid0 + 5), (0.032, fid0)]]
    evals = pd.DataFrame(rows)
    (folder / "evaluations").mkdir(parents=True)
    for trial, group in evals.groupby("trial_id"):
        write_evaluations(folder / "evaluations" / f"{trial}.parquet", group)
    write_trials(folder / "trials.parquet", trials_table(evals))
    return folder


def confirmed(folder, gap: float, ema: tuple[float, float] = (0.02, 0.02)):
    """A confirmation's folder: settings 'preset' (alpha 1.2, lr 1e-4, ema_mimg ema[0]) and 'best' (alpha 0.9, lr 3e-4,
    ema_mimg ema[1]) on seeds 10-13, best's FD `gap` below preset's on every seed but for a seed-to-seed wobble of
    +-1."""
    rows = []
    for label, alpha, lr, shift, ema_mimg in [("preset", 1.2, 1e-4, 0.0, ema[0]), ("best", 0.9, 3e-4, -gap, ema[1])]:
        for seed in range(10, 14):
            wobble = (1.0 if seed % 2 else -1.0) * (1 if label == "best" else 0)
            for k, fid in [(0.0, 300.0), (2.0, 40.0 + shift + wobble), (4.0, 30.0 + shift + wobble)]:
                rows.append(row(folder.name, f"{label}-{seed}", alpha=alpha, lr=lr, seed=seed, kimg=k, fid=fid)
                            | {"setting": label, "fid_std": 0.5, "ema_mimg": ema_mimg})
    evals = pd.DataFrame(rows)
    for trial, group in evals.groupby("trial_id"):
        write_evaluations(folder / "evaluations" / f"{trial}.parquet", group)
    return folder


@pytest.mark.parametrize("gap, verdict, headline", [
    (5.0, "better", "**Recommended: setting = best: better than every other value beyond noise**"),
    (0.0, "within noise", "**Nothing is distinguishable at this budget: no value of setting beats another beyond "
                          "noise**"),
])
# the labels differ in alpha and lr only, or also in the EMA length (a field outside the rows' first config columns:
# it must count as set by the label, or the confirmation reads as an Optuna search)
@pytest.mark.parametrize("ema, labelled", [((0.02, 0.02), ["alpha", "lr"]),
                                           ((0.02, 0.037), ["alpha", "lr", "ema_mimg"])])
def test_settings_are_compared_paired_by_seed_and_a_tie_is_called_a_tie(tmp_path, gap, verdict, headline, ema,
                                                                       labelled):
    folder = confirmed(tmp_path / "study-confirm", gap, ema)
    _, trials = common.load([folder])
    assert common.set_by(trials, "setting") == labelled and common.set_by(trials, "alpha") == []
    table = compare.compare(trials, x="setting")
    assert list(zip(table["a"], table["b"], table["n"], table["verdict"])) == [("best", "preset", 4, verdict)]
    assert table["diff"].iloc[0] == pytest.approx(-gap)
    path, _ = report.build([folder], tmp_path / "report", x="setting")
    text = path.read_text()
    assert headline in text and "Best configuration found" not in text  # a comparison, not an Optuna search
    assert "- setting = best: α = 0.9, lr = 0.0003" in text and text.startswith("# setting = best, preset × 4 seeds")


# ---------------------------------------------------------------------------------------------- end to end, Ray
@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=True,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_a_search_is_confirmed_on_fresh_seeds_paired_by_seed_and_resumes(tmp_path, local_ray, capsys):
    common_flags = ["--storage", str(tmp_path), "--rescore-trials", "none", "--max-concurrent", "2"]
    hpo.main(["--preset", "digits", *flags(**TINY), "--num-samples", "2", "--points-to-evaluate", "none",
              "--no-asha", *common_flags])
    searched = read_trials(tmp_path / "hpo-digits")
    best = searched.sort_values("best_fid").iloc[0]  # both completed their budget: the lower best FD wins
    assert (searched["state"] == "completed").all()

    confirm.main([str(tmp_path / "hpo-digits"), "--seeds", "2", *common_flags])
    folder = tmp_path / "hpo-digits-confirm"
    trials, rows = read_trials(folder), read_evaluations(folder / "evaluations")
    assert sorted(zip(trials["setting"], trials["seed"])) == [("best", 1), ("best", 2), ("preset", 1), ("preset", 2)]
    assert (trials["state"] == "completed").all()
    base = preset("digits", **TINY)
    for label, want in [("preset", base), ("best", best)]:
        for column in ("alpha", "lr", "glr", "sigma_init"):  # every row carries its label and the label's values
            mine = rows[rows["setting"] == label][column]
            assert len(mine) == 6 and mine.eq(want[column] if label == "best" else getattr(base, column)).all()
    assert set(rows.groupby("trial_id")["setting"].nunique()) == {1}
    saved = json.loads((folder / SETTINGS_FILE).read_text())["setting_fields"]
    assert saved["best"] == {c: pytest.approx(best[c]) for c in ("alpha", "lr", "glr", "sigma_init")}
    record = yaml.safe_load((folder / "config.yaml").read_text())
    assert record["confirms"] == str(tmp_path / "hpo-digits") and record["best_trial"] == best["trial_id"]
    out = capsys.readouterr().out
    assert "| setting = best vs preset |" in out  # the verdict printed at the end

    compare.main([str(folder), "--x", "setting", "--out", str(tmp_path / "figures")])
    table = compare.compare(common.load([folder])[1], x="setting")
    assert set(zip(table["a"], table["b"])) == {("best", "preset")} and (table["n"] == 2).all()
    assert (tmp_path / "figures" / "compare.png").is_file()
    path, verdict = report.build([folder], tmp_path / "report", x="setting")
    text = path.read_text()
    assert "Optuna" not in text and "- swept: setting = best, preset" in text
    assert f"- setting = best: α = {common.fmt(best['alpha'])}" in text
    words = {"better": "Recommended: setting = ", "worse": "Recommended: setting = ",
             "within noise": "Nothing is distinguishable at this budget"}
    assert words[table.loc[table["stat"].isin(["best", "best = final"]), "verdict"].iloc[0]] in verdict

    before = rows.sort_values(["trial_id", "kimg"]).reset_index(drop=True)
    confirm.main([str(tmp_path / "hpo-digits"), "--seeds", "2", "--resume", *common_flags])
    after = read_evaluations(folder / "evaluations").sort_values(["trial_id", "kimg"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)  # nothing ran again, nothing duplicated
    assert math.isfinite(read_trials(folder)["best_fid"].max())
