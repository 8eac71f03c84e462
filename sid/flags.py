"""The argparse parser of every command line of the project (`sid COMMAND`, the study and analysis scripts, the
benchmarks): a flag is never abbreviated (a typo must not silently become another flag), each help ends with its
default, the options are listed for config files (sid/commands/cli.py), and a renamed flag's old spelling ends the
program with one line naming the new one (no alias is kept: one spelling per flag on every command).

Only argparse's public interface is used: add_argument's keywords, the Action it returns, and Action subclasses.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

# Flags spelled otherwise before one spelling per flag (docs/reliability.md): old -> new, where a command had it.
RENAMED = {
    "--detector": "--fid-detector",
    "--ref": "--fid-ref",
    "--images": "--fid-images",
    "--batch": "--batch-per-device",
    "--outdir": "--out",
}


def with_default(kwargs: dict[str, Any]) -> dict[str, Any]:
    """add_argument's keywords with '(default: X)' after a help that does not say its default; none for None, False
    or a flag (a None default means 'see the help', which says what is used then)."""
    text, default, action = kwargs.get("help"), kwargs.get("default"), kwargs.get("action")
    if not text or text is argparse.SUPPRESS or "(default" in text:
        return kwargs
    if action is argparse.BooleanOptionalAction:
        return {**kwargs, "help": f"{text} (default: {'on' if default else 'off'})"}
    if default is None or default is False or default is argparse.SUPPRESS or default in ([], "") \
            or action in ("store_true", "help"):
        return kwargs
    return {**kwargs, "help": f"{text} (default: {str(default).replace('%', '%%')})"}


class Renamed(argparse.Action):
    """A flag's old spelling: no command accepts it; it ends the program with one line naming the new spelling."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> NoReturn:
        parser.error(f"{option_string} is no longer accepted: use {self.new}")


class Parser(argparse.ArgumentParser):
    """argparse without abbreviations, with each option's action kept in `options` (dest -> Action) and the
    repeatable ones in `appended`, and the old spellings `renamed` ({old flag: new flag or what replaced it})."""

    def __init__(self, *args: Any, renamed: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        self.options: dict[str, argparse.Action] = {}
        self.appended: set[str] = set()
        self.renamed = dict(renamed or {})
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, allow_abbrev=False, **kwargs)
        for old, new in self.renamed.items():
            super().add_argument(old, action=Renamed, new=new, dest=f"renamed {old}")

    def add_argument(self, *flags: str, **kwargs: Any) -> argparse.Action:
        return self.remember(super().add_argument(*flags, **with_default(kwargs)), kwargs)

    def group(self, title: str) -> Group:
        """A titled group of options in --help, whose options the parser keeps like its own."""
        return Group(self, self.add_argument_group(title))

    def remember(self, action: argparse.Action, kwargs: dict[str, Any]) -> argparse.Action:
        if action.help:  # some Python versions' BooleanOptionalAction adds a second default to the help
            action.help = action.help.removesuffix(" (default: %(default)s)")
        if action.option_strings and action.dest != "help":
            self.options[action.dest] = action
            if kwargs.get("action") == "append":
                self.appended.add(action.dest)
        return action


class Group:
    """An argument group of a Parser (argparse's group would not tell the parser which options it holds)."""

    def __init__(self, parser: Parser, group: Any) -> None:  # group: what add_argument_group returned
        self.parser, self.group = parser, group

    def add_argument(self, *flags: str, **kwargs: Any) -> argparse.Action:
        return self.parser.remember(self.group.add_argument(*flags, **with_default(kwargs)), kwargs)
