"""analysis/compare.py and analysis/report.py: paired verdicts checked against scipy.stats on synthetic trials, and
the report with its figures rendered from a real (tiny) study of four runs: two alphas x two seeds, trained here."""

from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from analysis import common, compare, fid_vs_images, report
from sid.config import preset
from sid.results import read_evaluations
from sid.run import run_local
from sid.testing.fixtures import make_teacher
from sid.testing.results import gid


def synthetic_trials(values: dict[float, list[float]], *, detector="digits-features-v1", images=1024) -> pd.DataFrame:
    """A trials table as common.summarise gives it: one row per (alpha, seed) with best and final FD."""
    rows = []
    for alpha, fds in values.items():
        for seed, fd in enumerate(fds):
            rows.append(dict(study="s", trial_id=f"a{alpha}-s{seed}", preset="digits", teacher="digits", alpha=alpha,
                             tmax=800, sigma_init=2.5, lr=1e-4, glr=1e-4, batch=128, precision="fp32", seed=seed,
                             method="sid", fid_detector=detector, fid_images=images, best_fid=fd, final_fid=fd + 1.0,
                             best_kimg=9.6, diverged=False, device_hours=0.01, state="completed"))
    return pd.DataFrame(rows)


def test_paired_differences_intervals_and_tests_match_scipy():
    rng = np.random.default_rng(0)
    base = rng.normal(20, 3, 6)  # seed effects shared by both values: pairing removes them
    trials = synthetic_trials({0.5: list(base + 2.0 + rng.normal(0, 0.3, 6)), 1.0: list(base + rng.normal(0, 0.3, 6)),
                               1.2: list(base + rng.normal(0, 0.3, 6))})
    table = compare.paired(trials, x="alpha", stat="best")
    assert [(r.a, r.b) for r in table.itertuples()] == [(0.5, 1.0), (0.5, 1.2), (1.0, 1.2)]
    by_alpha = trials.pivot(index="seed", columns="alpha", values="best_fid")
    for r in table.itertuples():
        d = by_alpha[r.a] - by_alpha[r.b]
        lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert r.n == 6 and r.diff == pytest.approx(d.mean()) and (r.lo, r.hi) == pytest.approx((lo, hi))
        assert r.p == pytest.approx(stats.ttest_rel(by_alpha[r.a], by_alpha[r.b]).pvalue)
        want = "better" if hi < 0 else "worse" if lo > 0 else "within noise"
        assert r.verdict == want
    verdicts = table.set_index(["a", "b"])["verdict"]
    assert verdicts[(0.5, 1.0)] == verdicts[(0.5, 1.2)] == "worse"
    # unpaired, the seed effects (s.d. 3) would swamp a difference of 2: the pairing is what detects it
    assert stats.ttest_ind(by_alpha[0.5], by_alpha[1.0]).pvalue > table.set_index(["a", "b"]).loc[(0.5, 1.0), "p"]
    assert compare.verdict_against(table, 1.0, 0.5) == "better"


def test_one_seed_per_value_gives_no_interval_but_a_figure():
    table = compare.compare(synthetic_trials({0.5: [30.0], 1.0: [25.0]}))
    assert set(table["verdict"]) == {compare.NO_INTERVAL} and table["lo"].isna().all()
    assert "no interval can be given" in compare.to_markdown(table)
    ax = compare.plot(table).axes[0]
    assert not gid(ax.collections, "interval:") and len(gid(ax.collections, "mean:")) == 2
    assert "no interval can be given" in ax.get_title()
    assert gid(ax.collections, "mean:best")[0].get_offsets()[0][0] == pytest.approx(5.0)


def test_mixed_detectors_are_refused_naming_them():
    mixed = pd.concat([synthetic_trials({1.0: [3.0, 4.0]}),
                       synthetic_trials({1.2: [5.0, 6.0]}, detector="inception-2015-12-05", images=50_000)])
    with pytest.raises(common.AnalysisError, match="digits-features-v1.*inception-2015-12-05"):
        compare.compare(mixed)


def test_log_axis_over_a_narrow_range_has_readable_ticks():
    fig, ax = plt.subplots()
    ax.plot([1, 2], [12, 60])
    ax.set_yscale("log")
    common.log_ticks(ax.yaxis)
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    shown = [t for t in ax.yaxis.get_majorticklocs() if lo <= t <= hi]
    assert len(shown) >= 4 and all(label.get_text() for label in ax.yaxis.get_majorticklabels() if
                                   lo <= label.get_position()[1] <= hi)


# ---------------------------------------------------------------------------------------------- a real tiny study
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Four real runs, alpha 1.0 / 1.2 x seeds 0 / 1, each with its fid_std; one folder holds them as a study."""
    root = tmp_path_factory.mktemp("study")
    teacher = make_teacher(root / "tiny.pt")
    for alpha in (1.0, 1.2):
        for seed in (0, 1):
            config = preset("digits", teacher=str(teacher), batch=16, batch_per_device=16, duration_kimg=0.064,
                            eval_every_kimg=0.032, fid_images=128, lr=1e-3, glr=1e-3, alpha=alpha, seed=seed)
            run_local(config, root / "runs" / f"a{alpha}-s{seed}", device=torch.device("cpu"), resume=False,
                      progress=False)
    return root / "runs"


def test_report_of_a_real_study(study, tmp_path, capsys):
    report.main([str(study), "--out", str(tmp_path), "--teacher-fid", "3"])
    printed = capsys.readouterr().out
    md = (tmp_path / "report.md").read_text()
    evals = read_evaluations(study)
    assert np.isfinite(evals["fid_std"]).all() and (evals["fid_std"] > 0).all()
    final = evals.sort_values("kimg").groupby("trial_id").tail(1)
    best = evals.groupby(["alpha", "seed"])["fid"].min().groupby("alpha").mean()
    verdicts = compare.best_rows(compare.compare(common.load([study])[1]))
    assert len(verdicts) == 1  # 1.0 vs 1.2: recommended only if one is better beyond noise
    recommended = verdicts["verdict"].iloc[0] in ("better", "worse")
    assert ("**Recommended: α = " in md) is recommended and ("Recommended" in md) is recommended
    if not recommended:
        assert md.count("**Nothing is distinguishable at this budget") == 1
        assert f"lowest mean best FD: α = {common.fmt(best.idxmin())}, not a recommendation" in md
    first = next(line for line in md.splitlines() if line.startswith("**"))
    assert f"verdict: {first.replace('**', '')}" in printed and str(tmp_path / "report.md") in printed
    assert "FD on digits-features-v1 (128 images)" in md and "0, 1 (2 per value)" in md
    assert "| 1.0 | 2 | " in md and "paired t-test over seeds" in md and "α = 1.0 vs 1.2 | best" in md
    median_std = final.groupby("alpha")["fid_std"].median()
    half = stats.t.ppf(0.975, 9) * median_std[1.2]
    assert f"| {median_std[1.2]:.2f} (±{half:.2f}) |" in md  # the sampling error and its t(9) interval
    for name in ("fid_vs_images", "ablation_alpha_best", "ablation_alpha_final", "compare"):
        assert f"]({name}.png)" in md and (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert "decay_rate.png" not in md  # two evaluations after kimg 0 make no fit
    assert md.count("](samples_alpha_") == 2  # the runs' own last sample grids, one per value
    html = (tmp_path / "report.html").read_text()
    assert html.count("<img ") == 6 and html.count('src="data:image/png;base64,') == 6
    assert "<table>" in html and "<strong>" in html


def test_curves_of_a_real_study_draw_each_seed_and_the_band(study):
    evals, trials = common.load([study])
    ax = fid_vs_images.plot(evals, trials).axes[0]
    seeds = gid(ax.get_lines(), "seed:")
    assert sorted(line.get_gid().split(":")[1:3] for line in seeds) == [["1.0", "0"], ["1.0", "1"], ["1.2", "0"],
                                                                        ["1.2", "1"]]
    for line in seeds:
        alpha, seed = float(line.get_gid().split(":")[1]), int(line.get_gid().split(":")[2])
        mine = evals[(evals["alpha"] == alpha) & (evals["seed"] == seed) & (evals["kimg"] > 0)].sort_values("kimg")
        np.testing.assert_allclose(line.get_ydata(), mine["fid"])
    assert "min–max over runs (hatched)\nthin lines: single seeds" in ax.get_legend().get_title().get_text()
    one_seed = evals[evals["seed"] == 0]
    ax = fid_vs_images.plot(one_seed, common.summarise(one_seed)).axes[0]
    (band,) = gid(ax.collections, "sampling:1.0")
    assert "±2.262 fid_std" in ax.get_legend().get_title().get_text() and not gid(ax.get_lines(), "seed:")
    top = band.get_paths()[0].vertices[:, 1].max()
    assert top == pytest.approx((one_seed["fid"] + stats.t.ppf(0.975, 9) * one_seed["fid_std"])[
        one_seed["kimg"] > 0].max())


def test_report_of_an_empty_folder_is_exit_code_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_:
        report.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "no evaluation rows" in capsys.readouterr().err
    assert "analysis.report" in sys.modules
