"""The sigma_init ablation: one trial per generator input noise level (x --seeds), the rest from --preset.

    python studies/sigma_init_sweep.py                    # digits, sigma_init 1.0,1.5,2.0,2.5,3.0
    python studies/sigma_init_sweep.py --sigma-inits 2.0,2.5 --seeds 2
"""

from __future__ import annotations

import argparse

from sid.cluster.space import Grid
from sid.commands.cli import parse
from studies import _common

DEFAULT_SIGMA_INITS = "1.0,1.5,2.0,2.5,3.0"


def main(argv: list[str] | None = None) -> None:
    parser = _common.build_parser(__doc__, swept=("sigma_init",), asha=False)
    parser.add_argument("--sigma-inits", default=DEFAULT_SIGMA_INITS,
                        help=f"comma-separated sigma_init values, one trial each (default: {DEFAULT_SIGMA_INITS})")
    parser.add_argument("--seeds", type=int, default=1, help="repeat each value with this many seeds (default: 1)")
    args: argparse.Namespace = parse(parser, argv)
    values = _common.parse_numbers(parser, args.sigma_inits, "--sigma-inits")
    _common.main(parser, args, script="sigma_init_sweep", searcher="grid",
                 space=lambda base: {"sigma_init": Grid(values), **_common.seed_space(parser, args.seeds, base)})


if __name__ == "__main__":
    main()
