"""analysis/decay_rate.py: the fitted decay rate of synthetic curves with known rates (exponential and power law, with
noise), which model fits better, the fit range, rates compared paired by seed (against scipy), the figure and the
command."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import common, decay_rate
from sid.testing.results import write_study

KIMG = np.arange(1.0, 21.0)



def exponential(rate: float, noise: float, seed: int, floor: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return floor + 60.0 * np.exp(-rate * KIMG) * np.exp(rng.normal(0, noise, len(KIMG)))


def power_law(exponent: float, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 60.0 * KIMG ** -exponent * np.exp(rng.normal(0, noise, len(KIMG)))


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.4])
@pytest.mark.parametrize("noise", [0.0, 0.03])
def test_exponential_curves_give_their_rate_and_the_exponential_fits_better(rate, noise):
    fit = decay_rate.fit_curve(KIMG, exponential(rate, noise, seed=1))
    assert fit["rate"] == pytest.approx(rate, abs=max(1e-9, 3 * fit["rate_se"]) if noise else 1e-9)
    assert fit["halving_kimg"] == pytest.approx(math.log(2) / fit["rate"])
    assert fit["better"] == "exponential" and fit["r2_exp"] > fit["r2_power"]
    # the standard error is the OLS slope's: against scipy.stats.linregress
    reference = stats.linregress(KIMG, np.log(exponential(rate, noise, seed=1)))
    assert fit["rate"] == pytest.approx(-reference.slope) and fit["r2_exp"] == pytest.approx(reference.rvalue ** 2)
    if noise:
        assert fit["rate_se"] == pytest.approx(reference.stderr)


@pytest.mark.parametrize("exponent", [0.5, 1.1])
@pytest.mark.parametrize("noise", [0.0, 0.03])
def test_power_law_curves_give_their_exponent_and_the_power_law_fits_better(exponent, noise):
    fit = decay_rate.fit_curve(KIMG, power_law(exponent, noise, seed=2))
    assert fit["exponent"] == pytest.approx(exponent, abs=max(1e-9, 3 * fit["exponent_se"]) if noise else 1e-9)
    assert fit["better"] == "power law" and fit["r2_power"] > fit["r2_exp"]
    reference = stats.linregress(np.log(KIMG), np.log(power_law(exponent, noise, seed=2)))
    assert fit["exponent"] == pytest.approx(-reference.slope)
    assert fit["r2_power"] == pytest.approx(reference.rvalue ** 2)


def test_a_floor_is_subtracted_before_the_log():
    curve = exponential(0.3, 0.0, seed=0, floor=5.0)
    assert decay_rate.fit_curve(KIMG, curve, floor=5.0)["rate"] == pytest.approx(0.3)
    assert decay_rate.fit_curve(KIMG, curve)["rate"] < 0.3  # the floor, left in, flattens log FD


def test_too_few_points_give_no_fit():
    fit = decay_rate.fit_curve([0.0, 2.0, 4.0], [800.0, 40.0, 30.0])  # kimg 0 is not in a fit
    assert fit["n"] == 2 and math.isnan(fit["rate"]) and fit["better"] == "—"


@pytest.mark.parametrize("fids, kimg_range, used", [
    ([800, 50, 40, 30, 35, 33], None, [2, 4, 6]),        # up to the best evaluation
    ([800, 50, 40, 30, 25, 20], None, [2, 4, 6, 8, 10]),  # not converged: the whole curve after kimg 0
    ([800, 50, 40, 30, 25, 20], (4.0, 8.0), [4, 6, 8]),  # a stated range
])
def test_fit_range(fids, kimg_range, used):
    rows = pd.DataFrame({"kimg": 2.0 * np.arange(len(fids)), "fid": np.array(fids, float), "status": "ok"})
    assert decay_rate.fit_points(rows, kimg_range)["kimg"].tolist() == used


def rate_study(tmp_path, rates: dict[float, list[float]]):
    kimg = [0.0, *KIMG[:10]]
    curves = {(a, s): [800.0, *(60.0 * np.exp(-r * KIMG[:10]))] for a, rs in rates.items() for s, r in enumerate(rs)}
    return write_study(tmp_path, curves, kimg=kimg)


def test_rates_are_compared_paired_by_seed(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.normal(0.2, 0.05, 4)
    study = rate_study(tmp_path, {1.0: list(base + 0.05 + rng.normal(0, 0.005, 4)), 1.2: list(base)})
    evals, trials = common.load([study])
    table = decay_rate.rates(evals, trials)
    pairs = decay_rate.compare_rates(table, "alpha")
    (pair,) = pairs.itertuples()
    by = table.pivot(index="seed", columns="alpha", values="rate")
    d = by[1.0] - by[1.2]
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert (pair.lo, pair.hi) == pytest.approx((lo, hi)) and pair.p == pytest.approx(
        stats.ttest_rel(by[1.0], by[1.2]).pvalue)
    assert pair.verdict == "faster"  # alpha 1.0's rate is higher beyond noise
    summary = decay_rate.summary(table, "alpha").set_index("alpha")
    assert summary.loc[1.2, "rate_mean"] == pytest.approx(by[1.2].mean())
    assert summary.loc[1.2, "rate_sd"] == pytest.approx(by[1.2].std(ddof=1))
    md = decay_rate.to_markdown(table, "alpha")
    assert "an exponential decay fits better than a power law for 8 of 8 fitted trials" in md
    assert "| α = 1.0 vs 1.2 |" in md and "| faster |" in md


def test_figure_and_command(tmp_path, capsys):
    study = rate_study(tmp_path, {1.0: [0.2, 0.25], 1.2: [0.3, 0.28]})
    evals, trials = common.load([study])
    table = decay_rate.rates(evals, trials)
    fig = decay_rate.plot(evals, table, title="decay")
    left, right = fig.axes
    fits = [line for line in left.get_lines() if (line.get_gid() or "").startswith("fit:")]
    assert len(fits) == 4 and left.get_yscale() == "log"
    for line in fits:  # each fit line is exp(a - rate * kimg) with the trial's fitted rate
        trial = line.get_gid().split(":")[2]
        rate = table.set_index("trial_id").loc[trial, "rate"]
        x, y = line.get_xdata(), line.get_ydata()
        assert -np.diff(np.log(y)) / np.diff(x) == pytest.approx(np.full(len(x) - 1, rate))
    assert sorted(right.collections[0].get_offsets()[:, 1]) == pytest.approx(sorted(table["rate"]))
    decay_rate.main([str(study), "--out", str(tmp_path / "out"), "--format", "svg", "--width", "3.25"])
    assert (tmp_path / "out" / "decay_rate.svg").exists() and (tmp_path / "out" / "decay_rate.md").exists()
    assert "rate per kimg" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [(["--kimg-range", "8,4"], "--kimg-range: expected LO,HI"),
                                            (["--floor", "-1"], "--floor: expected a finite FD")])
def test_bad_flags_are_one_line_and_exit_code_2(tmp_path, capsys, flags, message):
    study = rate_study(tmp_path, {1.0: [0.2]})
    with pytest.raises(SystemExit) as exit_:
        decay_rate.main([str(study), "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err
