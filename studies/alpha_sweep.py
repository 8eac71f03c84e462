"""The paper's alpha ablation (SiD, Zhou et al. 2024): one trial per alpha and seed, the rest from --preset.

Trials that share a seed share their training noise and evaluation latents, so analysis/compare.py compares alphas
paired by seed.

    python studies/alpha_sweep.py                         # digits, alphas 0.5,1.0,1.2 x 3 seeds, local Ray, CPU
    python studies/alpha_sweep.py --alphas 1.0,1.2 --seeds 3 --preset cifar10-uncond --address auto
"""

from __future__ import annotations

import argparse

from sid.cluster.space import Grid
from sid.commands.cli import parse
from studies import _common

DEFAULT_ALPHAS = "0.5,1.0,1.2"  # the paper's claim on digits: 0.5 worse, 1.0-1.2 best
DEFAULT_SEEDS = 3  # the fewest that give a paired interval with a usable width (docs/digits_preset.md)


def main(argv: list[str] | None = None) -> None:
    parser = _common.build_parser(__doc__, swept=("alpha",), asha=False)
    parser.add_argument("--alphas", default=DEFAULT_ALPHAS,
                        help=f"comma-separated alphas, one trial each (default: {DEFAULT_ALPHAS})")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"repeat each alpha with seeds --seed .. --seed + K - 1 (default: {DEFAULT_SEEDS})")
    args: argparse.Namespace = parse(parser, argv)
    alphas = _common.parse_numbers(parser, args.alphas, "--alphas")
    _common.main(parser, args, script="alpha_sweep", searcher="grid",
                 space=lambda base: {"alpha": Grid(alphas), **_common.seed_space(parser, args.seeds, base)})


if __name__ == "__main__":
    main()
