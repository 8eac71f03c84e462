"""`sid digits`: train the embedded default's networks (sid/digits.py) with fixed seeds.

    sid digits train-detector --out sid/data/digits-features-v1.pt
    sid digits train-teacher  --out sid/data/digits-teacher.pt
    sid digits train-ddpm-teacher --out sid/data/digits-ddpm
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from sid.digits import train_detector, train_teacher
from sid.flags import Parser


def build_parser() -> Parser:
    parser = Parser(prog="sid digits", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train-teacher", "train-detector"):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, required=True, help="where to write the weight file (.pt)")
        p.add_argument("--steps", type=int, default=4000 if name == "train-teacher" else 1500, help="optimiser steps")
        p.add_argument("--seed", type=int, default=0, help="random seed")
    ddpm = sub.add_parser("train-ddpm-teacher", help="the diffusers DDPM teacher (a pipeline folder)")
    ddpm.add_argument("--out", type=Path, required=True, help="the pipeline folder to write (unet/ + scheduler/)")
    ddpm.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    ddpm.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_flush_denormal(True)  # denormals made CPU iterations up to 10x slower
    if args.command == "train-ddpm-teacher":
        from sid.digits_ddpm import train_ddpm_teacher  # noqa: PLC0415 (imports diffusers: only this subcommand)

        print(f"wrote {args.out}: {train_ddpm_teacher(args.out, steps=args.steps, seed=args.seed)}")
        return
    start = time.time()
    if args.command == "train-teacher":
        saved = train_teacher(steps=args.steps, seed=args.seed)
    else:
        saved = train_detector(steps=args.steps, seed=args.seed)
    saved["meta"]["train_seconds"] = round(time.time() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, args.out)
    print(f"wrote {args.out}: {saved['meta']}")
