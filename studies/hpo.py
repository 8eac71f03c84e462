"""Hyperparameter optimisation: Optuna TPE over alpha, lr, glr and sigma_init jointly (learning rates on a log
scale), ASHA stopping poor trials early in kimg; the best FID a trial reached is what TPE learns from.

    python studies/hpo.py --num-samples 16
    python studies/hpo.py --alpha-range 0.8,1.5 --lr-range 1e-5,1e-3 --no-asha
"""

from __future__ import annotations

import argparse

from studies import _common
from ray import tune

RANGES = {  # flag -> (field, default LOW,HIGH, log scale)
    "--alpha-range": ("alpha", "0.5,1.5", False),
    "--lr-range": ("lr", "1e-5,1e-3", True),
    "--glr-range": ("glr", "1e-5,1e-3", True),
    "--sigma-init-range": ("sigma_init", "1.0,4.0", False),
}


def main(argv: list[str] | None = None) -> None:
    parser = _common.build_parser(__doc__, swept=tuple(field for field, _, _ in RANGES.values()), asha=True)
    for flag, (field, default, log) in RANGES.items():
        parser.add_argument(flag, default=default, metavar="LOW,HIGH",
                            help=f"{field} searched in [LOW, HIGH]{' on a log scale' if log else ''} "
                                 f"(default: {default})")
    parser.add_argument("--num-samples", type=int, default=8, help="trials Optuna proposes (default: 8)")
    parser.add_argument("--optuna-seed", type=int, default=0, help="seed of the TPE sampler (default: 0)")
    args: argparse.Namespace = _common.parse(parser, argv)
    space = {}
    for flag, (field, _, log) in RANGES.items():
        low, high = _common.parse_range(parser, getattr(args, flag[2:].replace("-", "_")), flag, log=log)
        space[field] = tune.loguniform(low, high) if log else tune.uniform(low, high)
    if args.num_samples < 1:
        parser.error(f"--num-samples: expected a count >= 1, got {args.num_samples}")
    if not 0 <= args.optuna_seed < 2**32:
        parser.error(f"--optuna-seed: expected 0 <= seed < 2**32, got {args.optuna_seed}")
    _common.main(parser, args, script="hpo", searcher="optuna", space=lambda base: space,
                 num_samples=args.num_samples, optuna_seed=args.optuna_seed)


if __name__ == "__main__":
    main()
