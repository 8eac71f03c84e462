"""What SiDA costs over SiD, and when its fake score settles: two measurements on one machine, in one process.

    python benchmarks/sida_cost.py step --preset digits --iterations 20     # time per iteration, SiDA / SiD
    python benchmarks/sida_cost.py warmup --iterations 80                   # the digits preset's SiDA warm-ups

`step` counts the floating-point work of one iteration of each (torch's FlopCounterMode), then alternates SiD and SiDA
iterations (the same teacher, batch and settings; SiDA with both warm-ups over, so each of its iterations has every
term) and prints the median seconds per iteration of each, their interquartile ranges and the ratio of the medians.
EDM presets use a random teacher of the preset's architecture and random real images of its shape (the cost does not
depend on the weights); the digits presets the shipped teacher and images.

`warmup` runs SiDA on the digits with the generator frozen (the first warm-up) and prints the fake score's two loss
terms per window of iterations: the warm-ups of the digits preset (sid/config.py) are set from where they settle.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from sid.config import PRESETS, preset
from sid.distill import Distiller
from sid.real_images import RealImages
from sid.teachers import load_teacher
from sid.testing.fixtures import random_teacher, synchronize


def setup(name: str, device: torch.device, **overrides) -> tuple[dict, torch.nn.Module, RealImages | None]:
    """The preset's settings with `overrides`, its teacher (random weights for EDM presets) and real images."""
    if PRESETS[name]["teacher"] == "digits":
        return dict(data="digits", **overrides), load_teacher("digits"), None
    teacher = random_teacher(name)
    g = torch.Generator().manual_seed(0)
    shape = (256, teacher.img_channels, teacher.img_resolution, teacher.img_resolution)
    classes = torch.randint(teacher.label_dim, (256,), generator=g) if teacher.label_dim else None
    real = RealImages(torch.rand(shape, generator=g) * 2 - 1, classes, class_count=teacher.label_dim, name="random")
    return dict(data="random", **overrides), teacher, real


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4)
    return q1, median, q3


def step_cost(args: argparse.Namespace, device: torch.device) -> None:
    batch = {"batch": args.batch, "batch_per_device": min(PRESETS[args.preset]["batch_per_device"], args.batch)}
    overrides, teacher, real = setup(args.preset, device, **(batch if args.batch else {}))
    base = preset(args.preset, **overrides)
    runs = {method: Distiller(base.replace(method=method, generator_warmup_kimg=0.0, adversarial_warmup_kimg=0.0),
                              teacher, device=device, real=real if method == "sida" else None)
            for method in ("sid", "sida")}
    for d in runs.values():  # warm-up iterations: allocator, Adam state, the adversarial term switched on
        for _ in range(2):
            d.step()
    flops = {}
    for method, d in runs.items():  # the work of one iteration: independent of the machine and its load
        with FlopCounterMode(display=False) as counter:
            d.step()
        flops[method] = counter.get_total_flops()
    times = {method: [] for method in runs}
    for _ in range(args.iterations):
        for method, d in runs.items():  # alternating: a slow spell of a shared machine hits both
            synchronize(device)
            start = time.perf_counter()
            d.step()
            synchronize(device)
            times[method].append(time.perf_counter() - start)
    print(f"{args.preset}, batch {base.batch}, {device}, {args.iterations} iterations each, alternating")
    for method, values in times.items():
        q1, median, q3 = quartiles(values)
        print(f"  {method:5s} {median:8.4f} s/iteration (IQR {q1:.4f}-{q3:.4f})")
    for method, value in flops.items():
        print(f"  {method:5s} {value / 1e9:10.2f} GFLOP/iteration (torch's FlopCounterMode: convolutions, matmuls)")
    print(f"  SiDA / SiD work per iteration: {flops['sida'] / flops['sid']:.3f}")
    ratios = [a / b for a, b in zip(times["sida"], times["sid"])]
    q1, median, q3 = quartiles(ratios)
    print(f"  SiDA / SiD time per iteration: {statistics.median(times['sida']) / statistics.median(times['sid']):.3f}"
          f" (median of paired ratios {median:.3f}, IQR {q1:.3f}-{q3:.3f})")


def warmup(args: argparse.Namespace, device: torch.device) -> None:
    overrides, teacher, real = setup(args.preset, device)
    config = preset(args.preset, method="sida", **overrides, generator_warmup_kimg=1e9, adversarial_warmup_kimg=1e9)
    d = Distiller(config, teacher, device=device, real=real)
    print(f"{args.preset} SiDA, generator frozen: fake-score loss terms per window of {args.window} iterations")
    print(f"{'kimg':>8} {'denoising':>10} {'discrim.':>10} {'change %':>9}")
    previous = None
    for _ in range(0, args.iterations, args.window):
        dsm, disc = [], []
        for _step in range(args.window):
            d.step()
            stats = d.pop_stats()
            dsm.append(stats["loss_fake_score"])
            disc.append(stats["loss_discriminator"])
        now = (statistics.mean(dsm), statistics.mean(disc))
        change = "" if previous is None else \
            f"{100 * max(abs(a - b) / abs(b) for a, b in zip(now, previous)):9.1f}"
        print(f"{d.kimg:8.2f} {now[0]:10.4g} {now[1]:10.4g} {change}", flush=True)
        previous = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("measure", choices=("step", "warmup"))
    parser.add_argument("--preset", default="digits", choices=list(PRESETS))  # the teacher's architecture and data
    parser.add_argument("--device", default="cpu")                             # cpu | cuda
    parser.add_argument("--iterations", type=int, default=20)                  # timed iterations per method
    parser.add_argument("--batch", type=int, default=0)                        # 0: the preset's
    parser.add_argument("--window", type=int, default=8)                       # warmup: iterations per printed window
    parser.add_argument("--threads", type=int, default=1)                      # CPU threads (a shared machine: 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as sid.run: denormals make CPU iterations up to 10x slower
    (step_cost if args.measure == "step" else warmup)(args, torch.device(args.device))


if __name__ == "__main__":
    main()
