"""SiD against SiDA (docs/sida.md): one trial per method and seed, the same teacher, budget and evaluation.

Trials that share a seed share their generator noise and evaluation latents, so analysis/compare.py compares the two
methods paired by seed (`python analysis/compare.py <storage>/<name> --x method`). SiDA needs the teacher's real
images: `--data` (the digits presets read the shipped digits without it). Each trial's rows carry its method and its
device-seconds, so the report also gives what SiDA's real data and extra forward passes cost.

    python studies/method_compare.py                       # digits default (25.6 kimg), 4 seeds, local Ray, CPU
    python studies/method_compare.py --preset cifar10-uncond --data cifar10-32x32.zip --seeds 3 --address auto \\
        --gpus-per-trial 1
"""

from __future__ import annotations

import argparse

from sid.cluster.space import Grid
from sid.commands.cli import parse
from sid.config import METHODS, PRESETS
from sid.real_images import DIGITS_DATA
from studies import _common

DEFAULT_PRESET = "digits"  # the whole digits run: SiDA's warm-ups (4.1 and 8.2 kimg) leave it 17 kimg of its own
DEFAULT_SEEDS = 4          # paired differences need n >= 2 for an interval; 4 gives a usable width on the digits


def main(argv: list[str] | None = None) -> None:
    parser = _common.build_parser(__doc__, swept=("method",), asha=False)
    parser.set_defaults(preset=DEFAULT_PRESET)
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"run each method with seeds --seed .. --seed + K - 1 (default: {DEFAULT_SEEDS})")
    args: argparse.Namespace = parse(parser, argv)
    if not args.data:
        if PRESETS[args.preset]["teacher"] != DIGITS_DATA:
            parser.error(f"--data: SiDA trains on the teacher's real images; give them for preset {args.preset}")
        args.data = DIGITS_DATA  # the digits presets' real images ship with the package
    _common.main(parser, args, script="method_compare", searcher="grid",
                 space=lambda base: {"method": Grid(METHODS), **_common.seed_space(parser, args.seeds, base)})


if __name__ == "__main__":
    main()
