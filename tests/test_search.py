"""How a study searches and stops: what Optuna is told about completed, stopped, diverged and failed trials, its
persistent storage, and the noise-aware stopping rules (checked against numpy's own fits)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest

from sid.cluster.search import (
    FidelityOptunaSearch,
    StorageError,
    make_sampler,
    metric_name,
    open_storage,
    tune_space,
)
from sid.cluster.space import Range
from sid.cluster.stopping import CurveRule, Point, power_law_forecast, smoothed
from sid.config import preset

FINAL = 0.032  # kimg at which the trials of these tests end by themselves


def searcher(storage, **kwargs) -> FidelityOptunaSearch:
    space = tune_space({"alpha": Range(0.5, 1.5), "lr": Range(1e-5, 1e-3)})
    return FidelityOptunaSearch(space=FidelityOptunaSearch.convert_search_space(space),
                                metric="best_fid", mode="min", sampler=make_sampler("tpe", 0), study_name="s",
                                storage=storage, final_kimg=FINAL, metric_name="FD digits-features-v1 (256 images)",
                                run_root=Path("/study/runs"), **kwargs)


def result(kimg: float, best: float, fid: float | None = None, iteration: int | None = None) -> dict:
    return dict(kimg=kimg, best_fid=best, fid=best if fid is None else fid,
                iteration=round(kimg * 1000 / 8) if iteration is None else iteration)


# ---------------------------------------------------------------------------------------------- Optuna feedback
@pytest.mark.parametrize("story, state, value, intermediate", [
    # reached the end of its budget: its best FD is a result; the intermediate values are the curve (each
    # evaluation's FD, 44 at the end) at images seen, not the running best (40)
    ([result(0.016, 40.0), result(0.032, 40.0, fid=44.0)], "COMPLETE", 40.0, {16: 40.0, 32: 44.0}),
    # stopped at its first rung: pruned (Optuna keeps its last intermediate value), never COMPLETE at full budget
    ([result(0.016, 60.0)], "PRUNED", 60.0, {16: 60.0}),
    # stopped at its second rung: Optuna's value is the FD it was stopped on (30), not the one before (60)
    ([result(0.008, 60.0), result(0.016, 30.0)], "PRUNED", 30.0, {8: 60.0, 16: 30.0}),
    # diverged at the end: its fid is NaN (not a point of the curve), its best is an earlier value: pruned
    ([result(0.016, 45.0), result(0.032, 45.0, fid=math.nan)], "PRUNED", 45.0, {16: 45.0}),
    # failed before any result
    ([], "FAIL", None, {}),
])
@pytest.mark.parametrize("last_to_complete_only", [False, True], ids=["every-result-reported", "stopped-on-last"])
def test_optuna_hears_completed_stopped_diverged_and_failed_trials_for_what_they_are(tmp_path, story, state, value,
                                                                                    intermediate,
                                                                                    last_to_complete_only):
    """Tune hands the result a stopper or scheduler stops a trial on to on_trial_complete alone (not to
    on_trial_result): Optuna must hear it all the same, or a pruned trial shows the value before its stopping point."""
    journal = tmp_path / "optuna.journal"
    search = searcher(open_storage(journal))
    config = search.suggest("t1")
    assert 0.5 <= config["alpha"] <= 1.5 and 1e-5 <= config["lr"] <= 1e-3
    for r in story[:-1] if last_to_complete_only else story:
        search.on_trial_result("t1", r)
    search.on_trial_complete("t1", story[-1] if story else None, error=not story)
    # A second process sees the same study in the journal file (what optuna-dashboard reads).
    study = optuna.load_study(study_name="s", storage=open_storage(journal))
    trial = study.trials[0]
    assert trial.state.name == state and trial.value == value
    assert trial.intermediate_values == intermediate
    assert trial.params["alpha"] == config["alpha"]
    assert study.metric_names == ["FD digits-features-v1 (256 images)"]  # the dashboard's axis, not "Objective 0"
    assert trial.user_attrs == {"tune_trial_id": "t1", "run_folder": str(Path("/study/runs/t1"))}


@pytest.mark.parametrize("overrides, name", [
    ({}, "FD digits-features-v1 (256 images)"),
    ({"fid_images_final": 1024}, "FD digits-features-v1 (256 images, 1024 at the end)"),
])
def test_the_optuna_metric_is_named_by_detector_and_images(overrides, name):
    assert metric_name(preset("digits", fid_images=256, **overrides)) == name


def test_points_to_evaluate_come_first_and_the_gp_sampler_runs(tmp_path):
    space = FidelityOptunaSearch.convert_search_space(tune_space({"alpha": Range(0.5, 1.5)}))
    search = FidelityOptunaSearch(space=space,
                                  metric="best_fid", mode="min",
                                  sampler=make_sampler("gp", 0), study_name="g", storage=open_storage(tmp_path / "j"),
                                  points_to_evaluate=[{"alpha": 1.2}], final_kimg=FINAL)
    assert search.suggest("a")["alpha"] == 1.2
    for k, trial in enumerate("bcd"):
        search.on_trial_complete("a" if k == 0 else trial, result(FINAL, 40.0 + k))
        assert 0.5 <= search.suggest(trial)["alpha"] <= 1.5
    with pytest.raises(ValueError, match="expected one of tpe, gp"):
        make_sampler("cma", 0)


@pytest.mark.parametrize("spec", ["sqlite:////no/such/folder/study.db", "nosuchdb://x", "/proc/journal"])
def test_a_storage_that_cannot_be_opened_is_one_error_naming_it(spec):
    with pytest.raises(StorageError, match="cannot open the Optuna storage") as raised:
        open_storage(spec)
    assert spec in str(raised.value) and "\n" not in str(raised.value)


# ---------------------------------------------------------------------------------------------- stopping rules
def curve(fids, stds=None, step=1.0) -> list[Point]:
    stds = stds or [math.nan] * len(fids)
    return [Point(step * k, f, s) for k, (f, s) in enumerate(zip(fids, stds))]


def test_smoothed_is_the_median_of_the_last_evaluations_and_its_noise():
    value, noise = smoothed(curve([800.0, 40.0, 90.0, 30.0]))  # kimg 0 left out; one jump does not move it
    assert value == 40.0
    assert noise == pytest.approx(np.std([40.0, 90.0, 30.0], ddof=1) / math.sqrt(3))
    value, noise = smoothed(curve([800.0, 40.0, 30.0], stds=[1.0, 2.0, 4.0]))  # measured noise wins
    assert (value, noise) == (35.0, pytest.approx(3.0 / math.sqrt(2)))


def test_power_law_forecast_matches_numpy_polyfit():
    rng = np.random.default_rng(0)
    kimg = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    fids = 100 * kimg ** -0.7 * np.exp(rng.normal(0, 0.05, kimg.size))
    predicted, error = power_law_forecast([Point(0.0, 900.0)] + [Point(k, f) for k, f in zip(kimg, fids)], 64.0)
    slope, intercept = np.polyfit(np.log(kimg), np.log(fids), 1)
    assert predicted == pytest.approx(math.exp(intercept + slope * math.log(64.0)), rel=1e-9)
    assert 0 < error < predicted
    assert math.isnan(power_law_forecast(curve([900.0, 50.0, 40.0]), 64.0)[0])  # two points after 0: no fit


@pytest.mark.parametrize("others, mine, noise, stops", [
    ([30.0], 40.0, math.nan, True),         # worse than the best half, no noise measured: stop (ASHA)
    ([30.0], 40.0, 8.0, False),             # the same difference is within the noise (8 on each side): a tie
    ([30.0], 25.0, math.nan, False),        # better: goes on
    ([], 40.0, math.nan, False),            # first at the rung: nothing to compare with
    ([30.0, 35.0, 50.0], 40.0, math.nan, True),
    ([30.0, 45.0, 50.0], 40.0, math.nan, False),  # in the best half of four
])
def test_rung_rule_is_asha_with_ties_below_the_measured_noise(others, mine, noise, stops):
    rule = CurveRule(grace_kimg=1.0, final_kimg=8.0, eta=2.0, z=1.0)
    for k, value in enumerate(others):
        rule.decide(f"o{k}", [Point(0.0, 900.0), Point(1.0, value, noise)])
    reason = rule.decide("me", [Point(0.0, 900.0), Point(1.0, mine, noise)])
    assert (reason is not None) == stops
    if stops:
        assert reason.startswith("asha:") and "rung 1" in reason
    assert rule.decide("me", [Point(0.0, 900.0), Point(1.0, mine, noise), Point(1.5, mine, noise)]) is None  # once


def test_curve_rule_stops_a_trial_whose_forecast_cannot_beat_the_best_final():
    rule = CurveRule(grace_kimg=1.0, final_kimg=16.0, eta=math.inf, z=1.0, curve=True)
    assert rule.decide("done", curve([900.0, 40.0, 20.0, 12.0, 8.0], step=4.0)) is None  # reached 16: best 12
    slow = [Point(0.0, 900.0), Point(1.0, 60.0), Point(2.0, 55.0), Point(3.0, 51.0)]
    assert "curve: forecast" in rule.decide("slow", slow)
    fast = [Point(0.0, 900.0), Point(1.0, 60.0), Point(2.0, 30.0), Point(3.0, 20.0)]
    assert rule.decide("fast", fast) is None


def test_a_trial_first_seen_past_a_rung_is_judged_on_its_curve_at_the_rung():
    rule = CurveRule(grace_kimg=1.0, final_kimg=8.0, eta=2.0)
    rule.decide("a", [Point(0.0, 900.0), Point(1.0, 50.0)])
    # First seen at kimg 4 (a restored study): its rung-1 value is 60 (worse than 50), not its later 20.
    reason = rule.decide("b", [Point(0.0, 900.0), Point(1.0, 60.0), Point(2.0, 30.0), Point(4.0, 20.0)])
    assert reason is not None and "rung 1 kimg" in reason and "60" in reason
    assert [v for v, _ in rule.rungs[1.0]] == [50.0, 60.0]
