"""Shared pieces of the analysis scripts: loading results folders, per-trial summaries (with the "not converged"
flag), metric labels, intervals from `fid_std`, figure titles, sizes and formats, colours and the other marks that
tell values apart.

Every script reads Parquet through `sid.results` (never Ray), so it runs on a laptop against a copied results
folder. Colours are keyed by the sorted values of a column (alpha by default) over everything that was loaded, so
one alpha keeps one colour in every figure made from the same folders; each value also keeps one marker, one
hatching and one dash pattern, so that bands and lines stay apart where they overlap and in greyscale print.
"""

from __future__ import annotations

import argparse
import math
import re
import textwrap
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import yaml
from matplotlib.lines import Line2D
from scipy import stats

from sid.config import FD_STD_GROUPS, INCEPTION, SEARCHABLE, DistillConfig
from sid.files import CONFIG_FILE, RUNS_DIR, samples_iteration
from sid.flags import RENAMED, Parser
from sid.results import CONFIG_COLUMNS, best_row, read_evaluations, read_trials, summarise_rows

plt.switch_backend("Agg")  # figures are files; never open a window or need a display

KEYS = ["study", "trial_id"]
# Runs that differ only in seed form one setting; they are averaged over.
# The searchable fields beyond the rows' first config columns (ema_mimg, dropout, ...): a study may vary them too.
MORE_SETTINGS = tuple(c for c in SEARCHABLE if c not in (*CONFIG_COLUMNS, "method"))
SETTING = ["study", *(c for c in CONFIG_COLUMNS if c != "seed"), "method", "setting", *MORE_SETTINGS, "fid_detector",
           "fid_images"]  # the metric last: its detector and images name a table's axis
# A label of several fields at once (a study's Settings dimension, sid.cluster.space): its trials' `setting` column.
LABEL = "setting"


def setting_columns(frame: pd.DataFrame) -> list[str]:
    """The SETTING columns a table has: one from before a column existed (method: before SiDA; ema_mimg, dropout, ...
    before every field was searchable) holds one value."""
    return [c for c in SETTING if c in frame.columns]


def set_by(frame: pd.DataFrame, x: str) -> list[str]:
    """For x = LABEL (a label of several fields at once), the config columns its labels set: those that hold one
    value within each label of each study and differ between labels; for any other x, none."""
    if x != LABEL or x not in frame or frame.empty:
        return []
    candidates = [c for c in setting_columns(frame) if c not in ("study", x, "fid_detector", "fid_images")]
    groups = frame.groupby(["study", x], dropna=False)
    return [c for c in candidates if groups[c].nunique(dropna=False).max() <= 1 and frame[c].nunique(dropna=False) > 1]
SPREAD = ("pi", 100)  # seaborn errorbar: min-max over runs (never below zero on a log axis, unlike +-s.d.)
SPREAD_LABEL = "mean, min–max over runs"
MAX_LEVELS = 8  # more distinct values than this get a continuous colour map
# Config columns a figure can sweep: the searchable fields with numeric values (sid.config.SEARCHABLE), seeds aside.
SWEEPABLE = tuple(k for k in SEARCHABLE if k != "seed" and isinstance(getattr(DistillConfig(), k), (int, float)))
# What compare.py and report.py compare paired by seed: a swept field, the method, or whole settings by their label.
COMPARABLE = (*SWEEPABLE, "method", LABEL)
LOG_PARAMS = tuple(k for k, scale in SEARCHABLE.items() if scale == "log")  # swept over decades: log axes
SYMBOLS = {"alpha": "α", "sigma_init": "σ_init", "lr": "lr (fake score)", "glr": "glr (generator)", "tmax": "t_max"}
LEVEL = 0.95  # the confidence level of every interval the analysis prints
# One evaluation's fid_std is a delete-one-group jackknife over FD_STD_GROUPS groups: an interval from it is a
# t-interval with FD_STD_GROUPS - 1 degrees of freedom (t(0.975, 9) = 2.262; 1.96 would cover about 92%).
FD_STD_DOF = FD_STD_GROUPS - 1
FORMATS = ("png", "pdf", "svg")
DEFAULT_FORMATS = ("png", "pdf")
MD_SPECIAL = r"([\\|*\[\]<>`])"  # characters md_text escapes with a backslash (GitHub Markdown's escapes)
DEFAULT_WIDTH = 6.4  # inches; 3.25 fits one column of a two-column paper
# What "not converged" means, written after those words (not_converged()).
NOT_CONVERGED = "best FD at the last evaluation: the budget ended before the curve flattened"
# Per value, besides its colour: what tells overlapping bands and lines apart, also in greyscale.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
HATCHES = ("//", "\\\\", "xx", "..", "||", "--", "++", "oo")
DASHES = ((0, (1, 1.2)), (0, (4, 1.5)), (0, (4, 1.5, 1, 1.5)), (0, (2, 2)), (0, (6, 2, 1, 2, 1, 2)),
          (0, (1, 3)), (0, (8, 2)), (0, (3, 1, 1, 1)))


class AnalysisError(ValueError):
    """Input the analysis cannot use; the scripts turn it into one message and exit code 2."""


def parser(doc: str, *, out_default: str = "figures", figure: bool = True) -> Parser:
    """The flags every analysis script has; `figure` adds --title, --width and --format."""
    p = Parser(description=doc, renamed={"--detector": RENAMED["--detector"]})
    p.add_argument("studies", nargs="+", metavar="STUDY_DIR", help="study folders, run folders or .parquet files")
    p.add_argument("--out", default=out_default, help="folder for the output files")
    p.add_argument("--fid-detector", default=None,
                   help="keep only this fid_detector (needed when several are present)")
    p.add_argument("--fid-images", type=int, default=None, help="keep only evaluations with this many images")
    if figure:
        p.add_argument("--title", default=None,
                       help="figure title (default: the study's description: 'description' in its config.yaml, "
                            "else what was swept, the seeds, the preset and the budget)")
        p.add_argument("--width", type=_width, default=None, metavar="INCHES",
                       help=f"figure width in inches, fonts scaled to it (default {DEFAULT_WIDTH}; 3.25 for one "
                            f"column of a two-column paper)")
        p.add_argument("--format", type=_formats, default=DEFAULT_FORMATS, metavar="FMT[,FMT]",
                       help=f"file formats, comma-separated, of {', '.join(FORMATS)} "
                            f"(default: {','.join(DEFAULT_FORMATS)})")
    return p


def _width(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 1.0 <= value <= 30.0):
        raise argparse.ArgumentTypeError(f"expected a width in inches between 1 and 30, got {text!r}")
    return value


def _formats(text: str) -> tuple[str, ...]:
    found = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in text.split(",")))
    bad = [f for f in found if f not in FORMATS]
    if bad or not found:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(FORMATS)}, got {text!r}")
    return found


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
            LABEL: last.get(LABEL),  # a study's setting label ('' for none; null in rows from before the column)
            **{c: last[c] for c in MORE_SETTINGS if c in g.columns},
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
    trials["not_converged"] = not_converged(trials)
    return trials


def not_converged(trials: pd.DataFrame) -> pd.Series:
    """The "not converged" flag of each trial (one row per trial, as summarise() gives): its best FD is at its last
    evaluation, so the budget (or a stop) ended while the curve was still falling and the best is a lower bound on
    nothing: a longer run would likely go lower. A single evaluation counts (nothing after it shows a flat curve).
    False for a diverged trial (its state says what ended it) and for a trial without a finite value."""
    best = pd.to_numeric(trials["best_kimg"], errors="coerce").to_numpy(float)
    last = pd.to_numeric(trials["last_kimg"], errors="coerce").to_numpy(float)
    diverged = trials["diverged"].fillna(False).to_numpy(bool)
    flag = np.isfinite(best) & np.isfinite(last) & (best >= last - 1e-9) & ~diverged
    return pd.Series(flag, index=trials.index, name="not_converged")


def not_converged_note(trials: pd.DataFrame) -> str:
    """'9 of 9 trials not converged (best at the last evaluation: ...)', or '' when none is."""
    flagged = int(not_converged(trials).sum())
    if not flagged:
        return ""
    return f"{flagged} of {len(trials)} trial{'s' * (len(trials) > 1)} not converged ({NOT_CONVERGED})"


def t_quantile(dof: float, level: float = LEVEL) -> float:
    """The two-sided t quantile of `level` with `dof` degrees of freedom (scipy.stats.t)."""
    return float(stats.t.ppf(0.5 + level / 2, dof))


def fd_halfwidth(fid_std: float | np.ndarray | pd.Series, level: float = LEVEL):
    """Half-width of the `level` interval of one evaluation's FD from its fid_std: t(FD_STD_DOF) x fid_std."""
    return t_quantile(FD_STD_DOF, level) * fid_std


def fd_interval_label(level: float = LEVEL) -> str:
    """'95% t-interval of one evaluation (±2.262 fid_std, 9 d.o.f.)'."""
    return (f"{level:.0%} t-interval of one evaluation (±{t_quantile(FD_STD_DOF, level):.3f} fid_std, "
            f"{FD_STD_DOF} d.o.f.)")


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


def md(value: object) -> str:
    """A setting's value from a results file as one line of Markdown text: md_text(fmt(value))."""
    return md_text(fmt(value))


def level_name(column: str, value: object) -> str:
    return f"{short(column)} = {fmt(value)}"


def style(width: float | None = None) -> None:
    """Publication defaults: fonts scaled to the figure's width (about 8 pt at 3.25 in, one paper column), TrueType
    fonts embedded in PDFs, text kept as text in SVGs. Figures are laid out by matplotlib's constrained layout and
    saved at exactly their size (no tight bounding box), so a 3.25 in figure is a 3.25 in file."""
    scale = 1.35 * min(1.0, max(0.62, (width or DEFAULT_WIDTH) / DEFAULT_WIDTH))
    sns.set_theme(context="paper", style="whitegrid", font_scale=scale,
                  rc={"pdf.fonttype": 42, "svg.fonttype": "none", "savefig.dpi": 200, "savefig.bbox": None,
                      "legend.framealpha": 0.9, "hatch.linewidth": 0.6})


def figure(size: tuple[float, float], width: float | None = None, **kwargs) -> tuple[plt.Figure, object]:
    """plt.subplots at `size` (inches), scaled to `width` when given, with constrained layout."""
    w, h = size
    if width is not None:  # narrower than the default: relatively taller, for the wrapped text and legends below
        w, h = width, h * width / w * max(1.0, DEFAULT_WIDTH / width) ** 0.6
    return plt.subplots(figsize=(w, h), layout="constrained", **kwargs)


def save(fig: plt.Figure, out: str | Path, name: str, formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in formats]
    fit_texts(fig)
    for p in paths:
        fig.savefig(p, metadata=_metadata(p.suffix))
    plt.close(fig)
    print("\n".join(map(str, paths)))
    return paths


def fit_texts(fig: plt.Figure) -> None:
    """Wrap titles and x labels that are wider than their axes (the figure, for its title) onto more lines, so that a
    narrow figure (a paper column) cuts no text off; constrained layout then makes room for the extra lines."""
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    texts = [(fig._suptitle, fig.bbox.width)] if fig._suptitle is not None else []
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        centre = (box.x0 + box.x1) / 2  # titles and labels are centred on their axes
        texts += [(t, 2 * min(centre, fig.bbox.width - centre)) for t in (ax.title, ax.xaxis.label)]
    for text, room in texts:
        content = text.get_text()
        wide = text.get_window_extent(renderer).width if content else 0.0
        if wide > room * 0.96:
            longest = max(len(line) for line in content.split("\n"))
            chars = max(12, int(longest * room * 0.9 / wide))
            text.set_text("\n".join(textwrap.fill(line, chars) for line in content.split("\n")))


def _metadata(suffix: str) -> dict | None:
    """No creation date in PDF/SVG, so that the same data give the same bytes (shipped examples diff cleanly)."""
    return {".pdf": {"CreationDate": None}, ".svg": {"Date": None}}.get(suffix)


# ---------------------------------------------------------------------------------------------- marks per value
@dataclass(frozen=True)
class Marks:
    """How one value is drawn: colour, marker, band hatching and the dash pattern of its single-seed lines."""

    colour: tuple
    marker: str
    hatch: str
    dash: object


def marks(values: Sequence, colours: dict | None = None) -> dict:
    """Marks per distinct value, in sorted order (the same order as palette())."""
    colours = colours or palette(values)
    levels = sorted(colours)
    return {v: Marks(colours[v], MARKERS[i % len(MARKERS)], HATCHES[i % len(HATCHES)], DASHES[i % len(DASHES)])
            for i, v in enumerate(levels)}


# ---------------------------------------------------------------------------------------------- titles, run folders
def description(paths: Sequence[str | Path]) -> str | None:
    """The 'description' (or 'title') a study's config.yaml gives, for the first folder that has one; None if none.
    A config.yaml that is not a YAML mapping is skipped with a warning naming it."""
    for folder in map(Path, paths):
        file = folder / CONFIG_FILE
        if not file.is_file():
            continue
        try:
            data = yaml.safe_load(file.read_text(errors="replace"))
        except yaml.YAMLError as exc:
            warnings.warn(f"ignoring {file}: not YAML ({str(exc).splitlines()[0]})", stacklevel=2)
            continue
        if not isinstance(data, dict):
            continue
        for key in ("description", "title"):
            if isinstance(data.get(key), str) and data[key].strip():
                return " ".join(data[key].split())
    return None


def auto_title(trials: pd.DataFrame, x: str | None = None) -> str:
    """A figure title that says what the data are: the swept values (or the searched fields), seeds, preset and
    budget, e.g. 'α = 0.5, 1.0, 1.2 × 3 seeds · digits-study · 9.6 kimg per trial'."""
    frame = trials
    labelled = set_by(frame, x) if x is not None else []  # fields a setting label sets vary with it
    varying = [c for c in SWEEPABLE if c in frame and frame[c].nunique(dropna=True) > 1 and c not in labelled]
    parts = []
    seeds = int(frame["seed"].nunique()) if "seed" in frame else 1
    if x is not None and x in frame and varying in ([], [x]):
        levels = sorted(frame[x].dropna().unique())
        per = frame.groupby(x)["seed"].nunique().max() if "seed" in frame and len(frame) else 1
        parts.append(f"{short(x)} = {', '.join(fmt(v) for v in levels)}" + (f" × {per} seeds" if per > 1 else ""))
    elif varying:
        parts.append(f"search over {', '.join(short(c) for c in varying)}: {len(frame)} trials"
                     + (f", {seeds} seeds" if seeds > 1 else ""))
    elif len(frame) > 1:
        parts.append(f"{len(frame)} runs")
    presets = sorted(p for p in frame.get("preset", pd.Series(dtype=str)).dropna().unique() if p)
    if presets:
        parts.append(", ".join(presets))
    last = float(pd.to_numeric(frame.get("last_kimg", pd.Series(dtype=float)), errors="coerce").max())
    if math.isfinite(last):
        parts.append(f"{last:g} kimg per trial")
    return " · ".join(parts) or "single run"


def title_for(paths: Sequence[str | Path], trials: pd.DataFrame, x: str | None = None,
              given: str | None = None) -> str:
    """--title, else the study's description, else auto_title()."""
    return given or description(paths) or auto_title(trials, x)


def run_folders(paths: Sequence[str | Path], trials: pd.DataFrame) -> dict[tuple[str, str], Path]:
    """(study, trial_id) -> the trial's run folder, where one exists under the given paths: <study>/runs/<trial_id>
    (a study), <folder>/<trial_id> (a folder of run folders) or the folder itself (a run folder, named as its
    trial). The folder's files (sample grids, scores.parquet) are read from there."""
    found = {}
    roots = [Path(p) for p in paths if Path(p).is_dir()]
    for key in zip(trials["study"], trials["trial_id"]):
        trial = str(key[1])
        if not trial or "/" in trial or trial in (".", ".."):  # a trial id is a file name, never a path
            continue
        for root in roots:
            for candidate in (root / RUNS_DIR / trial, root / trial, root):
                if candidate.is_dir() and (candidate is not root or root.name == trial):
                    found[key] = candidate
                    break
            if key in found:
                break
    return found


def last_samples(run: Path) -> tuple[Path, int] | None:
    """The run folder's last sample grid (samples-<iteration>.png, sid.files.samples_name) and its iteration."""
    grids = []
    for f in run.iterdir() if run.is_dir() else ():
        iteration = samples_iteration(f.name)
        if iteration is not None and f.is_file():
            grids.append((iteration, f))
    if not grids:
        return None
    iteration, path = max(grids)
    return path, iteration


def md_text(value: object) -> str:
    """A value from Parquet as text safe inside a Markdown table cell or line: no '|', no line breaks, no markup."""
    # control characters and line breaks become spaces: a study name's newline started an image line that
    # report.html loaded from anywhere
    text = " ".join(re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", " ", str(value)).split())
    return re.sub(MD_SPECIAL, r"\\\1", text)


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
