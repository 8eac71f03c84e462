"""What Ray Train costs one SiD run: wall time of the same kimg in-process vs through Ray Train with N workers.

    python benchmarks/ray_overhead.py --kimg 2.56 --workers 1,2

Each mode runs the digits preset (or --preset) from scratch into its own folder. `total` is the whole call (Ray start,
worker processes, teacher/detector loading, evaluations, checkpoints); `train` is the final row's wall_s (training
only, evaluations excluded), so `total - train` is the fixed cost and `train` the per-iteration cost of each mode.
Ratios are to the in-process run; each mode's best of --repeat rounds counts. On CPU the workers share the cores (N
workers split the batch, not the hardware); run with OMP_NUM_THREADS=1 on a busy machine, where processes with 2
threads each can slow down many times over.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from sid.cluster.resources import TrialResources
from sid.run import run_local

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local cluster, no token file needed (docs/ray-notes.md pitfall 3)
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

import torch

from sid.config import preset
from sid.devices import parse_device
from sid.results import read_evaluations


def run_mode(config, out: Path, workers: int, gpus_per_worker: float, device: str) -> dict:
    start = time.perf_counter()
    if workers == 0:
        path = run_local(config, out, device=parse_device(device), resume=False, progress=False)
        threads = torch.get_num_threads()
    else:
        from sid.cluster.distributed import run_distributed  # noqa: PLC0415 (imports Ray: only this path needs it)

        path = run_distributed(config, out, resources=TrialResources(workers=workers, gpus_per_worker=gpus_per_worker),
                               address=None, resume=False)
        threads = json.loads((out / "workers" / "rank0.json").read_text())["torch_threads"]
    total = time.perf_counter() - start
    last = read_evaluations(path).iloc[-1]
    return dict(mode="in-process" if workers == 0 else f"ray x{workers}", threads=threads, total_s=total,
                train_s=float(last["wall_s"]), kimg=float(last["kimg"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="digits", help="config preset")
    parser.add_argument("--teacher", default=None, help="teacher override (default: the preset's)")
    parser.add_argument("--kimg", type=float, default=2.56, help="duration of each run in kimg")
    parser.add_argument("--fid-images", type=int, default=512, help="images per evaluation (at 0, middle, end)")
    parser.add_argument("--workers", default="1,2", help="comma-separated Ray Train worker counts to time")
    parser.add_argument("--repeat", type=int, default=2, help="rounds over all modes; the best round counts")
    parser.add_argument("--gpus-per-worker", type=float, default=0, help="0 = CPU workers")
    parser.add_argument("--device", default="auto", help="device of the in-process run")
    parser.add_argument("--out", type=Path, default=None, help="folder for the run folders (default: a temp folder)")
    args = parser.parse_args()
    teacher = {"teacher": args.teacher} if args.teacher else {}
    config = preset(args.preset, duration_kimg=args.kimg, eval_every_kimg=args.kimg / 2, fid_images=args.fid_images,
                    **teacher)
    root = args.out or Path(tempfile.mkdtemp(prefix="ray_overhead-"))
    print(f"{args.preset}: {args.kimg} kimg = {config.iterations} iterations of batch {config.batch}; in {root}")
    modes = [0, *map(int, args.workers.split(","))]
    runs = []
    for k in range(args.repeat):
        for n in modes:
            runs.append(run_mode(config, root / f"round{k}-workers{n}", n, args.gpus_per_worker, args.device))
            print(f"round {k}: {runs[-1]} load average {os.getloadavg()[0]:.1f}", flush=True)
    # best of the rounds per mode: on a shared machine the noise only ever adds time
    results = [min((r for r in runs if r["mode"] == mode), key=lambda r: r["total_s"])
               for mode in dict.fromkeys(r["mode"] for r in runs)]
    base = results[0]
    print(f"\n{'mode':<12}{'threads':>8}{'total s':>10}{'train s':>10}{'fixed s':>10}{'total/in-proc':>15}"
          f"{'train/in-proc':>15}")
    for r in results:
        print(f"{r['mode']:<12}{r['threads']:>8}{r['total_s']:>10.1f}{r['train_s']:>10.1f}"
              f"{r['total_s'] - r['train_s']:>10.1f}{r['total_s'] / base['total_s']:>15.2f}"
              f"{r['train_s'] / base['train_s']:>15.2f}")


if __name__ == "__main__":
    main()
