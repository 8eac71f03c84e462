"""One distillation run from the command line: `python -m sid distill --preset digits --out runs/digits`.

With `--workers 1` and no `--address` the run happens in this process; otherwise it runs through Ray Train
(sid.cluster.distributed). Started by torchrun (`torchrun --nproc-per-node N -m sid distill ...`), each process runs
its rank of one run over torch.distributed, without Ray (sid.run.torchrun_rank). The run folder's files are described
in sid/files.py: `evaluations.parquet`, `checkpoint.pt`, `snapshots/generator-<kimg>.pt`, `best.pt` and
`samples-<iteration>.png`. `--resume` continues a folder's run.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from sid.assets import AssetError
from sid.commands.cli import (
    add_config_file_flags,
    add_config_flags,
    add_preset_flag,
    add_resource_flags,
    add_tracking_flags,
    config_from_args,
    config_yaml,
    parse,
    print_config,
    resolved_config,
    resources_from_args,
    tracking_from_args,
)
from sid.devices import parse_device, rank_device
from sid.files import CHECKPOINT, TRACKING_OFF_FILE
from sid.flags import Parser
from sid.results import is_uri
from sid.run import process_group, run_local, torchrun_rank
from sid.tracking import DEFAULT_EXPERIMENT, off_note


def build_parser() -> Parser:
    parser = Parser(prog="sid distill", description=__doc__.split("\n\n")[0])
    add_preset_flag(parser)
    add_config_file_flags(parser)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<preset>)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (single-process runs; under "
                                                         "torchrun auto, cuda or cpu: rank k takes cuda:<LOCAL_RANK>)")
    parser.add_argument("--address", default=None, help="Ray cluster address ('auto' joins a running cluster)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    add_resource_flags(parser, per="run")
    add_tracking_flags(parser, experiment=DEFAULT_EXPERIMENT)
    add_config_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parse(parser, argv)
    config = config_from_args(parser, args)
    out = Path(args.out) if args.out else Path("runs") / config.preset
    resources = resources_from_args(parser, args)
    tracking = tracking_from_args(parser, args, experiment=DEFAULT_EXPERIMENT)
    values = resolved_config(parser, args, config, out=str(out))
    if args.print_config:
        print_config(values)
    if is_uri(args.out or ""):
        parser.error(f"--out {args.out}: expected a local or mounted shared folder (rows and checkpoints are written "
                     "with plain file I/O), not a URL")
    blocked = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        parser.error(f"--out {out}: {blocked} exists and is not a folder")
    try:
        torchrun = torchrun_rank()
        device = parse_device(args.device) if torchrun is None else rank_device(args.device, torchrun.local_rank)
    except ValueError as exc:
        parser.error(str(exc))
    if torchrun is not None and (resources.workers != 1 or args.address is not None):
        parser.error("under torchrun each process is one rank (torchrun's --nproc-per-node and --nnodes set their "
                     "number): leave out --workers and --address")
    rank = torchrun.rank if torchrun is not None else 0
    has_state = (out / CHECKPOINT).exists()
    if torchrun is not None and torchrun.restart > 0 and has_state:  # torchrun --max-restarts restarted the group
        args.resume = True
    if args.resume and not has_state:
        parser.error(f"--resume: {out} holds no {CHECKPOINT} to continue from")
    if has_state and not args.resume:
        parser.error(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if rank == 0:
        print("config:", ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()), flush=True)
    start = time.time()
    try:
        for stale in out.glob(".*.tmp") if rank == 0 else ():  # half-written by a killed run (written, then renamed)
            stale.unlink()
        if rank == 0:
            (out / TRACKING_OFF_FILE).unlink(missing_ok=True)  # an earlier attempt's switched-off trackers
        if torchrun is not None:
            with process_group(device, torchrun):
                path = run_local(config, out, device=device, resume=args.resume, progress=not args.no_progress,
                                 tracking=tracking, config_text=config_yaml(values), rank=rank,
                                 world_size=torchrun.world_size)
        elif resources.workers == 1 and args.address is None:
            path = run_local(config, out, device=device, resume=args.resume, progress=not args.no_progress,
                             tracking=tracking, config_text=config_yaml(values))
        else:
            from sid.cluster.distributed import run_distributed  # noqa: PLC0415 (imports Ray: only this path needs it)

            path = run_distributed(config, out, resources=resources, address=args.address, resume=args.resume,
                                   tracking=tracking, config_text=config_yaml(values))
    except ValueError as exc:  # bad checkpoint/teacher/asset: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (OSError, AssetError) as exc:  # results disk full or read-only, a download failed: not the input's fault
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if rank == 0:
        print(f"done in {time.time() - start:.0f} s; evaluations: {path}{off_note(out)}")
