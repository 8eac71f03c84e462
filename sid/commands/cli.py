"""Command-line plumbing shared by `sid distill` and the study scripts: every DistillConfig field becomes a
`--field-name` flag whose help is the field's comment and the chosen preset's value, the resource flags build a
TrialResources, `--config FILE` gives any flag's value from YAML (the command line wins), `--print-config` writes the
complete resolved config, and every bad value exits with one line and code 2. The parser itself is sid.flags.Parser.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import math
import re
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import Any

import yaml

from sid.cluster.resources import STRATEGIES, TrialResources
from sid.config import ADAM_EPS, ADAM_EPS_DEFAULT, PRECISIONS, PRESETS, ConfigError, DistillConfig, preset
from sid.flags import Parser
from sid.tracking import TRACKERS, TrackerError, TrackingSettings, check_trackers

_TYPES = {"float": float, "int": int, "str": str}


@functools.cache
def field_comments() -> dict[str, str]:
    """The one-line comment after each field in DistillConfig's source: the flag's help text. Read with tokenize
    (comments) and ast (which line holds which field), so a '#' inside a default string is no comment."""
    source = textwrap.dedent(inspect.getsource(DistillConfig))
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    body = ast.parse(source).body[0].body
    return {node.target.id: comments[node.end_lineno] for node in body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.end_lineno in comments}


def add_config_flags(parser: Parser, skip: tuple[str, ...] = ()) -> None:
    """One optional flag per config field (default None = keep the preset's value; parse() puts the chosen preset's
    values into the help)."""
    group = parser.group("run configuration (defaults come from --preset)")
    comments = field_comments()
    for f in dataclasses.fields(DistillConfig):
        if f.name in skip or f.name == "preset":
            continue
        kind = str(f.type).split(" |")[0]  # 'float | None': None is the field's own default, not a flag value
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_TYPES[kind], default=None,
                           metavar=kind.upper(), help=comments.get(f.name, "").replace("%", "%%"))


def add_preset_flag(parser: Parser, default: str = "digits") -> None:
    parser.add_argument("--preset", default=default, choices=list(PRESETS), metavar="NAME",
                        help=f"starting values for every field: {', '.join(PRESETS)}")


def config_from_args(parser: Parser, args: argparse.Namespace, **extra: Any) -> DistillConfig:
    """The validated config of the parsed flags; a bad value ends the program with exit code 2."""
    names = {f.name for f in dataclasses.fields(DistillConfig)} - {"preset"}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    try:
        return preset(args.preset, **{**overrides, **extra})
    except ConfigError as exc:
        parser.error(str(exc))


def add_resource_flags(parser: Parser, *, per: str) -> None:
    """The flags of a TrialResources (sid/cluster/resources.py), one vocabulary for the one-run command and the studies;
    `per` names what one set of workers serves ('run' or 'trial')."""
    group = parser.group(f"resources of each {per} (Ray Train)")
    group.add_argument("--workers", type=int, default=1,
                       help=f"DDP ranks (Ray Train workers) per {per}" + ("; > 1 runs through Ray Train" if per == "run"
                                                                          else ""))
    group.add_argument("--gpus-per-worker", type=float, default=None,
                       help="GPUs per worker: 1, or a fraction with 1 worker to share GPUs between trials (default: 1 "
                            "if the cluster has GPUs, else 0 = CPU workers)")
    group.add_argument("--cpus-per-worker", type=float, default=None,
                       help="CPUs per worker (default: " + ("1" if per == "trial" else "an even share of the cluster's")
                            + ")")
    group.add_argument("--placement", dest="placement_strategy", choices=STRATEGIES, default=None,
                       help="placement of one set of workers (default: STRICT_PACK when one node holds them, "
                            "else PACK)")
    group.add_argument("--max-failures", type=int, default=2,
                       help="worker-group restarts from the newest checkpoint before giving up")


def resources_from_args(parser: Parser, args: argparse.Namespace) -> TrialResources:
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


def add_tracking_flags(parser: Parser, *, experiment: str) -> None:
    """--tracker (repeatable), --tracking-uri, --experiment: where each evaluation is logged besides Parquet."""
    group = parser.group("experiment tracking (docs/tracking.md)")
    group.add_argument("--tracker", dest="trackers", action="append", choices=TRACKERS, default=[], metavar="NAME",
                       help=f"also log metrics, config and sample grids to {', '.join(TRACKERS)}; repeat for several "
                            "(default: none)")
    group.add_argument("--tracking-uri", default=None, metavar="URI",
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else a file store in the "
                            "run/study folder: mlruns/)")
    group.add_argument("--experiment", default=None, metavar="NAME",
                       help=f"MLflow experiment and W&B project (default: {experiment})")


def tracking_from_args(parser: Parser, args: argparse.Namespace, *,
                       experiment: str) -> TrackingSettings:
    """The validated tracking settings; a tracker whose library is missing ends the program with exit code 2."""
    try:
        trackers = check_trackers(args.trackers)
    except TrackerError as exc:
        parser.error(f"--tracker: {exc}")
    return TrackingSettings(trackers, args.tracking_uri, args.experiment or experiment)


# ---------------------------------------------------------------------------------------------- config files
NOT_IN_FILES = ("config", "print_config")  # options that say how to read or show a config, not part of it


def add_config_file_flags(parser: Parser) -> None:
    group = parser.group("config files")
    group.add_argument("--config", metavar="FILE", default=None,
                       help="YAML mapping of option names (as the long flags, with _ for -) to values, e.g. the output "
                            "of --print-config; flags on the command line override it")
    group.add_argument("--print-config", action="store_true",
                       help="print the complete resolved config as YAML (a file for --config) and exit")


def file_options(parser: Parser) -> dict[str, argparse.Action]:
    """The options a config file can give: dest -> Action."""
    return {dest: action for dest, action in parser.options.items() if dest not in NOT_IN_FILES}


def _expected(parser: Parser, action: argparse.Action) -> str:
    if action.nargs == 0:
        return "true or false"
    if action.dest in parser.appended:
        return f"a list of {', '.join(action.choices)}" if action.choices else "a list of strings"
    if action.choices:
        return f"one of {', '.join(map(str, action.choices))}"
    return {int: "an integer", float: "a number"}.get(action.type, "a string")


def _file_value(parser: Parser, action: argparse.Action, value: Any) -> Any:
    """The value a config file gives `action`, as the parser would hold it; ValueError if it has the wrong type."""
    if action.nargs == 0:  # store_true / --x/--no-x
        if isinstance(value, bool):
            return value
    elif action.dest in parser.appended:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(v, str) for v in items) \
                and (not action.choices or all(v in action.choices for v in items)):
            return items
    elif value is None:
        return None
    elif action.choices:
        if value in action.choices:
            return value
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
    raise ValueError(_expected(parser, action))


def read_config_file(parser: Parser, path: str) -> dict[str, Any]:
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
    options = file_options(parser)
    # a key is an option's dest (what --print-config writes) or its long flag: 'trackers' or 'tracker'
    names = {**{o[2:].replace("-", "_"): a for a in options.values() for o in a.option_strings if o[:2] == "--"},
             **options}
    values: dict[str, Any] = {}
    for key, value in data.items():
        action = names.get(str(key).replace("-", "_"))
        if action is None:
            new = parser.renamed.get("--" + str(key).replace("_", "-"), "")
            hint = f"; it is now spelled {new[2:].replace('-', '_')}" if new.startswith("--") else ""
            parser.error(f"--config {path}: unknown key {key!r} (keys are the long options of "
                         f"{parser.prog}, see --help{hint})")
        try:
            values[action.dest] = _file_value(parser, action, value)
        except (ValueError, TypeError):
            parser.error(f"--config {path}: {key}: expected {_expected(parser, action)}, got {value!r}")
    return values


_FIELDS = {f.name for f in dataclasses.fields(DistillConfig)} - {"preset"}


def _show_preset_defaults(parser: Parser, name: str, file_values: dict[str, Any]) -> None:
    """Each config flag's help ends with its value under the chosen preset (and config file)."""
    if name not in PRESETS:
        return
    try:
        config = preset(name, **{k: v for k, v in file_values.items() if k in _FIELDS and v is not None})
    except ConfigError:
        return
    for dest, action in file_options(parser).items():
        if dest in _FIELDS and action.help is not None and "(default" not in action.help:
            origin = "--config" if dest in file_values else f"--preset {name}"
            action.help += f" (default from {origin}: {getattr(config, dest)})".replace("%", "%%")


def parse(parser: Parser, argv: list[str] | None = None) -> argparse.Namespace:
    """parse_args with --config FILE's values as defaults (the command line wins) and the preset's values in --help."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    pre.add_argument("--preset")
    known, _ = pre.parse_known_args(argv)
    values = read_config_file(parser, known.config) if known.config else {}
    parser.set_defaults(**values)
    _show_preset_defaults(parser, known.preset or values.get("preset") or parser.get_default("preset"), values)
    return parser.parse_args(argv)


def resolved_config(parser: Parser, args: argparse.Namespace, config: DistillConfig,
                    **more: Any) -> dict[str, Any]:
    """Every option of the command with its value, config fields resolved (the preset's values): what
    --print-config prints and config.yaml holds. adam_eps stays null unless it was set (flag or file), so that the
    file read back with another --precision follows the official rule (config_yaml notes the value it gives). Fields
    a study searches have no flag and are left out."""
    options = file_options(parser)
    values = {k: v for k, v in vars(args).items() if k in options}
    values.update({k: v for k, v in config.to_dict().items() if k in options}, **more)
    if "adam_eps" in values and getattr(args, "adam_eps", None) is None:
        values["adam_eps"] = None
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def config_yaml(values: dict[str, Any]) -> str:
    """The YAML of resolved_config's values; an unset adam_eps carries a comment with the value the rule gives."""
    text = yaml.safe_dump(values, sort_keys=False, default_flow_style=None)
    if values.get("adam_eps", 0) is None and values.get("precision") in PRECISIONS:
        eps = ADAM_EPS.get(values["precision"], ADAM_EPS_DEFAULT)
        text = re.sub(r"^adam_eps: null$", f"adam_eps: null  # the official rule: {eps:g} with precision "
                      f"{values['precision']}", text, count=1, flags=re.M)
    return text


def print_config(values: dict[str, Any]) -> None:
    sys.stdout.write(config_yaml(values))
    sys.exit(0)
