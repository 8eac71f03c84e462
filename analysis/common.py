"""Shared pieces of the analysis scripts: loading results folders, per-trial summaries, metric labels, colours.

Every script reads Parquet through `sid.results` (never Ray), so it runs on a laptop against a copied results
folder. Colours are keyed by the sorted values of a column (alpha by default) over everything that was loaded, so
one alpha keeps one colour in every figure made from the same folders.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from sid.config import INCEPTION, SEARCHABLE
from sid.flags import RENAMED, Parser
from sid.results import CONFIG_COLUMNS, best_row, read_evaluations, read_trials, summarise_rows

plt.switch_backend("Agg")  # figures are files; never open a window or need a display

KEYS = ["study", "trial_id"]
# Runs that differ only in seed form one setting; they are averaged over.
SETTING = ["study", *(c for c in CONFIG_COLUMNS if c != "seed"), "method", "fid_detector", "fid_images"]
SPREAD = ("pi", 100)  # seaborn errorbar: min-max over runs (never below zero on a log axis, unlike +-s.d.)
SPREAD_LABEL = "mean, min–max over runs"
MAX_LEVELS = 8  # more distinct values than this get a continuous colour map
# Config columns a figure can sweep: the searchable fields (sid.config.SEARCHABLE, seeds aside) and two set by hand.
SWEEPABLE = (*(k for k, scale in SEARCHABLE.items() if scale != "int"), "tmax", "batch")
LOG_PARAMS = tuple(k for k, scale in SEARCHABLE.items() if scale == "log")  # swept over decades: log axes
SYMBOLS = {"alpha": "α", "sigma_init": "σ_init", "lr": "lr (fake score)", "glr": "glr (generator)", "tmax": "t_max"}


class AnalysisError(ValueError):
    """Input the analysis cannot use; the scripts turn it into one message and exit code 2."""


def parser(doc: str, *, out_default: str = "figures") -> Parser:
    p = Parser(description=doc, renamed={"--detector": RENAMED["--detector"]})
    p.add_argument("studies", nargs="+", metavar="STUDY_DIR", help="study folders, run folders or .parquet files")
    p.add_argument("--out", default=out_default, help="folder for the output files")
    p.add_argument("--fid-detector", default=None,
                   help="keep only this fid_detector (needed when several are present)")
    p.add_argument("--fid-images", type=int, default=None, help="keep only evaluations with this many images")
    return p


def cli(p: argparse.ArgumentParser, body: Callable[[argparse.Namespace], None], argv: Sequence[str] | None) -> None:
    """Parse argv and run body; bad input ends in one 'error: ...' line and exit code 2 (argparse's convention)."""
    args = p.parse_args(argv)
    try:
        body(args)
    except AnalysisError as exc:
        p.error(str(exc))


def load(paths: Sequence[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(evaluations, trials) under the given folders; trials are derived from evaluations where trials.parquet
    is missing. Raises AnalysisError when there is nothing to plot."""
    try:
        evals = read_evaluations(*paths)
        stored = read_trials(*paths)
    except FileNotFoundError as exc:
        raise AnalysisError(str(exc)) from exc
    if evals.empty:
        where = ", ".join(map(str, paths))
        raise AnalysisError(f"no evaluation rows in {where}: expected <study>/evaluations/*.parquet "
                            f"or <run>/evaluations.parquet written by sid.results")
    return evals, summarise(evals, stored)


def summarise(evals: pd.DataFrame, stored: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per trial: config, best_fid/best_kimg, final_fid, last_kimg, device_hours, state, diverged.

    The numbers and the divergence rule are sid.results.summarise_rows', as in a study's own trials table. Values of
    a stored trials table win over those derived here, its state included (it knows 'stopped_early', the study's own
    divergence settings, and trials that failed before any evaluation); final_fid is NaN for a diverged trial.
    `evals` must not be empty (load() checks)."""
    rows = []
    for (study, trial), g in evals.sort_values("kimg").groupby(KEYS, sort=True):
        summary = summarise_rows(g)
        best = best_row(g)
        last = g.iloc[-1]
        rows.append({
            "study": study, "trial_id": trial,
            **{c: last[c] for c in (*CONFIG_COLUMNS, "world_size", "fid_detector")},
            "method": last.get("method"),  # null in rows from before SiDA (those are SiD)
            "fid_images": int(best["fid_images"] if best is not None else last["fid_images"]),
            "state": "diverged" if summary["diverged"] else "completed",
            **{k: summary[k] for k in ("best_fid", "best_kimg", "final_fid", "last_kimg", "evaluations",
                                       "device_hours")},
            "first_written": g["written_at"].min(),
        })
    trials = pd.DataFrame(rows)
    if stored is not None and not stored.empty:
        trials = stored.set_index(KEYS).combine_first(trials.set_index(KEYS)).reset_index()
        # A trial that failed before its first evaluation has no rows: it was evaluated like its siblings.
        trials["fid_images"] = trials["fid_images"].fillna(trials.groupby("study")["fid_images"].transform("max"))
    trials["diverged"] = trials["state"] == "diverged"
    trials.loc[trials["diverged"], "final_fid"] = math.nan
    return trials


def select_metric(frame: pd.DataFrame, detector: str | None = None,
                  images: int | None = None) -> tuple[pd.DataFrame, str]:
    """Rows of one (detector, number of images) pair and its axis label; two pairs on one axis would compare
    numbers that are not comparable, so several pairs without a choice is an error."""
    if detector is not None:
        frame = frame[frame["fid_detector"] == detector]
    if images is not None:
        frame = frame[frame["fid_images"] == images]
    frame = frame.dropna(subset=["fid_detector", "fid_images"])  # only trials without any result lack these
    pairs = sorted(set(zip(frame["fid_detector"], frame["fid_images"])))
    if not pairs:
        raise AnalysisError(f"no results with fid_detector={detector!r} and fid_images={images!r}")
    if len(pairs) > 1:
        listed = ", ".join(f"{d} ({n} images)" for d, n in pairs)
        raise AnalysisError(f"results mix several metrics ({listed}); choose one with --fid-detector and --fid-images")
    return frame, metric_label(*pairs[0])


def metric_label(detector: str, images: int) -> str:
    """'FID (Inception, 50k)' only for the Inception detector; any other detector gives a Frechet distance that
    is not FID and is named as such."""
    images = int(images)
    count = f"{images // 1000}k" if images % 1000 == 0 else f"{images:,}"
    if detector == INCEPTION:
        return f"FID (Inception, {count})"
    return f"FD on {detector} ({count} images)"


def wrap(label: str, width: int = 32) -> str:
    """A long metric label on two lines, split before its '(...)' part, so it fits beside a short axis."""
    return label.replace(" (", "\n(", 1) if len(label) > width else label


def palette(values: Sequence[float | str]) -> dict:
    """Colour per distinct value. Up to MAX_LEVELS values (a sweep): colour-blind-safe qualitative colours in
    sorted order. More (a random search): a sequential map by value, shown with a colour bar (see hue_key)."""
    levels = sorted({v for v in values if not (isinstance(v, float) and math.isnan(v))})
    if len(levels) <= MAX_LEVELS:
        return dict(zip(levels, sns.color_palette("colorblind", len(levels))))
    norm, cmap = _continuous(levels)
    return {v: cmap(norm(v)) for v in levels}


def _continuous(levels: Sequence[float]) -> tuple[matplotlib.colors.Normalize, matplotlib.colors.Colormap]:
    return matplotlib.colors.Normalize(min(levels), max(levels)), matplotlib.colormaps["viridis"]


def hue_key(ax: plt.Axes, column: str, levels: Sequence, colours: dict, marker: str = "o") -> list[Line2D]:
    """Legend handles for a few levels; for many, a colour bar beside `ax` and no handles."""
    levels = sorted(set(levels))
    if len(colours) <= MAX_LEVELS:
        return [Line2D([], [], marker=marker, linestyle="" if marker else "-", linewidth=2.5, markersize=8,
                       color=colours[v], label=level_name(column, v)) for v in levels]
    norm, cmap = _continuous(list(colours))
    bar = ax.figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02, fraction=0.05)
    bar.set_label(SYMBOLS.get(column, column))
    return []


def fmt(value: object) -> str:
    """A setting's value as text: 4 significant digits; floats keep one decimal (1.0 must not read as an integer
    setting)."""
    if isinstance(value, (float, np.floating)):
        return f"{value:.1f}" if float(value).is_integer() else f"{value:.4g}"
    return str(value)


def level_name(column: str, value: object) -> str:
    return f"{short(column)} = {fmt(value)}"


def style() -> None:
    """Publication defaults: large enough fonts at single-column width, TrueType fonts embedded in PDFs."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.35,
                  rc={"pdf.fonttype": 42, "savefig.dpi": 200, "savefig.bbox": "tight", "legend.framealpha": 0.9})


def save(fig: plt.Figure, out: str | Path, name: str) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    print("\n".join(map(str, paths)))
    return paths


def log_ticks(axis: matplotlib.axis.Axis) -> None:
    """Plain numbers on a log axis instead of powers of ten: 1, 2, 5 per decade over wide ranges, more over narrow
    ones (every integer multiple within one decade), so that a value can be read off. Call after drawing."""
    lo, hi = sorted(abs(v) for v in axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 and hi > 0 else 3.0
    subs = (1.0, 2.0, 5.0) if decades > 2.5 else (1.0, 2.0, 3.0, 5.0, 7.0) if decades > 0.8 else \
        tuple(float(k) for k in range(1, 10))
    axis.set_major_locator(matplotlib.ticker.LogLocator(subs=subs))
    axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def short(column: str) -> str:
    return SYMBOLS.get(column, column).split(" ")[0]


def log_headroom(ax: plt.Axes, fraction: float = 0.12) -> None:
    """Extend a log y axis upwards so markers pinned to its top do not sit on data."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * (hi / lo) ** fraction)
