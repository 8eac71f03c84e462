"""FID against generator images seen, one line per alpha: the SiD paper's Figs. 2-6 (FID vs number of
synthesized images for alpha = 1.0 vs 1.2, "exponentially fast" distillation), on log-log axes.

Lines are the mean over seeds with a min-max band and each seed as a thin line when a setting has repeats; with
one run per value the band is +-2 fid_std, the evaluations' own sampling error. A trial that diverged ends in a
cross at its last finite value. kimg = 0 (the teacher-initialised generator) has no place on a log axis and is
left out, with a note under the plot. The y label names the detector: plain "FID" only for Inception.

  python analysis/fid_vs_images.py results/alpha_sweep --out figures --teacher-fid 1.97
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from analysis import common

STUDY_DASHES = ["-", (0, (1, 1.5)), "-.", (0, (5, 1.5, 1, 1.5, 1, 1.5))]  # never '--': that is the teacher's


def plot(evals: pd.DataFrame, trials: pd.DataFrame | None = None, *, hue: str = "alpha",
         teacher_fid: float | None = None, unit: str = "auto", detector: str | None = None,
         fid_images: int | None = None, colours: dict | None = None) -> plt.Figure:
    """The figure. `trials` (from common.load) says which trials diverged; derived from `evals` when omitted.
    Data lines carry gid 'curve:<hue value>:<study>', the divergence crosses gid 'diverged'."""
    if hue not in evals.columns:
        raise common.AnalysisError(f"--hue {hue!r} is not a results column; columns: {', '.join(evals.columns)}")
    colours = colours or common.palette(evals[hue])
    data, label = common.select_metric(evals, detector, fid_images)
    data = data[np.isfinite(data["fid"])]
    if unit == "auto":
        unit = "Mimg" if data["kimg"].max() >= 10_000 else "kimg"
    data = data.assign(x=data["kimg"] / (1000 if unit == "Mimg" else 1))
    dropped_zero = bool((data["x"] <= 0).any())
    data = data[data["x"] > 0]
    if data.empty:
        raise common.AnalysisError("no finite FID at kimg > 0 to plot")

    common.style()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    studies = sorted(data["study"].unique())
    repeats = bool(data.groupby(["study", hue, "kimg"])["trial_id"].nunique().max() > 1)
    sampling = not repeats and "fid_std" in data and bool(np.isfinite(data["fid_std"]).any())
    for (study, level), g in data.groupby(["study", hue], sort=True):
        dash = STUDY_DASHES[studies.index(study) % len(STUDY_DASHES)]
        if repeats:  # every seed as a thin line under the mean, so an outlier seed is seen, not averaged away
            for (_, seed), t in g.groupby(["trial_id", "seed"], sort=True):
                ax.plot(t["x"], t["fid"], color=colours[level], linewidth=0.7, alpha=0.45, linestyle=dash,
                        gid=f"seed:{level}:{seed}:{study}")
        sns.lineplot(data=g, x="x", y="fid", color=colours[level], errorbar=common.SPREAD if repeats else None,
                     linestyle=dash, linewidth=2, marker="o", markersize=4, markeredgewidth=0, ax=ax)
        ax.get_lines()[-1].set_gid(f"curve:{level}:{study}")
        if sampling:  # one run per value: its evaluations' own sampling error is the only spread there is
            g = g.sort_values("x")
            ax.fill_between(g["x"], (g["fid"] - 2 * g["fid_std"]).clip(lower=g["fid"] / 2), g["fid"] + 2 * g["fid_std"],
                            color=colours[level], alpha=0.2, linewidth=0, gid=f"sampling:{level}:{study}")
    trials = common.summarise(evals) if trials is None else trials
    ends = data.merge(trials.loc[trials["diverged"], common.KEYS], on=common.KEYS)
    ends = ends.sort_values("kimg").groupby(common.KEYS).tail(1)
    if len(ends):
        ax.scatter(ends["x"], ends["fid"], marker="X", s=90, c=[colours[v] for v in ends[hue]],
                   edgecolors="black", linewidths=0.8, zorder=5, gid="diverged")
    if teacher_fid is not None:
        ax.axhline(teacher_fid, linestyle="--", color="0.25", linewidth=1.3, gid="teacher")

    ax.set_xscale("log")
    ax.set_yscale("log")
    common.log_ticks(ax.xaxis)
    common.log_ticks(ax.yaxis)
    ax.set_xlabel(f"generator images seen ({unit}, log scale)")
    ax.set_ylabel(label)
    handles = common.hue_key(ax, hue, data[hue], colours, marker="")
    if len(studies) > 1:
        handles += [Line2D([], [], color="0.3", linestyle=STUDY_DASHES[i % len(STUDY_DASHES)], label=s)
                    for i, s in enumerate(studies)]
    if teacher_fid is not None:
        handles.append(Line2D([], [], color="0.25", linestyle="--", label=f"teacher ({teacher_fid:g})"))
    if len(ends):
        handles.append(Line2D([], [], marker="X", color="white", markeredgecolor="black", markerfacecolor="0.6",
                              markersize=9, label="diverged"))
    title = (f"{common.SPREAD_LABEL}; thin: single seeds" if repeats else
             "band: ±2 fid_std (jackknife s.e.)" if sampling else None)
    ax.legend(handles=handles, title=title, fontsize="small",
              title_fontsize="small", loc="best")
    if dropped_zero:
        fig.text(0.01, -0.02, f"{unit} = 0 (initial generator) not shown on the log axis", fontsize="x-small",
                 color="0.35", ha="left", va="top")
    if len(studies) == 1:
        ax.set_title(studies[0] or "single run", fontsize="medium")
    fig.tight_layout()
    return fig


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__)
    p.add_argument("--hue", default="alpha", help="column that gets one line (colour) per value")
    p.add_argument("--teacher-fid", type=float, default=None, help="teacher's FID: a dashed reference line")
    p.add_argument("--unit", choices=("auto", "kimg", "Mimg"), default="auto", help="x unit; auto = Mimg past 10k kimg")
    p.add_argument("--name", default="fid_vs_images", help="output file name without extension")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        evals, trials = common.load(args.studies)
        fig = plot(evals, trials, hue=args.hue, teacher_fid=args.teacher_fid, unit=args.unit,
                   detector=args.fid_detector, fid_images=args.fid_images)
        common.save(fig, args.out, args.name)

    common.cli(build_parser(), body, argv)


if __name__ == "__main__":
    main()
