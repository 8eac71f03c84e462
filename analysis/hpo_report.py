"""Report of an Optuna hyperparameter study: the best configuration with every searched field, the top trials, the
search history with best-so-far, parameter importances (Optuna's fANOVA) and a parallel-coordinates view. The SiD
paper has no such figure: it backs the paper's appendix ablations (alpha, sigma_init, learning rates) with a search
instead of a grid.

The Optuna study is read from the study's own storage where one exists, so a trial the study pruned (stopped early
or diverged: its value is not a result at full budget) stays pruned; without one it is rebuilt as the study tells
Optuna (analysis/searches.py). Only COMPLETE trials rank and enter the importances; importances from fewer than 10
complete trials are flagged as unreliable (in the figure, the Markdown and on stderr). Trials without a finite value
appear in the history as red triangles and in the parallel view as grey dashed lines. Per study:
hpo_report_<study>.<format> and hpo_report_<study>.md (the best configuration and the top trials).

  python analysis/hpo_report.py results/hpo --out figures
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

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
from analysis.searches import (
    MIN_IMPORTANCE_TRIALS,
    REBUILT,
    Search,
    best_configuration,
    complete,
    configuration_text,
    importance_warning,
    importances,
    search,
)

TOP = 5  # trials in the top-k table


def to_markdown(s: Search, label: str, top: int = TOP) -> str:
    """The best configuration with every searched field, the top trials, the states and the importance caveat."""
    best = best_configuration(s)
    counts = s.trials["optuna_state"].value_counts()
    states = ", ".join(f"{n} {k.lower()}" for k, n in counts.items())
    lines = []
    if best is None:
        lines.append(f"No complete trial: no best configuration ({states}).")
    else:
        lines.append(f"Best configuration ({len(s.params)} searched field{'s' * (len(s.params) != 1)}): "
                     f"{configuration_text(best, s.params)}: best {label} {best['best_fid']:.3f} "
                     f"(trial {common.md_text(best['trial_id'])}, one run: no seed spread).")
    source = s.source if s.source.startswith(REBUILT) else f"read from {s.source}"
    lines += ["", f"Trials: {len(s.trials)} ({states}); Optuna states {common.md_text(source)}. Only complete trials "
                  f"(run to the end of the budget) rank; a pruned trial's value is at a smaller budget.", ""]
    done = complete(s).head(top)
    if len(done):
        header = ["rank", "trial", *[common.short(p) for p in s.params], f"best {label}", "kimg at best",
                  "not converged"]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for rank, (_, r) in enumerate(done.iterrows(), 1):
            flag = "yes" if bool(r.get("not_converged", False)) else "no"
            lines.append(f"| {rank} | {common.md_text(r['trial_id'])} | "
                         + " | ".join(common.fmt(r[p]) for p in s.params)
                         + f" | {r['best_fid']:.3f} | {r.get('best_kimg', math.nan):g} | {flag} |")
        lines.append(f"\nTop {len(done)} complete trials by best {label}.")
    warning = importance_warning(s)
    if warning:
        lines.append(f"\n**Warning: {warning}.**")
    return "\n".join(lines) + "\n"


def _history(ax: plt.Axes, trials: pd.DataFrame, label: str) -> None:
    number = np.arange(1, len(trials) + 1)
    value = trials["best_fid"].to_numpy(dtype=float)
    finite = np.isfinite(value)
    state = trials["optuna_state"].to_numpy()
    kind = np.where(trials["diverged"].fillna(False).to_numpy(dtype=bool), "diverged later",
                    np.where(state == "COMPLETE", "complete", "pruned (value at a smaller budget)"))
    markers = {"complete": "o", "diverged later": "X", "pruned (value at a smaller budget)": "s"}
    sns.scatterplot(x=number[finite], y=value[finite], color="0.35", s=45, ax=ax, zorder=3, style=kind[finite],
                    markers={k: v for k, v in markers.items() if k in set(kind[finite])})
    ax.collections[-1].set_gid("history")
    best = pd.Series(np.where(state == "COMPLETE", value, np.nan)).cummin().ffill().to_numpy()
    ax.step(number, best, where="post", color="crimson", linewidth=2, label="best so far (complete)",
            gid="best-so-far")
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


def _importance(ax: plt.Axes, scores: dict[str, float], warning: str | None) -> None:
    ax.set_title("parameter importance (fANOVA)", fontsize="medium")
    if not scores:
        ax.text(0.5, 0.5, "needs ≥ 2 complete trials\nand a searched parameter", ha="center", va="center",
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
    if warning:
        ax.text(0.98, 0.02, f"< {MIN_IMPORTANCE_TRIALS} complete trials:\nnot reliable", transform=ax.transAxes,
                ha="right", va="bottom", fontsize="small", color="crimson", gid="importance-warning")


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


def plot(trials: pd.DataFrame, *, study: str | None = None, found: Search | None = None, width: float | None = None,
         title: str | None = None) -> plt.Figure:
    """The report of one study (`study` may be omitted when the trials hold only one; `found` is its search(),
    rebuilt from `trials` when omitted). Artists carry gids: 'history', 'best-so-far', 'failed', 'importance'
    (bars), 'importance-warning', 'parallel', 'parallel-failed'."""
    found = found or search([], trials, name=study)
    _, label = common.select_metric(found.trials.dropna(subset=["fid_detector"]), None, None)
    rows = found.trials.assign(diverged=found.trials.get("diverged", False))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scores = importances(found.study) if found.params else {}

    common.style(width)
    fig = plt.figure(figsize=(13, 8.8) if width is None else (width, width * 8.8 / 13), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=(1, 1.05), width_ratios=(1.5, 1))
    _history(fig.add_subplot(grid[0, 0]), rows, label)
    _importance(fig.add_subplot(grid[0, 1]), scores, importance_warning(found))
    if found.params:
        _parallel(fig.add_subplot(grid[1, :]), rows, found.params, label)
    best = best_configuration(found)
    failed = int((~np.isfinite(rows["best_fid"].astype(float))).sum())
    done = int((rows["optuna_state"] == "COMPLETE").sum())
    summary = (f"{len(rows)} trial{'s' * (len(rows) > 1)}: {done} complete, {failed} without a finite value")
    if best is not None:
        summary += f"; best {best['best_fid']:.3f}: {configuration_text(best, found.params)}"
    fig.suptitle(f"{title or found.name or 'single run'}\n{summary}", fontsize="medium")
    return fig


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__)
    p.add_argument("--top", type=int, default=TOP, help=f"trials in the top-k table (default {TOP})")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        evals, trials = common.load(args.studies)
        trials, label = common.select_metric(trials, args.fid_detector, args.fid_images)
        out = Path(args.out)
        for name in sorted(trials["study"].unique()):
            found = search(args.studies, trials, evals, name)
            warning = importance_warning(found)
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
            title = args.title or common.description(args.studies) or name
            common.save(plot(trials, found=found, width=args.width, title=title), out,
                        f"hpo_report_{name or 'run'}", args.format)
            md = f"# {common.md_text(title)}\n\n" + to_markdown(found, label, args.top)
            (out / f"hpo_report_{name or 'run'}.md").write_text(md)
            print(md)

    common.cli(build_parser(), body, argv)


if __name__ == "__main__":
    main()
