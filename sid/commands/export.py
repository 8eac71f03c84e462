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

`--model-card` also writes README.md beside them (sid.model_card): the Hub's model card with the generator's settings,
its FD ± spread, detector and image count, its licence, and the `hf upload` line that publishes the folder to
`--repo-id`; `sid generate --network hf://ORG/NAME` then reads it back.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from sid.files import EXPORT_FILE, write_text_atomic
from sid.flags import Parser
from sid.generators import FACTORY_HELP, load_generator
from sid.model_card import CARD_FILE, evaluation_row, render

FORMATS = ("safetensors",)


def export_safetensors(source: str | Path, out: str | Path, *,
                       card_repo: str | None = None,  # a Hub repo id: also write the model card
                       factory: str | None = None,    # MODULE:FUNCTION that rebuilds a factory-made generator
                       ) -> tuple[Path, ...]:
    """Write `out` (.safetensors) and its .json for the generator `source` resolves to (sid.generators; a
    factory-made one is rebuilt by `factory`), and with `card_repo` README.md beside them; return the paths written."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out: expected a file name ending in .safetensors, got {str(out)!r}")
    # the network is built once: weights that do not fit are refused here
    net, saved = load_generator(source, factory=factory)
    written = (saved.save(out), out.with_suffix(".json"))
    if card_repo is None:
        return written
    text, placeholder = render(saved, repo_id=card_repo, export_folder=out.parent, row=evaluation_row(source, saved),
                               shape=(int(net.img_resolution), int(net.img_channels)))
    if placeholder:
        print(f"warning: the teacher's licence is not known: {out.parent / CARD_FILE} says 'license: unknown'; "
              "fill it in before uploading", file=sys.stderr)
    return (*written, write_text_atomic(out.parent / CARD_FILE, text))


def build_parser() -> Parser:
    parser = Parser(prog="sid export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run folder, snapshot .pt, or SiD/EDM network-snapshot .pkl (path or URL)")
    parser.add_argument("--format", default="safetensors", choices=FORMATS, help="output format")
    parser.add_argument("--out", default=None, help=f"output .safetensors (default: RUN/{EXPORT_FILE}; the .json "
                                                    "goes beside it)")
    parser.add_argument("--model-card", action="store_true",
                        help=f"also write {CARD_FILE}, the Hugging Face Hub model card, beside the export")
    parser.add_argument("--repo-id", default=None, metavar="ORG/NAME",
                        help="the Hub repository the card's load and `hf upload` lines name (default: "
                             "YOUR-ORG/<run folder name>)")
    parser.add_argument("--factory", default=None, metavar="MODULE:FUNCTION", help=FACTORY_HELP)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else (run if run.is_dir() else run.parent) / EXPORT_FILE
    if not str(out).endswith(".safetensors"):
        parser.error(f"--out: expected a file name ending in .safetensors, got {str(out)!r}")
    if args.repo_id is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", args.repo_id):
        parser.error(f"--repo-id: expected a Hub repository id ORG/NAME, got {args.repo_id!r}")
    repo_id = args.repo_id or f"YOUR-ORG/{(run if run.is_dir() else run.parent).resolve().name}"
    try:
        weights, meta, *card = export_safetensors(args.run, out, card_repo=repo_id if args.model_card else None,
                                                  factory=args.factory)
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {weights} and {meta}" + "".join(f"; model card {path}" for path in card))
