"""Every command line of the package: the `sid` console script, `sid COMMAND ...` (= `python -m sid COMMAND ...`),
runs the `main(argv)` of one module of this folder.

Modules are imported only for the command that runs, so `sid generate --help` does not pay for Ray or the
distillation code. The study and analysis scripts stay `python studies/...` and `python analysis/...`; they share
this folder's flag layer (cli.py). Nothing in the library (sid/*.py) or the cluster wing (sid/cluster/) imports it.
"""

from __future__ import annotations

import importlib
import sys

from sid import __version__

COMMANDS = {  # name: (module whose main(argv) runs it, one-line help)
    "distill": ("sid.commands.distill", "distil a teacher into a one-step generator"),
    "generate": ("sid.commands.generate", "sample a generator into PNGs and/or an npz, one image per seed"),
    "evaluate": ("sid.commands.evaluate", "FD/FID (+ Inception Score) of a generator, image folder or npz over draws"),
    "export": ("sid.commands.export", "write a run's generator as safetensors + JSON"),
    "phema": ("sid.commands.phema", "rebuild and score the generator's EMA of other lengths (post-hoc EMA)"),
    "ref": ("sid.commands.ref", "reference statistics (mu, sigma, class counts) of a dataset, for --fid-ref"),
    "digits": ("sid.commands.digits", "train the embedded digits default's teacher or feature network"),
}


def usage() -> str:
    lines = ["usage: sid COMMAND [options]   (sid COMMAND --help for its options; sid --version)", "", "commands:"]
    lines += [f"  {name:<10}{text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] == "--version":
        print(f"sid-studies {__version__}")
        return
    if argv[0] not in COMMANDS:
        print(f"{usage()}\n\nsid: error: unknown command {argv[0]!r}; expected one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[argv[0]][0])
    module.main(argv[1:])

