"""Confirm a search's winner: its best setting against the preset's, on fresh seeds, paired by seed.

A search's best trial is one run picked as the lowest of many noisy ones, so its FD is biased low (the winner's
curse). This study runs that setting ("best": the study's own ranking, analysis.searches.best_configuration) and the
base config's values of the same fields ("preset") again, each with seeds the search did not use, at the search's
budget and evaluation, as a grid over labelled settings (sid.cluster.space.Settings). Every row and trial carries its
label in the `setting` column, so the verdict is paired by seed:

    python studies/confirm.py results/hpo-digits-ddpm --seeds 4              # -> results/hpo-digits-ddpm-confirm
    python studies/confirm.py results/hpo-digits-ddpm --setting 'paper:alpha=1.2,glr=1e-4'   # a third setting
    python analysis/compare.py results/hpo-digits-ddpm-confirm --x setting  # the verdict, with intervals
    python analysis/report.py results/hpo-digits-ddpm-confirm --x setting   # the report (a tie is called a tie)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from analysis import common, compare, searches
from sid.cluster.space import FIELD_TYPES, SETTING, Grid, Settings, StudyError, check_field
from sid.cluster.trials import TrialSettings
from sid.commands.cli import add_resource_flags, add_tracking_flags, resources_from_args, tracking_from_args
from sid.config import DistillConfig
from sid.files import SETTINGS_FILE
from sid.flags import Parser
from studies import _common

DEFAULT_SEEDS = 4          # paired differences need n >= 2 for an interval; 4 gives a usable width on the digits
PRESET, BEST = "preset", "best"  # the two labels every confirmation runs
CAST = {"int": int, "float": float, "str": str}


def build_parser() -> Parser:
    parser = Parser(description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                    renamed={"--workers-per-trial": "--workers"})
    parser.add_argument("study", type=Path, help="the finished study (a search) whose best setting is confirmed")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"run each setting with seeds --seed .. --seed + K - 1 (default: {DEFAULT_SEEDS})")
    parser.add_argument("--seed", type=int, default=None,
                        help="first seed (default: one past the highest seed the study used, so every seed is fresh)")
    parser.add_argument("--setting", dest="settings", action="append", default=[], metavar="[LABEL:]FIELD=VALUE,...",
                        help="another setting to run beside 'preset' and 'best', e.g. 'paper:alpha=1.2,glr=1e-4' "
                             "(fields it leaves out: the base config's; default label: the text); repeatable")
    _common.add_study_flags(parser, asha=None, name="<study>-confirm", storage=None,
                            storage_text="the folder that holds the study")
    parser.epilog = ("Results: <storage>/<name>/trials.parquet and evaluations/*.parquet with a `setting` column; the "
                     "verdict: python analysis/compare.py <storage>/<name> --x setting (docs/studies.md).")
    add_resource_flags(parser, per="trial")
    add_tracking_flags(parser, experiment="the study's name")
    return parser


def parse_setting(parser: argparse.ArgumentParser, text: str) -> tuple[str, dict[str, Any]]:
    """'[LABEL:]alpha=1.0,lr=3e-4' -> (label, {field: value}), each value of its field's type; anything else ends
    the program with exit code 2 naming the flag."""
    label, _, body = text.rpartition(":") if ":" in text else ("", "", text)
    fields: dict[str, Any] = {}
    for item in body.split(","):
        field, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not field or not value:
            parser.error(f"--setting: expected [LABEL:]FIELD=VALUE,... such as 'paper:alpha=1.2,glr=1e-4', "
                         f"got {text!r}")
        try:
            check_field(field)
            fields[field] = CAST[FIELD_TYPES[field]](value)
        except StudyError as exc:
            parser.error(f"--setting {text!r}: {exc}")
        except ValueError:
            parser.error(f"--setting {text!r}: {field}={value!r} is not a value of {field} ({FIELD_TYPES[field]})")
    return (label.strip() or body.strip()), fields


def finished_search(parser: argparse.ArgumentParser, folder: Path) -> tuple[DistillConfig, Any, list[str], Any]:
    """(the study's base config, its trials, its searched fields, its best trial's row) by the study's own ranking
    (analysis.searches: the best trial that completed its budget); exit code 2 with one line for a folder that is
    no finished study."""
    path = folder / SETTINGS_FILE
    try:
        base = TrialSettings.from_dict(json.loads(path.read_bytes()), str(path)).base
    except FileNotFoundError:
        parser.error(f"{folder}: no study folder ({SETTINGS_FILE} missing): give a folder a study wrote")
    except (OSError, ValueError) as exc:  # StudyError is a ValueError, as is a file that is not JSON
        parser.error(f"{path}: not readable trial settings ({exc})")
    try:
        evals, trials = common.load([folder])
        found = searches.search([folder], trials, evals)
    except common.AnalysisError as exc:
        parser.error(f"{folder}: {exc}")
    running = int((trials["state"] == "running").sum())
    if running:
        parser.error(f"{folder}: {running} trial(s) unfinished; finish the study first (its command with --resume)")
    best = searches.best_configuration(found)
    if best is None:
        parser.error(f"{folder}: no trial completed its budget, so the study has no best setting to confirm")
    params = [p for p in found.params if p != "seed"]  # seeds are the confirmation's own
    if not params:
        parser.error(f"{folder}: the study searched no field besides the seed: nothing to confirm")
    return base, trials, params, best


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    folder = args.study.resolve()
    if args.seeds < 1:
        parser.error(f"--seeds: expected a count >= 1, got {args.seeds}")
    base, trials, params, best = finished_search(parser, folder)
    settings = {PRESET: {p: getattr(base, p) for p in params},
                BEST: {p: CAST[FIELD_TYPES[p]](best[p]) for p in params}}
    if settings[PRESET] == settings[BEST]:
        parser.error(f"{folder}: its best trial ({best['trial_id']}) ran the base config's own values of "
                     f"{', '.join(params)}: nothing to confirm against them")
    for text in args.settings:
        label, fields = parse_setting(parser, text)
        if label in settings:
            parser.error(f"--setting {text!r}: the label {label!r} is taken; give another (LABEL:FIELD=VALUE,...)")
        settings[label] = fields
    used = sorted({int(s) for s in trials["seed"].dropna()})
    first = args.seed if args.seed is not None else (max(used) + 1 if used else base.seed)
    seeds = range(first, first + args.seeds)
    reused = sorted(set(seeds) & set(used))
    name = args.name or f"{folder.name}-confirm"
    storage = args.storage if args.storage is not None else folder.parent
    # Ray loads here, when a study runs: --help and bad flags answer at once.
    from sid.cluster.study import Study, study_yaml  # noqa: PLC0415

    spec = Study(name=name, base=base, space={SETTING: Settings(settings), "seed": Grid(seeds)}, storage=storage,
                 tracking=tracking_from_args(parser, args, experiment=name),
                 resources=resources_from_args(parser, args), max_concurrent=args.max_concurrent,
                 rescore_trials=args.rescore_trials, rescore_repeats=args.rescore_repeats)
    try:
        spec.validate()
    except StudyError as exc:
        parser.error(str(exc))
    print(f"confirming {folder.name}: its best trial {best['trial_id']} (best FD {best['best_fid']:.4g} at kimg "
          f"{best['best_kimg']:g}, one run picked among {len(trials)}) against the base config, at its budget "
          f"({base.final_kimg:g} kimg); seeds {first}..{first + args.seeds - 1}", flush=True)
    for label, fields in settings.items():
        print(f"  {label:>8}: " + ", ".join(f"{f} = {common.fmt(v)}" for f, v in fields.items()), flush=True)
    if reused:
        print(f"warning: seeds {', '.join(map(str, reused))} were used by the search: their results are not fresh",
              flush=True)
    record = dict(description=f"{folder.name}'s best setting against its base config ({base.preset}), "
                              f"{args.seeds} fresh seed{'s' * (args.seeds != 1)}, paired by seed",
                  confirms=str(folder), best_trial=str(best["trial_id"]))
    _common.run(parser, args, spec, config_text=yaml.safe_dump(record, sort_keys=False) + study_yaml(spec),
                columns=[SETTING, *dict.fromkeys(f for fields in settings.values() for f in fields)])
    print_verdict(spec.folder)


def print_verdict(folder: Path) -> None:
    """The paired verdicts of the finished confirmation (analysis/compare.py --x setting), and how to get the report."""
    try:
        _, trials = common.load([folder])
        table = compare.compare(trials, x=SETTING)
    except common.AnalysisError as exc:
        print(f"no verdict: {exc}", file=sys.stderr)
        return
    print()
    print(compare.to_markdown(table, SETTING) if len(table) else "no verdict: fewer than two settings ran")
    print(f"report: python analysis/report.py {folder} --x {SETTING} --out {folder / 'report'}")


if __name__ == "__main__":
    main()
