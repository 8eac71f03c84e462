"""Command-line plumbing shared by `python -m sid.distill` and the study scripts: every DistillConfig field becomes
a `--field-name` flag whose help is the field's comment, the resource flags build a TrialResources, and every bad
value exits with one line and code 2."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from typing import Any

from sid.config import PRESETS, ConfigError, DistillConfig, preset
from sid.resources import STRATEGIES, TrialResources
from sid.tracking import TRACKERS, TrackerError, TrackingSettings, check_trackers

_TYPES = {"float": float, "int": int, "str": str}


def field_comments() -> dict[str, str]:
    """The one-line comment after each field in DistillConfig's source: the flag's help text."""
    source = inspect.getsource(DistillConfig)
    return dict(re.findall(r"^\s+(\w+): \w+ = .*?#\s*(.*)$", source, flags=re.M))


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One optional flag per config field (default None = keep the preset's value)."""
    group = parser.add_argument_group("run configuration (defaults come from --preset)")
    comments = field_comments()
    for f in dataclasses.fields(DistillConfig):
        if f.name in skip or f.name == "preset":
            continue
        kind = str(f.type).split(" |")[0]  # 'float | None': None is the field's own default, not a flag value
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_TYPES[kind], default=None,
                           metavar=kind.upper(), help=comments.get(f.name, ""))


def add_preset_flag(parser: argparse.ArgumentParser, default: str = "digits") -> None:
    parser.add_argument("--preset", default=default, choices=list(PRESETS), metavar="NAME",
                        help=f"starting values for every field: {', '.join(PRESETS)} (default: {default})")


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, **extra: Any) -> DistillConfig:
    """The validated config of the parsed flags; a bad value ends the program with exit code 2."""
    names = {f.name for f in dataclasses.fields(DistillConfig)} - {"preset"}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    try:
        return preset(args.preset, **{**overrides, **extra})
    except ConfigError as exc:
        parser.error(str(exc))


def add_resource_flags(parser: argparse.ArgumentParser, *, per: str) -> None:
    """The flags of a TrialResources (sid/resources.py), one vocabulary for the one-run command and the studies;
    `per` names what one set of workers serves ('run' or 'trial')."""
    group = parser.add_argument_group(f"resources of each {per} (Ray Train)")
    names = ["--workers"] + (["--workers-per-trial"] if per == "trial" else [])
    group.add_argument(*names, dest="workers", type=int, default=1,
                       help=f"DDP ranks (Ray Train workers) per {per}" + ("; > 1 runs through Ray Train" if per == "run"
                                                                          else "") + " (default: 1)")
    group.add_argument("--gpus-per-worker", type=float, default=None,
                       help="GPUs per worker: 1, or a fraction with 1 worker to share GPUs between trials (default: 1 "
                            "if the cluster has GPUs, else 0 = CPU workers)")
    group.add_argument("--cpus-per-worker", type=float, default=None,
                       help="CPUs per worker (default: " + ("1" if per == "trial" else "an even share of the cluster's")
                            + ")")
    group.add_argument("--placement", dest="placement_strategy", choices=STRATEGIES, default=None,
                       help="placement of one set of workers (default: STRICT_PACK when one node holds them, else PACK)")
    group.add_argument("--max-failures", type=int, default=2,
                       help="worker-group restarts from the newest checkpoint before giving up (default: 2)")


def resources_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrialResources:
    """The validated resources of the parsed flags; a bad value ends the program with exit code 2."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrialResources)}
    try:
        return TrialResources(**values)
    except ValueError as exc:
        text = str(exc)
        field = next((name for name in values if text.startswith(name + " ")), None)
        parser.error(text.replace(field, "--" + field.replace("_", "-"), 1) if field else text)


def add_tracking_flags(parser: argparse.ArgumentParser, *, experiment: str) -> None:
    """--tracker (repeatable), --tracking-uri, --experiment: where each evaluation is logged besides Parquet."""
    group = parser.add_argument_group("experiment tracking (docs/tracking.md)")
    group.add_argument("--tracker", dest="trackers", action="append", choices=TRACKERS, default=[], metavar="NAME",
                       help=f"also log metrics, config and sample grids to {', '.join(TRACKERS)}; repeat for several "
                            "(default: none)")
    group.add_argument("--tracking-uri", default=None, metavar="URI",
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a file store in the "
                            "run/study folder: mlruns/)")
    group.add_argument("--experiment", default=None, metavar="NAME",
                       help=f"MLflow experiment and W&B project (default: {experiment})")


def tracking_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, *,
                       experiment: str) -> TrackingSettings:
    """The validated tracking settings; a tracker whose library is missing ends the program with exit code 2."""
    try:
        trackers = check_trackers(args.trackers)
    except TrackerError as exc:
        parser.error(f"--tracker: {exc}")
    return TrackingSettings(trackers, args.tracking_uri, args.experiment or experiment)
