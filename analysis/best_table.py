"""Best FID per study and setting, as Markdown and LaTeX tables: the SiD paper's results tables (one-step FID
per dataset, mean +- std, alpha = 1.0 and 1.2, teacher and competitors beside them).

A setting is one study's config without the seed. Per setting: the best FID of each seed's run, mean +- sample
std over the seeds that reached a finite value (the paper's +- is over 10 evaluations of one generator, which is
a different spread), how many runs, how many diverged and how many have no finite value, the kimg where the best
was reached (a range when seeds differ), how many runs are not converged (their best is at their last evaluation:
the budget ended before the curve flattened, common.not_converged) and device-hours per run. Only config columns
that differ between rows are shown; the others are listed under the table. The best setting of each study is bold.

  python analysis/best_table.py results/alpha_sweep results/hpo --out figures
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import common

SHOWN_ALWAYS = ("study", "alpha")


def table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per setting with numeric columns: runs, diverged, seeds_finite, best_mean, best_std,
    best_kimg_min/max (over seeds), not_converged (runs), device_hours (mean per run), metric (axis label); sorted by
    study, best_mean."""
    rows, setting = [], common.setting_columns(trials)
    for key, g in trials.groupby(setting, dropna=False, sort=False):
        best = g["best_fid"][np.isfinite(g["best_fid"])]
        rows.append({**dict(zip(setting, key)), "runs": len(g), "diverged": int(g["diverged"].sum()),
                     "seeds_finite": len(best), "best_mean": best.mean() if len(best) else math.nan,
                     "best_std": best.std(ddof=1) if len(best) > 1 else math.nan,
                     "best_kimg_min": g.loc[best.index, "best_kimg"].min() if len(best) else math.nan,
                     "best_kimg_max": g.loc[best.index, "best_kimg"].max() if len(best) else math.nan,
                     "not_converged": int(common.not_converged(g).sum()),
                     "device_hours": g["device_hours"].mean(),
                     "metric": common.metric_label(key[-2], key[-1])})
    out = pd.DataFrame(rows).sort_values(["study", "best_mean"], na_position="last")
    return out.reset_index(drop=True)


def _layout(frame: pd.DataFrame) -> tuple[list[str], list[list[str]], list[bool], str]:
    """Header, text cells, bold flags (best row of each study) and a note on the settings all rows share."""
    config = [c for c in common.setting_columns(frame) if c not in ("fid_detector", "fid_images")]
    varying = [c for c in config if c in SHOWN_ALWAYS or frame[c].nunique(dropna=False) > 1]
    shared = [f"{c}={common.fmt(frame[c].iloc[0])}" for c in config if c not in varying]
    metrics = frame["metric"].unique()
    best_head = f"best {metrics[0]}" if len(metrics) == 1 else "best"
    header = [common.short(c) for c in varying] + ([] if len(metrics) == 1 else ["metric"]) + [
        best_head, "runs", "diverged", "no value", "kimg at best", "not converged", "device-h / run"]
    cells = []
    for _, r in frame.iterrows():
        spread = "" if math.isnan(r["best_std"]) else f" ± {r['best_std']:.3f}"
        best = "—" if math.isnan(r["best_mean"]) else f"{r['best_mean']:.3f}{spread}"
        cells.append([common.fmt(r[c]) or "(single run)" for c in varying]
                     + ([] if len(metrics) == 1 else [r["metric"]])
                     + [best, str(r["runs"]), str(r["diverged"]), str(r["runs"] - r["seeds_finite"]),
                        _kimg(r["best_kimg_min"], r["best_kimg_max"]), str(r["not_converged"]),
                        "—" if math.isnan(r["device_hours"]) else f"{r['device_hours']:.3g}"])
    firsts = frame.groupby("study", sort=False)["best_mean"].transform("min")
    bold = list((frame["best_mean"] == firsts).to_numpy())
    note = "settings shared by all rows: " + (", ".join(shared) or "none")
    if frame["not_converged"].sum():
        note += (f". not converged: runs with their {common.NOT_CONVERGED} ({int(frame['not_converged'].sum())} of "
                 f"{int(frame['runs'].sum())})")
    return header, cells, bold, note


def _kimg(lo: float, hi: float) -> str:
    if math.isnan(lo):
        return "—"
    fmt = "{:,.0f}" if hi >= 100 else "{:.3g}"  # digits runs live at a few kimg: 9.6 must not print as 10
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def to_markdown(frame: pd.DataFrame) -> str:
    header, cells, bold, note = _layout(frame)
    best_col = next(i for i, h in enumerate(header) if h.startswith("best"))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row, b in zip(cells, bold):
        row = [f"**{v}**" if b and i == best_col else v for i, v in enumerate(row)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + f"\n\n{note}\n"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("α", r"$\alpha$"), ("σ", r"$\sigma$"), ("—", "--"), ("–", "--")):
        text = text.replace(a, b)
    return text


def to_latex(frame: pd.DataFrame) -> str:
    header, cells, bold, note = _layout(frame)
    best_col = next(i for i, h in enumerate(header) if h.startswith("best"))
    lines = [r"\begin{tabular}{" + "l" * (len(header) - 7) + "rrrrrrr}", r"\toprule",
             " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    for row, b in zip(cells, bold):
        row = [rf"\textbf{{{_tex(v)}}}" if b and i == best_col else _tex(v) for i, v in enumerate(row)]
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", f"% {_tex(note)}"]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__, figure=False)  # tables: no title, width or image format
    p.add_argument("--name", default="best_table", help="output file name without extension (.md and .tex)")
    p.add_argument("--top", type=int, default=0, help="keep the N best settings of each study (0 = all)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        _, trials = common.load(args.studies)
        if args.fid_detector is not None or args.fid_images is not None:
            trials, _ = common.select_metric(trials, args.fid_detector, args.fid_images)
        frame = table(trials)
        if args.top > 0:
            frame = frame.groupby("study", sort=False).head(args.top).reset_index(drop=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        md = to_markdown(frame)
        (out / f"{args.name}.md").write_text(md)
        (out / f"{args.name}.tex").write_text(to_latex(frame))
        print(md)
        print(f"{out / args.name}.md\n{out / args.name}.tex")

    common.cli(build_parser(), body, argv)


if __name__ == "__main__":
    main()
