"""Sample a one-step generator into PNGs and/or an npz, one image per seed.

    sid generate --network runs/digits --seeds 0-49999 --out out/ --npz out.npz

`--network`: a run folder (best.pt, else generator.pt), a snapshot .pt, an export .safetensors, an official SiD/EDM
network-snapshot .pkl (path or URL; read without executing its code) or 'digits' / 'edm:<name>' (the teacher as a
generator: SiD's starting point). Image i depends on seed i alone (sid.generators), and pixels are quantised with
sid.metrics.quantize, so the files hold exactly the images the in-memory FD of `sid evaluate` sees. With more than one
CUDA device the seeds are split into one contiguous shard per device (one process each). `--rng official` draws each
seed's latents as the official generate_onestep.py does (a CUDA generator per seed: its images, on CUDA only).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from tqdm import tqdm

from sid.config import DistillConfig
from sid.devices import parse_devices
from sid.files import write_file_atomic
from sid.flags import RENAMED, Parser
from sid.generators import FACTORY_HELP, RNGS, check_class, check_rng, generate, load_generator, parse_seeds
from sid.metrics import quantize


def png_path(outdir: Path, seed: int, subdirs: bool) -> Path:
    """outdir/000042.png, or outdir/000000/000042.png with subfolders of 1000 (EDM's generate.py layout)."""
    name = f"{seed:06d}.png"
    return outdir / f"{seed - seed % 1000:06d}" / name if subdirs else outdir / name


def save_pngs(pixels: np.ndarray, seeds: Sequence[int], outdir: Path, subdirs: bool) -> None:
    import PIL.Image  # noqa: PLC0415 (Pillow: only image files need it)

    for seed, image in zip(seeds, pixels):
        path = png_path(outdir, seed, subdirs)
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(path)


def generate_pixels(net: torch.nn.Module, seeds: Sequence[int], *, sigma_init: float, class_idx: int | None,
                    batch: int, device: str, outdir: Path | None = None, subdirs: bool = False,
                    keep: bool = True, progress: bool = True, position: int = 0,
                    rng: str = "sid") -> np.ndarray | None:  # of sid.generators.RNGS
    """uint8 NHWC images of `seeds` (None unless `keep`), PNGs written to `outdir` as they come."""
    kept = []
    bar = tqdm(total=len(seeds), unit="img", disable=not progress, position=position, file=sys.stdout,
               desc=f"generate {device}", dynamic_ncols=True)
    done = 0
    for images in generate(net, seeds, sigma_init=sigma_init, class_idx=class_idx, batch=batch, device=device,
                           rng=rng):
        pixels = quantize(images, torch.float64 if rng == "official" else torch.float32).permute(0, 2, 3, 1).numpy()
        if outdir is not None:
            save_pngs(pixels, seeds[done:done + len(pixels)], outdir, subdirs)
        if keep:
            kept.append(pixels)
        done += len(pixels)
        bar.update(len(pixels))
    bar.close()
    return np.concatenate(kept) if keep else None


def _shard(source: str, factory: str | None, seeds: list[int], options: dict, device: str,
           position: int) -> np.ndarray | None:
    """One process per device: loads the network itself (a module would be pickled through the pipe)."""
    if device == "cpu":
        torch.set_flush_denormal(True)  # as in training: denormals made CPU networks up to 10x slower
    net, _ = load_generator(source, factory=factory)
    return generate_pixels(net, seeds, device=device, position=position, **options)


def run(source: str, seeds: list[int], *, net: torch.nn.Module, devices: list[str], keep: bool,
        factory: str | None = None, **options) -> np.ndarray | None:
    """Generate in this process on one device, or one shard of seeds per device in spawned processes."""
    if len(devices) == 1:
        return generate_pixels(net, seeds, device=devices[0], keep=keep, **options)

    shards = [list(s) for s in np.array_split(np.array(seeds, dtype=np.int64), len(devices)) if len(s)]
    with ProcessPoolExecutor(len(shards), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_shard, source, factory, [int(x) for x in shard], dict(options, keep=keep), device,
                               position)
                   for position, (shard, device) in enumerate(zip(shards, devices))]
        parts = [f.result() for f in futures]
    return np.concatenate(parts) if keep else None


def build_parser() -> Parser:
    parser = Parser(prog="sid generate", description=__doc__.split("\n\n")[0],
                    renamed={k: RENAMED[k] for k in ("--batch", "--outdir")})
    parser.add_argument("--network", required=True,
                        help="run folder, snapshot .pt, export .safetensors, SiD/EDM network-snapshot .pkl "
                             "(path or URL), or a teacher: 'digits', 'edm:<name>', 'diffusers:PATH', ...")
    parser.add_argument("--factory", default=None, metavar="MODULE:FUNCTION", help=FACTORY_HELP)
    parser.add_argument("--seeds", default="0-63", help="seeds, one image each: ranges and lists, e.g. 0-9,20,30-39")
    parser.add_argument("--class", dest="class_idx", type=int, default=None,
                        help="class index of every image (conditional networks; default: a random class per seed)")
    parser.add_argument("--sigma-init", type=float, default=None,
                        help=f"generator input noise level (default: the run's, else {DistillConfig.sigma_init})")
    parser.add_argument("--batch-per-device", type=int, default=64, help="images per generator call on each device")
    parser.add_argument("--out", default=None, help="folder for one PNG per seed, 000042.png")
    parser.add_argument("--subdirs", action="store_true", help="PNGs in subfolders of 1000 (000000/, 001000/, ...)")
    parser.add_argument("--npz", default=None, help="also write all images as FILE.npz (arr_0: uint8 NHWC)")
    parser.add_argument("--device", default="auto", help="auto (every CUDA device, else cpu), cpu, cuda:N, or a "
                                                         "comma list: one shard of seeds per device")
    parser.add_argument("--rng", default="sid", choices=RNGS,
                        help="latents of each seed: 'sid' (a CPU generator: the same images on every device) or "
                             "'official' (a CUDA generator, as the official generate_onestep.py: its images; CUDA "
                             "only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None and args.npz is None:
        parser.error("expected --out and/or --npz: where to write the images")
    try:
        seeds = parse_seeds(args.seeds)
        if args.batch_per_device < 1:
            raise ValueError(f"--batch-per-device: expected >= 1, got {args.batch_per_device}")
        if args.sigma_init is not None and not args.sigma_init > 0:
            raise ValueError(f"--sigma-init: expected a number > 0, got {args.sigma_init}")
        if args.out:
            parts = (Path(args.out), *Path(args.out).parents)
            blocked = next((p for p in parts if p.exists() and not p.is_dir()), None)
            if blocked is not None:
                raise ValueError(f"--out {args.out}: {blocked} exists and is not a folder")
        if args.npz and not args.npz.endswith(".npz"):
            raise ValueError(f"--npz: expected a file name ending in .npz, got {args.npz!r}")
        devices = [str(d) for d in parse_devices(args.device)]
        for device in devices:
            check_rng(args.rng, device)
        net, saved = load_generator(args.network, factory=args.factory)
        check_class(net, args.class_idx)
    except ValueError as exc:
        parser.error(str(exc))
    if "cpu" in devices:
        torch.set_flush_denormal(True)  # as in training: denormals made CPU networks up to 10x slower
    sigma_init = args.sigma_init or saved.sampling_sigma_init
    outdir = Path(args.out) if args.out else None
    if outdir is not None:
        outdir.mkdir(parents=True, exist_ok=True)
    pixels = run(saved.source, seeds, net=net, devices=devices, keep=args.npz is not None, factory=args.factory,
                 sigma_init=sigma_init, class_idx=args.class_idx, batch=args.batch_per_device, outdir=outdir,
                 subdirs=args.subdirs, progress=not args.no_progress, rng=args.rng)
    if args.npz:
        write_file_atomic(args.npz, lambda f: np.savez(f, arr_0=pixels))
    where = " and ".join(str(p) for p in (outdir, args.npz) if p)
    print(f"wrote {len(seeds)} images (sigma_init {sigma_init}, {net.img_channels}x{net.img_resolution}x"
          f"{net.img_resolution}) to {where}")
