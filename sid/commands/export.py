"""Export a run's generator (G_ema) as safetensors + JSON, readable without this package and without running code.

    sid export RUN --format safetensors [--out FILE.safetensors]

writes FILE.safetensors (the state dict, float32; EDM's parameter names for an EDM network, diffusers' under `unet.`
for a diffusers VP one) and FILE.json beside it: the saved generator's fields (sid.saved.SavedGenerator.export_json):
`init_kwargs` (the network's constructor arguments and its `kind`: the diffusers config and schedule of a VP network;
for a factory-made one only the factory's name, which runs only when named again with --factory),
`sigma_init`, `preset`, `teacher`, `fid_detector`, `fid_ref`, `best_fid` and its `fid_images`/`kimg`/`iteration`, the
`source` it was exported from and the run's whole `config`. The same JSON is stored in the safetensors header metadata
under "sid". Non-finite numbers (e.g. sigma_max = inf) are written as the strings "inf"/"-inf"/"nan" so the JSON is
strict. `sid.generators.load_generator(FILE)` (SavedGenerator.load) rebuilds the network; its images are
bit-identical to the run's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sid.files import EXPORT_FILE
from sid.flags import Parser
from sid.generators import FACTORY_HELP, load_generator

FORMATS = ("safetensors",)


def export_safetensors(source: str | Path, out: str | Path, *, factory: str | None = None) -> tuple[Path, Path]:
    """Write `out` (.safetensors) and its .json for the generator `source` resolves to (sid.generators; a
    factory-made one is rebuilt by `factory`)."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out: expected a file name ending in .safetensors, got {str(out)!r}")
    # the network is built once: weights that do not fit are refused here
    _, saved = load_generator(source, factory=factory)
    return saved.save(out), out.with_suffix(".json")


def build_parser() -> Parser:
    parser = Parser(prog="sid export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run folder, snapshot .pt, or SiD/EDM network-snapshot .pkl (path or URL)")
    parser.add_argument("--format", default="safetensors", choices=FORMATS, help="output format")
    parser.add_argument("--out", default=None, help=f"output .safetensors (default: RUN/{EXPORT_FILE}; the .json "
                                                    "goes beside it)")
    parser.add_argument("--factory", default=None, metavar="MODULE:FUNCTION", help=FACTORY_HELP)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else (run if run.is_dir() else run.parent) / EXPORT_FILE
    if not str(out).endswith(".safetensors"):
        parser.error(f"--out: expected a file name ending in .safetensors, got {str(out)!r}")
    try:
        weights, meta = export_safetensors(args.run, out, factory=args.factory)
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {weights} and {meta}")
