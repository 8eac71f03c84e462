"""FID against generator images seen, one line per alpha: the SiD paper's Figs. 2-6 (FID vs number of
synthesized images for alpha = 1.0 vs 1.2, "exponentially fast" distillation), on log-log axes.

Lines are the mean over seeds with a min-max band and each seed as a thin line when a setting has repeats; with
one run per value the band is the 95% t-interval of each evaluation from its fid_std (a 10-group jackknife: 9
degrees of freedom, t = 2.262). Each value has its own colour, marker, band hatching and seed-line dashes, so bands
that overlap stay apart (and in greyscale). A trial that diverged ends in a cross at its last finite value. kimg = 0
(the teacher-initialised generator) has no place on a log axis and is left out, as the x label says. The y label
names the detector: plain "FID" only for Inception.

  python analysis/fid_vs_images.py results/alpha_sweep --out figures --teacher-fid 1.97 --width 3.25 --format pdf
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis import common

STUDY_DASHES = ["-", (0, (1, 1.5)), "-.", (0, (5, 1.5, 1, 1.5, 1, 1.5))]  # never '--': that is the teacher's


def plot(evals: pd.DataFrame, trials: pd.DataFrame | None = None, *, hue: str = "alpha",
         teacher_fid: float | None = None, unit: str = "auto", detector: str | None = None,
         fid_images: int | None = None, colours: dict | None = None, width: float | None = None,
         title: str | None = None) -> plt.Figure:
    """The figure. `trials` (from common.load) says which trials diverged; derived from `evals` when omitted.
    Data lines carry gid 'curve:<hue value>:<study>', single seeds 'seed:<value>:<seed>:<study>', bands
    'band:<value>:<study>' (min-max over seeds) or 'sampling:<value>:<study>' (one run's t-interval), the
    divergence crosses gid 'diverged'. `title` defaults to common.auto_title()."""
    if hue not in evals.columns:
        raise common.AnalysisError(f"--hue {hue!r} is not a results column; columns: {', '.join(evals.columns)}")
    marks = common.marks(evals[hue], colours)
    data, label = common.select_metric(evals, detector, fid_images)
    data = data[np.isfinite(data["fid"])]
    if unit == "auto":
        unit = "Mimg" if data["kimg"].max() >= 10_000 else "kimg"
    data = data.assign(x=data["kimg"] / (1000 if unit == "Mimg" else 1))
    dropped_zero = bool((data["x"] <= 0).any())
    data = data[data["x"] > 0]
    if data.empty:
        raise common.AnalysisError("no finite FID at kimg > 0 to plot")

    common.style(width)
    fig, ax = common.figure((6.4, 4.4), width)
    studies = sorted(data["study"].unique())
    repeats = bool(data.groupby(["study", hue, "kimg"])["trial_id"].nunique().max() > 1)
    sampling = not repeats and "fid_std" in data and bool(np.isfinite(data["fid_std"]).any())
    for (study, level), g in data.groupby(["study", hue], sort=True):
        dash = STUDY_DASHES[studies.index(study) % len(STUDY_DASHES)]
        m = marks[level]
        if repeats:  # every seed as a thin line under the mean, so an outlier seed is seen, not averaged away
            for (_, seed), t in g.groupby(["trial_id", "seed"], sort=True):
                ax.plot(t["x"], t["fid"], color=m.colour, linewidth=1.0, alpha=0.9, linestyle=m.dash,
                        gid=f"seed:{level}:{seed}:{study}")
        per = g.groupby("x")["fid"]
        mean = per.mean()
        if repeats:
            ax.fill_between(mean.index, per.min(), per.max(), facecolor=(*m.colour[:3], 0.10), edgecolor=m.colour,
                            hatch=m.hatch, linewidth=0.5, gid=f"band:{level}:{study}")
        elif sampling:  # one run per value: its evaluations' own sampling error is the only spread there is
            g = g.sort_values("x")
            half = common.fd_halfwidth(g["fid_std"])
            ax.fill_between(g["x"], (g["fid"] - half).clip(lower=g["fid"] / 2), g["fid"] + half,
                            facecolor=(*m.colour[:3], 0.10), edgecolor=m.colour, hatch=m.hatch, linewidth=0.5,
                            gid=f"sampling:{level}:{study}")
        ax.plot(mean.index, mean.to_numpy(), color=m.colour, linestyle=dash, linewidth=2, marker=m.marker,
                markersize=5, markeredgecolor="white", markeredgewidth=0.6, gid=f"curve:{level}:{study}")
    trials = common.summarise(evals) if trials is None else trials
    ends = data.merge(trials.loc[trials["diverged"], common.KEYS], on=common.KEYS)
    ends = ends.sort_values("kimg").groupby(common.KEYS).tail(1)
    if len(ends):
        ax.scatter(ends["x"], ends["fid"], marker="X", s=90, c=[marks[v].colour for v in ends[hue]],
                   edgecolors="black", linewidths=0.8, zorder=5, gid="diverged")
    if teacher_fid is not None:
        ax.axhline(teacher_fid, linestyle="--", color="0.25", linewidth=1.3, gid="teacher")

    ax.set_xscale("log")
    ax.set_yscale("log")
    common.log_ticks(ax.xaxis)
    common.log_ticks(ax.yaxis)
    ax.set_xlabel(f"generator images seen ({unit}, log scale" + (f"; {unit} 0 not shown)" if dropped_zero else ")"))
    ax.set_ylabel(label)
    if len(marks) <= common.MAX_LEVELS:
        handles = [Line2D([], [], color=marks[v].colour, marker=marks[v].marker, linewidth=2,
                          label=common.level_name(hue, v)) for v in sorted(set(data[hue]))]
        if repeats or sampling:
            handles = [_band_handle(h, marks[v]) for h, v in zip(handles, sorted(set(data[hue])))]
    else:
        handles = common.hue_key(ax, hue, data[hue], {v: m.colour for v, m in marks.items()}, marker="")
    if len(studies) > 1:
        handles += [Line2D([], [], color="0.3", linestyle=STUDY_DASHES[i % len(STUDY_DASHES)], label=s)
                    for i, s in enumerate(studies)]
    if teacher_fid is not None:
        handles.append(Line2D([], [], color="0.25", linestyle="--", label=f"teacher ({teacher_fid:g})"))
    if len(ends):
        handles.append(Line2D([], [], marker="X", color="white", markeredgecolor="black", markerfacecolor="0.6",
                              markersize=9, label="diverged"))
    legend = (f"{common.SPREAD_LABEL} (hatched)\nthin lines: single seeds" if repeats else
              "band: " + common.fd_interval_label().replace(" (", "\n(") if sampling else None)
    labels = [h[1].get_label() if isinstance(h, tuple) else h.get_label() for h in handles]
    if width is not None and width < 5:  # a column-wide figure has no room inside the axes
        fig.legend(handles, labels, title=legend, fontsize="small", title_fontsize="x-small",
                   loc="outside lower center", ncol=2, frameon=False)
    else:
        ax.legend(handles, labels, title=legend, fontsize="small", title_fontsize="x-small", loc="best")
    ax.set_title(title if title is not None else common.auto_title(trials, hue), fontsize="medium")
    return fig


def _band_handle(line: Line2D, m: common.Marks) -> tuple:
    """A legend entry showing a value's band (hatched, in its colour) under its line and marker."""
    return (Patch(facecolor=(*m.colour[:3], 0.10), edgecolor=m.colour, hatch=m.hatch, linewidth=0.5), line)


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
                   detector=args.fid_detector, fid_images=args.fid_images, width=args.width,
                   title=common.title_for(args.studies, trials, args.hue, args.title))
        common.save(fig, args.out, args.name, args.format)

    common.cli(build_parser(), body, argv)


if __name__ == "__main__":
    main()
