"""Report of an Optuna hyperparameter study: the best configuration with every searched field, the top trials, the
search history with best-so-far, parameter importances (Optuna's fANOVA) and a parallel-coordinates view. The SiD
paper has no such figure: it backs the paper's appendix ablations (alpha, sigma_init, learning rates) with a search
instead of a grid.

The Optuna study is read from the study's own storage where one exists (`<study>/optuna.journal`, or the
`optuna_storage` of the study's config.yaml), so a trial the study pruned (stopped early or diverged: its value is not
a result at full budget) stays pruned. Without a storage it is rebuilt from the trials table the same way the study
tells Optuna: COMPLETE only for a trial that reached the end of its budget, PRUNED (with its running best FD as
intermediate values, at the run's iteration) for one stopped early or diverged, FAIL for an error. Only COMPLETE trials
rank and enter the importances; importances from fewer than 10 complete trials are flagged as unreliable. Trials
without a finite value appear in the history as red triangles and in the parallel view as grey dashed lines. One
figure per study: hpo_report_<study>.<format>, and hpo_report_<study>.md with the best configuration and top trials.

  python analysis/hpo_report.py results/hpo --out figures
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
import seaborn as sns
import yaml
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from analysis import common
from sid.files import CONFIG_FILE, JOURNAL

CATEGORICAL = ("precision",)
SEARCHABLE = (*common.SWEEPABLE, *CATEGORICAL)  # what an imported or hand-made study may vary
MIN_IMPORTANCE_TRIALS = 10  # fANOVA on fewer complete trials ranks parameters by chance as often as not
TOP = 5  # trials in the top-k table
REBUILT = "rebuilt from the trials table (no Optuna storage found)"


@dataclass
class Search:
    """One Optuna study as the report reads it."""

    name: str
    study: optuna.Study
    source: str            # the storage it was read from, or REBUILT
    trials: pd.DataFrame   # the study's trials in start order, with optuna_state and optuna_number
    params: list[str]      # every searched field


def searched(trials: pd.DataFrame) -> list[str]:
    """The hyperparameters that vary over the study's trials."""
    return [p for p in SEARCHABLE if p in trials and trials[p].nunique(dropna=True) > 1]


def _distributions(trials: pd.DataFrame, params: Sequence[str]) -> dict[str, optuna.distributions.BaseDistribution]:
    dists: dict[str, optuna.distributions.BaseDistribution] = {}
    for p in params:
        values = trials[p].dropna()
        if p in CATEGORICAL:
            dists[p] = optuna.distributions.CategoricalDistribution(sorted(values.unique()))
        elif pd.api.types.is_integer_dtype(values):
            dists[p] = optuna.distributions.IntDistribution(int(values.min()), int(values.max()))
        else:
            log = p in common.LOG_PARAMS and values.min() > 0
            dists[p] = optuna.distributions.FloatDistribution(float(values.min()), float(values.max()), log=log)
    return dists


def full_budget(trials: pd.DataFrame) -> pd.Series:
    """Whether each trial reached the end of its planned budget (duration_kimg rounded up to whole iterations, as
    sid.config.DistillConfig.final_kimg; the study's longest trial where the plan is not recorded)."""
    last = pd.to_numeric(trials["last_kimg"], errors="coerce")
    planned = pd.Series(math.nan, index=trials.index)
    if "duration_kimg" in trials and "batch" in trials:
        duration = pd.to_numeric(trials["duration_kimg"], errors="coerce")
        batch = pd.to_numeric(trials["batch"], errors="coerce")
        planned = np.ceil(duration * 1000 / batch - 1e-9) * batch / 1000
    planned = planned.fillna(last.max())
    return last >= planned - 1e-6


def rebuilt_state(trials: pd.DataFrame) -> pd.Series:
    """The state the study's searcher tells Optuna (sid/cluster/search.py): COMPLETE for a trial that reached its
    budget with a finite value, PRUNED for one stopped early, diverged or short of its budget, FAIL for an error,
    RUNNING for an unfinished one."""
    state = trials["state"].fillna("completed")
    finite = np.isfinite(pd.to_numeric(trials["best_fid"], errors="coerce"))
    complete = (state == "completed") & finite & full_budget(trials)
    out = pd.Series("PRUNED", index=trials.index)
    out[complete] = "COMPLETE"
    out[state == "error"] = "FAIL"
    out[state == "running"] = "RUNNING"
    return out


def to_optuna(trials: pd.DataFrame, params: Sequence[str], name: str = "study",
              evals: pd.DataFrame | None = None) -> optuna.Study:
    """An in-memory Optuna study holding the trials (objective: best_fid, minimised) in the given row order, each in
    rebuilt_state(); with `evals`, every trial's intermediate values are its running best FD at each evaluation's
    iteration (what the study reports)."""
    dists = _distributions(trials, params)
    states = rebuilt_state(trials)
    study = optuna.create_study(study_name=name, direction="minimize", storage=optuna.storages.InMemoryStorage())
    made = []
    for i, r in trials.iterrows():
        params_ = {p: (r[p] if p in CATEGORICAL else dists[p].to_external_repr(float(r[p]))) for p in params}
        state = TrialState[states[i]]
        steps = {}
        if evals is not None:
            rows = evals[(evals["study"] == r["study"]) & (evals["trial_id"] == r["trial_id"])].sort_values("kimg")
            running = rows["fid"].where(np.isfinite(rows["fid"])).cummin()
            steps = {int(s): float(v) for s, v in zip(rows["iteration"], running) if math.isfinite(v)}
        made.append(optuna.trial.create_trial(
            params=params_, distributions=dists, intermediate_values=steps,
            value=float(r["best_fid"]) if state == TrialState.COMPLETE else None, state=state,
            user_attrs={"trial_id": r["trial_id"]}))
    study.add_trials(made)
    return study


def storage_of(folder: Path) -> tuple[object | None, str]:
    """(the Optuna storage of a study folder, where it is) or (None, why not): `<folder>/optuna.journal`, else the
    `optuna_storage` its config.yaml records (a journal file or a database URL). Read only: nothing is created."""
    if (folder / JOURNAL).is_file():
        return journal(folder / JOURNAL), str(folder / JOURNAL)
    recorded = None
    if (folder / CONFIG_FILE).is_file():
        try:
            config = yaml.safe_load((folder / CONFIG_FILE).read_text(errors="replace"))
        except yaml.YAMLError:
            config = None
        recorded = config.get("optuna_storage") if isinstance(config, dict) else None
    if not isinstance(recorded, str) or not recorded:
        return None, REBUILT
    if "://" in recorded:
        if recorded.startswith("sqlite:///") and not Path(recorded[len("sqlite:///"):]).is_file():
            return None, f"{REBUILT}: the recorded storage {recorded} does not exist here"
        return optuna.storages.RDBStorage(recorded, skip_table_creation=True), recorded
    path = Path(recorded) if Path(recorded).is_absolute() else folder / recorded
    if not path.is_file():
        return None, f"{REBUILT}: the recorded storage {recorded} does not exist here"
    return journal(path), str(path)


def is_search(paths: Sequence[str | Path], trials: pd.DataFrame, x: str) -> bool:
    """Whether the trials are an Optuna search rather than a sweep of `x`: fields other than x vary, or a folder has
    an Optuna storage."""
    if [p for p in searched(trials) if p != x]:
        return True
    return any(_recorded_storage(Path(f)) for f in paths if Path(f).is_dir())


def _recorded_storage(folder: Path) -> bool:
    if (folder / JOURNAL).is_file():
        return True
    try:
        config = yaml.safe_load((folder / CONFIG_FILE).read_text(errors="replace")) if (
            folder / CONFIG_FILE).is_file() else None
    except yaml.YAMLError:
        return False
    return isinstance(config, dict) and isinstance(config.get("optuna_storage"), str) and bool(config["optuna_storage"])


def journal(path: Path) -> optuna.storages.JournalStorage:
    """A journal storage on an existing file (JournalFileBackend creates only a missing file; reads take no lock)."""
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def read_study(folder: Path, name: str) -> tuple[optuna.Study | None, str]:
    """The Optuna study named `name` (or the storage's only study) from the folder's storage, or (None, why)."""
    try:
        storage, where = storage_of(folder)
        if storage is None:
            return None, where
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        chosen = name if name in names else names[0] if len(names) == 1 else None
        if chosen is None:
            return None, f"{REBUILT}: {where} holds no study named {name!r} (it holds {', '.join(names) or 'none'})"
        return optuna.load_study(study_name=chosen, storage=storage), where
    except Exception as exc:  # a cut or foreign journal, an unreachable database: fall back, saying why
        return None, f"{REBUILT}: the storage of {folder} could not be read ({type(exc).__name__}: " \
                     f"{str(exc).splitlines()[0] if str(exc) else ''})"


def _match(study: optuna.Study, trials: pd.DataFrame, params: Sequence[str]) -> dict[int, int]:
    """Optuna trial number -> row index of `trials` with the same searched values (each row used once): the study
    stores no trial id in Optuna, and the values a trial ran with are the ones Optuna suggested."""
    free = list(trials.index)
    found = {}
    for t in study.get_trials(deepcopy=False):
        for i in free:
            if all(p in t.params and _same(t.params[p], trials.at[i, p]) for p in params):
                found[t.number] = i
                free.remove(i)
                break
    return found


def _same(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float, np.number)):
        return bool(np.isclose(float(a), float(b), rtol=1e-9, atol=0))
    return a == b


def search(paths: Sequence[str | Path], trials: pd.DataFrame, evals: pd.DataFrame | None = None,
           name: str | None = None) -> Search:
    """The Optuna view of one study of `trials` (its storage if found under `paths`, else rebuilt)."""
    names = sorted(trials["study"].unique())
    if name is None and len(names) > 1:
        raise common.AnalysisError(f"trials of several studies ({', '.join(names)}): choose one")
    name = names[0] if name is None else name
    rows = trials[trials["study"] == name].sort_values(["first_written", "trial_id"]).reset_index(drop=True)
    if rows.empty:
        raise common.AnalysisError(f"no trials of study {name!r}")
    study, where = None, REBUILT
    for folder in map(Path, paths):
        for candidate in (folder, folder / name):
            if candidate.is_dir() and ((candidate / JOURNAL).exists() or (candidate / CONFIG_FILE).exists()):
                study, where = read_study(candidate, name)
                if study is not None or where != REBUILT:
                    break
        if study is not None:
            break
    if study is None:
        params = searched(rows)
        study = to_optuna(rows, params, name, evals)
        rows = rows.assign(optuna_state=rebuilt_state(rows).to_numpy(), optuna_number=np.arange(len(rows)))
        return Search(name, study, where, rows, params)
    params = sorted({p for t in study.trials for p in t.distributions}, key=_param_order)
    matched = _match(study, rows, params)
    rows = rows.assign(optuna_state=rebuilt_state(rows).to_numpy(), optuna_number=-1)
    for number, i in matched.items():
        rows.at[i, "optuna_state"] = study.trials[number].state.name
        rows.at[i, "optuna_number"] = number
    lost = [t for t in study.trials if t.number not in matched]  # asked, never wrote a row (failed or orphaned)
    if lost:
        extra = pd.DataFrame([{"study": name, "trial_id": f"optuna #{t.number}", "state": t.state.name.lower(),
                               "best_fid": math.nan, "optuna_state": t.state.name, "optuna_number": t.number,
                               **{p: t.params.get(p, math.nan) for p in params}} for t in lost])
        rows = pd.concat([rows, extra], ignore_index=True)
    return Search(name, study, where, rows, params)


def _param_order(p: str) -> tuple[int, str]:
    return (SEARCHABLE.index(p) if p in SEARCHABLE else len(SEARCHABLE), p)


def complete(s: Search) -> pd.DataFrame:
    """The COMPLETE trials with a finite value, best first."""
    done = s.trials[(s.trials["optuna_state"] == "COMPLETE") & np.isfinite(s.trials["best_fid"].astype(float))]
    return done.sort_values("best_fid", kind="stable")


def best_configuration(s: Search) -> pd.Series | None:
    """The best COMPLETE trial's row (every searched field, best_fid, trial_id), or None."""
    done = complete(s)
    return done.iloc[0] if len(done) else None


def configuration_text(row: pd.Series, params: Sequence[str]) -> str:
    """'α = 1.049, lr (fake score) = 0.0001234, glr (generator) = 3.2e-05, σ_init = 2.71'."""
    return ", ".join(f"{common.short(p)} = {common.fmt(row[p])}" for p in params)


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances over the COMPLETE trials (seeded, so the figure is reproducible); empty when they cannot
    be estimated."""
    done = study.get_trials(states=(TrialState.COMPLETE,))
    if len(done) < 2 or not done[0].params:
        return {}
    return optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))


def importance_warning(s: Search) -> str | None:
    """A warning when importances rest on fewer than MIN_IMPORTANCE_TRIALS complete trials, else None."""
    n = len(complete(s))
    if n >= MIN_IMPORTANCE_TRIALS or not s.params:
        return None
    return (f"parameter importances of {s.name or 'the study'} rest on {n} complete trial{'s' * (n != 1)} (fewer "
            f"than {MIN_IMPORTANCE_TRIALS}): their ranking is not reliable")


def to_markdown(s: Search, label: str, top: int = TOP) -> str:
    """The best configuration with every searched field, the top trials, the states and the importance caveat."""
    best = best_configuration(s)
    counts = s.trials["optuna_state"].value_counts()
    states = ", ".join(f"{n} {k.lower()}" for k, n in counts.items())
    lines = []
    if best is None:
        lines.append(f"No complete trial: no best configuration ({states}).")
    else:
        lines.append(f"Best configuration ({len(s.params)} searched field{'s' * (len(s.params) != 1)}): "
                     f"{configuration_text(best, s.params)}: best {label} {best['best_fid']:.3f} "
                     f"(trial {common.md_text(best['trial_id'])}, one run: no seed spread).")
    source = s.source if s.source.startswith(REBUILT) else f"read from {s.source}"
    lines += ["", f"Trials: {len(s.trials)} ({states}); Optuna states {common.md_text(source)}. Only complete trials "
                  f"(run to the end of the budget) rank; a pruned trial's value is at a smaller budget.", ""]
    done = complete(s).head(top)
    if len(done):
        header = ["rank", "trial", *[common.short(p) for p in s.params], f"best {label}", "kimg at best",
                  "not converged"]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for rank, (_, r) in enumerate(done.iterrows(), 1):
            flag = "yes" if bool(r.get("not_converged", False)) else "no"
            lines.append(f"| {rank} | {common.md_text(r['trial_id'])} | "
                         + " | ".join(common.fmt(r[p]) for p in s.params)
                         + f" | {r['best_fid']:.3f} | {r.get('best_kimg', math.nan):g} | {flag} |")
        lines.append(f"\nTop {len(done)} complete trials by best {label}.")
    warning = importance_warning(s)
    if warning:
        lines.append(f"\n**Warning: {warning}.**")
    return "\n".join(lines) + "\n"


def _history(ax: plt.Axes, trials: pd.DataFrame, label: str) -> None:
    number = np.arange(1, len(trials) + 1)
    value = trials["best_fid"].to_numpy(dtype=float)
    finite = np.isfinite(value)
    state = trials["optuna_state"].to_numpy()
    kind = np.where(trials["diverged"].fillna(False).to_numpy(dtype=bool), "diverged later",
                    np.where(state == "COMPLETE", "complete", "pruned (value at a smaller budget)"))
    markers = {"complete": "o", "diverged later": "X", "pruned (value at a smaller budget)": "s"}
    sns.scatterplot(x=number[finite], y=value[finite], color="0.35", s=45, ax=ax, zorder=3, style=kind[finite],
                    markers={k: v for k, v in markers.items() if k in set(kind[finite])})
    ax.collections[-1].set_gid("history")
    best = pd.Series(np.where(state == "COMPLETE", value, np.nan)).cummin().ffill().to_numpy()
    ax.step(number, best, where="post", color="crimson", linewidth=2, label="best so far (complete)",
            gid="best-so-far")
    ax.set_yscale("log")
    common.log_ticks(ax.yaxis)
    if (~finite).any():
        common.log_headroom(ax)
        pinned = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(number[~finite], np.full((~finite).sum(), 0.965), transform=pinned, marker="v", s=70,
                   color="crimson", edgecolor="black", linewidth=0.6, clip_on=False, zorder=4, gid="failed",
                   label="no finite value")
    ax.set_xlabel("trial (in start order)")
    ax.set_ylabel(common.wrap(f"best {label}"))
    ax.set_xlim(0.5, len(trials) + 0.5)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize="small", loc="best")
    ax.set_title("search history", fontsize="medium")


def _importance(ax: plt.Axes, scores: dict[str, float], warning: str | None) -> None:
    ax.set_title("parameter importance (fANOVA)", fontsize="medium")
    if not scores:
        ax.text(0.5, 0.5, "needs ≥ 2 complete trials\nand a searched parameter", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
        ax.set_axis_off()
        return
    frame = pd.DataFrame({"parameter": [common.short(p) for p in scores], "importance": list(scores.values())})
    sns.barplot(data=frame, x="importance", y="parameter", color=sns.color_palette("colorblind")[0], ax=ax)
    for bar in ax.patches:
        bar.set_gid("importance")
    ax.set_xlim(0, 1)
    ax.set_ylabel("")
    ax.set_xlabel("share of the objective's variance")
    if warning:
        ax.text(0.98, 0.02, f"< {MIN_IMPORTANCE_TRIALS} complete trials:\nnot reliable", transform=ax.transAxes,
                ha="right", va="bottom", fontsize="small", color="crimson", gid="importance-warning")


def _scaled(column: pd.Series, log: bool) -> tuple[np.ndarray, str, str]:
    """Values mapped to [0, 1] for one vertical axis, and the labels of its ends."""
    if column.dtype == object:
        levels = sorted(column.dropna().unique())
        pos = column.map({v: i / max(len(levels) - 1, 1) for i, v in enumerate(levels)}).to_numpy(dtype=float)
        return pos, str(levels[0]), str(levels[-1])
    v = column.to_numpy(dtype=float)
    t = np.log10(v) if log else v
    lo, hi = np.nanmin(t), np.nanmax(t)
    return (t - lo) / (hi - lo if hi > lo else 1.0), f"{np.nanmin(v):.3g}", f"{np.nanmax(v):.3g}"


def _parallel(ax: plt.Axes, trials: pd.DataFrame, params: Sequence[str], label: str) -> None:
    columns = [*params, "best_fid"]
    finite = np.isfinite(trials["best_fid"].to_numpy(dtype=float))
    scaled = []
    for i, c in enumerate(columns):
        values = trials[c].where(finite) if c == "best_fid" else trials[c]
        pos, lo, hi = _scaled(values, log=c in common.LOG_PARAMS or c == "best_fid")
        scaled.append(np.where(np.isnan(pos), 1.06, pos) if c == "best_fid" else pos)
        ax.vlines(i, 0, 1, color="0.3", linewidth=1)
        ends = {"ha": "center", "fontsize": "x-small", "bbox": {"fc": "white", "ec": "none", "pad": 0.5}}
        ax.text(i, -0.04, lo, va="top", **ends)
        ax.text(i, 1.10 if c == "best_fid" else 1.04, hi, va="bottom", **ends)
    y = np.stack(scaled, axis=1)
    x = np.arange(len(columns))
    order = np.argsort(-np.nan_to_num(trials["best_fid"].to_numpy(dtype=float), nan=np.inf))  # best drawn last
    fid = trials["best_fid"].to_numpy(dtype=float)
    norm = matplotlib.colors.LogNorm(np.nanmin(fid), np.nanmax(fid)) if finite.any() else None
    cmap = matplotlib.colormaps["viridis"]
    good = [i for i in order if finite[i]]
    lines = LineCollection([np.column_stack([x, y[i]]) for i in good], colors=[cmap(norm(fid[i])) for i in good],
                           linewidths=2, alpha=0.9, gid="parallel")
    ax.add_collection(lines)
    bad = [i for i in order if not finite[i]]
    if bad:
        ax.add_collection(LineCollection([np.column_stack([x, y[i]]) for i in bad], colors="0.55", linewidths=1.5,
                                         linestyles="--", gid="parallel-failed"))
        ax.text(len(columns) - 1 + 0.04, 1.06, "none", va="center", fontsize="x-small", color="0.4")
    if norm is not None:
        bar = ax.figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01, fraction=0.03)
        common.log_ticks(bar.ax.yaxis)
        bar.set_label(common.wrap(f"best {label}"), fontsize="small")
    ax.set_xlim(-0.3, len(columns) - 0.7)
    ax.set_ylim(-0.12, 1.16)
    ax.set_xticks(x, [common.short(c) for c in params] + ["best FID" if "FID" in label else "best FD"])
    ax.set_yticks([])
    ax.grid(False)
    for side in ("left", "right", "top", "bottom"):
        ax.spines[side].set_visible(False)
    if bad:
        ax.legend(handles=[Line2D([], [], color="0.55", linestyle="--", label="no finite value")],
                  fontsize="small", loc="upper left", bbox_to_anchor=(0.0, -0.1))
    ax.set_title("parallel coordinates (ends of each axis: min and max; lr, glr and FID on log scales)",
                 fontsize="medium")


def plot(trials: pd.DataFrame, *, study: str | None = None, found: Search | None = None, width: float | None = None,
         title: str | None = None) -> plt.Figure:
    """The report of one study (`study` may be omitted when the trials hold only one; `found` is its search(),
    rebuilt from `trials` when omitted). Artists carry gids: 'history', 'best-so-far', 'failed', 'importance'
    (bars), 'importance-warning', 'parallel', 'parallel-failed'."""
    found = found or search([], trials, name=study)
    _, label = common.select_metric(found.trials.dropna(subset=["fid_detector"]), None, None)
    rows = found.trials.assign(diverged=found.trials.get("diverged", False))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    scores = importances(found.study) if found.params else {}

    common.style(width)
    fig = plt.figure(figsize=(13, 8.8) if width is None else (width, width * 8.8 / 13), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=(1, 1.05), width_ratios=(1.5, 1))
    _history(fig.add_subplot(grid[0, 0]), rows, label)
    _importance(fig.add_subplot(grid[0, 1]), scores, importance_warning(found))
    if found.params:
        _parallel(fig.add_subplot(grid[1, :]), rows, found.params, label)
    best = best_configuration(found)
    failed = int((~np.isfinite(rows["best_fid"].astype(float))).sum())
    done = int((rows["optuna_state"] == "COMPLETE").sum())
    summary = (f"{len(rows)} trial{'s' * (len(rows) > 1)}: {done} complete, {failed} without a finite value")
    if best is not None:
        summary += f"; best {best['best_fid']:.3f}: {configuration_text(best, found.params)}"
    fig.suptitle(f"{title or found.name or 'single run'}\n{summary}", fontsize="medium")
    return fig


def build_parser() -> argparse.ArgumentParser:
    p = common.parser(__doc__)
    p.add_argument("--top", type=int, default=TOP, help=f"trials in the top-k table (default {TOP})")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        evals, trials = common.load(args.studies)
        trials, label = common.select_metric(trials, args.detector, args.fid_images)
        out = Path(args.out)
        for name in sorted(trials["study"].unique()):
            found = search(args.studies, trials, evals, name)
            warning = importance_warning(found)
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
            title = args.title or common.description(args.studies) or name
            common.save(plot(trials, found=found, width=args.width, title=title), out,
                        f"hpo_report_{name or 'run'}", args.format)
            md = f"# {common.md_text(title)}\n\n" + to_markdown(found, label, args.top)
            (out / f"hpo_report_{name or 'run'}.md").write_text(md)
            print(md)

    common.cli(build_parser(), body, argv)


if __name__ == "__main__":
    main()
