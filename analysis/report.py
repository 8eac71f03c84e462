"""A one-page study report (Markdown and HTML): the settings, the figures, the best value per setting with its
spread over seeds and the evaluations' own sampling error, the paired verdicts (analysis/compare.py), the
device-hours spent, and the recommended value with its justification.

  python analysis/report.py results/alpha_sweep-digits-study --x alpha --out results/alpha_sweep-digits-study/report
"""

from __future__ import annotations

import argparse
import html
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import ablation, common, compare, fid_vs_images
from sid.config import FD_STD_METHOD
from sid.plan import PLAN_FILE, Plan, PlanError

REPORT = "report"  # file name of the report, without extension


def value_table(trials: pd.DataFrame, evals: pd.DataFrame, x: str) -> pd.DataFrame:
    """Per value of x: seeds, best and final FD (mean, sample s.d. and min-max over seeds), kimg at best, and the
    median fid_std (sampling error of one evaluation) of the trials' final evaluations."""
    last = evals.sort_values("kimg").groupby(common.KEYS).tail(1)[[*common.KEYS, "fid_std"]]
    data = trials.merge(last, on=common.KEYS, how="left")
    rows = []
    for value, g in data.groupby(x, sort=True):
        row = {x: value, "runs": len(g), "diverged": int(g["diverged"].sum())}
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
    lines = [f"| {common.short(x)} | seeds | best FD | final FD | kimg at best (median) | fid_std at the end |",
             "|---|---|---|---|---|---|"]
    for i, r in table.iterrows():
        best = _spread(r, "best")
        best = f"**{best}**" if i == best_row else best
        diverged = f", {int(r['diverged'])} diverged" if r["diverged"] else ""
        std = "—" if not math.isfinite(r["fid_std"]) else f"{r['fid_std']:.2f}"
        lines.append(f"| {common.fmt(r[x])} | {int(r['runs'])}{diverged} | {best} | {_spread(r, 'final')} | "
                     f"{r['best_kimg']:.3g} | {std} |")
    return ("\n".join(lines) + f"\n\n{metric}. FD: mean ± sample s.d. (min–max) over seeds, the training-seed "
            f"spread. fid_std: median over the trials of their final evaluation's sampling error ({FD_STD_METHOD}); "
            f"'—' where it was not recorded.\n")


def recommend(values: pd.DataFrame, verdicts: pd.DataFrame, x: str) -> str:
    """'alpha = 1.0: best mean FD, better than 0.5 beyond noise, tied with 1.2' from the best-FD verdicts."""
    if not values["best_mean"].notna().any():
        return "no recommendation: no trial reached a finite FD"
    best = values.loc[values["best_mean"].idxmin(), x]
    name = f"{common.short(x)} = {common.fmt(best)}"
    if len(values) < 2:
        return f"{name}: the only value run"
    table = verdicts[verdicts["stat"] == "best"]
    groups: dict[str, list[str]] = {}
    for other in values[x]:
        if other != best:
            groups.setdefault(compare.verdict_against(table, best, other), []).append(common.fmt(other))
    parts = [f"better than {', '.join(groups.pop('better'))} beyond noise"] if "better" in groups else \
        ["not better than any other value beyond noise"]
    if "within noise" in groups:
        parts.append(f"tied with {', '.join(groups.pop('within noise'))} (within noise)")
    if "worse" in groups:
        parts.append(f"worse than {', '.join(groups.pop('worse'))} in paired seeds")
    if compare.NO_INTERVAL in groups:
        parts.append(f"no interval against {', '.join(groups.pop(compare.NO_INTERVAL))}: one seed per value, "
                     f"so the ranking is not established")
    parts += [f"{v} against {', '.join(o)}" for v, o in groups.items()]
    return f"{name}: lowest mean best FD; " + "; ".join(parts) + f" ({compare.TEST})"


def settings_markdown(trials: pd.DataFrame, evals: pd.DataFrame, x: str, metric: str) -> str:
    config = [c for c in common.SETTING if c not in ("study", x, "fid_detector", "fid_images")]
    fixed = ", ".join(f"{c} = {common.fmt(trials[c].iloc[0])}" for c in config if trials[c].nunique() == 1)
    varying = [c for c in config if trials[c].nunique() > 1]
    kimg = sorted(evals["kimg"].unique())
    seeds = sorted(int(s) for s in trials["seed"].dropna().unique())
    per_value = sorted(set(trials.groupby(x)["seed"].nunique()))
    per_value = f"{per_value[0]}" if len(per_value) == 1 else f"{per_value[0]}–{per_value[-1]}"
    states = ", ".join(f"{n} {s}" for s, n in trials["state"].value_counts().items())
    lines = [f"- swept: {common.short(x)} = {', '.join(common.fmt(v) for v in sorted(trials[x].unique()))}"
             + (f"; also varying: {', '.join(varying)}" if varying else ""),
             f"- seeds: {', '.join(map(str, seeds))} ({per_value} per value); trials: {len(trials)} ({states})",
             f"- budget: {max(kimg):g} kimg per trial, {len(kimg)} evaluations "
             f"(kimg {', '.join(f'{k:g}' for k in kimg)})",
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
        parts.append(f"sampling error of one evaluation (fid_std): {sampling.median():.2f}")
    return "; ".join(parts) + ".\n"


def build(study: Sequence[str | Path], out: str | Path, *, x: str = "alpha", teacher_fid: float | None = None,
          detector: str | None = None, fid_images: int | None = None) -> tuple[Path, str]:
    """Write the figures, report.md and report.html into `out`; return the Markdown path and the recommendation."""
    evals, trials = common.load(study)
    evals, metric = common.select_metric(evals, detector, fid_images)
    trials, _ = common.select_metric(trials, detector, fid_images)
    if x not in trials.columns:
        raise common.AnalysisError(f"--x {x!r} is not a results column")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common.save(fid_vs_images.plot(evals, trials, hue=x, teacher_fid=teacher_fid), out, "fid_vs_images")
    for stat in compare.STATS:
        common.save(ablation.plot(trials, x=x, stat=stat), out, f"ablation_{x}_{stat}")
    verdicts = compare.compare(trials, x=x)
    if not verdicts.empty:
        common.save(compare.plot(verdicts, x=x), out, "compare")
    values = value_table(trials, evals, x)
    recommendation = recommend(values, verdicts, x)
    names = ", ".join(sorted(s or "single run" for s in trials["study"].unique()))
    figures = [("fid_vs_images", "FD against generator images seen, per value: mean over seeds, band and thin lines "
                                 "as the legend says"),
               (f"ablation_{x}_best", "best FD per trial (points) and per value (mean, min–max over seeds)"),
               (f"ablation_{x}_final", "final FD per trial and per value")]
    if not verdicts.empty:
        figures.append(("compare", f"paired differences between values: {compare.TEST}; circles: single seeds"))
    md = [f"# Study report: {names}", "", f"**Recommended: {recommendation}.**", "", "## Settings", "",
          settings_markdown(trials, evals, x, metric), "## Figures", ""]
    md += [f"![{caption}]({name}.png)\n\n*{caption}.*\n" for name, caption in figures]
    md += ["## Best value per setting, with spread", "", value_markdown(values, x, metric),
           "Noise: " + noise_markdown(values), "## Paired verdicts", "", compare.to_markdown(verdicts, x)
           if not verdicts.empty else f"Only one value of {x}: nothing to compare.\n"]
    plans = [Path(p) / PLAN_FILE for p in study if (Path(p) / PLAN_FILE).is_file()]
    if len(plans) == 1:  # one study priced with --plan before it ran
        try:
            cost = cost_markdown(Plan.read(plans[0]), trials, evals)
        except PlanError as exc:  # a torn or edited plan.json: said in the report, the rest stands
            cost = f"{exc}\n"
        md += ["## Cost: plan and actual", "", cost]
    text = "\n".join(md)
    path = out / f"{REPORT}.md"
    path.write_text(text)
    (out / f"{REPORT}.html").write_text(to_html(text, title=f"Study report: {names}"))
    return path, recommendation


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", re.sub(r"(?<!\*)\*([^*]+)\*(?!\*)", r"<em>\1</em>", text))


def to_html(markdown: str, *, title: str) -> str:
    """The subset of Markdown this report writes (headings, lists, tables, images, paragraphs) as one HTML page."""
    body, rows, items = [], [], []

    def flush() -> None:
        if rows:
            head, *rest = [[c.strip() for c in r.strip("|").split("|")] for r in rows if not r.startswith("|---")]
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rest) + "</table>")
            rows.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in markdown.splitlines():
        image = re.fullmatch(r"!\[(.*)\]\((.*)\)", line.strip())
        if line.startswith("|"):
            rows.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif image:
            body.append(f'<img src="{html.escape(image[2])}" alt="{html.escape(image[1])}" style="max-width:100%">')
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:.2em .5em}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__, out_default="report")
    p.add_argument("--x", choices=common.SWEEPABLE, default="alpha", help="the swept setting the report compares")
    p.add_argument("--teacher-fid", type=float, default=None, help="teacher's FD: a dashed line in the curve figure")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        path, recommendation = build(args.studies, args.out, x=args.x, teacher_fid=args.teacher_fid,
                                     detector=args.fid_detector, fid_images=args.fid_images)
        print(f"report: {path} (and {path.with_suffix('.html')})\nrecommended: {recommendation}")

    common.cli(build_parser(), body, argv)


if __name__ == "__main__":
    main()
