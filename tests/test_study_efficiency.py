"""benchmarks/study_efficiency.py: the replay of cheap study variants on a full grid's rows (synthetic curves with a
known answer), and the script itself at its CI size on real digits runs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.study_efficiency import curves, final_values, grid_verdicts, optuna_choices, variants, verdict

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

KIMG = [0.0, 1.0, 2.0, 4.0, 8.0]


def grid_rows(levels: dict[float, float | list[float]] | None = None, seeds: int = 2) -> pd.DataFrame:
    """alpha 1.0 / glr 1e-4 is the winner; alpha 0.5 is bad from the first rung on; every trial costs 1 s a kimg. A
    list in `levels` gives a level per seed."""
    levels = levels or {0.5: 60.0, 1.0: 10.0, 1.5: 14.0}
    rng = np.random.default_rng(0)
    rows = []
    for alpha, glr, seed in [(a, g, s) for a in levels for g in (1e-4, 3e-4) for s in range(seeds)]:
        level = levels[alpha][seed] if isinstance(levels[alpha], list) else levels[alpha]
        level *= 1.0 if glr == 1e-4 else 1.3
        for k in KIMG:
            fid = 800.0 if k == 0 else level * (1 + 2 / k) * (1 + rng.normal(0, 0.001))
            rows.append(dict(trial_id=f"a{alpha}-g{glr}-s{seed}", alpha=alpha, glr=glr, seed=seed, kimg=k,
                             iteration=int(k * 10), fid=fid, device_s=k))
    return pd.DataFrame(rows)


def test_cheap_variants_spend_less_and_find_the_grid_winner():
    table = variants(grid_rows(), grace=1.0, full_kimg=8.0, optuna_trials=6).set_index("variant")
    full = table.loc["full grid"]
    assert full["ratio"] == 1.0 and full["stopped"] == 0 and full["device_h"] == pytest.approx(12 * 8 / 3600)
    assert full["picked"] == "alpha=1, glr=0.0001" and full["same"]
    asha = table.loc["asha"]
    # the bad settings come first
    assert asha["ratio"] < 0.8 and asha["stopped"] >= 4 and asha["picked"] == "alpha=1, glr=0.0001"
    assert table.loc["asha+curve", "ratio"] <= asha["ratio"] + 1e-12
    assert table["spearman_first_rung"].dropna().gt(0.8).all()  # first rungs rank these curves as their ends do
    optuna_rows = table[table.index.str.startswith(("tpe", "gp"))]
    assert len(optuna_rows) == 2 and (optuna_rows["trials"] <= 6).all() and (optuna_rows["ratio"] < 1).all()


def test_the_grid_verdicts_say_whether_its_winner_beats_every_other_setting_beyond_noise():
    winner, against = grid_verdicts(final_values(curves(grid_rows(seeds=3))))
    assert winner == "alpha=1, glr=0.0001" and len(against) == 5 and against["n"].eq(3).all()
    assert against["verdict"].eq("worse than the winner").all() and (against["lo"] > 0).all()
    # two settings 0.1 apart whose seeds disagree by +-1: a tie by the paired test, not a winner
    winner, tied = grid_verdicts(final_values(curves(grid_rows({1.0: [11.0, 9.0, 10.0], 1.5: [9.1, 11.1, 10.1]},
                                                                  seeds=3))))
    assert winner == "alpha=1, glr=0.0001"
    assert tied.set_index("setting").loc["alpha=1.5, glr=0.0001", "verdict"] == "within noise"


@pytest.mark.parametrize("runner_up, right", [([9.1, 11.1, 10.1], True), ([14.0, 14.2, 13.9], False)])
def test_a_variant_is_right_when_it_picks_the_winner_or_a_setting_tied_with_it(runner_up, right):
    """The runner-up counts only when the grid's own paired verdict calls it a tie with the winner."""
    rows = grid_rows({1.0: [11.0, 9.0, 10.0], 1.5: runner_up}, seeds=3)
    finals = final_values(curves(rows))
    winner, against = grid_verdicts(finals)
    # a variant that completed only the trials of alpha 1.5 with glr 1e-4
    ended = {t: (8.0 if t.startswith("a1.5-g0.0001") else 1.0) for t in finals["trial"]}
    got = verdict(finals, ended, 8.0, winner, against)
    assert got["picked"] == "alpha=1.5, glr=0.0001" and not got["same"] and got["right"] is right


def test_a_grid_over_sigma_init_names_its_settings_by_it_and_optuna_chooses_among_them():
    rows = grid_rows(seeds=3)
    rows = rows[rows["glr"] == 1e-4].copy()  # one glr, and sigma_init 1.0 as a second level: 20% worse
    rows["sigma_init"] = 2.5
    other = rows.assign(sigma_init=1.0, trial_id=rows["trial_id"] + "-si1", fid=rows["fid"] * 1.2)
    finals = final_values(curves(pd.concat([rows, other], ignore_index=True)))
    assert set(finals["setting"]) == {f"alpha={a:g}, glr=0.0001, sigma_init={s:g}" for a in (0.5, 1.0, 1.5)
                                      for s in (1.0, 2.5)}
    winner, against = grid_verdicts(finals)
    assert winner == "alpha=1, glr=0.0001, sigma_init=2.5" and len(against) == 5
    assert against.set_index("setting").loc["alpha=1, glr=0.0001, sigma_init=1", "verdict"] == "worse than the winner"
    table = variants(pd.concat([rows, other], ignore_index=True), grace=1.0, full_kimg=8.0, optuna_trials=6)
    assert table.set_index("variant").loc["full grid", "picked"] == winner
    assert table["trials"].between(1, 18).all()
    assert optuna_choices(finals) == {"alpha": [0.5, 1.0, 1.5], "glr": [1e-4], "sigma_init": [1.0, 2.5]}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_benchmark_runs_at_its_ci_size(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "study_efficiency.py"), "--tiny", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "study_efficiency.csv").set_index("variant")
    assert table.loc["full grid", "ratio"] == 1.0 and table.loc["full grid", "trials"] == 4
    assert (table["ratio"] <= 1.0 + 1e-9).all() and table["device_h"].gt(0).all()
    assert len(list((tmp_path / "grid").iterdir())) == 4 and not math.isnan(table.loc["asha", "device_h"])
