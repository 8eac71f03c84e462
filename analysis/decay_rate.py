"""How fast the Frechet distance falls with the images seen: the SiD paper's headline claim ("the FID decreases
exponentially fast with the number of generator images") as a number per trial, with its spread over seeds.

Per trial, over its fit range, two lines are fitted by least squares to log(FD - floor) (floor 0 by default, so
log FD): against kimg (an exponential decay, FD = A exp(-rate x kimg): `rate` per kimg, `halving` = ln 2 / rate
kimg) and against log kimg (a power law, FD = A kimg^-exponent). Both fit the same response with two parameters, so
their R^2 (and residual s.d.) say which describes the curve better. The fit range runs from the first evaluation after
kimg 0 to the trial's best evaluation (after it the curve no longer falls; for a trial whose best is its last
evaluation that is the whole curve), or over --kimg-range; a range with fewer than 3 evaluations gives no fit. Rates
of two values are compared paired by seed, with the paired t machinery of analysis/compare.py ('faster' / 'slower'
when the t-interval of the mean difference excludes 0).

  python analysis/decay_rate.py results/alpha_sweep-digits-study --x alpha --out figures
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from analysis import common, compare

MODELS = ("exponential", "power law")
MIN_POINTS = 3  # two points fit any line exactly: no R^2, no standard error
RANGE_RULE = "from the first evaluation after kimg 0 to the trial's best evaluation"
COLUMNS = ["n", "kimg_lo", "kimg_hi", "rate", "rate_se", "halving_kimg", "r2_exp", "resid_exp", "exponent",
           "exponent_se", "r2_power", "resid_power", "better"]


def line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """(slope, its standard error, R^2, residual s.d.) of the least-squares line y = a + slope x (n >= 3)."""
    design = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    dof = len(x) - 2
    ss_res, ss_tot = float(resid @ resid), float(((y - y.mean()) ** 2).sum())
    s2 = ss_res / dof
    sxx = float(((x - x.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    return float(coef[1]), math.sqrt(s2 / sxx) if sxx > 0 else math.nan, r2, math.sqrt(s2)


def fit_curve(kimg: Sequence[float], fid: Sequence[float], *, floor: float = 0.0) -> dict:
    """Both fits of one curve (the points given, all with kimg > 0 and FD > floor; fewer than MIN_POINTS: NaNs).
    Keys: COLUMNS; 'better' is the model with the higher R^2 ('—' without a fit)."""
    k, f = np.asarray(kimg, float), np.asarray(fid, float)
    ok = np.isfinite(k) & np.isfinite(f) & (k > 0) & (f > floor)
    k, f = k[ok], f[ok]
    out = dict.fromkeys(COLUMNS, math.nan)
    out.update(n=len(k), kimg_lo=k.min() if len(k) else math.nan, kimg_hi=k.max() if len(k) else math.nan, better="—")
    if len(k) < MIN_POINTS or np.ptp(k) == 0:
        return out
    y = np.log(f - floor)
    slope, se, r2, resid = line_fit(k, y)
    out.update(rate=-slope, rate_se=se, halving_kimg=math.log(2) / -slope if slope < 0 else math.inf, r2_exp=r2,
               resid_exp=resid)
    slope, se, r2, resid = line_fit(np.log(k), y)
    out.update(exponent=-slope, exponent_se=se, r2_power=r2, resid_power=resid)
    if math.isfinite(out["r2_exp"]) and math.isfinite(out["r2_power"]):
        out["better"] = MODELS[0] if out["r2_exp"] >= out["r2_power"] else MODELS[1]
    return out


def fit_points(rows: pd.DataFrame, kimg_range: tuple[float, float] | None = None) -> pd.DataFrame:
    """One trial's evaluations in its fit range (rows sorted by kimg): finite 'ok' rows after kimg 0, up to its best
    evaluation, or those inside kimg_range (inclusive)."""
    rows = rows.sort_values("kimg")
    rows = rows[(rows["kimg"] > 0) & np.isfinite(rows["fid"]) & (rows["status"] == "ok")]
    if kimg_range is not None:
        lo, hi = kimg_range
        return rows[(rows["kimg"] >= lo - 1e-9) & (rows["kimg"] <= hi + 1e-9)]
    if rows.empty:
        return rows
    best = rows["fid"].to_numpy().argmin()
    return rows.iloc[: best + 1]


def rates(evals: pd.DataFrame, trials: pd.DataFrame, *, floor: float = 0.0,
          kimg_range: tuple[float, float] | None = None) -> pd.DataFrame:
    """One row per trial: its setting columns, seed, not_converged, and fit_curve()'s columns over its fit range."""
    rows = []
    info = trials.set_index(common.KEYS)
    for key, g in evals.groupby(common.KEYS, sort=True):
        pts = fit_points(g, kimg_range)
        fit = fit_curve(pts["kimg"], pts["fid"], floor=floor)
        meta = info.loc[key] if key in info.index else g.iloc[-1]
        rows.append({"study": key[0], "trial_id": key[1],
                     **{c: meta[c] for c in (*common.SETTING[1:], "seed") if c in meta.index},
                     "not_converged": bool(meta.get("not_converged", False)), **fit})
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame, x: str) -> pd.DataFrame:
    """Per value of x: trials fitted, rate mean / s.d. / min / max over seeds and the t-interval of the mean,
    exponent mean and s.d., median R^2 of both fits, and how many trials each model fits better."""
    out = []
    for value, g in table.groupby(x, sort=True):
        r = g["rate"][np.isfinite(g["rate"])]
        e = g["exponent"][np.isfinite(g["exponent"])]
        half = common.t_quantile(len(r) - 1) * r.std(ddof=1) / math.sqrt(len(r)) if len(r) > 1 else math.nan
        out.append({x: value, "trials": len(g), "fitted": len(r), "rate_mean": r.mean() if len(r) else math.nan,
                    "rate_sd": r.std(ddof=1) if len(r) > 1 else math.nan, "rate_lo": r.mean() - half,
                    "rate_hi": r.mean() + half, "rate_min": r.min() if len(r) else math.nan,
                    "rate_max": r.max() if len(r) else math.nan,
                    "exponent_mean": e.mean() if len(e) else math.nan,
                    "exponent_sd": e.std(ddof=1) if len(e) > 1 else math.nan,
                    "r2_exp": g["r2_exp"].median(), "r2_power": g["r2_power"].median(),
                    "exp_better": int((g["better"] == MODELS[0]).sum()),
                    "power_better": int((g["better"] == MODELS[1]).sum()),
                    "kimg_lo": g["kimg_lo"].min(), "kimg_hi": g["kimg_hi"].max()})
    return pd.DataFrame(out)


def compare_rates(table: pd.DataFrame, x: str) -> pd.DataFrame:
    """Rates of each pair of values paired by seed (compare.paired_values: 'faster' / 'slower' for a)."""
    return compare.paired_values(table, x=x, column="rate", words=("slower", "faster"))


def to_markdown(table: pd.DataFrame, x: str, *, floor: float = 0.0, kimg_range=None) -> str:
    """The section of the report: how the fit is made, the per-value table, which model fits better, the paired
    rate comparison."""
    values = summary(table, x)
    name = common.short(x)
    response = "log FD" if floor == 0 else f"log(FD − {floor:g})"
    where = f"the range {RANGE_RULE}" if kimg_range is None else f"kimg {kimg_range[0]:g}–{kimg_range[1]:g}"
    lines = [f"Fits of {response} by least squares per trial, over {where} (at least {MIN_POINTS} evaluations): "
             f"against kimg (exponential decay: rate per kimg, halving = ln 2 / rate) and against log kimg (power law: "
             f"exponent). Both have two parameters and the same response, so R² compares them.", "",
             f"| {name} | trials fitted | rate per kimg, mean ± s.d. (min–max) | {common.LEVEL:.0%} t-interval of the "
             f"mean | halving (kimg) | power-law exponent, mean ± s.d. | median R², exp / power | better fit "
             f"(trials) | kimg range |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in values.iterrows():
        spread = "" if math.isnan(r["rate_sd"]) else f" ± {r['rate_sd']:.3g} ({r['rate_min']:.3g}–{r['rate_max']:.3g})"
        interval = "—" if math.isnan(r["rate_lo"]) else f"[{r['rate_lo']:.3g}, {r['rate_hi']:.3g}]"
        halving = "—" if not r["rate_mean"] > 0 else f"{math.log(2) / r['rate_mean']:.3g}"
        exp_sd = "" if math.isnan(r["exponent_sd"]) else f" ± {r['exponent_sd']:.3g}"
        better = f"exp {int(r['exp_better'])}, power {int(r['power_better'])}"
        lines.append(f"| {common.fmt(r[x])} | {int(r['fitted'])} of {int(r['trials'])} | "
                     f"{r['rate_mean']:.3g}{spread} | {interval} | {halving} | {r['exponent_mean']:.3g}{exp_sd} | "
                     f"{r['r2_exp']:.3f} / {r['r2_power']:.3f} | {better} | {r['kimg_lo']:g}–{r['kimg_hi']:g} |")
    fitted = table[np.isfinite(table["rate"])]
    exp_n, power_n = int((fitted["better"] == MODELS[0]).sum()), int((fitted["better"] == MODELS[1]).sum())
    verdict = ("an exponential decay fits better than a power law" if exp_n > power_n else
               "a power law fits better than an exponential decay" if power_n > exp_n else
               "neither model fits better")
    if len(fitted):
        lines += ["", f"Over this range {verdict} for {max(exp_n, power_n)} of {len(fitted)} fitted trials (median "
                      f"R² {fitted['r2_exp'].median():.3f} exponential, {fitted['r2_power'].median():.3f} power law; "
                      f"median residual s.d. of {response} {fitted['resid_exp'].median():.3g} and "
                      f"{fitted['resid_power'].median():.3g})."]
    else:
        lines += ["", "No trial has enough evaluations in its range for a fit."]
    flagged = int(fitted["not_converged"].sum()) if len(fitted) else 0
    if flagged and kimg_range is None:
        lines.append(f"{flagged} of {len(fitted)} fitted trials are not converged ({common.NOT_CONVERGED}): their "
                     f"range is the whole curve, and the rate says nothing about where it flattens.")
    pairs = compare_rates(table, x)
    if len(pairs):
        lines += ["", f"Rates paired by seed ({compare.TEST}; 'faster' / 'slower': a's rate is higher / lower beyond "
                      f"noise):", "", f"| pair | rate(a) − rate(b), mean | {common.LEVEL:.0%} interval | p | seeds | "
                                      f"verdict for a |", "|---|---|---|---|---|---|"]
        for _, r in pairs.iterrows():
            interval = "—" if math.isnan(r["lo"]) else f"[{r['lo']:+.3g}, {r['hi']:+.3g}]"
            p = "—" if math.isnan(r["p"]) else f"{r['p']:.3g}"
            diff = "—" if math.isnan(r["diff"]) else f"{r['diff']:+.3g}"
            lines.append(f"| {name} = {common.fmt(r['a'])} vs {common.fmt(r['b'])} | {diff} | {interval} | {p} | "
                         f"{r['n']} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def plot(evals: pd.DataFrame, table: pd.DataFrame, *, x: str = "alpha", floor: float = 0.0,
         kimg_range: tuple[float, float] | None = None, width: float | None = None, title: str | None = None,
         colours: dict | None = None) -> plt.Figure:
    """Left: each trial's FD on a log axis against kimg (linear), so an exponential decay is a straight line, with
    its exponential fit over the fit range (gid 'fit:<value>:<trial>') and its points (gid 'points:<value>:<trial>').
    Right: the rate per trial (gid 'rates') and per value the mean with its t-interval (gid 'rate-mean')."""
    if table.empty or not np.isfinite(table["rate"]).any():
        raise common.AnalysisError(f"no trial has {MIN_POINTS} or more finite evaluations after kimg 0 in its fit "
                                   f"range: no decay rate to show")
    marks = common.marks(table[x], colours)
    common.style(width)
    narrow = width is not None and width < 5  # a paper column: the panels one above the other
    fig, (left, right) = (common.figure((3.2, 4.6), width, nrows=2, height_ratios=(1.4, 1)) if narrow else
                          common.figure((9.6, 4.2), width, ncols=2, width_ratios=(1.6, 1)))
    data = evals[(evals["kimg"] > 0) & np.isfinite(evals["fid"]) & (evals["fid"] > floor)]
    for _, t in table.iterrows():
        g = data[(data["study"] == t["study"]) & (data["trial_id"] == t["trial_id"])].sort_values("kimg")
        m = marks[t[x]]
        left.plot(g["kimg"], g["fid"] - floor, color=m.colour, marker=m.marker, markersize=3.5, linewidth=0,
                  alpha=0.8, gid=f"points:{t[x]}:{t['trial_id']}")
        if not math.isfinite(t["rate"]):
            continue
        pts = fit_points(g, kimg_range)
        k = pts["kimg"].to_numpy(float)
        y = np.log(pts["fid"].to_numpy(float) - floor)
        intercept = float(np.mean(y + t["rate"] * k))  # the least-squares line passes through the means
        grid = np.linspace(k.min(), k.max(), 50)
        left.plot(grid, np.exp(intercept - t["rate"] * grid), color=m.colour, linestyle=m.dash, linewidth=1.2,
                  gid=f"fit:{t[x]}:{t['trial_id']}")
    left.set_yscale("log")
    common.log_ticks(left.yaxis)
    left.set_xlabel("generator images seen (kimg)")
    metric = common.metric_label(table["fid_detector"].iloc[0], table["fid_images"].iloc[0])
    left.set_ylabel(common.wrap(metric if floor == 0 else f"{metric} − {floor:g}"))
    handles = [Line2D([], [], color=marks[v].colour, marker=marks[v].marker, linestyle=marks[v].dash,
                      label=common.level_name(x, v)) for v in sorted(marks)]
    if narrow:
        fig.legend(handles=handles, fontsize="small", loc="outside lower center", ncol=2, frameon=False,
                   title="points; lines: exponential fit", title_fontsize="small")
    else:
        left.legend(handles=handles, fontsize="small", loc="upper right", title="points; lines: exp. fit",
                    title_fontsize="small")
    left.set_title("log FD against kimg: straight = exponential", fontsize="medium")

    levels = sorted(marks)
    fitted = table[np.isfinite(table["rate"])]
    pos = {v: i for i, v in enumerate(levels)}
    jitter = np.linspace(-0.12, 0.12, max(2, int(fitted.groupby(x).size().max())))
    xs = [pos[v] + jitter[i % len(jitter)] for i, v in enumerate(fitted.sort_values([x, "seed"])[x])]
    ordered = fitted.sort_values([x, "seed"])
    right.scatter(xs, ordered["rate"], c=[marks[v].colour for v in ordered[x]], s=28, zorder=3, gid="rates",
                  edgecolor="white", linewidth=0.5)
    values = summary(table, x)
    ok = values[np.isfinite(values["rate_mean"])]
    right.errorbar([pos[v] for v in ok[x]], ok["rate_mean"],
                   yerr=np.abs(np.stack([ok["rate_mean"] - ok["rate_lo"], ok["rate_hi"] - ok["rate_mean"]])),
                   fmt="none", ecolor="0.15", capsize=4, linewidth=1.3, zorder=2)
    right.scatter([pos[v] for v in ok[x]], ok["rate_mean"], marker="_", s=300, color="0.15", zorder=4,
                  gid="rate-mean")
    right.set_xticks(range(len(levels)), [common.fmt(v) for v in levels])
    right.set_xlim(-0.5, len(levels) - 0.5)
    right.set_xlabel(common.SYMBOLS.get(x, x))
    right.set_ylabel("decay rate (per kimg)")
    right.set_title(f"rate per seed;\nbar: mean, {common.LEVEL:.0%} t-interval", fontsize="medium")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__)
    p.add_argument("--x", choices=common.SWEEPABLE, default="alpha", help="the swept setting whose rates are compared")
    p.add_argument("--floor", type=float, default=0.0,
                   help="subtract this FD before the log (e.g. the teacher's); points at or below it are left out")
    p.add_argument("--kimg-range", default=None, metavar="LO,HI",
                   help=f"fit over evaluations with LO <= kimg <= HI (default: {RANGE_RULE})")
    p.add_argument("--name", default="decay_rate", help="output file name without extension (.md, each --format)")
    return p


def parse_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise common.AnalysisError(f"--kimg-range: expected LO,HI with 0 < LO < HI, got {text!r}")
    return lo, hi


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        if not math.isfinite(args.floor) or args.floor < 0:
            raise common.AnalysisError(f"--floor: expected a finite FD >= 0, got {args.floor}")
        kimg_range = parse_range(args.kimg_range)
        evals, trials = common.load(args.studies)
        evals, _ = common.select_metric(evals, args.fid_detector, args.fid_images)
        trials, _ = common.select_metric(trials, args.fid_detector, args.fid_images)
        table = rates(evals, trials, floor=args.floor, kimg_range=kimg_range)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        md = to_markdown(table, args.x, floor=args.floor, kimg_range=kimg_range)
        (out / f"{args.name}.md").write_text(md)
        print(md)
        title = common.title_for(args.studies, trials, args.x, args.title)
        fig = plot(evals, table, x=args.x, floor=args.floor, kimg_range=kimg_range, width=args.width, title=title)
        common.save(fig, out, args.name, args.format)

    common.cli(build_parser(), body, argv)


if __name__ == "__main__":
    main()
