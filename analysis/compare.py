"""Paired comparisons between the values of one swept setting: is alpha = 1.0 better than 0.5, or within noise?

Trials of one study that share a seed share their training noise and evaluation latents (each slot's noise is drawn
from (seed, iteration, phase, slot): sid/distill.py), so two values are compared on the same seeds: per seed the
difference FD(a) - FD(b) of the best (or final) value, then their mean with a two-sided t-interval over the seeds
(scipy.stats.t) and the paired t-test (scipy.stats.ttest_rel). Verdict: 'better' (a lower FD) or 'worse' when the
interval excludes 0, else 'within noise'. With one seed per value no interval can be given: the difference is
shown, the verdict is 'no interval (1 seed)'. Seeds where either trial has no finite value are left out and
counted. No correction for multiple comparisons is applied; the test and the level are named in every table.

  python analysis/compare.py results/alpha_sweep-digits-study --x alpha --out figures
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from scipy import stats

from analysis import common

STATS = ("best", "final")
LEVEL = 0.95
TEST = f"paired t-test over seeds, {LEVEL:.0%} t-interval"
NO_INTERVAL = "no interval (1 seed)"


def paired(trials: pd.DataFrame, *, x: str = "alpha", stat: str = "best", level: float = LEVEL) -> pd.DataFrame:
    """One row per pair of values (a < b) of `x` within each setting: a, b, n (paired seeds), dropped (seeds without
    a finite value on one side), diff (mean of FD(a) - FD(b)), lo, hi (t-interval; NaN for n < 2), p (paired
    t-test), diffs (the per-seed differences) and verdict for a against b."""
    if stat not in STATS:
        raise common.AnalysisError(f"--stat must be one of {', '.join(STATS)}, got {stat!r}")
    if x not in trials.columns:
        raise common.AnalysisError(f"--x {x!r} is not a results column")
    others = [c for c in common.SETTING if c != x]
    rows = []
    for _, group in trials.groupby(others, dropna=False, sort=True):
        values = group.pivot_table(index="seed", columns=x, values=f"{stat}_fid", aggfunc="first", dropna=False)
        for a, b in itertools.combinations(sorted(values.columns), 2):
            both = values[[a, b]].dropna()
            d = (both[a] - both[b]).to_numpy(float)
            n = len(d)
            lo = hi = p = math.nan
            if n >= 2:
                sd = d.std(ddof=1)
                half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
                lo, hi = d.mean() - half, d.mean() + half
                p = float(stats.ttest_rel(both[a], both[b]).pvalue) if sd > 0 else (0.0 if d.mean() else 1.0)
            verdict = (NO_INTERVAL if n == 1 else "no paired seeds" if n == 0 else
                       "better" if hi < 0 else "worse" if lo > 0 else "within noise")
            rows.append(dict(study=group["study"].iloc[0], a=a, b=b, stat=stat, n=n,
                             dropped=int(values[[a, b]].notna().any(axis=1).sum()) - n,
                             diff=d.mean() if n else math.nan, lo=lo, hi=hi, p=p, diffs=d, verdict=verdict,
                             metric=common.metric_label(group["fid_detector"].iloc[0], group["fid_images"].iloc[0])))
    return pd.DataFrame(rows, columns=["study", "a", "b", "stat", "n", "dropped", "diff", "lo", "hi", "p", "diffs",
                                       "verdict", "metric"])


def verdict_against(table: pd.DataFrame, value, other) -> str:
    """The verdict for `value` against `other` from a paired() table (whichever way round the pair is stored)."""
    row = table[(table["a"] == value) & (table["b"] == other)]
    if len(row):
        return row["verdict"].iloc[0]
    row = table[(table["a"] == other) & (table["b"] == value)]
    flip = {"better": "worse", "worse": "better"}
    return flip.get(row["verdict"].iloc[0], row["verdict"].iloc[0]) if len(row) else "not compared"


def to_markdown(table: pd.DataFrame, x: str = "alpha") -> str:
    """The verdicts as a Markdown table, test and metric named under it."""
    name = common.short(x)
    lines = [f"| pair | stat | FD({name}=a) − FD({name}=b), mean | {LEVEL:.0%} interval | p | seeds | verdict for a |",
             "|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        interval = "—" if math.isnan(r["lo"]) else f"[{r['lo']:+.3f}, {r['hi']:+.3f}]"
        p = "—" if math.isnan(r["p"]) else f"{r['p']:.3g}"
        dropped = f" ({r['dropped']} without a value)" if r["dropped"] else ""
        diff = "—" if math.isnan(r["diff"]) else f"{r['diff']:+.3f}"
        lines.append(f"| {name} = {common.md(r['a'])} vs {common.md(r['b'])} | {r['stat']} | {diff} | {interval} "
                     f"| {p} | {r['n']}{dropped} | {r['verdict']} |")
    metrics = ", ".join(common.md(m) for m in sorted(table["metric"].unique())) if len(table) else "—"
    note = f"\nDifferences of {metrics}; negative: a is lower (better). Test: {TEST}, two-sided, no correction for " \
           f"multiple comparisons."
    if len(table) and (table["n"] < 2).all():
        note += " One seed per value: no interval can be given; run the study with --seeds K (K >= 2)."
    return "\n".join(lines) + "\n" + note + "\n"


def plot(table: pd.DataFrame, *, x: str = "alpha") -> plt.Figure:
    """A forest plot: per pair and stat, the mean difference (gid 'mean:<stat>') with its interval (gid
    'interval:<stat>', absent without one) and the per-seed differences (gid 'seeds:<stat>')."""
    if table.empty:
        raise common.AnalysisError(f"nothing to compare: the study has fewer than two values of {x}")
    common.style()
    pairs = list(dict.fromkeys(zip(table["a"], table["b"])))
    fig, ax = plt.subplots(figsize=(7.2, 0.55 * len(pairs) + 1.8))
    colours = {"best": "#0072B2", "final": "#D55E00"}
    offset = {"best": -0.15, "final": 0.15}
    for stat, g in table.groupby("stat", sort=False):
        ys = np.array([pairs.index((a, b)) for a, b in zip(g["a"], g["b"])]) + offset[stat]
        ax.scatter(g["diff"], ys, marker="D", s=45, color=colours[stat], zorder=4, gid=f"mean:{stat}")
        ok = g["lo"].notna().to_numpy()
        if ok.any():
            ax.hlines(ys[ok], g["lo"][ok], g["hi"][ok], color=colours[stat], linewidth=2.2, zorder=3,
                      gid=f"interval:{stat}")
        sx = np.concatenate(list(g["diffs"])) if len(g) else np.array([])
        sy = np.concatenate([np.full(len(d), y) for d, y in zip(g["diffs"], ys)]) if len(g) else np.array([])
        ax.scatter(sx, sy, marker="o", s=14, facecolor="none", edgecolor=colours[stat], linewidth=0.8, zorder=5,
                   gid=f"seeds:{stat}")
    ax.axvline(0, color="0.3", linewidth=1, linestyle=":")
    name = common.short(x)
    ax.set_yticks(range(len(pairs)), [f"{name} = {common.fmt(a)} vs {common.fmt(b)}" for a, b in pairs])
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(plt.MaxNLocator(nbins=8))
    metric = table["metric"].iloc[0]
    ax.set_xlabel(common.wrap(f"difference a − b, {metric}", 60))
    handles = [Line2D([], [], color=colours[s], marker="D", linewidth=2.2, label=f"{s}: mean, {LEVEL:.0%} t-interval")
               for s in table["stat"].unique()]
    handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="", label="one seed"))
    ax.legend(handles=handles, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3,
              frameon=False)
    title = f"paired by seed ({TEST})"
    if (table["n"] < 2).all():
        title = "one seed per value: no interval can be given"
    ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    return fig


def compare(trials: pd.DataFrame, *, x: str = "alpha", detector: str | None = None,
            fid_images: int | None = None) -> pd.DataFrame:
    """paired() for both stats on the trials of one metric (mixed detectors are refused, naming them)."""
    data, _ = common.select_metric(trials, detector, fid_images)
    return pd.concat([paired(data, x=x, stat=s) for s in STATS], ignore_index=True)


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__)
    p.add_argument("--x", choices=common.SWEEPABLE, default="alpha", help="the swept setting whose values are compared")
    p.add_argument("--name", default="compare", help="output file name without extension (.md, .png, .pdf)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        _, trials = common.load(args.studies)
        table = compare(trials, x=args.x, detector=args.fid_detector, fid_images=args.fid_images)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        md = to_markdown(table, args.x)
        (out / f"{args.name}.md").write_text(md)
        print(md)
        common.save(plot(table, x=args.x), out, args.name)

    common.cli(build_parser(), body, argv)


if __name__ == "__main__":
    main()
