"""The `sid` console script: `sid distill|generate|evaluate|export|phema ...`, each the `main(argv)` of one module.

Modules are imported only for the command that runs, so `sid generate --help` does not pay for Ray or the
distillation code. The study and analysis scripts stay `python studies/...` and `python analysis/...`.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {  # name: (module whose main(argv) runs it, one-line help)
    "distill": ("sid.run", "distil a teacher into a one-step generator (= python -m sid.distill)"),
    "generate": ("sid.generate", "sample a generator into PNGs and/or an npz, one image per seed"),
    "evaluate": ("sid.evaluate", "FD/FID (+ Inception Score) of a generator, image folder or npz over draws"),
    "export": ("sid.export", "write a run's generator as safetensors + JSON"),
    "phema": ("sid.posthoc", "rebuild and score the generator's EMA of other lengths after training (post-hoc EMA)"),
}


def usage() -> str:
    lines = ["usage: sid COMMAND [options]   (sid COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<10}{text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] not in COMMANDS:
        print(f"{usage()}\n\nsid: error: unknown command {argv[0]!r}; expected one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[argv[0]][0])
    module.main(argv[1:])


if __name__ == "__main__":
    main()
