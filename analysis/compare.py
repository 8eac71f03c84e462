"""Paired comparisons between the values of one swept setting: is alpha = 1.0 better than 0.5, or within noise?

Trials of one study that share a seed share their training noise and evaluation latents (each slot's noise is drawn
from (seed, iteration, phase, slot): sid/distill.py), so two values are compared on the same seeds: per seed the
difference FD(a) - FD(b) of the best (or final) value, then their mean with a two-sided t-interval over the seeds
(scipy.stats.t) and the paired t-test (scipy.stats.ttest_rel). Verdict: 'better' (a lower FD) or 'worse' when the
interval excludes 0, else 'within noise'; for a pair within noise, the seeds the observed mean difference would need
to reach significance at the same level, if the paired spread stayed as observed (an estimate). With one seed per
value no interval can be given: the difference is shown, the verdict is 'no interval (1 seed)'. Seeds where either
trial has no finite value are left out and counted. When every trial's best is its final value the two comparisons
are one ('best = final'). No correction for multiple comparisons is applied; the test and the level are named in
every table.

  python analysis/compare.py results/alpha_sweep-digits-study --x alpha --out figures
  python analysis/compare.py results/hpo-digits-ddpm-confirm --x setting     # studies/confirm.py: best vs preset
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
BOTH = "best = final"  # the stat of a pair whose best and final comparisons are the same numbers
LEVEL = common.LEVEL
TEST = f"paired t-test over seeds, {LEVEL:.0%} t-interval"
NO_INTERVAL = "no interval (1 seed)"
MAX_SEEDS = 100_000  # seeds_needed() gives up beyond this
# The comparison figure's own marks: not the values' palette (a colour there means a value of x).
STAT_MARKS = {"best": ("0.1", "D", "full"), "final": ("#7B3294", "s", "none"), BOTH: ("0.1", "D", "full")}


def seeds_needed(diffs: np.ndarray, level: float = LEVEL) -> float:
    """The fewest paired seeds n at which the observed mean difference would be significant at `level` (two-sided
    t-interval excluding 0: t(n - 1) s / sqrt(n) < |mean|) if the mean and the s.d. s of the differences stayed as
    observed: an estimate, itself as noisy as the few seeds behind it. NaN with fewer than 2 differences or a mean of
    0; inf beyond MAX_SEEDS."""
    d = np.asarray(diffs, float)
    if len(d) < 2 or d.mean() == 0:
        return math.nan
    mean, sd = abs(float(d.mean())), float(d.std(ddof=1))
    if sd == 0:
        return 2.0
    n = max(2, math.floor((stats.norm.ppf(0.5 + level / 2) * sd / mean) ** 2))  # t > z: no n below this is enough
    while n <= MAX_SEEDS:
        if common.t_quantile(n - 1, level) * sd / math.sqrt(n) < mean:
            return float(n)
        n += 1
    return math.inf


def paired_values(trials: pd.DataFrame, *, x: str, column: str, level: float = LEVEL,
                  words: tuple[str, str] = ("better", "worse")) -> pd.DataFrame:
    """One row per pair of values (a < b) of `x` within each setting (for x = 'setting', the fields its labels set
    are part of the label: common.set_by), comparing `column` paired by seed: a, b, n
    (paired seeds), dropped (seeds without a finite value on one side), diff (mean of column(a) - column(b)), lo, hi
    (t-interval; NaN for n < 2), p (paired t-test), diffs (the per-seed differences), needed (seeds_needed() for a
    pair within noise) and verdict for a against b: words[0] when the interval is below 0, words[1] above it."""
    if x not in trials.columns:
        raise common.AnalysisError(f"--x {x!r} is not a results column")
    others = [c for c in common.setting_columns(trials) if c != x and c not in common.set_by(trials, x)]
    rows = []
    for _, group in trials.groupby(others, dropna=False, sort=True):
        values = group.pivot_table(index="seed", columns=x, values=column, aggfunc="first", dropna=False)
        for a, b in itertools.combinations(sorted(values.columns), 2):
            both = values[[a, b]].dropna()
            d = (both[a] - both[b]).to_numpy(float)
            n = len(d)
            lo = hi = p = math.nan
            if n >= 2:
                sd = d.std(ddof=1)
                half = common.t_quantile(n - 1, level) * sd / math.sqrt(n)
                lo, hi = d.mean() - half, d.mean() + half
                p = float(stats.ttest_rel(both[a], both[b]).pvalue) if sd > 0 else (0.0 if d.mean() else 1.0)
            verdict = (NO_INTERVAL if n == 1 else "no paired seeds" if n == 0 else
                       words[0] if hi < 0 else words[1] if lo > 0 else "within noise")
            rows.append(dict(study=group["study"].iloc[0], a=a, b=b, n=n,
                             dropped=int(values[[a, b]].notna().any(axis=1).sum()) - n,
                             diff=d.mean() if n else math.nan, lo=lo, hi=hi, p=p, diffs=d,
                             needed=seeds_needed(d, level) if verdict == "within noise" else math.nan,
                             verdict=verdict,
                             metric=common.metric_label(group["fid_detector"].iloc[0], group["fid_images"].iloc[0])))
    return pd.DataFrame(rows, columns=["study", "a", "b", "n", "dropped", "diff", "lo", "hi", "p", "diffs", "needed",
                                       "verdict", "metric"])


def paired(trials: pd.DataFrame, *, x: str = "alpha", stat: str = "best", level: float = LEVEL) -> pd.DataFrame:
    """paired_values() of the best or final FD (column stat = `stat`), verdicts 'better' / 'worse' for a lower /
    higher FD."""
    if stat not in STATS:
        raise common.AnalysisError(f"--stat must be one of {', '.join(STATS)}, got {stat!r}")
    table = paired_values(trials, x=x, column=f"{stat}_fid", level=level)
    table.insert(3, "stat", stat)
    return table


def verdict_against(table: pd.DataFrame, value, other) -> str:
    """The verdict for `value` against `other` from a paired() table (whichever way round the pair is stored)."""
    row = pair_row(table, value, other)
    if row is None:
        return "not compared"
    flip = {"better": "worse", "worse": "better", "faster": "slower", "slower": "faster"}
    return row["verdict"] if row["a"] == value else flip.get(row["verdict"], row["verdict"])


def pair_row(table: pd.DataFrame, value, other) -> pd.Series | None:
    """The row of the pair (value, other) in either order, or None."""
    row = table[((table["a"] == value) & (table["b"] == other)) | ((table["a"] == other) & (table["b"] == value))]
    return row.iloc[0] if len(row) else None


def best_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows comparing the best FD (stat 'best' or 'best = final')."""
    return table[table["stat"].isin(("best", BOTH))]


def merge_same(table: pd.DataFrame, trials: pd.DataFrame, x: str) -> pd.DataFrame:
    """Where every trial of a pair's two values has its best FD at its final evaluation (best = final, as when all
    trials are not converged), one row with stat 'best = final' instead of two identical ones."""
    same = (trials["best_fid"] == trials["final_fid"]) | (trials["best_fid"].isna() & trials["final_fid"].isna())
    keep, drop = [], set()
    for (study, a, b), g in table.groupby(["study", "a", "b"], sort=False):
        best, final = g[g["stat"] == "best"], g[g["stat"] == "final"]
        mine = (trials["study"] == study) & trials[x].isin((a, b))
        if len(best) == 1 and len(final) == 1 and same[mine].all():
            keep.append(best.index[0])
            drop.add(final.index[0])
    out = table.drop(index=list(drop))
    out.loc[keep, "stat"] = BOTH
    order = {s: i for i, s in enumerate((BOTH, *STATS))}
    return out.sort_values("stat", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def to_markdown(table: pd.DataFrame, x: str = "alpha") -> str:
    """The verdicts as a Markdown table, test and metric named under it."""
    name = common.short(x)
    lines = [f"| pair | stat | FD({name}=a) − FD({name}=b), mean | {LEVEL:.0%} interval | p | seeds | verdict for a "
             f"| seeds for p < {1 - LEVEL:.2g} (estimate) |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        interval = "—" if math.isnan(r["lo"]) else f"[{r['lo']:+.3f}, {r['hi']:+.3f}]"
        p = "—" if math.isnan(r["p"]) else f"{r['p']:.3g}"
        dropped = f" ({r['dropped']} without a value)" if r["dropped"] else ""
        diff = "—" if math.isnan(r["diff"]) else f"{r['diff']:+.3f}"
        lines.append(f"| {name} = {common.fmt(r['a'])} vs {common.fmt(r['b'])} | {r['stat']} | {diff} | {interval} "
                     f"| {p} | {r['n']}{dropped} | {r['verdict']} | {needed_text(r['needed'])} |")
    metrics = ", ".join(common.md_text(m) for m in sorted(table["metric"].unique())) if len(table) else "—"
    note = (f"\nDifferences of {metrics}; negative: a is lower (better). Test: {TEST}, two-sided, no correction for "
            f"multiple comparisons. Seeds for p < {1 - LEVEL:.2g}: for a pair within noise, the fewest paired seeds at "
            f"which the observed mean difference would be significant if the per-seed spread stayed as observed "
            f"(an estimate from these seeds, as uncertain as they are).")
    if (table["stat"] == BOTH).any():
        note += " 'best = final': every trial's best is its final evaluation, so the two comparisons are one."
    if len(table) and (table["n"] < 2).all():
        note += " One seed per value: no interval can be given; run the study with --seeds K (K >= 2)."
    return "\n".join(lines) + "\n" + note + "\n"


def needed_text(needed: float) -> str:
    if math.isnan(needed):
        return "—"
    return f"> {MAX_SEEDS:,}" if math.isinf(needed) else f"{int(needed)}"


def plot(table: pd.DataFrame, *, x: str = "alpha", width: float | None = None, title: str | None = None,
         quantity: str | None = None) -> plt.Figure:
    """A forest plot: per pair and stat, the mean difference (gid 'mean:<stat>') with its interval (gid
    'interval:<stat>', absent without one) and the per-seed differences (gid 'seeds:<stat>'). Its marks are its own
    (black and purple, diamonds and squares), not the values' colours; the x axis says which sign is better."""
    if table.empty:
        raise common.AnalysisError(f"nothing to compare: the study has fewer than two values of {x}")
    common.style(width)
    pairs = list(dict.fromkeys(zip(table["a"], table["b"])))
    stats_shown = list(dict.fromkeys(table["stat"]))
    fig, ax = common.figure((7.2, 0.5 * len(pairs) * len(stats_shown) ** 0.5 + 2.6), width)
    offset = {s: (i - (len(stats_shown) - 1) / 2) * 0.3 for i, s in enumerate(stats_shown)}
    for stat, g in table.groupby("stat", sort=False):
        colour, marker, fill = STAT_MARKS[stat]
        ys = np.array([pairs.index((a, b)) for a, b in zip(g["a"], g["b"])]) + offset[stat]
        ax.scatter(g["diff"], ys, marker=marker, s=45, facecolor=colour if fill == "full" else "white",
                   edgecolor=colour, linewidth=1.4, zorder=4, gid=f"mean:{stat}")
        ok = g["lo"].notna().to_numpy()
        if ok.any():
            ax.hlines(ys[ok], g["lo"][ok], g["hi"][ok], color=colour, linewidth=2.2, zorder=3,
                      gid=f"interval:{stat}")
        sx = np.concatenate(list(g["diffs"])) if len(g) else np.array([])
        sy = np.concatenate([np.full(len(d), y) for d, y in zip(g["diffs"], ys)]) if len(g) else np.array([])
        ax.scatter(sx, sy, marker="o", s=14, facecolor="none", edgecolor=colour, linewidth=0.8, zorder=5,
                   gid=f"seeds:{stat}")
    ax.axvline(0, color="0.3", linewidth=1, linestyle=":")
    name = common.short(x)
    ax.set_yticks(range(len(pairs)), [f"{name} = {common.fmt(a)} vs {common.fmt(b)}" for a, b in pairs])
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(plt.MaxNLocator(nbins=6 if width and width < 5 else 8))
    what = quantity or table["metric"].iloc[0]
    lower = "slower" if quantity else "better"
    ax.set_xlabel(f"difference a − b of {what}\n← a {lower}  ·  b {lower} →", gid="sign")
    handles = [Line2D([], [], color=STAT_MARKS[s][0], marker=STAT_MARKS[s][1], linewidth=2.2,
                      markerfacecolor=STAT_MARKS[s][0] if STAT_MARKS[s][2] == "full" else "white",
                      label=f"{s}: mean, {LEVEL:.0%} t-interval") for s in stats_shown]
    handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="", label="one seed"))
    fig.legend(handles=handles, fontsize="small", loc="outside lower center",
               ncol=1 if width and width < 5 else 2, frameon=False)
    sub = f"paired by seed ({TEST})"
    if (table["n"] < 2).all():
        sub = "one seed per value: no interval can be given"
    ax.set_title(f"{title}\n{sub}" if title else sub, fontsize="medium")
    return fig


def compare(trials: pd.DataFrame, *, x: str = "alpha", detector: str | None = None,
            fid_images: int | None = None) -> pd.DataFrame:
    """paired() for both stats on the trials of one metric (mixed detectors are refused, naming them), pairs whose
    best and final comparisons are the same merged into one 'best = final' row."""
    data, _ = common.select_metric(trials, detector, fid_images)
    return merge_same(pd.concat([paired(data, x=x, stat=s) for s in STATS], ignore_index=True), data, x)


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__)
    p.add_argument("--x", choices=common.COMPARABLE, default="alpha",
                   help="the swept setting whose values are compared (setting: a confirm study's labelled settings)")
    p.add_argument("--name", default="compare", help="output file name without extension (.md, and each --format)")
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
        title = common.title_for(args.studies, trials, args.x, args.title)
        common.save(plot(table, x=args.x, width=args.width, title=title), out, args.name, args.format)

    common.cli(build_parser(), body, argv)


if __name__ == "__main__":
    main()
