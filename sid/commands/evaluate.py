"""Score a generator or a set of images (folder, zip, npz: sid.datasets) the way the paper reports it: Frechet
distance over independent draws.

    sid evaluate runs/digits --repeats 5                 # 5 draws of fid_images images, seeds 0.., mean +- std
    sid evaluate out.npz --preset cifar10-uncond --fid-images 50000
    sid evaluate runs/c10 --metrics fd,is,pr --pr-ref train.zip   # + Inception Score, precision/recall (pr50k3)
    sid evaluate --rescore results/my-study          # the best trial's best.pt on 3 fresh draws (sid.scoring)

Every draw goes through the same sid.metrics code as the training-time evaluations (quantize, FeatureStats with the
biased /N covariance, frechet_distance), so a run's evaluations and `sid evaluate` agree up to the choice of images.
Draw r of a generator uses seeds seed_start + r*N .. seed_start + (r+1)*N - 1 (the images `sid generate` writes for
those seeds); draw r of a set of images uses its images r*N .. (r+1)*N - 1 in its order (sorted names). With an
Inception detector the Inception Score (10 splits, as StyleGAN3's is50k) of each draw is reported too (`--metrics`
chooses; `pr` adds precision/recall against `--pr-ref` real images, k = 3 as the official pr50k3). Rows go to a
Parquet scores file (sid.results.SCORE_SCHEMA) and a table is printed. `--rescore RUN_OR_STUDY` scores a run's
best.pt again on fresh latents with the run's own settings, into the run folder's scores file, keeping draws already
there.
"""

from __future__ import annotations

import argparse
import math
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sid import scoring
from sid.assets import AssetError
from sid.config import DETECTORS, FD_STD_GROUPS, INCEPTION, METRICS, PRESETS, DistillConfig, parse_metrics
from sid.datasets import open_dataset
from sid.devices import parse_device
from sid.files import BEST, EVALUATIONS, RUN_FILES, SCORES_FILE
from sid.flags import RENAMED, Parser
from sid.generators import FACTORY_HELP, MAX_SEED, check_class, format_seeds, generate, load_generator
from sid.hub import is_hub
from sid.metrics import check_reference, get_detector
from sid.precision_recall import PR_NEIGHBOURS
from sid.results import SCORE_KEY, SCORE_SCHEMA, now_utc, provenance, read_parquet, upsert
from sid.scoring import RESCORE_REPEATS, RESCORE_TRIALS, rescore
from sid.teachers import load_reference


def score_label(detector: str, images: int) -> str:
    """'FID (inception-2015-12-05, 50000 images)' or 'FD (digits-features-v1, 2048 images)'."""
    return f"{'FID' if detector == INCEPTION else 'FD'} ({detector}, {images} images)"


def source_kind(source: str) -> str:
    """'npz', 'zip' or 'folder' (a dataset of images, sid.datasets) or 'generator' (anything load_generator
    resolves)."""
    path = Path(source)
    if source.endswith(".npz"):
        return "npz"
    if source.endswith(".zip") and path.is_file() and zipfile.is_zipfile(path):
        return "zip"
    if path.is_dir() and not any((path / name).is_file() for name in RUN_FILES):
        return "folder"
    return "generator"


class Rebatcher:
    """Consecutive draws of n images from one stream of batches (a batch may straddle two draws)."""

    def __init__(self, batches: Iterator[torch.Tensor]) -> None:
        self.batches, self.rest = batches, None

    def take(self, n: int) -> Iterator[torch.Tensor]:
        left = n
        while left > 0:
            batch = self.rest if self.rest is not None else next(self.batches)
            head, self.rest = batch[:left], (batch[left:] if len(batch) > left else None)
            left -= len(head)
            yield head


def check_images_fit(detector, shape: tuple[int, ...], source: str) -> None:
    """One probe image through the detector, so a wrong size or channel count stops before any work."""
    try:
        detector(torch.zeros((2, *shape), dtype=torch.uint8))
    except ValueError as exc:
        raise ValueError(f"{source}: images of shape {list(shape)} (C, H, W) do not fit: {exc}") from None


def evaluate(source: str, *, detector_name: str, ref: str, images: int, repeats: int, seed_start: int = 0,
             class_idx: int | None = None, sigma_init: float | None = None, batch: int = 64, device: str = "cpu",
             progress: bool = True,
             metrics: str | None = None,       # comma list of METRICS (None: fd, and is where the detector can)
             pr_ref: str | None = None,        # precision/recall's real images: folder, zip, npz or 'digits'
             pr_images: int | None = None,     # how many of them (None: all, up to `images`)
             factory: str | None = None,       # module:function of a factory-made generator (sid.generators)
             groups: int = FD_STD_GROUPS) -> list[dict]:  # of fid_std's jackknife: one more distance each
    """One score row per draw (sid.results.SCORE_SCHEMA). ValueError for every bad input, before any work."""
    if images < 2 or repeats < 1:
        raise ValueError(f"--fid-images must be >= 2 and --repeats >= 1, got {images} and {repeats}")
    if sigma_init is not None and not sigma_init > 0:
        raise ValueError(f"--sigma-init: expected a number > 0, got {sigma_init}")
    kind = source_kind(source)
    detector = get_detector(detector_name, device)
    if metrics is None:
        wanted = ("fd", "is") if hasattr(detector, "probabilities") else ("fd",)
    else:
        try:
            wanted = parse_metrics(metrics)
        except ValueError as exc:
            raise ValueError(f"--metrics: {exc}") from None
    if "is" in wanted and not hasattr(detector, "probabilities"):
        raise ValueError(f"--metrics is: detector {detector.name} gives no class probabilities (no Inception Score)")
    if ("pr" in wanted) != (pr_ref is not None):
        raise ValueError("--metrics pr and --pr-ref go together: precision/recall compares with real images")
    if pr_images is not None and (pr_ref is None or pr_images <= PR_NEIGHBOURS):
        raise ValueError(f"--pr-images: expected > {PR_NEIGHBOURS} with --pr-ref, got {pr_images}")
    mu_ref, sigma_ref = load_reference(ref)
    check_reference(detector, mu_ref, ref)
    net, kimg = None, math.nan
    if kind == "generator":
        last = seed_start + images * repeats - 1
        if seed_start < 0 or last > MAX_SEED:
            raise ValueError(f"--seed-start: expected seeds within 0-{MAX_SEED}, got {seed_start}-{last}")
        net, saved = load_generator(source, factory=factory)
        check_class(net, class_idx)
        sigma_init = sigma_init or saved.sampling_sigma_init
        kimg = float(saved.kimg) if saved.kimg is not None else math.nan
        shape = (net.img_channels, net.img_resolution, net.img_resolution)
    else:
        if class_idx is not None or sigma_init is not None:
            raise ValueError(f"--class and --sigma-init apply to generators, not to the images of {source}")
        dataset = open_dataset(source)
        available, shape = dataset.info.images, dataset.info.shape
        if available < images * repeats:
            raise ValueError(f"{source}: expected at least {images * repeats} images ({repeats} draws of {images}), "
                             f"found {available}")
        stream = Rebatcher(dataset.images(batch))
    check_images_fit(detector, shape, source)
    real = None
    if pr_ref is not None:  # once for every draw: the real set does not change
        real = scoring.real_features(pr_ref, detector, pr_images or images, exact=pr_images is not None,
                                     batch=batch)
    rows = []
    bar = tqdm(total=images * repeats, unit="img", disable=not progress, file=sys.stdout, dynamic_ncols=True,
               desc=f"evaluate {detector.name}")
    for r in range(repeats):
        if net is not None:
            seeds = list(range(seed_start + r * images, seed_start + (r + 1) * images))
            label = format_seeds(seeds)
            draw = generate(net, seeds, sigma_init=sigma_init, class_idx=class_idx, batch=batch, device=device)
        else:
            label = f"images {r * images}-{(r + 1) * images - 1}"
            draw = stream.take(images)

        def counted(batches):
            for b in batches:
                bar.update(len(b))
                yield b

        # The training evaluations' scoring: FD, its standard error, and NaN if any image is non-finite.
        values = scoring.score_draw(counted(draw), detector, mu_ref, sigma_ref, metrics=wanted, real=real,
                                    groups=groups, device=device)
        rows.append(dict(source=source, kind=kind, repeat=r, seeds=label,
                         sigma_init=float(sigma_init) if net is not None else math.nan,
                         class_label=-1 if class_idx is None else class_idx, fid_detector=detector.name,
                         fid_ref=ref, **values, pr_ref=pr_ref or "", pr_real_images=0 if real is None else len(real),
                         generator_kimg=kimg, written_at=now_utc()))
    bar.close()
    return rows


def summary(rows: list[dict]) -> str:
    """The table: one line per draw, then mean +- std (sample std, ddof 1) over the draws."""
    label = score_label(rows[0]["fid_detector"], rows[0]["fid_images"])
    with_is = not math.isnan(rows[0]["is_mean"])
    width = max(len(r["seeds"]) for r in rows + [dict(seeds="seeds")])
    lines = [f"{rows[0]['source']} ({rows[0]['kind']}) vs reference {rows[0]['fid_ref']}",
             f"{'draw':>4}  {'seeds':<{width}}  {label:>40}" + ("  IS (10 splits)" if with_is else "")]
    for r in rows:
        lines.append(f"{r['repeat']:>4}  {r['seeds']:<{width}}  {r['fid']:>40.4f}"
                     + (f"  {r['is_mean']:.3f} +- {r['is_std']:.3f}" if with_is else ""))
    fds = np.array([r["fid"] for r in rows])
    if len(fds) > 1:
        lines.append(f"{label}: {fds.mean():.4f} +- {fds.std(ddof=1):.4f} (mean +- std over {len(fds)} draws)")
    else:
        lines.append(f"{label}: {fds[0]:.4f} (one draw; --repeats R for mean +- std)")
    if with_is:
        lines.append(f"IS: {np.mean([r['is_mean'] for r in rows]):.3f} (mean of the draws' 10-split means)")
    if rows[0].get("pr_ref"):
        lines.append(f"precision / recall (k = {PR_NEIGHBOURS}, {rows[0]['pr_real_images']} real images of "
                     f"{rows[0]['pr_ref']}): " + ", ".join(f"{r['pr_precision']:.4f} / {r['pr_recall']:.4f}"
                                                           for r in rows))
    return "\n".join(lines)


def training_values(source: str) -> str | None:
    """For a run folder: its own last and best evaluations, measured on other noise (so equal within the spread)."""
    path = Path(source) / EVALUATIONS
    if not path.is_file():
        return None
    rows = read_parquet(path)
    rows = rows[rows["status"].eq("ok") & rows["fid"].notna()].sort_values("kimg")
    if rows.empty:
        return None
    last, best = rows.iloc[-1], rows.loc[rows["fid"].idxmin()]
    return "\n".join(f"run's {what} evaluation (kimg {r['kimg']:g}, its own noise): "
                     f"{score_label(r['fid_detector'], int(r['fid_images']))} {r['fid']:.4f}"
                     for what, r in (("last", last), ("best", best)))


def build_parser() -> Parser:
    parser = Parser(prog="sid evaluate", description=__doc__.split("\n\n")[0],
                    renamed={k: RENAMED[k] for k in ("--detector", "--ref", "--images", "--batch")})
    parser.add_argument("source", nargs="?", default=None,
                        help="run folder, snapshot .pt, export .safetensors, SiD/EDM .pkl (path or URL), "
                             "'digits'/'edm:<name>', or images: a folder or zip of PNG/JPEG, an npz (docs/data.md)")
    parser.add_argument("--rescore", default=None, metavar="RUN_OR_STUDY",
                        help=f"instead of SOURCE: re-score a run's {BEST} (a study's best trial's) on fresh latents "
                             f"with the run's own images, detector, reference and metrics, into <run>/{SCORES_FILE}")
    parser.add_argument("--rescore-trials", default=None, choices=RESCORE_TRIALS,
                        help="--rescore of a study: its best trial's generator (default), or every trial's")
    parser.add_argument("--preset", default=None, choices=list(PRESETS), metavar="NAME",
                        help="detector, reference and image count of this preset (default: the run's, else digits)")
    parser.add_argument("--fid-detector", default=None,
                        help=f"feature network: {', '.join(DETECTORS)}, a registered one, or a TorchScript "
                             f"file PATH.pt (default: the preset's)")
    parser.add_argument("--fid-ref", default=None,
                        help="reference statistics: 'digits', 'edm:<name>', .npz path or URL (default: the preset's)")
    parser.add_argument("--fid-images", type=int, default=None, help="images per draw (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"independent draws (disjoint seeds or images; default 1, --rescore {RESCORE_REPEATS})")
    parser.add_argument("--metrics", default=None,
                        help=f"comma list of {', '.join(METRICS)} (FD, Inception Score, precision/recall with "
                             f"k = {PR_NEIGHBOURS}); default: fd, and is where the detector has class probabilities")
    parser.add_argument("--pr-ref", default=None,
                        help="real images of precision/recall: folder or zip of PNG/JPEG, npz (arr_0) or 'digits'")
    parser.add_argument("--pr-images", type=int, default=None,
                        help="real images of precision/recall, the first in sorted order (default: all, up to "
                             "--fid-images; the official pr50k3: 50000)")
    parser.add_argument("--seed-start", type=int, default=0, help="first seed of draw 0 (generators)")
    parser.add_argument("--class", dest="class_idx", type=int, default=None,
                        help="class of every image (conditional generators; default: a random class per seed)")
    parser.add_argument("--sigma-init", type=float, default=None,
                        help=f"generator input noise level (default: the run's, else {DistillConfig.sigma_init})")
    parser.add_argument("--batch-per-device", type=int, default=64, help="images per generator/detector call")
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda if present), cpu, cuda, cuda:N")
    parser.add_argument("--out", default=None, help=f"scores Parquet file to add the rows to (default: {SCORES_FILE}"
                                                    " in the run folder when SOURCE is one, else here)")
    parser.add_argument("--factory", default=None, metavar="MODULE:FUNCTION", help=FACTORY_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def settings(args: argparse.Namespace) -> dict:
    """Detector, reference and images per draw: flags, else those of --preset, else of the preset the generator's
    file names (one of PRESETS: only its name is taken from the file), else of digits. A file never chooses the work
    itself: its recorded image count or reference (a URL would be downloaded) are not read."""
    name = args.preset
    own = Path(args.source).is_dir() or args.source.endswith((".pt", ".safetensors", ".json"))
    # a local or uploaded (hf://, sid.hub) generator file may name its preset, nothing more (never its reference)
    if name is None and source_kind(args.source) == "generator" and (own and Path(args.source).exists()
                                                                     or is_hub(args.source)):
        recorded = (load_generator(args.source, factory=args.factory)[1].config or {}).get("preset")
        name = recorded if isinstance(recorded, str) and recorded in PRESETS else None
    base = PRESETS[name or "digits"]
    return dict(detector_name=args.fid_detector or base["fid_detector"], ref=args.fid_ref or base["fid_ref"],
                images=args.fid_images or base["fid_images"])


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_per_device < 1:
        parser.error(f"--batch-per-device: expected >= 1, got {args.batch_per_device}")
    if (args.source is None) == (args.rescore is None):
        parser.error("expected SOURCE or --rescore RUN_OR_STUDY (one of them)")
    if args.rescore is not None:
        return main_rescore(parser, args)
    if args.rescore_trials is not None:
        parser.error("--rescore-trials goes with --rescore RUN_OR_STUDY")
    source = Path(args.source)
    out = Path(args.out) if args.out else (source if source_kind(args.source) == "generator" and source.is_dir()
                                           else Path(".")) / SCORES_FILE
    try:
        device = parse_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as in training: denormals made CPU networks up to 10x slower
    try:
        rows = evaluate(args.source, **settings(args), repeats=1 if args.repeats is None else args.repeats,
                        seed_start=args.seed_start, class_idx=args.class_idx, sigma_init=args.sigma_init,
                        batch=args.batch_per_device, device=str(device), progress=not args.no_progress,
                        metrics=args.metrics, pr_ref=args.pr_ref, pr_images=args.pr_images, factory=args.factory)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    except (OSError, AssetError) as exc:  # a download failed: not the input's fault
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    upsert(out, rows, SCORE_SCHEMA, SCORE_KEY, sort=False, metadata=provenance(device=str(device)))
    print(summary(rows))
    if source_kind(args.source) == "generator" and (own := training_values(args.source)):
        print(own)
    print(f"rows added to {out}")


def main_rescore(parser: Parser, args: argparse.Namespace) -> None:
    """`sid evaluate --rescore RUN_OR_STUDY`: sid.scoring.rescore, its rows printed as a table per generator."""
    flags = {"preset": "--preset", "fid_detector": "--fid-detector", "fid_ref": "--fid-ref",
             "fid_images": "--fid-images", "class_idx": "--class", "sigma_init": "--sigma-init",
             "metrics": "--metrics", "pr_ref": "--pr-ref", "pr_images": "--pr-images", "out": "--out"}
    chosen = [flag for dest, flag in flags.items() if getattr(args, dest) is not None] + \
        (["--seed-start"] if args.seed_start else [])
    if chosen:
        parser.error(f"--rescore uses the run's own settings and seeds: leave out {', '.join(chosen)}")
    try:
        device = parse_device(args.device)
        repeats = RESCORE_REPEATS if args.repeats is None else args.repeats
        rows = rescore(args.rescore, trials=args.rescore_trials or "best", repeats=repeats, device=str(device),
                       batch=args.batch_per_device, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    except (OSError, AssetError) as exc:  # a download failed: not the input's fault
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    for source, group in rows.groupby("source", sort=False):
        print(summary(group.to_dict("records")))
        print(f"rows in {Path(source).parent / SCORES_FILE}")
