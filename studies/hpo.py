"""Hyperparameter optimisation: Optuna TPE over alpha, lr, glr and sigma_init jointly (learning rates on a log
scale, as sid.config.SEARCHABLE says), ASHA stopping poor trials early in kimg; the best FID a trial reached is what
TPE learns from.

    python studies/hpo.py --num-samples 16
    python studies/hpo.py --alpha-range 0.8,1.5 --lr-range 1e-5,1e-3 --no-asha
"""

from __future__ import annotations

import argparse
import json

from sid.cluster.space import SAMPLERS, Range
from sid.commands.cli import parse
from sid.config import SEARCHABLE, DistillConfig
from studies import _common

RANGES = {  # flag -> (field, default LOW,HIGH); the scale is the field's (sid.config.SEARCHABLE)
    "--alpha-range": ("alpha", "0.5,1.5"),
    "--lr-range": ("lr", "1e-5,1e-3"),
    "--glr-range": ("glr", "1e-5,1e-3"),
    "--sigma-init-range": ("sigma_init", "1.0,4.0"),
}


def points(parser: argparse.ArgumentParser, text: str, base: DistillConfig,
           space: dict[str, Range]) -> tuple[dict, ...]:
    """--points-to-evaluate: the first trials Optuna runs."""
    if text == "none":
        return ()
    if text == "preset":  # the published values (the preset's), where the ranges admit them
        point = {k: getattr(base, k) for k in space if space[k].contains(getattr(base, k))}
        return (point,) if len(point) == len(space) else ()
    try:
        found = json.loads(text)
    except json.JSONDecodeError as exc:
        parser.error(f"--points-to-evaluate: expected 'preset', 'none' or a JSON list of objects, got {text!r} "
                     f"({exc.msg})")
    if not (isinstance(found, list) and all(isinstance(p, dict) for p in found)):
        parser.error(f"--points-to-evaluate: expected a JSON list of objects such as '[{{\"alpha\": 1.0}}]', "
                     f"got {text!r}")
    return tuple(found)


def main(argv: list[str] | None = None) -> None:
    parser = _common.build_parser(__doc__, swept=tuple(field for field, _ in RANGES.values()), asha=True)
    for flag, (field, default) in RANGES.items():
        parser.add_argument(flag, default=default, metavar="LOW,HIGH",
                            help=f"{field} searched in [LOW, HIGH] on a {SEARCHABLE[field]} scale "
                                 f"(default: {default})")
    parser.add_argument("--num-samples", type=int, default=8, help="trials Optuna proposes (default: 8)")
    parser.add_argument("--optuna-seed", type=int, default=0, help="seed of the sampler (default: 0)")
    parser.add_argument("--sampler", default="tpe", choices=list(SAMPLERS),
                        help="Optuna sampler, a key of sid.cluster.space.SAMPLERS: tpe, gp (a Gaussian process with a "
                             "noise term) or random (default: tpe)")
    parser.add_argument("--optuna-storage", default=None, metavar="URL_OR_FILE",
                        help="Optuna storage: a database URL (sqlite:///hpo.db) or a journal file (default: "
                             "<storage>/<name>/optuna.journal); optuna-dashboard opens it")
    parser.add_argument("--points-to-evaluate", default="preset", metavar="JSON|preset|none",
                        help="first trials: a JSON list of {field: value} objects, 'preset' (the preset's own values, "
                             "where inside the ranges) or 'none' (default: preset)")
    args: argparse.Namespace = parse(parser, argv)
    space = {field: _common.parse_range(parser, getattr(args, flag[2:].replace("-", "_")), flag, field)
             for flag, (field, _) in RANGES.items()}
    if args.num_samples < 1:
        parser.error(f"--num-samples: expected a count >= 1, got {args.num_samples}")
    if not 0 <= args.optuna_seed < 2**32:
        parser.error(f"--optuna-seed: expected 0 <= seed < 2**32, got {args.optuna_seed}")
    _common.main(parser, args, script="hpo", searcher="optuna", space=lambda base: space,
                 num_samples=args.num_samples, optuna_seed=args.optuna_seed, sampler=args.sampler,
                 optuna_storage=args.optuna_storage,
                 points_to_evaluate=lambda base: points(parser, args.points_to_evaluate, base, space))


if __name__ == "__main__":
    main()
