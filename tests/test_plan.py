"""--plan (sid/plan.py, sid/cluster/price.py, studies/_common.py): the plan's numbers from a given calibration against
the same arithmetic written out here, the stopping rule's saving against a hand count of ASHA's rungs, a stored
calibration through the command line (a cifar10 study on 8 GPUs priced on this CPU machine, nothing downloaded),
one-line errors for bad calibration files, and the study report putting the actual cost beside the plan."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import report
from sid.cluster.price import parse_cluster, plan_study, price
from sid.cluster.resources import TrialResources
from sid.cluster.space import Grid, Range, StudyError
from sid.cluster.study import Study, planned_trials, run_study
from sid.cluster.watch import Progress, calibrated_trial_s, duration
from sid.config import preset
from sid.plan import (
    CALIBRATION_FILE,
    PLAN_FILE,
    Calibration,
    Plan,
    PlanError,
    finish_s,
    stopping_saving,
    study_calibration,
)
from sid.results import CONFIG_COLUMNS, write_evaluations
from sid.testing.fixtures import TINY

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = Calibration(preset="digits-study", device="test CPU", train_images_per_s=100.0,
                          eval_images_per_s=200.0, setup_s=5.0, source="made up for the test")


def digits_study(**overrides) -> Study:
    return Study(name="s", base=preset("digits-study"), space={"alpha": Grid([0.5, 1.0, 1.2]), "seed": Grid([0, 1, 2])},
                 **overrides)


@pytest.mark.parametrize("cluster, workers, concurrency", [
    ({"CPU": 2.0}, 1, 2), ({"CPU": 2.0}, 2, 1), ({"CPU": 16.0, "GPU": 8.0}, 1, 8), ({"CPU": 16.0, "GPU": 8.0}, 4, 2)])
def test_plan_numbers_are_the_arithmetic_of_the_calibration(cluster, workers, concurrency):
    study = digits_study(resources=TrialResources(workers=workers))
    plan = price(study, cluster, CALIBRATION)
    # digits-study: 9.6 kimg = 75 iterations of 128 (9,600 images); 6 evaluations of 4,096 images
    train_s = 9600 / (100.0 * workers)
    eval_s = 6 * 4096 / 200.0
    trial_s = 5.0 + train_s + eval_s
    assert (plan.trials, plan.workers, plan.concurrency) == (9, workers, concurrency)
    assert plan.images == 9 * 9600 and plan.eval_images == 9 * 6 * 4096
    assert (plan.train_s, plan.eval_s, plan.trial_s) == pytest.approx((train_s, eval_s, trial_s))
    assert plan.device_hours == pytest.approx(9 * trial_s * workers / 3600)
    assert plan.train_device_hours == pytest.approx(9 * train_s * workers / 3600)
    assert plan.wall_s == pytest.approx(math.ceil(9 / concurrency) * trial_s)
    assert (plan.saving_low, plan.saving_high, plan.stopping) == (0.0, 0.0, "none")


def test_asha_saving_counts_the_trials_each_rung_stops():
    # 8 trials of 9.6 kimg, rungs at 1.92, 3.84, 7.68 (15.36 is past the end), half kept at each: 4 trials stop at
    # 1.92, 2 at 3.84, 1 at 7.68 and 1 runs to 9.6 kimg.
    kimg = 4 * 1.92 + 2 * 3.84 + 1 * 7.68 + 1 * 9.6
    assert stopping_saving(8, 9.6, grace_kimg=1.92, eta=2.0, curve=False) == pytest.approx((0, 1 - kimg / (8 * 9.6)))
    # the curve forecast may stop all but the best at the first rung
    assert stopping_saving(8, 9.6, grace_kimg=1.92, eta=math.inf, curve=True) == pytest.approx(
        (0, 1 - (7 * 1.92 + 9.6) / (8 * 9.6)))
    assert stopping_saving(2, 9.6, grace_kimg=1.92, eta=3.0, curve=False) == pytest.approx(  # one is always kept
        (0, 1 - (1.92 + 9.6) / (2 * 9.6)))
    assert stopping_saving(8, 9.6, grace_kimg=None, eta=2.0, curve=False) == (0.0, 0.0)
    plan = price(digits_study(asha=True), {"CPU": 2.0}, CALIBRATION)
    assert plan.stopping.startswith("ASHA") and plan.saving_high == pytest.approx(
        stopping_saving(9, 9.6, grace_kimg=1.92, eta=2.0, curve=False)[1])


def test_trial_count_of_grids_and_optuna():
    assert planned_trials(digits_study()) == 9 and planned_trials(digits_study(num_samples=2)) == 18
    optuna = Study(name="o", base=preset("digits"), space={"lr": Range(1e-5, 1e-3)}, searcher="optuna",
                   num_samples=7)
    assert planned_trials(optuna) == 7


# ---------------------------------------------------------------------------------------------- a running study's ETA
@pytest.mark.parametrize("left_s, pending, trial_s, concurrency, expected", [
    ([], 9, 10.0, 2, 50.0),             # nothing running: whole waves, ceil(9 / 2) x 10
    ([], 0, 10.0, 2, 0.0),
    ([5.0], 1, 10.0, 2, 10.0),          # a free slot takes the pending trial at once
    ([5.0, 3.0], 1, 10.0, 2, 13.0),     # ... else the first slot to come free
    ([5.0, 3.0, 1.0], 0, 10.0, 2, 5.0),  # more running than slots: each still ends when it ends
    ([-1.0], 0, 10.0, 1, 0.0),          # a trial past its budget ends now
])
def test_finish_time_fills_the_first_free_slot(left_s, pending, trial_s, concurrency, expected):
    assert finish_s(left_s, pending, trial_s, concurrency) == pytest.approx(expected)


@pytest.mark.parametrize("cluster, workers", [({"CPU": 2.0}, 1), ({"CPU": 2.0}, 2), ({"CPU": 16.0, "GPU": 8.0}, 4)])
def test_before_any_trial_measured_the_study_eta_is_the_plans_wall_time(cluster, workers):
    study = digits_study(resources=TrialResources(workers=workers))
    plan = price(study, cluster, CALIBRATION)
    progress = Progress(planned=plan.trials, final_kimg=study.base.final_kimg, concurrency=plan.concurrency,
                        trial_s=calibrated_trial_s(CALIBRATION, study.base, workers))
    assert progress.trial_s == pytest.approx(plan.trial_s)
    assert progress.line([], now=0.0).endswith(f"; ETA {duration(plan.wall_s)} (calibrated)")


class Running:  # what Progress reads of a Tune trial
    status = "RUNNING"

    def __init__(self, trial_id: str, kimg: float) -> None:
        self.trial_id, self.last_result = trial_id, {"kimg": kimg}


def test_the_eta_switches_from_the_calibration_to_the_measured_rate():
    progress = Progress(planned=2, final_kimg=1.0, concurrency=1, trial_s=100.0)  # 0.01 kimg/s by the calibration
    a = Running("a", 0.0)
    progress.observe("a", 0.0, now=0.0)
    assert progress.line([a], now=0.0).endswith("; 10 img/s; ETA 0:03:20 (calibrated)")  # a's 100 s, then b's
    a.last_result["kimg"] = 0.5
    assert progress.line([a], now=1.0).endswith("; ETA 0:02:30 (calibrated)")  # half of a is left, by the calibration
    progress.observe("a", 0.5, now=10.0)  # measured: 0.05 kimg/s, five times the calibration's
    assert progress.line([a], now=10.0).endswith("; 50 img/s; ETA 0:00:30 (measured)")  # a's 10 s, then b's 20 s


def test_a_study_takes_the_calibration_given_else_the_one_plan_left_in_its_folder(tmp_path):
    assert study_calibration(tmp_path, "digits-study") is None
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(CALIBRATION.to_dict()))
    assert study_calibration(tmp_path, "digits-study") == CALIBRATION
    given = tmp_path / "given.json"
    given.write_text(json.dumps({**CALIBRATION.to_dict(), "setup_s": 1.0}))
    assert study_calibration(tmp_path, "digits-study", given).setup_s == 1.0
    with pytest.raises(PlanError, match="no such calibration file"):
        study_calibration(tmp_path, "digits-study", tmp_path / "nowhere.json")
    with pytest.raises(PlanError, match="of preset 'digits-study', the study runs 'digits'"):
        study_calibration(tmp_path, "digits")


def test_a_study_refuses_a_calibration_of_another_preset_before_ray_starts(tmp_path):
    study = digits_study(storage=tmp_path)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**CALIBRATION.to_dict(), "preset": "cifar10-uncond"}))
    with pytest.raises(StudyError, match="calibration is of preset 'cifar10-uncond'"):
        run_study(study, calibration=other)
    assert not study.folder.exists()


def test_stored_calibration_prices_a_gpu_cluster_from_the_command_line(tmp_path):
    stored = tmp_path / "h200.json"
    stored.write_text(json.dumps({**CALIBRATION.to_dict(), "preset": "cifar10-uncond", "device": "NVIDIA H200",
                                  "train_images_per_s": 63.0, "eval_images_per_s": 2000.0, "setup_s": 60.0}))
    done = subprocess.run([sys.executable, "studies/alpha_sweep.py", "--preset", "cifar10-uncond", "--plan",
                           "--calibration", str(stored), "--plan-cluster", "GPU=8,CPU=64", "--storage",
                           str(tmp_path), "--name", "c10", "--alphas", "1.0,1.2", "--seeds", "2",
                           "--duration-kimg", "10000"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    plan = Plan.read(tmp_path / "c10" / PLAN_FILE)
    assert Calibration.read(tmp_path / "c10" / CALIBRATION_FILE) == plan.calibration
    # 4 trials on 8 GPUs: one wave; 10,000 kimg at 63 img/s; 50,000 images per evaluation
    config = preset("cifar10-uncond", duration_kimg=10000)
    evaluations = sum(config.fid_images_at(i) for i in config.evaluation_iterations())
    trial_s = 60.0 + config.final_kimg * 1000 / 63.0 + evaluations / 2000.0
    assert (plan.trials, plan.concurrency, plan.cluster) == (4, 8, "GPU 8, CPU 64")
    assert plan.wall_s == pytest.approx(trial_s) and plan.device_hours == pytest.approx(4 * trial_s / 3600)
    assert f"{plan.device_hours:.4g}" in done.stdout and "trials        4, 8 at once" in done.stdout
    assert not list((tmp_path / "c10").glob("trial-*"))  # nothing ran
    again = subprocess.run([sys.executable, "studies/alpha_sweep.py", "--preset", "digits-study", "--plan",
                            "--calibration", str(stored), "--storage", str(tmp_path), "--name", "d"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "calibration is of preset 'cifar10-uncond'" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("text, words", [
    ("{", "not a readable calibration file"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({**CALIBRATION.to_dict(), "gpu": 1}), "key 'gpu': not a calibration field"),
    (json.dumps({k: v for k, v in CALIBRATION.to_dict().items() if k != "setup_s"}), "key 'setup_s': missing"),
    (json.dumps({**CALIBRATION.to_dict(), "train_images_per_s": -1}), "train_images_per_s must be a number > 0"),
    (json.dumps({**CALIBRATION.to_dict(), "eval_images_per_s": "fast"}), "eval_images_per_s must be a number > 0"),
])
def test_bad_calibration_files_are_one_line_errors(tmp_path, text, words):
    path = tmp_path / "calibration.json"
    path.write_text(text)
    with pytest.raises(PlanError, match="calibration") as info:
        Calibration.read(path)
    assert words in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["GPU=8,CPU=x", "TPU=4", "GPU=-1", ""])
def test_bad_cluster_is_refused(text):
    with pytest.raises(PlanError, match="--plan-cluster"):
        parse_cluster(text)


def test_a_study_folder_that_ran_is_not_planned_again(tmp_path):
    study = Study(name="ran", base=preset("digits", **TINY), space={"alpha": Grid([1.0])}, storage=tmp_path)
    (study.folder / "evaluations").mkdir(parents=True)
    stored = tmp_path / "c.json"
    stored.write_text(json.dumps({**CALIBRATION.to_dict(), "preset": "digits"}))
    with pytest.raises(PlanError, match="already holds a study"):
        plan_study(study, calibration=stored)


def test_the_report_shows_the_actual_cost_beside_the_plan(tmp_path):
    # A planned study's folder after it ran (rows written by hand: the report only reads them).
    study = Study(name="planned", base=preset("digits", **TINY), space={"alpha": Grid([1.0, 1.2])}, storage=tmp_path)
    stored = tmp_path / "c.json"
    stored.write_text(json.dumps({**CALIBRATION.to_dict(), "preset": "digits"}))
    plan = plan_study(study, cluster={"CPU": 2.0}, calibration=stored)
    rows = []
    for alpha in (1.0, 1.2):
        for k, kimg in enumerate(study.base.evaluation_kimg()):
            rows.append(dict(trial_id=f"t{alpha}", alpha=alpha, kimg=kimg, iteration=k * 2, fid=30.0 - k - alpha,
                             wall_s=10.0 * k, device_s=10.0 * k, world_size=1, fid_detector=study.base.fid_detector,
                             fid_images=study.base.fid_images, loss_fake_score=1.0, loss_generator=1.0,
                             images_per_s=100.0, nan_samples=0, status="ok",
                             written_at=pd.Timestamp("2026-12-07 05:00", tz="UTC") + pd.Timedelta(minutes=k)))
    frame = pd.DataFrame(rows)
    for column in CONFIG_COLUMNS:
        if column not in frame:
            frame[column] = getattr(study.base, column)
    write_evaluations(study.folder / "evaluations" / "all.parquet", frame.assign(study="planned"))
    path, _ = report.build([study.folder], tmp_path / "report")
    md = path.read_text()
    assert "## Cost: plan and actual" in md
    assert f"| trials | {plan.trials} | 2 |" in md
    assert f"| training device-hours | {plan.train_device_hours:.3g} | {2 * 20.0 / 3600:.3g} |" in md
    assert f"| wall time | {plan.wall_s / 3600:.3g} h (all of it) | {2 / 60:.3g} h (first to last row) |" in md


@pytest.mark.parametrize("command", [
    ["studies/alpha_sweep.py", "--alphas", "1.0,1.2", "--seeds", "2"],
    ["studies/hpo.py", "--num-samples", "4", "--no-asha"],
    ["studies/method_compare.py", "--seeds", "2"],
    ["studies/search.py", "STUDY_YAML"],
])
def test_every_study_command_prices_its_study_with_plan(tmp_path, command):
    stored = tmp_path / "cal.json"
    stored.write_text(json.dumps({**CALIBRATION.to_dict(), "preset": "digits-study"}))
    study_yaml = tmp_path / "s.yaml"
    study_yaml.write_text("name: s\nbase: {preset: digits-study}\nsearcher: grid\n"
                          "space:\n  alpha: {grid: [1.0, 1.2]}\n  seed: {grid: [0, 1]}\n")
    command = [str(study_yaml) if part == "STUDY_YAML" else part for part in command]
    name = [] if command[0].endswith("search.py") else ["--name", "s", "--preset", "digits-study"]
    done = subprocess.run([sys.executable, *command, *name, "--plan", "--calibration", str(stored), "--storage",
                           str(tmp_path), "--plan-cluster", "CPU=2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    plan = Plan.read(tmp_path / "s" / PLAN_FILE)
    assert plan.trials == 4 and f"{plan.device_hours:.4g}" in done.stdout
    assert not (tmp_path / "s" / "evaluations").exists()  # nothing ran
