"""Throughput of one SiD iteration (fake-score update + generator update + EMA) for fast-path variants, with random
weights, each against the official settings measured in the same process.

    python benchmarks/step_throughput.py --device cuda --preset cifar10-uncond --batch 64 \\
        --variants official,fp32,tf32,fp16,bf16,bf16-cl,bf16-tf32-cl,tf32-fit-b256
    python benchmarks/step_throughput.py --device cpu --preset digits --iterations 3 --variants official,bf16
    python benchmarks/step_throughput.py --device cuda --curves 200 --batch 16 --variants fp32,fp16,bf16,bf16-tf32

A variant is 'official' (fp32, TF32 off, the preset's micro-batch: 16 for CIFAR) or a precision of
DistillConfig (fp32, tf32, bf16, bf16-tf32, fp16 = the official use_fp16 mode) followed by any of the suffixes
-cl (channels_last), -compile (torch.compile), -fit (the largest micro-batch that fits, measured), -mbN (micro-batches
of N), -bN (batch N instead of --batch), -tN (N CPU threads while it runs). Without -fit or -mbN the whole batch is one
micro-batch.

Beside each variant's achieved FLOP/s (FLOPs counted with torch.utils.flop_counter.FlopCounterMode) the table gives
its share of the device's matmul peak, measured in the same process (a square fp32 matmul, or bf16 for bf16
variants): what stands between a SiD step and the hardware's limit.

--curves N runs each variant N iterations from the same weights and seeds instead of timing it, and compares its
losses and its generator update with the first variant's: the precision soundness check (sid/fast.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import statistics
import sys
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from sid.config import PRECISIONS, ConfigError, DistillConfig, preset
from sid.distill import Distiller
from sid.micro_batch import fit_micro_batch
from sid.networks.precond import EDMPrecond
from sid.testing.fixtures import flat_params, random_teacher, synchronize

# docs/benchmarks.md (the official code on one H200)
ANCHOR_GFLOP_PER_IMAGE = {"cifar10-uncond": 29.9e3 / 64, "cifar10-cond": 29.9e3 / 64}
SUFFIXES = {"cl": dict(memory_format="channels_last"), "compile": dict(compile="default"),
            "fit": dict(batch_per_device=0)}


def variant_config(name: str, base: DistillConfig, batch: int) -> DistillConfig:
    """The DistillConfig of a variant name (see the module docstring)."""
    tokens, overrides = name.split("-"), {}
    while len(tokens) > 1 and (tokens[-1] in SUFFIXES or re.fullmatch(r"(mb|b|t)\d+", tokens[-1])):
        token = tokens.pop()
        if token in SUFFIXES:
            overrides.update(SUFFIXES[token])
        elif token.startswith("mb"):
            overrides["batch_per_device"] = int(token[2:])
        elif token.startswith("t"):
            pass  # threads: not a config field (variant_threads)
        else:
            batch = int(token[1:])
    head = "-".join(tokens)
    if head == "official":
        return base.replace(**{"batch": batch, "batch_per_device": min(base.batch_per_device, batch),
                               "precision": "fp32", **overrides})
    if head not in PRECISIONS:
        raise ConfigError(f"variant {name!r}: expected 'official' or a precision ({', '.join(PRECISIONS)}) followed "
                          f"by -cl, -compile, -fit, -mbN or -bN")
    return base.replace(**{"batch": batch, "batch_per_device": batch, "precision": head, **overrides})


def variant_threads(name: str) -> int | None:
    """The -tN suffix of a variant name: CPU threads while it runs (None: the process's)."""
    found = re.search(r"-t(\d+)(?=-|$)", name)
    return int(found.group(1)) if found else None


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, *, size: int = 0,
                repeats: int = 5) -> float:
    """FLOP/s of a square matmul on `device` (best of `repeats`): the machine's practical peak for dense math."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up: library initialisation, kernel choice
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def flops_per_image(config: DistillConfig, teacher: EDMPrecond, device: torch.device, images: int = 2) -> float:
    """Matmul/convolution/attention FLOPs of one eager fp32 iteration per generator image (linear in the batch)."""
    trial = Distiller(config.replace(batch=images, batch_per_device=images, precision="fp32", compile="off"), teacher,
                      device=device)
    with FlopCounterMode(display=False) as counter:
        trial.step()
    del trial
    release(device)
    return counter.get_total_flops() / images


def count_syncs(distiller: Distiller) -> int:
    """Host-device synchronisations in one iteration (CUDA's sync debug mode)."""
    synchronize(distiller.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            distiller.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def time_variant(distiller: Distiller, *, warmup: int, iterations: int, repeats: int) -> dict:
    """Images per second of `iterations` iterations in `repeats` timed blocks after `warmup` iterations."""
    device, batch = distiller.device, distiller.config.batch
    start = time.perf_counter()
    for _ in range(warmup):
        distiller.step()
    synchronize(device)
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rates = []
    for block in range(repeats):
        n = iterations // repeats + (block < iterations % repeats)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(n):
            distiller.step()
        synchronize(device)
        rates.append(n * batch / (time.perf_counter() - start))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
    median = statistics.median(rates)
    return dict(images_per_s=median, spread=(max(rates) - min(rates)) / median, peak_gib=peak, warmup_s=warmup_s)


def run_curves(distiller: Distiller, iterations: int) -> dict:
    """Per-iteration losses and the generator's and fake score's total updates over `iterations` iterations."""
    g0, f0 = flat_params(distiller.generator), flat_params(distiller.fake_score)
    fake, gen, nans = [], [], 0
    for _ in range(iterations):
        distiller.step()
        stats = distiller.pop_stats()
        fake.append(stats["loss_fake_score"])
        gen.append(stats["loss_generator"])
        nans += stats["nan_samples"]
    return dict(loss_fake_score=fake, loss_generator=gen, nan_samples=nans,
                generator_update=flat_params(distiller.generator) - g0,
                fake_score_update=flat_params(distiller.fake_score) - f0)


def compare_curves(run: dict, ref: dict) -> dict:
    """Deviation of a run from the reference run: losses per iteration (the generator loss crosses zero, so it is
    scaled by its mean magnitude) and the relative difference of the total parameter updates."""
    def rel_update(key: str) -> float:
        return float((run[key] - ref[key]).norm() / ref[key].norm().clamp_min(1e-30))

    fake = [abs(a - b) / abs(b) for a, b in zip(run["loss_fake_score"], ref["loss_fake_score"])]
    scale = statistics.fmean(abs(b) for b in ref["loss_generator"])
    gen = [abs(a - b) / scale for a, b in zip(run["loss_generator"], ref["loss_generator"])]
    finite = all(math.isfinite(v) for v in run["loss_fake_score"] + run["loss_generator"]) \
        and bool(torch.isfinite(run["generator_update"]).all())
    return dict(max_rel_fake_loss=max(fake), max_scaled_gen_loss=max(gen), generator_update_dev=rel_update(
        "generator_update"), fake_score_update_dev=rel_update("fake_score_update"), finite=finite,
        nan_samples=run["nan_samples"])


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def fmt(value: float, spec: str) -> str:
    return "-" if not math.isfinite(value) else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--preset", default="cifar10-uncond", help="networks and SiD settings of this preset")
    parser.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch", type=int, default=0, help="generator images per iteration (0: the preset's)")
    parser.add_argument("--variants", default="official,tf32,bf16,bf16-cl", help="comma-separated variant names")
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (cuDNN autotuning, compile)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks; the median and spread are reported")
    parser.add_argument("--curves", type=int, default=0, help="compare N-iteration loss curves instead of timing")
    parser.add_argument("--sync-check", action="store_true", help="count host-device syncs in one iteration (CUDA)")
    parser.add_argument("--seed", type=int, default=0, help="weights and noise seed, the same for every variant")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals made CPU iterations up to 10x slower
    try:
        base = preset(args.preset, seed=args.seed)
        batch = args.batch or base.batch
        names = [v for v in args.variants.split(",") if v]
        if not args.curves and "official" not in names:
            names.insert(0, "official")  # the reference of the ratio column
        configs = {name: variant_config(name, base, batch) for name in names}
        if args.curves and len({(c.batch, c.batch_per_device) for c in configs.values()}) > 1:
            raise ConfigError("--curves needs the same batch and micro-batch in every variant (noise is drawn per "
                              "micro-batch); drop 'official', -fit, -mbN and -bN")
        teacher = random_teacher(args.preset, seed=args.seed)
    except (ConfigError, KeyError) as exc:
        parser.error(str(exc))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {args.preset}, random weights, batch {batch}, {gpu}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads", flush=True)
    results = run_all(args, configs, teacher, device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(preset=args.preset, batch=batch, device=gpu, torch=torch.__version__, results=results), f,
                      indent=1)


def measure(args: argparse.Namespace, name: str, config: DistillConfig, teacher: EDMPrecond, device: torch.device,
            flops: float, peaks: dict[str, float], ref_curves: dict | None) -> tuple[dict, dict | None]:
    """One variant's row (and its curves in --curves mode); a variant that runs out of memory gets a row saying so."""
    row = dict(variant=name, precision=config.precision, memory_format=config.memory_format, batch=config.batch,
               micro_batch=config.batch_per_device, rounds=math.nan, images_per_s=math.nan, error="")
    curves = None
    threads = torch.get_num_threads()
    torch.set_num_threads(variant_threads(name) or threads)
    row["threads"] = torch.get_num_threads()
    try:
        fitted = 0 if config.batch_per_device else fit_micro_batch(config, teacher, device=device)
        distiller = Distiller(config, teacher, device=device, micro_batch=fitted)
        row.update(micro_batch=distiller.micro_batch, rounds=distiller.rounds)
        if args.curves:
            curves = run_curves(distiller, args.curves)
            row.update(compare_curves(curves, ref_curves or curves),
                       loss_fake_score=curves["loss_fake_score"], loss_generator=curves["loss_generator"])
        else:
            row.update(time_variant(distiller, warmup=args.warmup, iterations=args.iterations, repeats=args.repeats))
            row["syncs"] = count_syncs(distiller) if args.sync_check and device.type == "cuda" else math.nan
            row["tflop_s"] = row["images_per_s"] * flops / 1e12
            row["of_peak"] = row["tflop_s"] * 1e12 / peaks["bf16" if "bf16" in config.precision else "fp32"]
        del distiller
    except torch.OutOfMemoryError:
        row["error"] = "OOM"
    finally:
        torch.set_num_threads(threads)
    release(device)
    if row["error"]:
        summary = row["error"]
    elif args.curves:
        summary = f"G-update-dev {row['generator_update_dev']:.2e}, G-loss-dev {row['max_scaled_gen_loss']:.2e}"
    else:
        summary = f"{row['images_per_s']:.1f} img/s, peak {row['peak_gib']:.1f} GiB"
    print(f"# done {name}: {summary}", flush=True)  # survives a timeout that kills the table
    return row, curves


def run_all(args: argparse.Namespace, configs: dict[str, DistillConfig], teacher: EDMPrecond,
            device: torch.device) -> list[dict]:
    results, ref_curves = [], None
    flops = math.nan if args.curves else flops_per_image(next(iter(configs.values())), teacher, device)
    if math.isfinite(flops):
        anchor = ANCHOR_GFLOP_PER_IMAGE.get(args.preset)
        print(f"# {flops / 1e9:.1f} GFLOP per generator image per iteration (matmul/conv/attention, counted)"
              + (f"; the official step: {anchor:.0f} (docs/sid-facts.md section 7)" if anchor else ""), flush=True)
    peaks = {}
    if not args.curves:
        peaks = {"fp32": matmul_peak(device), "bf16": matmul_peak(device, torch.bfloat16)}
        print(f"# matmul peak ({torch.get_num_threads()} threads on CPU): fp32 {peaks['fp32'] / 1e12:.3g} TFLOP/s, "
              f"bf16 {peaks['bf16'] / 1e12:.3g} TFLOP/s", flush=True)
    for name, config in configs.items():
        row, curves = measure(args, name, config, teacher, device, flops, peaks, ref_curves)
        ref_curves = ref_curves or curves
        results.append(row)
    ok = [r for r in results if not r["error"]]
    if args.curves:
        print_table(["variant", "micro-batch", "fake-loss-dev", "G-loss-dev", "G-update-dev", "fake-update-dev",
                     "NaN-samples", "finite"],
                    [[r["variant"], str(r["micro_batch"]), f"{r['max_rel_fake_loss']:.2e}",
                      f"{r['max_scaled_gen_loss']:.2e}", f"{r['generator_update_dev']:.2e}",
                      f"{r['fake_score_update_dev']:.2e}", str(r["nan_samples"]), str(r["finite"])] for r in ok])
    else:
        ref = results[0]["images_per_s"]
        print_table(["variant", "precision", "format", "micro-batch", "threads", "img/s", "spread", "s/kimg",
                     "peak-GiB", "TFLOP/s", "of-peak", "syncs", "ratio"],
                    [[r["variant"], r["precision"], r["memory_format"], f"{r['micro_batch']}x{r['rounds']}",
                      str(r["threads"]), f"{r['images_per_s']:.1f}", f"{r['spread']:.0%}",
                      f"{1000 / r['images_per_s']:.2f}", fmt(r["peak_gib"], ".1f"), fmt(r["tflop_s"], ".3g"),
                      fmt(r["of_peak"], ".0%"), fmt(r["syncs"], ".0f"), fmt(r["images_per_s"] / ref, ".2f") + "x"]
                     for r in ok])
    for r in results:
        if r["error"]:
            print(f"{r['variant']}: {r['error']} (batch {r['batch']}, micro-batch {r['micro_batch']})")
    return results

if __name__ == "__main__":
    sys.exit(main())
