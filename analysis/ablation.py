"""Best (or final) FID against one swept hyperparameter: the SiD paper's appendix ablations (alpha roughly in
[0, 1.5] with [1, 1.2] best, sigma_init with 2.5 chosen, learning rate and batch).

One point per trial, coloured by alpha; a black line with error bars gives the mean and min-max over the trials
at each value (seeds), drawn when some value has repeats. A trial that diverged or failed is never dropped: with
a finite value it is drawn as a cross, without one (`--stat final` of a diverged run, a trial that failed before
any finite evaluation) as a red triangle pinned to the top of the axis. A trial that is not converged (its best
is at its last evaluation: common.not_converged) gets a black ring, counted in the legend.

  python analysis/ablation.py results/alpha_sweep --x alpha --stat best --out figures
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from analysis import common

TOP = 0.965  # axes fraction where trials without a finite value are pinned


def plot(trials: pd.DataFrame, *, x: str = "alpha", stat: str = "best", detector: str | None = None,
         fid_images: int | None = None, colours: dict | None = None, width: float | None = None,
         title: str | None = None) -> plt.Figure:
    """The figure. Finite trial points carry gid 'trials', trials without a finite value gid 'no-value', the
    mean line gid 'mean', rings around not-converged trials gid 'not-converged'. `title` defaults to
    common.auto_title()."""
    if stat not in ("best", "final"):
        raise common.AnalysisError(f"--stat must be best or final, got {stat!r}")
    colours = colours or common.palette(trials["alpha"])
    data, label = common.select_metric(trials, detector, fid_images)
    data = data.assign(value=data[f"{stat}_fid"])
    ok, missing = data[np.isfinite(data["value"])], data[~np.isfinite(data["value"])]

    common.style(width)
    fig, ax = common.figure((7.2, 4.4), width)
    repeats = bool(len(ok)) and ok.groupby(x).size().max() > 1
    if repeats:
        sns.lineplot(data=ok, x=x, y="value", errorbar=common.SPREAD, err_style="bars", color="0.15", marker="s",
                     markersize=7, linewidth=1.3, err_kws={"capsize": 4, "linewidth": 1.3}, ax=ax, zorder=2)
        ax.get_lines()[0].set_gid("mean")
    if len(ok):
        sns.scatterplot(data=ok, x=x, y="value", hue="alpha", palette=colours, style="diverged",
                        markers={False: "o", True: "X"}, s=70, edgecolor="white", linewidth=0.6, alpha=0.9,
                        legend=False, ax=ax, zorder=3)
        ax.collections[-1].set_gid("trials")
    flagged = ok[common.not_converged(ok)] if len(ok) else ok
    if len(flagged):
        ax.scatter(flagged[x], flagged["value"], s=150, facecolor="none", edgecolor="0.1", linewidth=1.0, zorder=4,
                   gid="not-converged")
    if x in common.LOG_PARAMS:
        ax.set_xscale("log")
    else:
        levels = np.sort(data[x].unique())
        if len(levels) <= 8:
            ax.set_xticks(levels, [common.fmt(v) for v in levels])
    ax.set_yscale("log")
    common.log_ticks(ax.yaxis)
    if len(missing):
        if len(ok):
            common.log_headroom(ax)
        pinned = blended_transform_factory(ax.transData, ax.transAxes)
        counts = missing.groupby(x).size()
        ax.scatter(counts.index, np.full(len(counts), TOP), transform=pinned, marker="v", s=90, color="crimson",
                   edgecolor="black", linewidth=0.6, clip_on=False, zorder=6, gid="no-value")
        for value, n in counts.items():
            if n > 1:
                ax.annotate(f"×{n}", (value, TOP), xycoords=pinned, xytext=(7, -4), textcoords="offset points",
                            fontsize="small", color="crimson")
    ax.set_xlabel(common.SYMBOLS.get(x, x))
    ax.set_ylabel(common.wrap(f"{stat} {label}"))
    handles = [] if x == "alpha" else common.hue_key(ax, "alpha", ok["alpha"], colours)
    if repeats:
        handles.append(Line2D([], [], color="0.15", marker="s", label=common.SPREAD_LABEL))
    if ok["diverged"].any():
        handles.append(Line2D([], [], marker="X", linestyle="", color="0.5", markersize=9,
                              label="diverged later (value before)"))
    if len(missing):
        handles.append(Line2D([], [], marker="v", linestyle="", color="crimson", markeredgecolor="black",
                              markersize=9, label="no finite value (diverged or failed)"))
    if len(flagged):
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="0.1",
                              markersize=11, label=f"not converged (best at the last evaluation): {len(flagged)} "
                                                   f"of {len(data)}"))
    ax.set_title(title if title is not None else common.auto_title(data, x), fontsize="medium")
    # Under the axes: the data (and pinned markers) can fill every corner inside them.
    if handles:  # none for one seed per alpha with nothing diverged: the colours are the x axis
        fig.legend(handles=handles, fontsize="small", loc="outside lower center",
                   ncol=1 if width and width < 5 else min(len(handles), 2), frameon=False)
    return fig


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__)
    p.add_argument("--x", choices=common.SWEEPABLE, default="alpha", help="the swept hyperparameter on the x axis")
    p.add_argument("--stat", choices=("best", "final"), default="best",
                   help="best = lowest finite FID of a trial; final = its last finite FID (none if it diverged)")
    p.add_argument("--name", default=None, help="output file name without extension (default ablation_<x>_<stat>)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        _, trials = common.load(args.studies)
        fig = plot(trials, x=args.x, stat=args.stat, detector=args.fid_detector, fid_images=args.fid_images,
                   width=args.width, title=common.title_for(args.studies, trials, args.x, args.title))
        common.save(fig, args.out, args.name or f"ablation_{args.x}_{args.stat}", args.format)

    common.cli(build_parser(), body, argv)


if __name__ == "__main__":
    main()
