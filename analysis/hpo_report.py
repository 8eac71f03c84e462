"""Report of an Optuna hyperparameter study: search history with best-so-far, parameter importances (Optuna's
fANOVA) and a parallel-coordinates view. The SiD paper has no such figure: it backs the paper's appendix
ablations (alpha, sigma_init, learning rates) with a search instead of a grid.

The trials table is loaded into an in-memory Optuna study (create_trial + add_trials) with each trial's best FID
as the objective, as the studies report it to Optuna. Trials without a finite value (diverged, failed) become
FAIL trials: they appear in the history as red triangles and in the parallel view as grey dashed lines. One figure
per study: hpo_report_<study>.png/pdf.

  python analysis/hpo_report.py results/hpo --out figures
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import seaborn as sns
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from analysis import common

CATEGORICAL = ("precision",)
SEARCHABLE = (*common.SWEEPABLE, *CATEGORICAL)  # what an imported or hand-made study may vary


def searched(trials: pd.DataFrame) -> list[str]:
    """The hyperparameters that vary over the study's trials."""
    return [p for p in SEARCHABLE if p in trials and trials[p].nunique(dropna=True) > 1]


def to_optuna(trials: pd.DataFrame, params: Sequence[str], name: str = "study") -> optuna.Study:
    """An in-memory Optuna study holding the trials (objective: best_fid, minimised), in the given row order."""
    dists: dict[str, optuna.distributions.BaseDistribution] = {}
    for p in params:
        values = trials[p].dropna()
        if p in CATEGORICAL:
            dists[p] = optuna.distributions.CategoricalDistribution(sorted(values.unique()))
        elif pd.api.types.is_integer_dtype(values):
            dists[p] = optuna.distributions.IntDistribution(int(values.min()), int(values.max()))
        else:
            log = p in common.LOG_PARAMS and values.min() > 0
            dists[p] = optuna.distributions.FloatDistribution(float(values.min()), float(values.max()), log=log)
    study = optuna.create_study(study_name=name, direction="minimize", storage=optuna.storages.InMemoryStorage())
    made = []
    for _, r in trials.iterrows():
        params_ = {p: (r[p] if p in CATEGORICAL else dists[p].to_external_repr(float(r[p]))) for p in params}
        finite = math.isfinite(r["best_fid"])
        made.append(optuna.trial.create_trial(
            params=params_, distributions=dists, value=float(r["best_fid"]) if finite else None,
            state=optuna.trial.TrialState.COMPLETE if finite else optuna.trial.TrialState.FAIL,
            user_attrs={"trial_id": r["trial_id"]}))
    study.add_trials(made)
    return study


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances (seeded, so the figure is reproducible); empty when they cannot be estimated."""
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2 or not complete[0].params:
        return {}
    return optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))


def _history(ax: plt.Axes, trials: pd.DataFrame, label: str) -> None:
    number = np.arange(1, len(trials) + 1)
    value = trials["best_fid"].to_numpy(dtype=float)
    finite = np.isfinite(value)
    diverged = trials["diverged"].to_numpy(dtype=bool)
    sns.scatterplot(x=number[finite], y=value[finite], color="0.35", s=45, ax=ax, zorder=3,
                    style=np.where(diverged[finite], "diverged later", "trial"),
                    markers={"trial": "o", "diverged later": "X"})
    ax.collections[-1].set_gid("history")
    best = pd.Series(value).cummin().ffill().to_numpy()
    ax.step(number, best, where="post", color="crimson", linewidth=2, label="best so far", gid="best-so-far")
    ax.set_yscale("log")
    common.log_ticks(ax.yaxis)
    if (~finite).any():
        common.log_headroom(ax)
        pinned = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(number[~finite], np.full((~finite).sum(), 0.965), transform=pinned, marker="v", s=70,
                   color="crimson", edgecolor="black", linewidth=0.6, clip_on=False, zorder=4, gid="failed",
                   label="no finite value")
    ax.set_xlabel("trial (in start order)")
    ax.set_ylabel(common.wrap(f"best {label}"))
    ax.set_xlim(0.5, len(trials) + 0.5)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize="small", loc="best")
    ax.set_title("search history", fontsize="medium")


def _importance(ax: plt.Axes, scores: dict[str, float]) -> None:
    ax.set_title("parameter importance (fANOVA)", fontsize="medium")
    if not scores:
        ax.text(0.5, 0.5, "needs ≥ 2 completed trials\nand a searched parameter", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
        ax.set_axis_off()
        return
    frame = pd.DataFrame({"parameter": [common.short(p) for p in scores], "importance": list(scores.values())})
    sns.barplot(data=frame, x="importance", y="parameter", color=sns.color_palette("colorblind")[0], ax=ax)
    for bar in ax.patches:
        bar.set_gid("importance")
    ax.set_xlim(0, 1)
    ax.set_ylabel("")
    ax.set_xlabel("share of the objective's variance")


def _scaled(column: pd.Series, log: bool) -> tuple[np.ndarray, str, str]:
    """Values mapped to [0, 1] for one vertical axis, and the labels of its ends."""
    if column.dtype == object:
        levels = sorted(column.dropna().unique())
        pos = column.map({v: i / max(len(levels) - 1, 1) for i, v in enumerate(levels)}).to_numpy(dtype=float)
        return pos, str(levels[0]), str(levels[-1])
    v = column.to_numpy(dtype=float)
    t = np.log10(v) if log else v
    lo, hi = np.nanmin(t), np.nanmax(t)
    return (t - lo) / (hi - lo if hi > lo else 1.0), f"{np.nanmin(v):.3g}", f"{np.nanmax(v):.3g}"


def _parallel(ax: plt.Axes, trials: pd.DataFrame, params: Sequence[str], label: str) -> None:
    columns = [*params, "best_fid"]
    finite = np.isfinite(trials["best_fid"].to_numpy(dtype=float))
    scaled = []
    for i, c in enumerate(columns):
        values = trials[c].where(finite) if c == "best_fid" else trials[c]
        pos, lo, hi = _scaled(values, log=c in common.LOG_PARAMS or c == "best_fid")
        scaled.append(np.where(np.isnan(pos), 1.06, pos) if c == "best_fid" else pos)
        ax.vlines(i, 0, 1, color="0.3", linewidth=1)
        ends = {"ha": "center", "fontsize": "x-small", "bbox": {"fc": "white", "ec": "none", "pad": 0.5}}
        ax.text(i, -0.04, lo, va="top", **ends)
        ax.text(i, 1.10 if c == "best_fid" else 1.04, hi, va="bottom", **ends)
    y = np.stack(scaled, axis=1)
    x = np.arange(len(columns))
    order = np.argsort(-np.nan_to_num(trials["best_fid"].to_numpy(dtype=float), nan=np.inf))  # best drawn last
    fid = trials["best_fid"].to_numpy(dtype=float)
    norm = matplotlib.colors.LogNorm(np.nanmin(fid), np.nanmax(fid)) if finite.any() else None
    cmap = matplotlib.colormaps["viridis"]
    good = [i for i in order if finite[i]]
    lines = LineCollection([np.column_stack([x, y[i]]) for i in good], colors=[cmap(norm(fid[i])) for i in good],
                           linewidths=2, alpha=0.9, gid="parallel")
    ax.add_collection(lines)
    bad = [i for i in order if not finite[i]]
    if bad:
        ax.add_collection(LineCollection([np.column_stack([x, y[i]]) for i in bad], colors="0.55", linewidths=1.5,
                                         linestyles="--", gid="parallel-failed"))
        ax.text(len(columns) - 1 + 0.04, 1.06, "none", va="center", fontsize="x-small", color="0.4")
    if norm is not None:
        bar = ax.figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01, fraction=0.03)
        common.log_ticks(bar.ax.yaxis)
        bar.set_label(common.wrap(f"best {label}"), fontsize="small")
    ax.set_xlim(-0.3, len(columns) - 0.7)
    ax.set_ylim(-0.12, 1.16)
    ax.set_xticks(x, [common.short(c) for c in params] + ["best FID" if "FID" in label else "best FD"])
    ax.set_yticks([])
    ax.grid(False)
    for side in ("left", "right", "top", "bottom"):
        ax.spines[side].set_visible(False)
    if bad:
        ax.legend(handles=[Line2D([], [], color="0.55", linestyle="--", label="no finite value")],
                  fontsize="small", loc="upper left", bbox_to_anchor=(0.0, -0.1))
    ax.set_title("parallel coordinates (ends of each axis: min and max; lr, glr and FID on log scales)",
                 fontsize="medium")


def plot(trials: pd.DataFrame, *, study: str | None = None) -> plt.Figure:
    """The report of one study (`study` may be omitted when the trials hold only one). Artists carry gids:
    'history', 'best-so-far', 'failed', 'importance' (bars), 'parallel', 'parallel-failed'."""
    names = sorted(trials["study"].unique())
    if study is None and len(names) > 1:
        raise common.AnalysisError(f"trials of several studies ({', '.join(names)}): choose one")
    study = names[0] if study is None else study
    trials = trials[trials["study"] == study]
    if trials.empty:
        raise common.AnalysisError(f"no trials of study {study!r}")
    trials, label = common.select_metric(trials, None, None)
    trials = trials.sort_values(["first_written", "trial_id"]).reset_index(drop=True)
    params = searched(trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scores = importances(to_optuna(trials, params, study)) if params else {}

    common.style()
    fig = plt.figure(figsize=(13, 8.8))
    grid = fig.add_gridspec(2, 2, height_ratios=(1, 1.05), width_ratios=(1.5, 1), hspace=0.45, wspace=0.2)
    _history(fig.add_subplot(grid[0, 0]), trials, label)
    _importance(fig.add_subplot(grid[0, 1]), scores)
    if params:
        _parallel(fig.add_subplot(grid[1, :]), trials, params, label)
    failed = int((~np.isfinite(trials["best_fid"])).sum())
    best = trials.loc[trials["best_fid"].idxmin()] if failed < len(trials) else None
    summary = f"{study or 'single run'}: {len(trials)} trial{'s' * (len(trials) > 1)}, {failed} without a finite value"
    if best is not None:
        summary += f", best {best['best_fid']:.3f} ({best['trial_id']})"
    fig.suptitle(summary, fontsize="large")
    return fig


def build_parser() -> argparse.ArgumentParser:
    return common.parser(__doc__)


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        _, trials = common.load(args.studies)
        trials, _ = common.select_metric(trials, args.fid_detector, args.fid_images)
        for study in sorted(trials["study"].unique()):
            common.save(plot(trials, study=study), args.out, f"hpo_report_{study or 'run'}")

    common.cli(build_parser(), body, argv)


if __name__ == "__main__":
    main()
