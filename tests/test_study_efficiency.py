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

from benchmarks.study_efficiency import variants

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

KIMG = [0.0, 1.0, 2.0, 4.0, 8.0]


def grid_rows() -> pd.DataFrame:
    """alpha 1.0 / glr 1e-4 is the winner; alpha 0.5 is bad from the first rung on; every trial costs 1 s a kimg."""
    rng = np.random.default_rng(0)
    rows = []
    for alpha, glr, seed in [(a, g, s) for a in (0.5, 1.0, 1.5) for g in (1e-4, 3e-4) for s in (0, 1)]:
        level = {0.5: 60.0, 1.0: 10.0, 1.5: 14.0}[alpha] * (1.0 if glr == 1e-4 else 1.3)
        for k in KIMG:
            fid = 800.0 if k == 0 else level * (1 + 2 / k) * (1 + rng.normal(0, 0.01))
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
