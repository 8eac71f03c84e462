"""Command-line plumbing shared by `python -m sid distill` and the study scripts: every DistillConfig field becomes
a `--field-name` flag whose help is the field's comment and the chosen preset's value, the resource flags build a
TrialResources, `--config FILE` gives any flag's value from YAML (the command line wins), `--print-config` writes the
complete resolved config, and every bad value exits with one line and code 2."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from sid.cluster.resources import STRATEGIES, TrialResources
from sid.config import PRESETS, ConfigError, DistillConfig, preset
from sid.tracking import TRACKERS, TrackerError, TrackingSettings, check_trackers

_TYPES = {"float": float, "int": int, "str": str}


def field_comments() -> dict[str, str]:
    """The one-line comment after each field in DistillConfig's source: the flag's help text."""
    source = inspect.getsource(DistillConfig)
    return dict(re.findall(r"^\s+(\w+): \w+(?: \| None)? = .*?#\s*(.*)$", source, flags=re.M))


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written; '(default: X)' after each help that does not say its default already, and none for
    a default of None (a config flag's None means 'the preset's value', which its help gives)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default is None or action.default is argparse.SUPPRESS or not text:
            return text
        return super()._get_help_string(action)


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One optional flag per config field (default None = keep the preset's value; parse() puts the chosen preset's
    values into the help)."""
    group = parser.add_argument_group("run configuration (defaults come from --preset)")
    comments = field_comments()
    for f in dataclasses.fields(DistillConfig):
        if f.name in skip or f.name == "preset":
            continue
        kind = str(f.type).split(" |")[0]  # 'float | None': None is the field's own default, not a flag value
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_TYPES[kind], default=None,
                           metavar=kind.upper(), help=comments.get(f.name, "").replace("%", "%%"))


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
    """The flags of a TrialResources (sid/cluster/resources.py), one vocabulary for the one-run command and the studies;
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
    except ValueError as exc:  # name the flag, not the field
        text = str(exc)
        for field in values:
            flag = "--placement" if field == "placement_strategy" else "--" + field.replace("_", "-")
            text = re.sub(rf"^{field}(?=[ =])", flag, text)  # messages start with the field
        parser.error(text)


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


# ---------------------------------------------------------------------------------------------- config files
NOT_IN_FILES = ("config", "print_config", "help")  # options that say how to read or show a config, not part of it


def add_config_file_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config files")
    group.add_argument("--config", metavar="FILE", default=None,
                       help="YAML mapping of option names (as the long flags, with _ for -) to values, e.g. the output "
                            "of --print-config; flags on the command line override it")
    group.add_argument("--print-config", action="store_true",
                       help="print the complete resolved config as YAML (a file for --config) and exit")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in NOT_IN_FILES}


def _expected(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "true or false"
    if isinstance(action, argparse._AppendAction):
        return f"a list of {', '.join(action.choices)}" if action.choices else "a list of strings"
    if action.choices:
        return f"one of {', '.join(map(str, action.choices))}"
    return {int: "an integer", float: "a number"}.get(action.type, "a string")


def _file_value(action: argparse.Action, value: Any) -> Any:
    """The value a config file gives `action`, as the parser would hold it; ValueError if it has the wrong type."""
    if action.nargs == 0:  # store_true / --x/--no-x
        if isinstance(value, bool):
            return value
    elif isinstance(action, argparse._AppendAction):
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(v, str) for v in items) \
                and (not action.choices or all(v in action.choices for v in items)):
            return items
    elif value is None:
        return None
    elif action.type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif action.type is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif isinstance(value, list) and all(isinstance(v, (int, float, str)) for v in value):
        return ",".join(map(str, value))  # a comma-list flag (--alphas) given as a YAML list
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = str(value) if not isinstance(value, str) else value
        return action.type(value) if callable(action.type) and action.type is not str else value
    if action.choices and value in action.choices:
        return value
    raise ValueError(_expected(action))


def read_config_file(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """The option values of a YAML config file; an unreadable file, an unknown key or a value of the wrong type
    ends the program with one line naming the key and what was expected (exit code 2)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        parser.error(f"--config {path}: {exc.strerror or exc}")
    except yaml.YAMLError as exc:
        parser.error(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})")
    if data is None:
        return {}
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    options = _options(parser)
    # a key is an option's dest (what --print-config writes) or any of its long flags: 'trackers' or 'tracker'
    names = {**{o[2:].replace("-", "_"): a for a in options.values() for o in a.option_strings if o[:2] == "--"},
             **options}
    values: dict[str, Any] = {}
    for key, value in data.items():
        action = names.get(str(key).replace("-", "_"))
        if action is None:
            parser.error(f"--config {path}: unknown key {key!r} (keys are the long options of "
                         f"{parser.prog}, see --help)")
        dest = action.dest
        if action.choices and action.nargs != 0 and not isinstance(action, argparse._AppendAction) \
                and value is not None and value not in action.choices:
            parser.error(f"--config {path}: {key}: expected {_expected(action)}, got {value!r}")
        try:
            values[dest] = _file_value(action, value)
        except (ValueError, TypeError):
            parser.error(f"--config {path}: {key}: expected {_expected(action)}, got {value!r}")
    return values


def _show_preset_defaults(parser: argparse.ArgumentParser, name: str, file_values: dict[str, Any]) -> None:
    """Each config flag's help ends with its value under the chosen preset (and config file)."""
    from sid.config import PRESETS

    if name not in PRESETS:
        return
    try:
        config = preset(name, **{k: v for k, v in file_values.items() if k in _FIELDS and v is not None})
    except ConfigError:
        return
    for dest, action in _options(parser).items():
        if dest in _FIELDS and action.help is not None and "(default" not in action.help:
            origin = "--config" if dest in file_values else f"--preset {name}"
            action.help += f" (default from {origin}: {getattr(config, dest)})".replace("%", "%%")


_FIELDS = {f.name for f in dataclasses.fields(DistillConfig)} - {"preset"}


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """parse_args with --config FILE's values as defaults (the command line wins) and the preset's values in --help."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    pre.add_argument("--preset")
    known, _ = pre.parse_known_args(argv)
    values = read_config_file(parser, known.config) if known.config else {}
    parser.set_defaults(**values)
    _show_preset_defaults(parser, known.preset or values.get("preset") or parser.get_default("preset"), values)
    return parser.parse_args(argv)


def resolved_config(parser: argparse.ArgumentParser, args: argparse.Namespace, config: DistillConfig,
                    **more: Any) -> dict[str, Any]:
    """Every option of the command with its value, config fields resolved (the preset's values, adam_eps's rule):
    what --print-config prints and config.yaml holds. Fields a study searches have no flag and are left out."""
    options = _options(parser)
    values = {k: v for k, v in vars(args).items() if k in options}
    values.update({k: v for k, v in config.to_dict().items() if k in options}, **more)
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def config_yaml(values: dict[str, Any]) -> str:
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=None)


def print_config(values: dict[str, Any]) -> None:
    sys.stdout.write(config_yaml(values))
    sys.exit(0)
