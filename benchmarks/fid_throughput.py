"""Cost of one Frechet-distance evaluation: G_ema generation, detector features, statistics and the distance, per
precision of the generator and of the detector, with random weights.

    python benchmarks/fid_throughput.py --device cuda --preset cifar10-uncond --fid-images 50000 \\
        --batch-per-device 1000 --precisions fp32,tf32,bf16 --fid-detector inception-v3-standin \\
        --detector-precisions fp32,bf16
    python benchmarks/fid_throughput.py --device cpu --preset digits --fid-images 2048 --fid-detector digits-features-v1

`inception-v3-standin` is torchvision's Inception-v3 with RANDOM weights behind the same resize to 299x299 as
NVIDIA's TorchScript detector: the same cost, not the same features (the real detector is downloaded, and the GPU
machines have no internet). Its timings stand for FID-50k; its feature errors only hint at the real network's.
A detector precision is usable only if the distance it gives stays within a relative tolerance of fp32's
(--fd-tolerance).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from sid.config import DIGITS_FEATURES, preset
from sid.distill import Distiller
from sid.flags import RENAMED, Parser
from sid.metrics import FeatureStats, frechet_distance, get_detector, quantize
from sid.teachers import load_reference
from sid.testing.fixtures import random_teacher, synchronize


class InceptionStandIn:
    """Inception-v3 of NVIDIA's detector's size and input pipeline (uint8 -> resize 299 -> [-1, 1]), random weights."""

    name = "inception-v3-standin"
    feature_dim = 2048

    def __init__(self, device: torch.device) -> None:
        try:
            import torchvision  # noqa: PLC0415 (torchvision: optional)
        except ImportError:
            raise SystemExit("inception-v3-standin needs torchvision (installed on the GPU machines)") from None
        torch.manual_seed(0)
        self.net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
        self.net.fc = torch.nn.Identity()
        self.net = self.net.to(device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().repeat(1, 3 // images.shape[1], 1, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x / 127.5 - 1).float()


def timed(fn, device: torch.device):
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def evaluate(distiller: Distiller, detector, images: int, batch: int, detector_precision: str, reference) -> dict:
    """Seconds of each stage for `images` images, the distance, and the features of batch 0."""
    device, gen_s, det_s, stats, first = distiller.device, 0.0, 0.0, FeatureStats(), None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=detector_precision == "bf16")
    for index in range(math.ceil(images / batch)):
        n = min(batch, images - index * batch)
        pixels, seconds = timed(lambda: quantize(distiller.sample(index, n)), device)  # noqa: B023 (called at once)
        gen_s += seconds
        with autocast:
            features, seconds = timed(lambda: detector(pixels).float(), device)  # noqa: B023 (called at once)
        first = features if first is None else first
        _, update_s = timed(lambda: stats.update(features), device)  # noqa: B023 (called at once)
        det_s += seconds + update_s
    fd, fd_s = timed(lambda: frechet_distance(*stats.mean_cov(), *reference(stats)), device)
    return dict(generation_s=gen_s, detector_s=det_s, fd=fd, fd_s=fd_s, features=first)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                    renamed={k: RENAMED[k] for k in ("--images", "--batch", "--detector")})
    parser.add_argument("--preset", default="cifar10-uncond", help="generator architecture of this preset")
    parser.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    parser.add_argument("--fid-images", type=int, default=50_000, help="images per evaluation")
    parser.add_argument("--batch-per-device", type=int, default=1000, help="images per generator and detector call")
    parser.add_argument("--precisions", default="fp32,tf32,bf16", help="generator precisions (DistillConfig)")
    parser.add_argument("--fid-detector", default="inception-v3-standin", help="inception-v3-standin or a sid detector")
    parser.add_argument("--detector-precisions", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    parser.add_argument("--fd-tolerance", type=float, default=1e-3, help="largest acceptable relative FD change")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    teacher = random_teacher(args.preset, seed=0)
    name, batch = args.fid_detector, args.batch_per_device
    detector = InceptionStandIn(device) if name == InceptionStandIn.name else get_detector(name, device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {args.preset} generator (random weights), {args.fid_images} images in batches of {batch}, detector "
          f"{detector.name}, {gpu}, torch {torch.__version__}", flush=True)
    config = preset(args.preset)
    if detector.name == config.fid_detector == DIGITS_FEATURES:
        real = load_reference(config.fid_ref)
        reference = lambda stats: real  # noqa: E731 (one of two one-line choices)
    else:  # no reference statistics offline: a fixed made-up one, so that only the generated side varies
        reference = lambda stats: (np.full(detector.feature_dim, 0.1), np.eye(detector.feature_dim))  # noqa: E731
    rows = []
    for precision in args.precisions.split(","):
        distiller = Distiller(config.replace(precision=precision, batch=batch, batch_per_device=batch), teacher,
                              device=device)
        distiller.sample(0, batch)  # warm-up: cuDNN autotuning, lazy initialisation
        for detector_precision in args.detector_precisions.split(","):
            result = evaluate(distiller, detector, args.fid_images, batch, detector_precision, reference)
            rows.append(dict(precision=precision, detector_precision=detector_precision, **result))
            print(f"# done {precision} / detector {detector_precision}: generation {result['generation_s']:.2f} s, "
                  f"detector {result['detector_s']:.2f} s, FD {result['fd_s']:.2f} s", flush=True)
        del distiller
    print(f"{'generator':<10} {'detector':<9} {'gen-s':>8} {'gen-img/s':>10} {'detector-s':>10} {'FD-s':>6} "
          f"{'total-s':>8} {'FD':>12} {'feature-err':>11} {'FD-rel-change':>13}")
    base = {r["precision"]: r for r in rows if r["detector_precision"] == "fp32"}
    for r in rows:  # feature error: against the fp32 detector on the same images; FD change: against the first row
        ref = base.get(r["precision"])
        err = float((r["features"] - ref["features"]).norm() / ref["features"].norm()) if ref else math.nan
        change = abs(r["fd"] - rows[0]["fd"]) / rows[0]["fd"]
        total = r["generation_s"] + r["detector_s"] + r["fd_s"]
        print(f"{r['precision']:<10} {r['detector_precision']:<9} {r['generation_s']:8.2f} "
              f"{args.fid_images / r['generation_s']:10.0f} {r['detector_s']:10.2f} {r['fd_s']:6.2f} {total:8.2f} "
              f"{r['fd']:12.6g} {err:11.2e} {change:13.2e}{'  over tolerance' if change > args.fd_tolerance else ''}")

if __name__ == "__main__":
    main()
