"""Command-line plumbing shared by `python -m sid.distill` and the study scripts: every DistillConfig field becomes
a `--field-name` flag whose help is the field's comment, and every bad value exits with one line and code 2."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from typing import Any

from sid.config import PRESETS, ConfigError, DistillConfig, preset

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


def add_preset_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="digits", choices=list(PRESETS), metavar="NAME",
                        help=f"starting values for every field: {', '.join(PRESETS)} (default: digits)")


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, **extra: Any) -> DistillConfig:
    """The validated config of the parsed flags; a bad value ends the program with exit code 2."""
    names = {f.name for f in dataclasses.fields(DistillConfig)} - {"preset"}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    try:
        return preset(args.preset, **{**overrides, **extra})
    except ConfigError as exc:
        parser.error(str(exc))
