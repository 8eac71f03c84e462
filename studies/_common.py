"""Flags and main() shared by the study scripts: parse, build a sid.cluster.study.Study, run it, print the trials table.

Every bad flag ends the program with one line naming what was expected and exit code 2, before anything is written.
The scripts import no Ray: they build the space from sid.cluster.space, and Ray loads (sid.cluster.study, whose
connect() sets Ray's environment) only once a study is about to run.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sid.cluster.space import Dimension, Grid, Range, StudyError, check_dimension
from sid.cluster.trials import summary as trials_summary
from sid.commands.cli import (
    add_config_file_flags,
    add_config_flags,
    add_preset_flag,
    add_resource_flags,
    add_tracking_flags,
    config_from_args,
    config_yaml,
    print_config,
    resolved_config,
    resources_from_args,
    tracking_from_args,
)
from sid.config import SEARCHABLE, DistillConfig
from sid.files import EVALUATIONS_DIR, TRIALS_FILE
from sid.flags import Parser
from sid.scoring import RESCORE_REPEATS, RESCORE_TRIALS

if TYPE_CHECKING:  # sid.cluster.study imports Ray: loaded only when a study runs
    from sid.cluster.study import Study

DEFAULT_PRESET = "digits-study"  # the digits default at a study's budget (sid/config.py)


def add_before_run_flags(group: argparse._ArgumentGroup) -> None:
    """--dry-run and --plan (with --plan-cluster, --calibration): what every study command can do before it runs."""
    group.add_argument("--dry-run", action="store_true",
                       help="train nothing: start every trial's workers where the study would, load the assets "
                            "through each node's cache, and print where each trial ran and how many ran at once "
                            "(folder <storage>/<name>-dry-run)")
    group.add_argument("--plan", action="store_true",
                       help="train nothing: print the study's trials, images, device-hours and wall time on the "
                            "cluster (--plan-cluster) from a short calibration of the preset on this machine's device "
                            "(or --calibration), and write them to <storage>/<name>/plan.json for the report")
    group.add_argument("--plan-cluster", default=None,
                       help="the cluster --plan prices, e.g. GPU=8,CPU=64 (default: this machine)")
    group.add_argument("--calibration", type=Path, default=None,
                       help="a stored calibration.json of the preset on the cluster's device: --plan prices from it "
                            "instead of measuring one here; a study's progress line takes its ETA from it until the "
                            "trials have measured their rate (default: the study folder's, written by --plan)")


def before_run(parser: Parser, spec: Study, args: argparse.Namespace) -> bool:
    """--dry-run or --plan, when asked for: done here, and True (the study itself does not run)."""
    if args.dry_run and args.plan:
        parser.error("--dry-run and --plan: choose one (placement, or price)")
    if args.dry_run:
        dry_run(parser, spec, args)
    elif args.plan:
        plan(parser, spec, args)
    return args.dry_run or args.plan


def build_parser(doc: str, *, swept: tuple[str, ...], asha: bool) -> Parser:
    """The flags every study script has; config fields in `swept` get no fixed-value flag (and, without
    abbreviations, --lr is not taken for --lr-range)."""
    parser = Parser(description=doc, renamed={"--workers-per-trial": "--workers"})
    add_preset_flag(parser, DEFAULT_PRESET)
    add_config_file_flags(parser)
    add_study_flags(parser, asha=asha)
    parser.epilog = ("Results: <storage>/<name>/trials.parquet and <storage>/<name>/evaluations/*.parquet, snapshots "
                     "in <storage>/<name>/runs/<trial_id>/ (see docs/studies.md).")
    add_resource_flags(parser, per="trial")
    add_tracking_flags(parser, experiment="the study's name")
    add_config_flags(parser, skip=swept)
    return parser


def add_study_flags(parser: Parser, *, asha: bool | None, name: str = "<script>-<preset>",
                    storage: Path | None = Path("results"), storage_text: str = "./results") -> None:
    """The study group of flags: name, storage, resume, dry run, plan, cluster, concurrency, re-score; the stopping
    rules too unless `asha` is None (a study whose trials must all run their whole budget). `name` describes the
    default name (None: the script chooses it), `storage` is the default storage (None: the script chooses it) and
    `storage_text` describes it."""
    group = parser.group("study")
    group.add_argument("--name", default=None,
                       help=f"study name: its folder under --storage (default: {name})")
    group.add_argument("--storage", type=Path, default=storage,
                       help=f"folder that holds the study folder (default: {storage_text}); on a multi-node cluster "
                            "a path every node sees (NFS)")
    group.add_argument("--resume", action="store_true",
                       help="continue the interrupted study <storage>/<name> with its saved settings: unfinished "
                            "trials continue from their checkpoints, Optuna keeps its history")
    add_before_run_flags(group)
    group.add_argument("--address", default=None,
                       help="Ray cluster: 'auto' joins a running cluster, or host:port (default: start a local Ray)")
    group.add_argument("--max-concurrent", type=int, default=None,
                       help="trials at once (default: as many as the cluster holds: GPUs // GPUs per trial, or "
                            "CPUs // CPUs per trial)")
    if asha is not None:
        group.add_argument("--asha", action=argparse.BooleanOptionalAction, default=asha,
                           help="stop trials early whose smoothed FD trails the others' at a rung beyond the measured "
                                "noise (ASHA's rule, sid/cluster/stopping.py)")
        group.add_argument("--curve-stop", action="store_true",
                           help="also stop a trial whose power-law forecast of its final FD cannot beat the best "
                                "final FD")
        group.add_argument("--noise-z", type=float, default=1.0,
                           help="differences below this many times the measured noise are ties (default: 1)")
    group.add_argument("--rescore-trials", choices=(*RESCORE_TRIALS, "none"), default="best",
                       help="at the end, score the best trial's best.pt (or every trial's: all) again on fresh "
                            "latents into its run folder's scores.parquet (default: best)")
    group.add_argument("--rescore-repeats", type=int, default=RESCORE_REPEATS,
                       help=f"draws of that re-score, each of the evaluations' image count (default: "
                            f"{RESCORE_REPEATS})")


def parse_numbers(parser: argparse.ArgumentParser, text: str, flag: str) -> list[float]:
    """'0.5,1.0,1.2' -> [0.5, 1.0, 1.2]; anything else (empty, not a number, repeated) ends with exit code 2."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or "" in items:
        parser.error(f"{flag}: expected a comma-separated list of numbers such as 0.5,1.0,1.2, got {text!r}")
    values = []
    for item in items:
        try:
            values.append(float(item))
        except ValueError:
            parser.error(f"{flag}: {item!r} is not a number (expected a comma-separated list such as 0.5,1.0,1.2)")
    bad = [item for item, value in zip(items, values) if not math.isfinite(value)]
    if bad:
        parser.error(f"{flag}: {bad[0]!r} is not a finite number")
    if len(set(values)) < len(values):
        parser.error(f"{flag}: values repeat in {text!r}; use --seeds for repeats")
    return values


def parse_range(parser: argparse.ArgumentParser, text: str, flag: str, field: str) -> Range:
    """'LOW,HIGH': a Range of `field` (LOW < HIGH, and LOW > 0 where the field is searched on a log scale)."""
    values = parse_numbers(parser, text, flag)
    log = SEARCHABLE[field] == "log"
    expected = f"expected LOW,HIGH with LOW < HIGH{' and LOW > 0 (log scale)' if log else ''}, got {text!r}"
    if len(values) != 2:
        parser.error(f"{flag}: {expected}")
    try:
        check_dimension(field, Range(*values))
    except StudyError as exc:
        parser.error(f"{flag}: {expected} ({exc})")
    return Range(*values)


def seed_space(parser: argparse.ArgumentParser, seeds: int, base: DistillConfig) -> dict[str, Grid]:
    """--seeds K: the grid also runs seeds base.seed .. base.seed + K - 1."""
    if seeds < 1:
        parser.error(f"--seeds: expected a count >= 1, got {seeds}")
    return {"seed": Grid(range(base.seed, base.seed + seeds))} if seeds > 1 else {}


def main(parser: argparse.ArgumentParser, args: argparse.Namespace, *, script: str,
         space: Callable[[DistillConfig], Mapping[str, Dimension]], **study: Any) -> None:
    """Build the study from the flags (space(base) gives its search space), run it, print the table and paths."""
    # Ray loads here, when a study runs: --help and bad flags answer at once.
    from sid.cluster.study import Study  # noqa: PLC0415

    base = config_from_args(parser, args)
    study = {k: v(base) if callable(v) else v for k, v in study.items()}  # values that depend on the preset
    name = args.name or f"{script}-{base.preset}"
    values = resolved_config(parser, args, base, name=name)
    spec = Study(name=name, base=base, space=space(base),
                 tracking=tracking_from_args(parser, args, experiment=name), storage=args.storage,
                 asha=args.asha, curve_stop=args.curve_stop, noise_z=args.noise_z, rescore_trials=args.rescore_trials,
                 rescore_repeats=args.rescore_repeats,
                 resources=resources_from_args(parser, args), max_concurrent=args.max_concurrent,
                 **study)
    if args.print_config:
        print_config(values)
    run(parser, args, spec, config_text=config_yaml(values))


def run(parser: Parser, args: argparse.Namespace, spec: Study, *, config_text: str | None = None,
        columns: list[str] | None = None) -> None:
    """Dry-run, price or run the study `spec` as the flags say; print the trials table (`columns`: the searched
    fields it shows, default those of the space) and the paths; exit 2 for a bad study, 130 when interrupted, 1 when
    no trial ran."""
    # Ray loads here, when a study runs: --help and bad flags answer at once.
    from sid.cluster.distributed import ResourceError  # noqa: PLC0415
    from sid.cluster.study import run_study  # noqa: PLC0415

    if before_run(parser, spec, args):
        return
    try:
        trials = run_study(spec, resume=args.resume, address=args.address, config_text=config_text,
                           calibration=args.calibration)
    except (StudyError, ResourceError) as exc:  # bad study or a trial the cluster cannot hold: one line
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print()
    print(trials_summary(trials, columns if columns is not None else [k for k in SEARCHABLE if k in spec.space]))
    print(f"\ntrials:      {spec.folder / TRIALS_FILE}\nevaluations: {spec.folder / EVALUATIONS_DIR}/*.parquet")
    unfinished = int((trials["state"] == "running").sum()) if not trials.empty else 0
    if unfinished:
        print(f"interrupted: {unfinished} trial(s) unfinished; continue with the same command and --resume")
        sys.exit(130)
    if trials.empty or (trials["state"] == "error").all():
        print("error: no trial ran; see the errors above", file=sys.stderr)
        sys.exit(1)



def dry_run(parser: Parser, spec: Study, args: argparse.Namespace) -> None:
    """--dry-run: place every trial without training; exit 1 if a trial's workers did not all run as asked."""
    # Ray loads here, when the dry run starts (see main).
    from sid.cluster.distributed import ResourceError  # noqa: PLC0415
    from sid.cluster.dry_run import (  # noqa: PLC0415
        PLACEMENTS_FILE,
        PlacementError,
        dry_run_folder,
        dry_run_study,
        summary,
    )

    if args.resume:
        parser.error("--dry-run trains nothing, so there is nothing to --resume")
    try:
        table = dry_run_study(spec, address=args.address)
    except (StudyError, ResourceError) as exc:  # bad study or a trial the cluster cannot hold: nothing ran
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except PlacementError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        sys.exit(1)
    print()
    print(summary(table))
    print(f"\nplacements: {dry_run_folder(spec) / PLACEMENTS_FILE}")


def plan(parser: Parser, spec: Study, args: argparse.Namespace) -> None:
    """--plan: print the study's price and write it into the study folder; train nothing."""
    # Ray and the networks load here, when a plan is asked for (see main).
    from sid.cluster.price import parse_cluster, plan_study  # noqa: PLC0415
    from sid.plan import PLAN_FILE, PlanError  # noqa: PLC0415

    if args.resume:
        parser.error("--plan prices a study before it runs; there is nothing to --resume")
    try:
        cluster = parse_cluster(args.plan_cluster) if args.plan_cluster else None
        priced = plan_study(spec, cluster=cluster, calibration=args.calibration)
    except (StudyError, PlanError, ValueError) as exc:  # a bad study, cluster, calibration file or asset: one line
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(priced.summary())
    print(f"\nplan: {spec.folder / PLAN_FILE} (run the same command without --plan to run the study)")
