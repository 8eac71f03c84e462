"""How much compute the cheap ways of running a study save, and whether they still find the best setting.

Runs a full grid once (values of alpha x glr x seeds on digits, each trial in this process, one after another), then
replays the cheaper variants on its rows: ASHA's noise-aware rung rule, the rule plus the curve forecast
(sid/cluster/stopping.py, the code a study's stopper runs), and Optuna (TPE, GP) choosing among the grid's settings
with those stops. The replay is exact: a run's noise is drawn per slot from (seed, iteration), so a trial stopped at
kimg k would have produced the same rows up to k that the full run did. Trials arrive in grid order, one at a time.

Besides alpha and glr, `--sigma-inits` makes sigma_init a third dimension of the grid (default: the preset's value).

First the grid's own answer: its winner (lowest mean smoothed final FD over the seeds) and every other setting's
paired verdict against it (analysis.compare, the report's test: paired by seed, t-interval). A grid whose winner is
tied with others says little about a variant that "finds the winner", so the table says whether the winner beats
every other setting beyond noise. Then for each variant: device-hours spent (the kimg each trial ran, at the grid's
median device-seconds per kimg) and their ratio to the full grid, the setting it picks (lowest mean final FD over the
seeds it completed), whether that is the winner (same) and whether it is right (the winner, or tied with it by the
grid's paired verdicts), and the Spearman rank correlation of the first-rung values it decided on with the trials'
final values.

    python benchmarks/study_efficiency.py --out /tmp/eff                     # 3 alphas x 3 glr x 2 seeds, 9.6 kimg
    python benchmarks/study_efficiency.py --tiny --out /tmp/eff-tiny         # the CI size: 2 x 2 x 1, a small teacher
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from analysis import compare
from sid.cluster.stopping import CurveRule, Point, smoothed
from sid.config import preset
from sid.files import CHECKPOINT
from sid.results import read_evaluations
from sid.run import run_local
from sid.testing.fixtures import make_teacher

SETTING = ["alpha", "glr"]  # the fields that name a setting; sigma_init too where a grid varies it (grid_fields)


def grid_fields(rows: pd.DataFrame) -> list[str]:
    return SETTING + (["sigma_init"] if "sigma_init" in rows and rows["sigma_init"].nunique() > 1 else [])


def run_grid(out: Path, alphas: list[float], glrs: list[float], seeds: int, sigma_inits: list[float] | None = None,
             **config) -> pd.DataFrame:
    """Every trial of the grid (kept in <out>/grid/<trial>; an existing one is read, not run again); the rows of this
    grid's trials only, whatever else <out>/grid holds."""
    folders = []
    sigmas = sigma_inits or [None]  # None: the preset's sigma_init, and the folder names of a two-field grid
    for alpha, glr, sigma, seed in itertools.product(alphas, glrs, sigmas, range(seeds)):
        folder = out / "grid" / (f"a{alpha:g}-g{glr:g}" + (f"-si{sigma:g}" if sigma is not None else "") + f"-s{seed}")
        cfg = preset("digits-study", alpha=alpha, glr=glr, seed=seed, **config,
                     **({"sigma_init": sigma} if sigma is not None else {}))
        folders.append(folder)
        rows = read_evaluations(folder) if (folder / "evaluations.parquet").exists() else None
        if rows is not None and rows["kimg"].max() >= cfg.final_kimg - 1e-9:
            continue  # finished earlier: its rows are the record
        start = time.time()
        run_local(cfg, folder, device=torch.device("cpu"), resume=(folder / CHECKPOINT).exists(), progress=False)
        print(f"{folder.name}: {time.time() - start:.0f} s", flush=True)
    return read_evaluations(*folders).sort_values(["trial_id", "kimg"])


def curves(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {trial: g.reset_index(drop=True) for trial, g in rows.groupby("trial_id", sort=False)}


def points(g: pd.DataFrame, upto: float = math.inf) -> list[Point]:
    std = g["fid_std"] if "fid_std" in g else [math.nan] * len(g)
    return [Point(k, f, s) for k, f, s in zip(g["kimg"], g["fid"], std) if k <= upto + 1e-9]


def replay(trials: list[str], by_trial: dict[str, pd.DataFrame], rule: CurveRule | None) -> dict[str, float]:
    """kimg at which each trial ends under `rule` (its last kimg when nothing stops it)."""
    ended = {}
    for trial in trials:
        g = by_trial[trial]
        ended[trial] = float(g["kimg"].iloc[-1])
        for kimg in g["kimg"]:
            if rule is not None and rule.decide(trial, points(g, kimg)) is not None:
                ended[trial] = float(kimg)
                break
    return ended


def cost_hours(by_trial: dict[str, pd.DataFrame], ended: dict[str, float]) -> float:
    """Device-hours of the trials up to where they ended, at the grid's median device-seconds per kimg: the trials
    do the same work per kimg, and a rate per trial would charge a variant for the machine's load when it ran."""
    rate = float(np.median([g["device_s"].iloc[-1] / g["kimg"].iloc[-1] for g in by_trial.values()]))
    return sum(ended[t] * rate for t in by_trial if t in ended) / 3600


def label(values, fields: list[str] = SETTING) -> str:
    """A setting's name, e.g. 'alpha=1.2, glr=0.0001'."""
    return ", ".join(f"{k}={float(v):g}" for k, v in zip(fields, values))


def final_values(by_trial: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per trial: its setting, seed, smoothed final FD and the metric it is on."""
    rows = []
    fields = grid_fields(pd.concat(list(by_trial.values())))
    for trial, g in by_trial.items():
        rows.append(dict(trial=trial, **{k: g[k].iloc[0] for k in fields}, seed=g["seed"].iloc[0],
                         setting=label((g[k].iloc[0] for k in fields), fields), final=smoothed(points(g))[0],
                         fid_detector=g["fid_detector"].iloc[0] if "fid_detector" in g else "unnamed",
                         fid_images=g["fid_images"].iloc[0] if "fid_images" in g else 0))
    return pd.DataFrame(rows)


def grid_verdicts(finals: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The full grid's winner (lowest mean final FD over seeds) and the paired verdict of every other setting against
    it: the report's own test (analysis.compare: paired by seed, t-interval), so 'tied' means what a report says."""
    winner = finals.groupby("setting")["final"].mean().idxmin()
    table = compare.paired_values(finals.drop(columns=grid_fields(finals)).assign(study="grid"), x="setting",
                                  column="final", words=("beats the winner", "worse than the winner"))
    table = table[(table["a"] == winner) | (table["b"] == winner)].copy()
    flip = {"beats the winner": "worse than the winner", "worse than the winner": "beats the winner"}
    against = []
    for _, row in table.iterrows():  # each row read as "other against the winner"
        other_is_a = row["a"] != winner
        sign = 1.0 if other_is_a else -1.0
        against.append(dict(setting=row["a"] if other_is_a else row["b"], n=row["n"], diff=sign * row["diff"],
                            lo=min(sign * row["lo"], sign * row["hi"]), hi=max(sign * row["lo"], sign * row["hi"]),
                            p=row["p"], verdict=row["verdict"] if other_is_a else flip.get(row["verdict"],
                                                                                            row["verdict"])))
    return winner, pd.DataFrame(against, columns=["setting", "n", "diff", "lo", "hi", "p", "verdict"])


def verdict(finals: pd.DataFrame, ended: dict[str, float], full_kimg: float, winner: str,
            against: pd.DataFrame) -> dict:
    """The setting a variant picks among the trials it completed; right = the grid's winner or tied with it by the
    grid's own paired verdict (within noise). With one seed there is no verdict, so only the winner is right."""
    done = finals[[ended.get(t, -1) >= full_kimg - 1e-9 for t in finals["trial"]]]
    if done.empty:
        return dict(picked=None, same=False, gap=math.nan, right=False)
    picked = done.groupby("setting")["final"].mean().idxmin()
    means = finals.groupby("setting")["final"].mean()
    tied = set(against.loc[against["verdict"] == "within noise", "setting"])
    return dict(picked=picked, same=picked == winner, gap=float(means[picked] - means[winner]),
                right=picked == winner or picked in tied)


def variants(rows: pd.DataFrame, grace: float, full_kimg: float, optuna_trials: int) -> pd.DataFrame:
    by_trial = curves(rows)
    trials = list(by_trial)
    finals = final_values(by_trial)
    winner, against = grid_verdicts(finals)

    def rule(curve: bool, eta: float = 2.0) -> CurveRule:
        return CurveRule(grace_kimg=grace, final_kimg=full_kimg, eta=eta, curve=curve)

    runs = {  # variant -> (trials it ran, in order; kimg where each ended)
        "full grid": (trials, replay(trials, by_trial, None)),
        "asha": (trials, replay(trials, by_trial, rule(False))),
        "asha+curve": (trials, replay(trials, by_trial, rule(True))),
        "curve only": (trials, replay(trials, by_trial, rule(True, eta=math.inf))),
        **{f"{s}+asha ({optuna_trials} asks)": optuna_order(by_trial, finals, s, optuna_trials, grace, full_kimg)
           for s in ("tpe", "gp")},
    }
    full_cost = cost_hours(by_trial, runs["full grid"][1])
    first_rung = {t: smoothed(points(g, grace))[0] for t, g in by_trial.items()}
    out = []
    for name, (order, ended) in runs.items():
        decided = [t for t in order if math.isfinite(first_rung[t])]
        final = finals.set_index("trial").loc[decided, "final"]
        rho = stats.spearmanr([first_rung[t] for t in decided], final)[0] if len(decided) > 2 else math.nan
        hours = cost_hours(by_trial, ended)
        out.append(dict(variant=name, trials=len(order), stopped=sum(ended[t] < full_kimg - 1e-9 for t in order),
                        device_h=hours, ratio=hours / full_cost, **verdict(finals, ended, full_kimg, winner, against),
                        spearman_first_rung=rho))
    return pd.DataFrame(out)


def optuna_choices(finals: pd.DataFrame) -> dict[str, list[float]]:
    """What Optuna chooses among: each field that names a setting, with the grid's values of it."""
    return {k: sorted(finals[k].unique().tolist()) for k in grid_fields(finals)}


def optuna_order(by_trial, finals, sampler: str, n: int, grace: float, full_kimg: float):
    """Optuna choosing settings of the grid (categorical), told the truth about stopped trials (sid.cluster.search's
    rules:
    stopped = PRUNED); each setting it asks for runs the next unused seed. Returns (trials run, where each ended)."""
    import optuna  # noqa: PLC0415 (Optuna: only studies and their reports need it)

    from sid.cluster.search import make_sampler  # noqa: PLC0415 (imports Ray: only this path needs it)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    choices = optuna_choices(finals)
    fields = list(choices)
    settings = finals.groupby(fields)["trial"].apply(list).to_dict()
    study = optuna.create_study(direction="minimize", sampler=make_sampler(sampler, 0))
    rule = CurveRule(grace_kimg=grace, final_kimg=full_kimg, eta=2.0)
    used: dict[tuple, int] = {}
    order, ended = [], {}
    for _ in range(n):
        trial = study.ask({k: optuna.distributions.CategoricalDistribution(v) for k, v in choices.items()})
        key = tuple(trial.params[k] for k in fields)
        runs = settings[key]
        name = runs[used.get(key, 0) % len(runs)]
        used[key] = used.get(key, 0) + 1
        if name in ended:  # every seed of this setting ran: what the study saw of it then, no compute
            if ended[name] >= full_kimg - 1e-9:
                study.tell(trial, finals.set_index("trial").loc[name, "final"])
            else:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        stop = replay([name], by_trial, rule)[name]
        order.append(name)
        ended[name] = stop
        g = by_trial[name]
        for it, f in zip(g["iteration"], g["fid"]):
            if g.loc[g["iteration"] == it, "kimg"].iloc[0] <= stop + 1e-9 and math.isfinite(f):
                trial.report(float(f), int(it))
        if stop >= full_kimg - 1e-9:
            study.tell(trial, finals.set_index("trial").loc[name, "final"])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return order, ended


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the grid's runs and the results table")
    parser.add_argument("--tiny", action="store_true", help="the CI size: 2 alphas x 2 glr x 1 seed, a few kimg")
    parser.add_argument("--alphas", default="0.8,1.0,1.2", help="grid values of alpha")
    parser.add_argument("--glrs", default="3e-5,1e-4,3e-4", help="grid values of the generator learning rate")
    parser.add_argument("--sigma-inits", default="", help="grid values of sigma_init (default: the preset's)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per setting")
    parser.add_argument("--optuna-trials", type=int, default=0, help="trials Optuna runs (default: half the grid)")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)
    if args.tiny:  # the pipeline at its smallest: a small random 8x8 teacher (its FDs mean nothing), few images
        alphas, glrs, seeds, sigmas = [1.0, 1.2], [1e-4, 3e-4], 1, []
        config = dict(teacher=make_teacher(args.out / "teacher.pt"), batch=8, batch_per_device=8,
                      duration_kimg=0.064, eval_every_kimg=0.016, fid_images=64)
    else:
        alphas, glrs, seeds = [float(a) for a in args.alphas.split(",")], [float(g) for g in args.glrs.split(",")], \
            args.seeds
        sigmas = [float(v) for v in args.sigma_inits.split(",")] if args.sigma_inits else []
        config = {}
    base = preset("digits-study", **config)
    rows = run_grid(args.out, alphas, glrs, seeds, sigmas, **config)
    n = args.optuna_trials or max(2, len(alphas) * len(glrs) * max(1, len(sigmas)) * seeds // 2)
    table = variants(rows, grace=base.evaluation_kimg()[1], full_kimg=base.final_kimg, optuna_trials=n)
    table.to_csv(args.out / "study_efficiency.csv", index=False)
    winner, against = grid_verdicts(final_values(curves(rows)))
    against.to_csv(args.out / "grid_verdicts.csv", index=False)
    print(f"grid winner: {winner} (lowest mean smoothed final FD); each other setting against it, {compare.TEST}:")
    print(against.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    beats = (against["verdict"] == "worse than the winner").all() and len(against) > 0
    print(f"the winner beats every other setting beyond noise: {'yes' if beats else 'no'}\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nrows: {args.out / 'grid'}; table: {args.out / 'study_efficiency.csv'}")


if __name__ == "__main__":
    main()
