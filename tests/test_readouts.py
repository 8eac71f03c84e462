"""Read-outs that claim no more than the data: the 'not converged' flag, t-based intervals from fid_std (9 degrees of
freedom), the seeds a tie would need, the report's verdict (no 'Recommended' for a tie), re-scored generators beside
the training-time best. Numbers are checked against scipy.stats; studies are small folders written here."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import ablation, best_table, common, compare, fid_vs_images, report
from sid.config import FD_STD_GROUPS
from sid.results import SCORE_KEY, SCORE_SCHEMA, now_utc, upsert
from sid.testing.results import gid, row, write_study


# ---------------------------------------------------------------------------------------------- not converged
@pytest.mark.parametrize("fids, status, flagged", [
    ([800.0, 40.0, 30.0, 25.0], "ok", True),             # best at the last evaluation: still falling
    ([800.0, 40.0, 22.0, 25.0], "ok", False),            # best earlier: the curve turned
    ([800.0], "ok", True),                               # a single evaluation: nothing shows a flat curve
    ([800.0, 40.0, 30.0, math.nan], "diverged", False),  # diverged: its state says what ended it
], ids=["best-at-last", "best-earlier", "single-evaluation", "diverged"])
def test_not_converged_flag(fids, status, flagged):
    rows = pd.DataFrame([row("s", "t", alpha=1.0, seed=0, kimg=2.0 * i, fid=f,
                             status=status if not math.isfinite(f) else "ok") for i, f in enumerate(fids)])
    trials = common.summarise(rows)
    assert bool(trials["not_converged"].item()) is flagged
    assert bool(common.not_converged(trials).item()) is flagged
    assert bool(common.not_converged_note(trials)) is flagged


def test_not_converged_in_table_figure_and_report(tmp_path):
    still = [800.0, 40.0, 30.0, 25.0]
    turned = [800.0, 40.0, 22.0, 25.0]
    study = write_study(tmp_path, {(0.5, 0): still, (0.5, 1): turned, (1.0, 0): still, (1.0, 1): still})
    _, trials = common.load([study])
    frame = best_table.table(trials).set_index("alpha")
    assert frame.loc[0.5, "not_converged"] == 1 and frame.loc[1.0, "not_converged"] == 2
    md = best_table.to_markdown(best_table.table(trials))
    assert "| not converged |" in md and "3 of 4" in md
    ax = ablation.plot(trials, stat="best").axes[0]
    (rings,) = gid(ax.collections, "not-converged")
    assert len(rings.get_offsets()) == 3
    legend = " ".join(t.get_text() for t in ax.figure.legends[0].get_texts())
    assert "not converged (best at the last evaluation): 3 of 4" in legend
    path, _ = report.build([study], tmp_path / "report", formats=("png",))
    text = path.read_text()
    assert "Not converged: 3 of 4 trials not converged (best FD at the last evaluation" in text
    assert "| 1 of 2 |" in text and "| 2 of 2 |" in text  # the column, per value
    assert "rings: 3 of 4 trials not converged" in text  # the caption of the best-FD figure


# ---------------------------------------------------------------------------------------------- t-based intervals
def test_fd_std_intervals_use_t_with_the_jackknife_degrees_of_freedom():
    assert common.FD_STD_DOF == FD_STD_GROUPS - 1 == 9
    assert common.t_quantile(9) == pytest.approx(stats.t.ppf(0.975, 9)) and round(common.t_quantile(9), 3) == 2.262
    assert common.fd_halfwidth(1.5) == pytest.approx(stats.t.interval(0.95, 9, loc=0, scale=1.5)[1])
    # a 1.96 interval of a 9-d.o.f. estimate covers less than 95%: about 92%
    assert 2 * stats.t.cdf(1.96, 9) - 1 == pytest.approx(0.918, abs=0.002)


def test_single_run_band_is_the_t_interval_of_each_evaluation(tmp_path):
    study = write_study(tmp_path, {(1.0, 0): [800.0, 40.0, 30.0, 25.0]}, fid_std=2.0)
    evals, trials = common.load([study])
    ax = fid_vs_images.plot(evals, trials).axes[0]
    (band,) = gid(ax.collections, "sampling:1.0")
    top = band.get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx(40.0 + stats.t.ppf(0.975, 9) * 2.0)
    assert "2.262 fid_std, 9 d.o.f." in ax.get_legend().get_title().get_text()


@pytest.mark.parametrize("diffs", [[1.0, 2.0, 0.5], [0.3, -0.2, 0.4, 0.1], [5.0, -4.0, 1.0], [2.0, 2.1]])
def test_seeds_needed_is_the_fewest_that_make_the_observed_difference_significant(diffs):
    d = np.array(diffs)
    n = compare.seeds_needed(d)
    mean, sd = abs(d.mean()), d.std(ddof=1)

    def significant(k: int) -> bool:
        lo, hi = stats.t.interval(0.95, k - 1, loc=mean, scale=sd / math.sqrt(k))
        return lo > 0

    assert significant(int(n)) and (n == 2 or not significant(int(n) - 1))


def test_seeds_needed_has_no_answer_without_a_difference():
    assert math.isnan(compare.seeds_needed(np.array([1.0, -1.0]))) and math.isnan(compare.seeds_needed([3.0]))
    assert compare.seeds_needed([1.0, 1.0]) == 2  # no spread: two seeds already separate them


# ---------------------------------------------------------------------------------------------- the verdict
def trials_for(values: dict[float, list[float]], best_kimg: float = 7.68) -> pd.DataFrame:
    """A trials table as common.summarise gives it: per (alpha, seed) its best FD (the final one too), reached at
    `best_kimg` of 9.6."""
    rows = [dict(study="s", trial_id=f"a{a}-s{s}", preset="digits", teacher="digits", alpha=a, tmax=800,
                 sigma_init=2.5, lr=1e-4, glr=1e-4, batch=128, precision="fp32", seed=s,
                 fid_detector="digits-features-v1", fid_images=1024, best_fid=f, final_fid=f, best_kimg=best_kimg,
                 last_kimg=9.6, diverged=False, device_hours=0.01, state="completed")
            for a, fds in values.items() for s, f in enumerate(fds)]
    return pd.DataFrame(rows)


def verdict_of(values: dict[float, list[float]], best_kimg: float = 7.68) -> tuple[str, pd.DataFrame]:
    trials = trials_for(values, best_kimg)
    table = compare.compare(trials)
    empty = pd.DataFrame({"study": [], "trial_id": [], "kimg": [], "fid_std": []})
    return report.headline(report.value_table(trials, empty, "alpha"), table, trials, "alpha"), table


def test_nothing_distinguishable_says_so_with_the_seeds_it_would_take():
    rng = np.random.default_rng(2)
    base = rng.normal(20, 3, 3)
    values = {0.5: list(base + rng.normal(0.8, 1.0, 3)), 1.0: list(base + rng.normal(0.4, 1.0, 3)),
              1.2: list(base + rng.normal(0, 1.0, 3))}
    text, table = verdict_of(values)
    assert set(table["verdict"]) == {"within noise"}
    assert "Recommended" not in text and text.startswith("**Nothing is distinguishable at this budget")
    lowest = min(values, key=lambda a: np.mean(values[a]))
    for other in set(values) - {lowest}:
        needed = compare.pair_row(table, lowest, other)["needed"]
        assert math.isfinite(needed) and f"α = {lowest} vs {other}: {int(needed)}" in text
    assert "an estimate from the observed paired spread" in text
    assert "more seeds, not more kimg" in text  # every trial here flattened before its budget ended
    still_falling, _ = verdict_of(values, best_kimg=9.6)
    assert "Trials are not converged (below): a longer budget may separate the values." in still_falling


def test_a_value_better_than_every_other_is_recommended_with_its_intervals():
    rng = np.random.default_rng(1)
    base = rng.normal(20, 3, 5)
    text, table = verdict_of({0.5: list(base + 5 + rng.normal(0, 0.2, 5)), 1.0: list(base + rng.normal(0, 0.2, 5)),
                              1.2: list(base + 3 + rng.normal(0, 0.2, 5))})
    assert text.startswith("**Recommended: α = 1.0: better than every other value beyond noise**")
    for other in (0.5, 1.2):
        r = compare.pair_row(table, 1.0, other)  # stored as (1.0, 1.2) or (0.5, 1.0): the text is FD(1.0) - FD(other)
        sign = 1 if r["a"] == 1.0 else -1
        lo, hi = sorted((sign * r["lo"], sign * r["hi"]))
        assert f"vs {other}: {sign * r['diff']:+.2f} [{lo:+.2f}, {hi:+.2f}], p = {r['p']:.2g}" in text
    assert compare.TEST in text and "5 seeds" in text


def test_a_value_that_beats_some_and_ties_others_is_not_recommended():
    rng = np.random.default_rng(1)
    base = rng.normal(20, 3, 5)
    values = {0.5: list(base + 5), 1.0: list(base + rng.normal(0, 0.2, 5)),
              1.2: list(base + 0.05 + rng.normal(0, 0.2, 5))}
    text, table = verdict_of(values)
    lowest = min((1.0, 1.2), key=lambda a: np.mean(values[a]))
    other = 1.2 if lowest == 1.0 else 1.0
    assert "Recommended" not in text and text.startswith(f"**No single value is best beyond noise: α = {lowest}")
    assert "better than 0.5 beyond noise" in text and f"tied with {other} (within noise)" in text
    needed = compare.pair_row(table, lowest, other)["needed"]
    assert f"α = {lowest} vs {other}: {compare.needed_text(needed)}" in text


def test_one_seed_per_value_is_no_recommendation():
    text, _ = verdict_of({0.5: [30.0], 1.0: [25.0]})
    assert "Recommended" not in text and "one seed per value" in text and "--seeds K" in text


# ---------------------------------------------------------------------------------------------- re-scores
def score_rows(fids, *, images=2048, ref="digits", detector="digits-features-v1", source="runs/x"):
    return [dict(source=source, kind="generator", repeat=i, seeds=f"{i * images}-{(i + 1) * images - 1}",
                 sigma_init=2.5, class_label=-1, fid=f, fid_detector=detector, fid_images=images, fid_ref=ref,
                 is_mean=math.nan, is_std=math.nan, written_at=now_utc()) for i, f in enumerate(fids)]


def test_rescored_generators_appear_beside_the_training_time_best(tmp_path):
    study = write_study(tmp_path, {(1.0, 0): [800.0, 40.0, 30.0, 25.0], (1.2, 0): [800.0, 45.0, 33.0, 28.0]},
                        fid_std=1.5)
    run = study / "runs" / "a1.0-s0"
    upsert(run / "scores.parquet", score_rows([27.0, 28.5, 26.9, 27.6], source=str(run)), SCORE_SCHEMA,
           SCORE_KEY)
    path, _ = report.build([study], tmp_path / "report", formats=("png",))
    text = path.read_text()
    fids = np.array([27.0, 28.5, 26.9, 27.6])
    lo, hi = stats.t.interval(0.95, 3, loc=fids.mean(), scale=stats.sem(fids))
    line = next(line for line in text.splitlines() if "| a1.0-s0 |" in line)
    assert f"{fids.mean():.3f} ± {fids.std(ddof=1):.3f} (4)" in line and f"[{lo:.3f}, {hi:.3f}]" in line
    assert f"25.000 (6) ± {stats.t.ppf(0.975, 9) * 1.5:.3f}" in line  # the training-time best with its t-interval
    assert "| 2,048 | digits | digits-features-v1 | a1.0-s0 |" in line
    assert "winner's curse" in text and "No re-scored generator was found" not in text


def test_without_a_rescore_the_report_names_the_winners_curse(tmp_path):
    study = write_study(tmp_path, {(1.0, 0): [800.0, 40.0, 30.0], (1.2, 0): [800.0, 45.0, 33.0]})
    path, _ = report.build([study], tmp_path / "report", formats=("png",))
    text = path.read_text()
    assert re.search(r"No re-scored generator was found .*minimum over 3 noisy evaluations per trial, so it is biased "
                     r"low \(the winner's curse\)", text)
    assert "python -m sid evaluate <study>/runs/<trial\\_id> --repeats 5" in text or \
        "python -m sid evaluate <study>/runs/<trial_id> --repeats 5" in text


def test_a_sweep_of_another_field_is_reported_on_that_field(tmp_path):
    study = write_study(tmp_path, {(v, s): [800.0, 40.0 + v + s, 30.0 + v + s] for v in (1.5, 2.5) for s in (0, 1)},
                        field="sigma_init")
    # --x alpha, the default, does not vary here
    path, verdict = report.build([study], tmp_path / "report", formats=("png",))
    text = path.read_text()
    assert "- swept: σ_init = 1.5, 2.5" in text and "| σ_init = 1.5 vs 2.5 |" in text
    assert "Best configuration" not in verdict  # a sweep with seeds, not a search
