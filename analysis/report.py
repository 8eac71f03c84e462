"""A one-page study report (Markdown and a self-contained HTML page): the verdict, the settings, the figures, a sample
grid per value, the best value per setting with its spread over seeds and the evaluations' own sampling error, the
re-scored generators (or why the training-time best is biased low), the decay rate of the FD, the paired verdicts
(analysis/compare.py) and the device-hours spent.

The verdict claims no more than the data: a value is "Recommended" only when it is better than every other value
beyond noise (paired by seed); a tie is said to be a tie; when nothing is distinguishable the report says so, with
the seeds that the observed differences would need (an estimate) and whether a longer budget could help (trials whose
best is at their last evaluation are not converged). An Optuna search gets its best configuration with every searched
field and its top trials instead (analysis/hpo_report.py).

  python analysis/report.py results/alpha_sweep-digits-study --x alpha --out results/alpha_sweep-digits-study/report
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import ablation, common, compare, decay_rate, fid_vs_images, hpo_report, page, rescore, searches
from sid.config import FD_STD_METHOD
from sid.plan import PLAN_FILE, Plan, PlanError

REPORT = "report"  # file name of the report, without extension
PNG = b"\x89PNG\r\n\x1a\n"


def value_table(trials: pd.DataFrame, evals: pd.DataFrame, x: str) -> pd.DataFrame:
    """Per value of x: seeds, best and final FD (mean, sample s.d. and min-max over seeds), kimg at best, trials not
    converged, and the median fid_std (sampling error of one evaluation) of the trials' final evaluations."""
    last = evals.sort_values("kimg").groupby(common.KEYS).tail(1)[[*common.KEYS, "fid_std"]]
    data = trials.merge(last, on=common.KEYS, how="left")
    rows = []
    for value, g in data.groupby(x, sort=True):
        row = {x: value, "runs": len(g), "diverged": int(g["diverged"].sum()),
               "not_converged": int(common.not_converged(g).sum())}
        for stat in compare.STATS:
            v = g[f"{stat}_fid"][np.isfinite(g[f"{stat}_fid"])]
            row |= {f"{stat}_n": len(v), f"{stat}_mean": v.mean() if len(v) else math.nan,
                    f"{stat}_sd": v.std(ddof=1) if len(v) > 1 else math.nan,
                    f"{stat}_min": v.min() if len(v) else math.nan, f"{stat}_max": v.max() if len(v) else math.nan}
        row["best_kimg"] = g["best_kimg"].median()
        row["fid_std"] = g["fid_std"].median()
        rows.append(row)
    return pd.DataFrame(rows)


def _spread(r: pd.Series, stat: str) -> str:
    if r[f"{stat}_n"] == 0:
        return "—"
    text = f"{r[f'{stat}_mean']:.2f}"
    if r[f"{stat}_n"] > 1:
        text += f" ± {r[f'{stat}_sd']:.2f} ({r[f'{stat}_min']:.2f}–{r[f'{stat}_max']:.2f})"
    return text


def value_markdown(table: pd.DataFrame, x: str, metric: str) -> str:
    best_row = table["best_mean"].idxmin() if table["best_mean"].notna().any() else None
    lines = [f"| {common.short(x)} | seeds | best FD | final FD | kimg at best (median) | not converged | fid_std at "
             f"the end (± {common.LEVEL:.0%}) |", "|---|---|---|---|---|---|---|"]
    for i, r in table.iterrows():
        best = _spread(r, "best")
        best = f"**{best}**" if i == best_row else best
        diverged = f", {int(r['diverged'])} diverged" if r["diverged"] else ""
        std = "—" if not math.isfinite(r["fid_std"]) else \
            f"{r['fid_std']:.2f} (±{common.fd_halfwidth(r['fid_std']):.2f})"
        lines.append(f"| {common.fmt(r[x])} | {int(r['runs'])}{diverged} | {best} | {_spread(r, 'final')} | "
                     f"{r['best_kimg']:.3g} | {int(r['not_converged'])} of {int(r['runs'])} | {std} |")
    return ("\n".join(lines) + f"\n\n{metric}. FD: mean ± sample s.d. (min–max) over seeds, the training-seed "
            f"spread. Not converged: trials with their {common.NOT_CONVERGED}. fid_std: median over the trials of "
            f"their final evaluation's sampling error ({FD_STD_METHOD}), in brackets the half-width of its "
            f"{common.fd_interval_label()}; '—' where it was not recorded.\n")


def _versus(table: pd.DataFrame, value, other) -> str:
    """'vs 0.5: −2.10 [−3.01, −1.19], p = 0.002': FD(value) − FD(other), whichever way the pair is stored."""
    r = compare.pair_row(table, value, other)
    sign = 1 if r["a"] == value else -1
    lo, hi = sorted((sign * r["lo"], sign * r["hi"]))
    return f"vs {common.fmt(other)}: {sign * r['diff']:+.2f} [{lo:+.2f}, {hi:+.2f}], p = {r['p']:.2g}"


def headline(values: pd.DataFrame, verdicts: pd.DataFrame, trials: pd.DataFrame, x: str) -> str:
    """The report's verdict in one paragraph (Markdown); 'Recommended' only for a value better than every other
    beyond noise."""
    name = common.short(x)
    if not values["best_mean"].notna().any():
        return "**No recommendation: no trial reached a finite FD.**"
    best = values.loc[values["best_mean"].idxmin(), x]
    label = f"{name} = {common.fmt(best)}"
    if len(values) < 2:
        return f"**Only one value run ({label}): nothing to compare.**"
    table = compare.best_rows(verdicts)
    if len(table) and (table["n"] < 2).all():
        return (f"**No recommendation: one seed per value, so no difference can be told from noise** (lowest best FD: "
                f"{label}). Run the study with --seeds K (K ≥ 2) for paired intervals.")
    others = [v for v in values[x] if v != best]
    verdict = {o: compare.verdict_against(table, best, o) for o in others}
    beaten = [o for o in others if verdict[o] == "better"]
    tied = [o for o in others if verdict[o] == "within noise"]
    seeds = int(table["n"].max()) if len(table) else 0
    test = f"{compare.TEST}, {seeds} seeds"
    if len(beaten) == len(others):
        return (f"**Recommended: {label}: better than every other value beyond noise** "
                f"({'; '.join(_versus(table, best, o) for o in others)}; FD({label}) − FD(other), {test}).")
    needed = "; ".join(f"{label} vs {common.fmt(o)}: {compare.needed_text(compare.pair_row(table, best, o)['needed'])}"
                       for o in tied)
    estimate = (f" Seeds the observed mean difference would need for p < {1 - common.LEVEL:.2g} (an estimate from the "
                f"observed paired spread, as uncertain as the {seeds} seeds behind it): {needed}." if tied else "")
    if (table["verdict"] != "better").all() and (table["verdict"] != "worse").all():
        return (f"**Nothing is distinguishable at this budget: no value of {name} beats another beyond noise** "
                f"({test}; lowest mean best FD: {label}, not a recommendation).{estimate}" + _budget(trials))
    parts = [f"better than {', '.join(common.fmt(o) for o in beaten)} beyond noise "
             f"({'; '.join(_versus(table, best, o) for o in beaten)})"] if beaten else []
    if tied:
        parts.append(f"tied with {', '.join(common.fmt(o) for o in tied)} (within noise)")
    rest = [o for o in others if o not in beaten and o not in tied]
    parts += [f"{verdict[o]} against {common.fmt(o)}" for o in rest]
    also = [f"{common.fmt(r['a'])} better than {common.fmt(r['b'])}" if r["verdict"] == "better" else
            f"{common.fmt(r['b'])} better than {common.fmt(r['a'])}" for _, r in table.iterrows()
            if r["verdict"] in ("better", "worse") and best not in (r["a"], r["b"])]
    return (f"**No single value is best beyond noise: {label} has the lowest mean best FD, "
            f"{' and '.join(parts)}** ({test}).{estimate}"
            + (f" Also beyond noise: {'; '.join(also)}." if also else "") + _budget(trials))


def _budget(trials: pd.DataFrame) -> str:
    """Whether a longer budget could separate the values: it may while the curves are still falling."""
    if common.not_converged(trials).any():
        return " Trials are not converged (below): a longer budget may separate the values."
    return " Every curve flattened before its budget ended: more seeds, not more kimg, would be needed."


def settings_markdown(trials: pd.DataFrame, evals: pd.DataFrame, x: str, metric: str) -> str:
    config = [c for c in common.setting_columns(trials) if c not in ("study", x, "fid_detector", "fid_images")]
    fixed = ", ".join(f"{c} = {common.md_text(common.fmt(trials[c].iloc[0]))}" for c in config
                      if trials[c].nunique() == 1)
    labelled = common.set_by(trials, x)  # fields a setting label sets: shown per label
    varying = [c for c in config if trials[c].nunique() > 1 and c not in labelled]
    kimg = sorted(evals["kimg"].unique())
    seeds = sorted(int(s) for s in trials["seed"].dropna().unique())
    per_value = sorted(set(trials.groupby(x)["seed"].nunique()))
    per_value = f"{per_value[0]}" if len(per_value) == 1 else f"{per_value[0]}–{per_value[-1]}"
    states = ", ".join(f"{n} {common.md_text(s)}" for s, n in trials["state"].value_counts().items())
    points = ", ".join(f"{k:g}" for k in kimg)
    lines = [f"- swept: {common.short(x)} = {', '.join(common.fmt(v) for v in sorted(trials[x].unique()))}"
             + (f"; also varying: {', '.join(varying)}" if varying else ""),
             *(f"- {common.md_text(common.level_name(x, label))}: "
               + ", ".join(f"{common.short(c)} = {common.md(g[c].iloc[0])}" for c in labelled)
               for label, g in trials.groupby(x, sort=True) if labelled),
             f"- seeds: {', '.join(map(str, seeds))} ({per_value} per value); trials: {len(trials)} ({states})",
             f"- budget: {max(kimg):g} kimg per trial, {len(kimg)} evaluations (kimg {points})",
             f"- metric: {metric}; each evaluation's sampling error: {FD_STD_METHOD}",
             f"- fixed: {fixed}",
             f"- device-hours: {trials['device_hours'].sum():.3g} in all "
             f"({trials['device_hours'].mean():.3g} per trial; training only, evaluations excluded)"]
    return "\n".join(lines) + "\n"


def cost_markdown(plan: Plan, trials: pd.DataFrame, evals: pd.DataFrame) -> str:
    """The study's plan (--plan, written before it ran) beside what it cost: how good the plan was."""
    reached = evals.groupby("trial_id")["kimg"].max()
    stamps = pd.to_datetime(evals["written_at"], utc=True) if "written_at" in evals else pd.Series(dtype=object)
    span = (stamps.max() - stamps.min()).total_seconds() if len(stamps) > 1 else math.nan
    low, high = (plan.train_device_hours * (1 - s) for s in (plan.saving_low, plan.saving_high))
    saved = f" ({high:.3g}-{low:.3g} after the stopping rule)" if plan.saving_high > 0 else ""
    rows = [("trials", f"{plan.trials}", f"{len(trials)}"),
            ("training images", f"{plan.images / 1e6:.4g} M", f"{reached.sum() * 1000 / 1e6:.4g} M"),
            ("training device-hours", f"{plan.train_device_hours:.3g}{saved}", f"{trials['device_hours'].sum():.3g}"),
            ("wall time", f"{plan.wall_s / 3600:.3g} h (all of it)", f"{span / 3600:.3g} h (first to last row)")]
    c = plan.calibration
    return "\n".join(["| | plan | actual |", "|---|---|---|", *(f"| {a} | {b} | {d} |" for a, b, d in rows), "",
                      f"Plan from {plan.cluster}, {plan.concurrency} trial(s) at once; calibration: "
                      f"{c.train_images_per_s:.4g} training img/s, {c.eval_images_per_s:.4g} evaluation img/s, setup "
                      f"{c.setup_s:.3g} s on {c.device} ({c.source})."]) + "\n"


def noise_markdown(values: pd.DataFrame) -> str:
    seed_sd = values["final_sd"].dropna()
    sampling = values["fid_std"].dropna()
    if seed_sd.empty and sampling.empty:
        return "Neither spread could be measured: one seed per value and no fid_std recorded.\n"
    parts = []
    if len(seed_sd):
        parts.append(f"training-seed spread of the final FD: s.d. {seed_sd.median():.2f} (median over values)")
    if len(sampling):
        parts.append(f"sampling error of one evaluation (fid_std): {sampling.median():.2f}, a "
                     f"{common.fd_interval_label()} of ±{common.fd_halfwidth(sampling.median()):.2f}")
    return "; ".join(parts) + ".\n"


def samples(paths: Sequence[str | Path], trials: pd.DataFrame, evals: pd.DataFrame, x: str,
            out: Path) -> list[tuple[str, str]]:
    """Per value, the last sample grid of its lowest seed that has one (the same seed for every value where it can:
    the same latents), copied into `out`; [(file name, caption)]."""
    folders = common.run_folders(paths, trials)
    found = []
    for value, g in trials.sort_values("seed").groupby(x, sort=True):
        for _, t in g.iterrows():
            run = folders.get((t["study"], t["trial_id"]))
            grid = common.last_samples(run) if run is not None else None
            if grid is None or grid[0].read_bytes()[:8] != PNG:
                continue
            name = f"samples_{x}_{common.fmt(value)}.png"
            shutil.copyfile(grid[0], out / name)
            rows = evals[(evals["trial_id"] == t["trial_id"]) & (evals["iteration"] == grid[1])]
            kimg = f", kimg {rows['kimg'].iloc[0]:g}" if len(rows) else ""
            found.append((name, f"{common.level_name(x, value)}: seed {int(t['seed'])}, trial "
                                f"{common.md_text(t['trial_id'])}, iteration {grid[1]}{kimg}"))
            break
    return found


def build(study: Sequence[str | Path], out: str | Path, *, x: str = "alpha", teacher_fid: float | None = None,
          detector: str | None = None, fid_images: int | None = None, title: str | None = None,
          width: float | None = None, formats: Sequence[str] = common.DEFAULT_FORMATS) -> tuple[Path, str]:
    """Write the figures, report.md and report.html into `out`; return the Markdown path and the verdict (plain
    text)."""
    evals, trials = common.load(study)
    evals, metric = common.select_metric(evals, detector, fid_images)
    metric = common.md_text(metric)  # the detector's name comes from the rows
    trials, _ = common.select_metric(trials, detector, fid_images)
    if x not in trials.columns:
        raise common.AnalysisError(f"--x {x!r} is not a results column")
    varying = searches.searched(trials)
    if x not in varying and len(varying) == 1 and trials[x].nunique() <= 1:  # a sweep of another field: compare that
        x = varying[0]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    formats = tuple(dict.fromkeys(("png", *formats)))  # the pages show the PNGs
    title = common.title_for(study, trials, x, title)
    names = ", ".join(sorted(common.md_text(s) or "single run" for s in trials["study"].unique()))
    if searches.is_search(study, trials, x):
        return _build_search(study, out, evals, trials, x, metric, title, names, width, formats)
    common.save(fid_vs_images.plot(evals, trials, hue=x, teacher_fid=teacher_fid, width=width, title=title), out,
                "fid_vs_images", formats)
    for stat in compare.STATS:
        common.save(ablation.plot(trials, x=x, stat=stat, width=width, title=title), out, f"ablation_{x}_{stat}",
                    formats)
    verdicts = compare.compare(trials, x=x)
    if not verdicts.empty:
        common.save(compare.plot(verdicts, x=x, width=width, title=title), out, "compare", formats)
    rates = decay_rate.rates(evals, trials)
    has_rates = bool(np.isfinite(rates["rate"]).any()) if len(rates) else False
    if has_rates:
        common.save(decay_rate.plot(evals, rates, x=x, width=width, title=title), out, "decay_rate", formats)
    values = value_table(trials, evals, x)
    verdict = headline(values, verdicts, trials, x)
    flagged = common.not_converged_note(trials)
    caption_best = "best FD per trial (points) and per value (mean, min–max over seeds)" + (
        f"; rings: {flagged}" if flagged else "")
    figures = [("fid_vs_images", "FD against generator images seen, per value: mean over seeds, band and thin lines "
                                 "as the legend says"),
               (f"ablation_{x}_best", caption_best),
               (f"ablation_{x}_final", "final FD per trial and per value")]
    if not verdicts.empty:
        figures.append(("compare", f"paired differences between values: {compare.TEST}; circles: single seeds"))
    if has_rates:
        figures.append(("decay_rate", f"FD against kimg on a log axis with each trial's exponential fit "
                                      f"({decay_rate.RANGE_RULE}), and the decay rate per seed and per value"))
    md = [f"# {common.md_text(title)}", "", f"Study: {names}.", "", verdict, ""]
    if flagged:
        md += [f"Not converged: {flagged}.", ""]
    md += ["## Settings", "", settings_markdown(trials, evals, x, metric), "## Figures", ""]
    md += [f"![{caption}]({name}.png)\n\n*{caption}.*\n" for name, caption in figures]
    grids = samples(study, trials, evals, x, out)
    if grids:
        md += ["## Samples", "", *[f"![{caption}]({name})" for name, caption in grids], "",
               "*The last sample grid of one seed per value (the same seed, so the same latents, where it can).*", ""]
    md += ["## Best value per setting, with spread", "", value_markdown(values, x, metric),
           "Noise: " + noise_markdown(values), "## Re-scored generators", "",
           rescore.to_markdown(rescore.read(study, trials), trials, evals, x)]
    if len(rates):
        md += ["## Decay rate of the FD", "", decay_rate.to_markdown(rates, x)]
    md += ["## Paired verdicts", "", compare.to_markdown(verdicts, x) if not verdicts.empty
           else f"Only one value of {x}: nothing to compare.\n"]
    md += _cost_section(study, trials, evals)
    return _write(out, "\n".join(md), title), _plain(verdict)


def _build_search(study, out, evals, trials, x, metric, title, names, width, formats) -> tuple[Path, str]:
    """The report of an Optuna search: best configuration with every searched field, top trials, the figures."""
    if trials["study"].nunique() > 1:
        raise common.AnalysisError(f"several searches ({names}): report one at a time")
    found = searches.search(study, trials, evals)
    warning = searches.importance_warning(found)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    common.save(hpo_report.plot(trials, found=found, width=width, title=title), out, "hpo_report", formats)
    common.save(fid_vs_images.plot(evals, trials, hue=x, width=width, title=title), out, "fid_vs_images", formats)
    best = searches.best_configuration(found)
    verdict = (f"**Best configuration found: {searches.configuration_text(best, found.params)}** (best "
               f"{best['best_fid']:.3f}, one run: no seed spread, so no ranking beyond noise is claimed)."
               if best is not None else "**No complete trial: no best configuration.**")
    flagged = common.not_converged_note(trials)
    md = [f"# {common.md_text(title)}", "", f"Study: {names}.", "", verdict, ""]
    if flagged:
        md += [f"Not converged: {flagged}.", ""]
    md += ["## Search", "", hpo_report.to_markdown(found, metric), "## Figures", "",
           "![search history, parameter importances and parallel coordinates](hpo_report.png)", "",
           "*search history, parameter importances and parallel coordinates.*", "",
           "![FD against generator images seen, per trial](fid_vs_images.png)", "",
           "*FD against generator images seen, per trial.*", "", "## Re-scored generators", "",
           rescore.to_markdown(rescore.read(study, trials), trials, evals, x)]
    md += _cost_section(study, trials, evals)
    return _write(out, "\n".join(md), title), _plain(verdict)


def _cost_section(study, trials: pd.DataFrame, evals: pd.DataFrame) -> list[str]:
    """'Cost: plan and actual' for one study priced with --plan before it ran (plan.json in its folder); none else."""
    plans = [Path(p) / PLAN_FILE for p in study if (Path(p) / PLAN_FILE).is_file()]
    if len(plans) != 1:
        return []
    try:
        cost = cost_markdown(Plan.read(plans[0]), trials, evals)
    except PlanError as exc:  # a torn or edited plan.json: said in the report, the rest stands
        cost = f"{exc}\n"
    return ["## Cost: plan and actual", "", cost]


def _write(out: Path, text: str, title: str) -> Path:
    path = out / f"{REPORT}.md"
    path.write_text(text)
    (out / f"{REPORT}.html").write_text(page.to_html(text, title=title, folder=out))
    return path


def _plain(markdown: str) -> str:
    return markdown.replace("**", "")


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__, out_default="report")
    p.add_argument("--x", choices=common.COMPARABLE, default="alpha",
                   help="the swept setting the report compares (default alpha; the only one that varies, if alpha "
                        "does not; setting: a confirm study's labelled settings)")
    p.add_argument("--teacher-fid", type=float, default=None, help="teacher's FD: a dashed line in the curve figure")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        path, verdict = build(args.studies, args.out, x=args.x, teacher_fid=args.teacher_fid,
                              detector=args.fid_detector, fid_images=args.fid_images, title=args.title,
                              width=args.width, formats=args.format)
        print(f"report: {path} (and {path.with_suffix('.html')})\nverdict: {verdict}")

    common.cli(build_parser(), body, argv)


if __name__ == "__main__":
    main()
