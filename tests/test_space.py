"""A study's search space in the project's terms (sid/cluster/space.py): every bad space is one StudyError naming the
field, the one translation to Tune puts each field on the registry's scale (checked on what Tune samples and what
Optuna is given), the corners a study validates, the space as YAML data, and the scripts' import of no Ray."""

from __future__ import annotations

import math
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
from sid.cluster.search import tune_space
from sid.cluster.space import Choice, Grid, Range, StudyError
from sid.cluster.study import Study, study_yaml
from sid.config import SEARCHABLE, preset
from sid.testing.fixtures import code_blocks

ROOT = Path(__file__).resolve().parents[1]
BOUNDS = {"log": (1e-5, 1e-3), "linear": (0.5, 4.0), "int": (0, 3)}  # a valid Range of each scale
BOUNDS["name"] = ("sid", "sida")  # two values of a scale without ranges (Grid and Choice only)


def study(space, searcher="grid", **kwargs) -> Study:
    return Study(name="s", base=preset("digits"), space=space, searcher=searcher, **kwargs)


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("searcher, space, words", [
    ("grid", {}, ["search space is empty"]),
    ("grid", {"tmax": Grid([500])}, ["cannot search tmax", "searchable fields: alpha"]),
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
@pytest.mark.parametrize("field", [f for f, scale in SEARCHABLE.items() if scale != "name"])  # names: no range
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
    low, high = BOUNDS[SEARCHABLE[field]]
    values = [low, high]
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
    assert not list(tmp_path.iterdir())  # defining a study writes nothing


# ---------------------------------------------------------------------------------------------- no Ray
@pytest.mark.timeout(60)
def test_the_study_scripts_and_the_space_load_without_ray():
    code = ("import sys, studies.alpha_sweep, studies.sigma_init_sweep, studies.hpo, studies.method_compare, "
            "sid.cluster.space, "
            "sid.cluster.trials; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
