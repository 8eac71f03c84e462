"""A study's search space in the project's terms (sid/cluster/space.py): every bad space is one StudyError naming the
field, the one translation to Tune puts each field on the registry's scale (checked on what Tune samples and what
Optuna is given), the corners a study validates, the space as YAML data, and the scripts' import of no Ray."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from sid.cluster.resources import TrialResources
from sid.cluster.search import make_sampler, tune_space
from sid.cluster.space import FIELD_TYPES, SAMPLERS, Choice, Grid, Range, StudyError, space_data, space_from_data
from sid.cluster.study import Study, study_yaml, trial_config
from sid.cluster.study_file import read_study_file, study_from_data
from sid.config import SEARCHABLE, UNSEARCHABLE, DistillConfig, preset
from sid.testing.fixtures import TINY, code_blocks

ROOT = Path(__file__).resolve().parents[1]
BOUNDS = {"log": (1e-5, 1e-3), "linear": (0.5, 4.0), "int": (0, 3)}  # a valid Range of each scale but categorical
RANGED = [field for field, scale in SEARCHABLE.items() if scale != "categorical"]
SECOND = {"batch": 16, "precision": "bf16"}  # a second valid value where halving the base value gives none


def two_values(field: str) -> list:
    """Valid values of a searchable field: the tiny config's, and a second one (none for an unknown string field)."""
    value = getattr(preset("digits", **TINY), field)
    if field in SECOND:
        return [value, SECOND[field]]
    if FIELD_TYPES[field] == "str":
        return [value]
    if FIELD_TYPES[field] == "int":
        return [value, value // 2] if value > 1 else [value, value + 1]
    return [value, value / 2] if value else [value, 0.1]


def study(space, searcher="grid", **kwargs) -> Study:
    return Study(name="s", base=preset("digits"), space=space, searcher=searcher, **kwargs)


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("searcher, space, words", [
    ("grid", {}, ["search space is empty"]),
    ("grid", {"teacher": Grid(["edm:cifar10-32x32"])}, ["cannot search teacher: the model being distilled",
                                                        "searchable fields: alpha, tmax"]),
    ("grid", {"lr_range": Grid([1.0])}, ["cannot search lr_range: not a DistillConfig field"]),
    ("grid", {"precision": Grid([16])}, ["precision:", "expected strings"]),
    ("grid", {"tmax": Grid([600.0])}, ["tmax:", "expected integers"]),
    ("optuna", {"batch": Range(8, 64)}, ["batch:", "given values only (categorical)", "Grid([...]) or Choice([...])"]),
    ("grid", {"alpha": Grid([])}, ["alpha: Grid(values=())", "empty"]),
    ("grid", {"alpha": Grid(1.0)}, ["alpha: Grid takes a list of values"]),
    ("grid", {"alpha": Grid([1.0, 1.0])}, ["alpha:", "values repeat"]),
    ("grid", {"alpha": Grid(["1.0"])}, ["alpha:", "expected finite numbers"]),
    ("grid", {"alpha": Grid([True])}, ["alpha:", "expected finite numbers"]),
    ("grid", {"sigma_init": Grid([2.0, math.nan])}, ["sigma_init:", "expected finite numbers"]),
    ("grid", {"seed": Grid([0, 1.5])}, ["seed:", "expected integers"]),
    ("grid", {"lr": Grid([0.0, 1e-4])}, ["lr:", "values > 0 (lr is searched on a log scale)"]),
    ("grid", {"lr": Range(1e-5, 1e-3)}, ["grid searcher: lr is a Range", "Grid([...])"]),
    ("grid", {"alpha": Choice([1.0, 1.2])}, ["grid searcher: alpha is a Choice"]),
    ("grid", {"alpha": [1.0, 1.2]}, ["alpha: expected Grid([...]), Range(low, high) or Choice([...])"]),
    ("grid", {"alpha": tune.grid_search([1.0, 1.2])}, ["alpha: {'grid_search': ...} is Ray Tune's",
                                                       "Grid([1.0, 1.2])"]),
    ("optuna", {"alpha": tune.uniform(0.5, 1.5)}, ["alpha: Float is a Ray Tune domain", "Range(low, high)"]),
    ("optuna", {"lr": tune.loguniform(1e-5, 1e-3)}, ["lr: Float is a Ray Tune domain", "SEARCHABLE"]),
    ("optuna", {"alpha": Grid([1.0, 1.2])}, ["optuna searcher: alpha is a Grid", "Choice([...])"]),
    ("optuna", {"lr": Range(1e-3, 1e-5)}, ["lr: Range(low=0.001, high=1e-05)", "expected low < high"]),
    ("optuna", {"alpha": Range(1.0, 1.0)}, ["alpha:", "expected low < high"]),
    ("optuna", {"lr": Range(0.0, 1e-3)}, ["lr:", "expected low > 0 (lr is searched on a log scale)"]),
    ("optuna", {"glr": Range(-1.0, 1.0)}, ["glr:", "log scale"]),
    ("optuna", {"alpha": Range(0.5, math.inf)}, ["alpha:", "expected finite numbers"]),
    ("optuna", {"alpha": Range("0.5", 1.5)}, ["alpha:", "expected finite numbers"]),
    ("optuna", {"seed": Range(0.5, 3)}, ["seed:", "expected integers"]),
    ("optuna", {"alpha": Choice([])}, ["alpha: Choice(values=())", "empty"]),
    ("optuna", {"seed": Choice([0, 0.5])}, ["seed:", "expected integers"]),
    ("random", {"alpha": Grid([1.0])}, ["searcher must be one of grid, optuna"]),
])
def test_a_bad_space_is_one_study_error_naming_the_field(tmp_path, searcher, space, words):
    with pytest.raises(StudyError) as raised:
        study(space, searcher, storage=tmp_path).validate()
    message = str(raised.value)
    assert message.startswith("study 's': ") and "\n" not in message
    assert all(w in message for w in words), message


@pytest.mark.parametrize("point, words", [
    ({"alpha": 2.0}, ["points_to_evaluate: alpha=2.0", "outside Range(low=0.5, high=1.5)"]),
    ({"seed": 1.5}, ["points_to_evaluate: seed=1.5", "expected integers"]),
    ({"tmax": 500}, ["each point must give values of searched fields (alpha, seed)"]),
    ({}, ["each point must give values of searched fields"]),
])
def test_a_point_to_evaluate_outside_the_space_is_refused_naming_the_field(tmp_path, point, words):
    with pytest.raises(StudyError) as raised:
        study({"alpha": Range(0.5, 1.5), "seed": Choice([0, 1])}, "optuna", points_to_evaluate=(point,),
              storage=tmp_path).validate()
    assert all(w in str(raised.value) for w in words), raised.value


def test_the_batch_must_split_over_each_trials_workers_before_anything_starts(tmp_path):
    spec = Study(name="s", base=preset("digits", batch=8, batch_per_device=8), space={"alpha": Grid([1.0])},
                 resources=TrialResources(workers=3), storage=tmp_path)
    with pytest.raises(StudyError, match="batch: 8 is not divisible by world_size=3"):
        spec.validate()


# ---------------------------------------------------------------------------------------------- translation
@pytest.mark.parametrize("field", RANGED)
def test_a_range_is_searched_on_the_registrys_scale(field):
    scale = SEARCHABLE[field]
    low, high = BOUNDS[scale]
    domain = tune_space({field: Range(low, high)})[field]
    given = OptunaSearch.convert_search_space({field: domain})[field]  # what Optuna searches
    if scale == "int":
        assert given == optuna.distributions.IntDistribution(low, high)  # both ends included
        drawn = np.asarray(domain.sample(size=2000, random_state=0))
        assert set(drawn.tolist()) == set(range(low, high + 1))
        return
    assert given == optuna.distributions.FloatDistribution(low, high, log=scale == "log")
    drawn = np.asarray(domain.sample(size=4000, random_state=0))
    assert drawn.min() >= low and drawn.max() <= high
    # Below the geometric middle: half of a log-uniform draw, (m - low) / (high - low) of a uniform one.
    middle = math.sqrt(low * high)
    expected = 0.5 if scale == "log" else (middle - low) / (high - low)
    assert np.mean(drawn < middle) == pytest.approx(expected, abs=0.03)


@pytest.mark.parametrize("field", list(SEARCHABLE))
def test_grid_and_choice_keep_their_values(field):
    values = two_values(field)
    assert tune_space({field: Grid(values)})[field] == {"grid_search": values}
    given = OptunaSearch.convert_search_space(tune_space({field: Choice(values)}))[field]
    assert given == optuna.distributions.CategoricalDistribution(values)


def test_the_corners_of_a_space_are_every_grid_value_and_each_range_end(tmp_path):
    spec = study({"alpha": Range(0.5, 1.5), "lr": Choice([1e-4, 2e-4]), "seed": Range(0, 3)}, "optuna",
                 storage=tmp_path)
    spec.validate()
    corners = {(c.alpha, c.lr, c.seed) for c in spec.trial_configs()}
    assert corners == {(a, lr, s) for a in (0.5, 1.5) for lr in (1e-4, 2e-4) for s in (0, 3)}
    with pytest.raises(StudyError, match="study 's': DistillConfig.sigma_init: must be > 0"):
        study({"sigma_init": Range(0.0, 4.0)}, "optuna", storage=tmp_path).validate()


def test_the_study_yaml_holds_the_space_as_data():
    spec = study({"lr": Range(1e-5, 1e-3), "alpha": Choice([1.0, 1.2]), "seed": Range(0, 3)}, "optuna")
    assert yaml.safe_load(study_yaml(spec))["space"] == {
        "lr": {"range": [1e-5, 1e-3], "scale": "log"}, "alpha": {"choice": [1.0, 1.2]},
        "seed": {"range": [0, 3], "scale": "int"}}
    grid = study({"alpha": Grid(list(np.linspace(0.5, 1.0, 2))), "seed": Grid(list(np.arange(2)))})
    assert yaml.safe_load(study_yaml(grid))["space"] == {"alpha": {"grid": [0.5, 1.0]}, "seed": {"grid": [0, 1]}}


def test_the_studies_defined_in_the_docs_are_valid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # storage="results"
    namespace: dict = {}
    for block in code_blocks((ROOT / "docs" / "studies.md").read_text(), "python study"):
        exec(compile(block, "studies.md", "exec"), namespace)
    grid, tpe = namespace["study"], namespace["tpe"]
    grid.validate()
    tpe.validate()
    assert sorted((c.alpha, c.glr) for c in grid.trial_configs()) == [(a, g) for a in (1.0, 1.2)
                                                                       for g in (3e-5, 1e-4, 3e-4)]
    assert isinstance(tune_space(tpe.space)["lr"].get_sampler(), tune.search.sample.LogUniform)
    arms = namespace["arms"]  # a Settings dimension: each label's fields, with each seed
    arms.validate()
    assert sorted((c.alpha, c.lr, c.ema_mimg, c.seed) for c in arms.trial_configs()) == sorted(
        [(1.2, 1e-4, arms.base.ema_mimg, s) for s in (10, 11, 12)] + [(1.0, 3e-4, 0.05, s) for s in (10, 11, 12)])
    assert not list(tmp_path.iterdir())  # defining a study writes nothing


# ---------------------------------------------------------------------------------------------- every field
def test_every_config_field_is_searchable_or_refused_with_a_reason():
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    assert set(SEARCHABLE) <= fields and not set(SEARCHABLE) & set(UNSEARCHABLE)
    assert fields <= set(SEARCHABLE) | set(UNSEARCHABLE), "a new DistillConfig field: add it to SEARCHABLE or " \
                                                           "UNSEARCHABLE (sid/config.py)"
    assert set(SEARCHABLE.values()) <= {"linear", "log", "int", "categorical"}
    assert all(FIELD_TYPES[f] == "int" for f, scale in SEARCHABLE.items() if scale == "int")


@pytest.mark.parametrize("field", list(UNSEARCHABLE))
def test_a_field_that_cannot_be_searched_is_refused_with_its_reason(tmp_path, field):
    value = getattr(preset("digits"), field, 1)
    with pytest.raises(StudyError) as from_python:
        study({field: Grid([value])}, storage=tmp_path).validate()
    with pytest.raises(StudyError) as from_yaml:
        space_from_data({field: {"grid": [value]}}, "study.yaml: space")
    for raised in (from_python, from_yaml):
        message = str(raised.value)
        assert f"cannot search {field}: {UNSEARCHABLE[field]}; searchable fields: " in message and "\n" not in message


@pytest.mark.parametrize("field", list(SEARCHABLE))
def test_every_searchable_field_makes_trials_with_its_values_from_python_and_from_yaml(tmp_path, field):
    values = two_values(field)
    spec = Study(name="s", base=preset("digits", **TINY), space={field: Grid(values)}, storage=tmp_path)
    spec.validate()
    assert [getattr(c, field) for c in spec.trial_configs()] == values
    # What a trial runs: Tune's flat config, maybe numpy values, made the field's type again.
    made = trial_config({field: np.array(values)[-1:][0], "preset": "digits"}, spec.base)
    assert getattr(made, field) == values[-1] and type(getattr(made, field)).__name__ == FIELD_TYPES[field]
    # The same space from a study YAML, as a study's config.yaml writes it.
    data = yaml.safe_load(yaml.safe_dump({"space": space_data(spec.space)}))["space"]
    assert space_from_data(data) == spec.space
    if SEARCHABLE[field] != "categorical":
        low, high = sorted(values) if len(set(values)) == 2 else BOUNDS[SEARCHABLE[field]]
        ranged = {field: Range(low, high)}
        assert space_from_data(space_data(ranged)) == ranged
        dataclasses.replace(spec, space=ranged, searcher="optuna").validate()


@pytest.mark.parametrize("data, words", [
    ({"alpha": "0.5,1.0"}, ["space: alpha: expected one of {grid: [...]}, {range: [low, high]}, {choice: [...]}",
                            "got '0.5,1.0'"]),
    ({"alpha": {"grid": "0.5,1.0"}}, ["space: alpha: grid takes a YAML list, got '0.5,1.0'"]),
    ({"alpha": {"grid": [1.0], "choice": [1.0]}}, ["space: alpha: expected one of"]),
    ({"alpha": {"grid": [1.0], "step": 2}}, ["space: alpha: expected one of"]),
    ({"lr": {"range": [1e-5, 1e-4, 1e-3]}}, ["space: lr: range takes a YAML list [low, high]"]),
    ({"lr": {"range": [1e-5, 1e-3], "scale": "linear"}}, ["space: lr: scale 'linear'", "log scale"]),
    ({"tmax": {"range": [600, 900.5]}}, ["tmax: Range(low=600, high=900.5): expected integers"]),
    ({"precision": {"range": ["fp32", "bf16"]}}, ["precision:", "categorical"]),
    ({"out": {"grid": ["a", "b"]}}, ["cannot search out: the output folder"]),
    ({"seeds": {"grid": [3]}}, ["cannot search seeds: a count", "search seed"]),
    ([{"alpha": [1.0]}], ["space: expected a mapping of fields"]),
    ({}, ["space: expected a mapping of fields"]),
])
def test_a_bad_yaml_space_is_one_error_naming_the_field(data, words):
    with pytest.raises(StudyError) as raised:
        space_from_data(data, "study.yaml: space")
    assert all(w in str(raised.value) for w in words), raised.value
    assert "\n" not in str(raised.value)


def test_a_study_file_defines_the_study_and_a_python_studys_config_reads_back_as_it(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("""
name: tmax-ema
base: {preset: digits, batch: 8, batch_per_device: 8, duration_kimg: 0.032}
searcher: optuna
num_samples: 2
sampler: random
callbacks: [progress-file]
space:
  tmax: {range: [500, 900]}
  ema_mimg: {range: [0.05, 0.5], scale: log}
  precision: {choice: [fp32, bf16]}
resources: {workers: 1, cpus_per_worker: 1}
""")
    spec = read_study_file(path, storage=tmp_path)
    spec.validate()
    assert spec.space == {"tmax": Range(500, 900), "ema_mimg": Range(0.05, 0.5), "precision": Choice(["fp32", "bf16"])}
    assert (spec.base, spec.sampler, spec.callbacks, spec.num_samples) == \
        (preset("digits", batch=8, batch_per_device=8, duration_kimg=0.032), "random", ("progress-file",), 2)
    assert spec.resources == TrialResources(workers=1, cpus_per_worker=1) and spec.folder == tmp_path / "tmax-ema"
    again = study_from_data(yaml.safe_load(study_yaml(spec)), "config.yaml", storage=tmp_path)
    assert again == spec


@pytest.mark.parametrize("text, words", [
    ("name: s\nbase: {preset: digits}\nspace: {alpha: {grid: [1.0]}}\nspaces: {}",
     ["study.yaml: spaces: not a study key"]),
    ("name: s\nspace: {alpha: {grid: [1.0]}}", ["study.yaml: base: missing"]),
    ("name: s\nbase: {preset: nope}\nspace: {alpha: {grid: [1.0]}}", ["study.yaml: base: unknown preset 'nope'"]),
    ("name: s\nbase: {preset: digits, tmax: 0}\nspace: {alpha: {grid: [1.0]}}", ["base: DistillConfig.tmax"]),
    ("name: s\nbase: {preset: digits}\nspace: {alpha: {grid: [1.0]}}\nsampler: {tpe: 1}",
     ["study.yaml: sampler: expected str, got {'tpe': 1}"]),
    ("name: s\nbase: {preset: digits}\nspace: {alpha: {grid: [1.0]}}\nnum_samples: '2'",
     ["study.yaml: num_samples: expected int, got '2'"]),
    ("name: s\nbase: {preset: digits}\nspace: {alpha: {grid: [1.0]}}\nasha: 1", ["study.yaml: asha: expected bool"]),
    ("name: s\nbase: {preset: digits}\nspace: {alpha: {grid: [1.0]}}\ncallbacks: progress-file",
     ["study.yaml: callbacks: expected a YAML list"]),
    ("name: s\nbase: {preset: digits}\nspace: {alpha: {grid: [1.0]}}\nresources: {gpus: 1}",
     ["study.yaml: resources: ", "gpus"]),
    ("[1, 2", ["study.yaml: not valid YAML"]),
    ("- 1", ["study.yaml: expected a mapping of study fields"]),
])
def test_a_bad_study_file_is_one_error_naming_the_key(tmp_path, text, words):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(StudyError) as raised:
        read_study_file(path)
    assert all(w in str(raised.value) for w in words), raised.value


@pytest.mark.parametrize("key", list(SAMPLERS))
def test_each_sampler_key_makes_its_optuna_sampler_and_an_unknown_one_is_refused(tmp_path, key):
    sampler = make_sampler(key, 3)
    assert isinstance(sampler, optuna.samplers.BaseSampler) and make_sampler(sampler, 0) is sampler
    study({"alpha": Range(0.5, 1.5)}, "optuna", sampler=key, storage=tmp_path).validate()
    with pytest.raises(StudyError, match=f"sampler must be one of {', '.join(SAMPLERS)} .register_sampler"):
        study({"alpha": Range(0.5, 1.5)}, "optuna", sampler=key + "x", storage=tmp_path).validate()
    with pytest.raises(StudyError, match="callbacks: unknown key 'nope'; registered: progress-file"):
        study({"alpha": Range(0.5, 1.5)}, "optuna", callbacks=("nope",), storage=tmp_path).validate()


def test_the_docs_list_every_searchable_field_with_its_scale_and_every_other_with_its_reason():
    text = (ROOT / "docs" / "studies.md").read_text()
    text = text[text.index("### Searchable fields"):text.index("### A study from a YAML file")]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+?) \|$", text, flags=re.M))
    assert {f: rows.get(f) for f in SEARCHABLE} == SEARCHABLE
    assert {f: rows.get(f) for f in UNSEARCHABLE} == UNSEARCHABLE
    assert set(rows) == set(SEARCHABLE) | set(UNSEARCHABLE)


# ---------------------------------------------------------------------------------------------- no Ray
@pytest.mark.timeout(60)
def test_the_study_scripts_and_the_space_load_without_ray():
    code = ("import sys, studies.alpha_sweep, studies.sigma_init_sweep, studies.hpo, studies.search, "
            "studies.method_compare, studies.confirm, sid.cluster.space, sid.cluster.trials; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
