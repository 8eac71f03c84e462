"""One distillation run from the command line: `python -m sid.distill --preset digits --out runs/digits`.

With `--workers 1` and no `--address` the run happens in this process; otherwise it runs through Ray Train
(sid.distributed). A run folder holds `evaluations.parquet` (one row per evaluation), `checkpoint.pt` (the complete
training state, rewritten at each evaluation), `generator.pt` (G_ema weights + constructor arguments) and
`samples-<iteration>.png` grids. `--resume` continues a folder's run from its checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from sid.assets import AssetError
from sid.cli import add_config_flags, add_preset_flag, config_from_args
from sid.config import DistillConfig
from sid.distill import Distiller
from sid.loop import Evaluator, train
from sid.results import EVALUATION_SCHEMA, is_uri, read_parquet, upsert_evaluations, write_file_atomic
from sid.teachers import load_plain

CHECKPOINT = "checkpoint.pt"
EVALUATIONS = "evaluations.parquet"


def save_atomic(obj: object, path: Path) -> None:
    write_file_atomic(path, lambda f: torch.save(obj, f))


def save_image_grid(images: torch.Tensor, path: Path, scale: int = 4) -> None:
    """Images in [-1, 1] (N, C, H, W) tiled into a square-ish PNG, upscaled `scale` times for small images."""
    from PIL import Image

    n, c, h, w = images.shape
    cols = int(n**0.5) or 1
    rows = -(-n // cols)
    grid = torch.full((c, rows * (h + 1) + 1, cols * (w + 1) + 1), -1.0)
    for i, img in enumerate(images.clamp(-1, 1)):
        r, k = divmod(i, cols)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w] = img
    pixels = ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
    image = Image.fromarray(pixels)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    write_file_atomic(path, lambda f: image.save(f, format="PNG"))


class RunFolder:
    """The single-process sink: rows to Parquet first, then the checkpoint, so an interruption between the two
    re-runs to the same point and rewrites the same row instead of losing it. A diverged state is not saved: the
    checkpoint and generator stay the last good ones."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)

    def __call__(self, row: dict, distiller: Distiller) -> None:
        upsert_evaluations(self.out / EVALUATIONS, [row])
        save_image_grid(distiller.sample(0, 64).cpu(), self.out / f"samples-{distiller.iteration:07d}.png")
        if row["status"] != "ok":
            return
        save_atomic(dict(init_kwargs=dict(distiller.generator_ema.init_kwargs),
                         state_dict=distiller.generator_ema.state_dict(), sigma_init=distiller.config.sigma_init,
                         config=distiller.config.to_dict(), kimg=distiller.kimg), self.out / "generator.pt")
        save_atomic({**distiller.state_dict(), "wall_s": row["wall_s"]}, self.out / CHECKPOINT)


def load_checkpoint(path: Path, config: DistillConfig) -> dict:
    """A run's saved state, refused if it was made with a different config (duration_kimg may grow)."""
    state = load_plain(path, "training checkpoint of this project")
    try:
        # init_generator came after the first checkpoints: theirs started from the teacher ('')
        saved = {"init_generator": "", **state["config"], "duration_kimg": config.duration_kimg}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a training checkpoint of this project (no config: {exc!r})") from exc
    if saved != config.to_dict():
        diff = {k: (saved[k], v) for k, v in config.to_dict().items() if saved.get(k) != v}
        raise ValueError(f"{path} was written with a different config (saved vs now: {diff})")
    return state


def pick_device(name: str) -> torch.device:
    """'auto' (CUDA if present), 'cpu', 'cuda' or 'cuda:N'; ValueError for a device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def run_local(config: DistillConfig, out: Path, *, device: torch.device, resume: bool, progress: bool = True) -> Path:
    """Run (or continue) one distillation in this process; return the evaluations file."""
    from sid.teachers import load_teacher

    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals made CPU iterations up to 10x slower
    distiller = Distiller(config, load_teacher(config.teacher), device=device)
    wall_s = 0.0
    if resume:
        state = load_checkpoint(out / CHECKPOINT, config)
        if (out / EVALUATIONS).exists():  # a torn rows file (power loss, cut copy) stops the resume now, untouched
            read_parquet(out / EVALUATIONS, EVALUATION_SCHEMA)
        distiller.load_state_dict(state)
        wall_s = state["wall_s"]
        print(f"resuming {out} at kimg {distiller.kimg:.1f}")
    train(distiller, evaluator=Evaluator(config, device), on_evaluation=RunFolder(out), trial_id=out.name,
          wall_s=wall_s, progress=progress, resumed=resume)
    return out / EVALUATIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sid.distill", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     allow_abbrev=False)  # a typo must not silently become another flag
    add_preset_flag(parser)
    parser.add_argument("--out", default=None, help="run folder (default: runs/<preset>)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (single-process runs)")
    parser.add_argument("--workers", type=int, default=1, help="DDP workers; > 1 runs through Ray Train")
    parser.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per Ray Train worker (0 = CPU)")
    parser.add_argument("--address", default=None, help="Ray cluster address ('auto' joins a running cluster)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    add_config_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(parser, args)
    out = Path(args.out) if args.out else Path("runs") / config.preset
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if not args.gpus_per_worker >= 0:  # NaN included
        parser.error(f"--gpus-per-worker must be >= 0, got {args.gpus_per_worker}")
    if is_uri(args.out or ""):
        parser.error(f"--out {args.out}: expected a local or mounted shared folder (rows and checkpoints are written "
                     "with plain file I/O), not a URL")
    blocked = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        parser.error(f"--out {out}: {blocked} exists and is not a folder")
    try:
        device = pick_device(args.device)
    except ValueError as exc:
        parser.error(f"--device: {exc}")
    has_state = (out / CHECKPOINT).exists()
    if args.resume and not has_state:
        parser.error(f"--resume: {out} holds no {CHECKPOINT} to continue from")
    if has_state and not args.resume:
        parser.error(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    print("config:", ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()), flush=True)
    start = time.time()
    try:
        for stale in out.glob(".*.tmp"):  # half-written by a killed run (files are written beside, then renamed)
            stale.unlink()
        if args.workers == 1 and args.address is None:
            path = run_local(config, out, device=device, resume=args.resume, progress=not args.no_progress)
        else:
            from sid.distributed import run_distributed

            path = run_distributed(config, out, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                                   address=args.address, resume=args.resume)
    except ValueError as exc:  # bad checkpoint/teacher/asset: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (OSError, AssetError) as exc:  # results disk full or read-only, a download failed: not the input's fault
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"done in {time.time() - start:.0f} s; evaluations: {path}")


if __name__ == "__main__":
    main()
