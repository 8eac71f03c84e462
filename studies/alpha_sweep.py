"""The paper's alpha ablation (SiD, Zhou et al. 2024): one trial per alpha (x --seeds), the rest from --preset.

    python studies/alpha_sweep.py                         # digits, alphas 0.5,0.75,1.0,1.2,1.5, local Ray, CPU
    python studies/alpha_sweep.py --alphas 1.0,1.2 --seeds 3 --preset cifar10-uncond --address auto
"""

from __future__ import annotations

import argparse

from studies import _common
from ray import tune

DEFAULT_ALPHAS = "0.5,0.75,1.0,1.2,1.5"


def main(argv: list[str] | None = None) -> None:
    parser = _common.build_parser(__doc__, swept=("alpha",), asha=False)
    parser.add_argument("--alphas", default=DEFAULT_ALPHAS,
                        help=f"comma-separated alphas, one trial each (default: {DEFAULT_ALPHAS})")
    parser.add_argument("--seeds", type=int, default=1, help="repeat each alpha with this many seeds (default: 1)")
    args: argparse.Namespace = _common.parse(parser, argv)
    alphas = _common.parse_numbers(parser, args.alphas, "--alphas")
    _common.main(parser, args, script="alpha_sweep", searcher="grid",
                 space=lambda base: {"alpha": tune.grid_search(alphas), **_common.seed_space(parser, args.seeds, base)})


if __name__ == "__main__":
    main()
