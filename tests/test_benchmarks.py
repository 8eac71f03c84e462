"""benchmarks/step_throughput.py: the command-line table on CPU, variant names, and the preset architectures;
benchmarks/ray_overhead.py: its arithmetic on a timeline."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.ray_overhead import breakdown, trial_shares
from benchmarks.step_throughput import variant_config, variant_threads
from sid.config import ConfigError, preset
from sid.networks.precond import EDMPrecond
from sid.testing.fixtures import preset_architecture

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(*args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / "step_throughput.py"), *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def table(out: str) -> dict[str, dict[str, str]]:
    """The printed table as {variant: {column: value}} (the header line starts with 'variant')."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    header = lines[start].split()
    return {row.split()[0]: dict(zip(header, row.split())) for row in lines[start + 2:]}


@pytest.mark.timeout(120)
def test_cpu_throughput_table_lists_each_variant_with_its_ratio_to_official():
    out = run_script("--device", "cpu", "--preset", "digits", "--iterations", "3", "--variants",
                     "official,bf16,fp32-t1",
                     "--batch", "32", "--warmup", "1")
    rows = table(out)
    assert list(rows) == ["official", "bf16", "fp32-t1"]
    assert rows["fp32-t1"]["threads"] == "1" and "matmul peak" in out
    # achieved FLOP/s over the peak measured in the same process (each rounded as printed)
    peak = float(re.search(r"fp32 ([\d.e+-]+) TFLOP/s", out).group(1))
    assert float(rows["official"]["of-peak"].rstrip("%")) == pytest.approx(
        100 * float(rows["official"]["TFLOP/s"]) / peak, rel=0.02, abs=1)
    assert rows["official"]["ratio"] == "1.00x" and rows["official"]["precision"] == "fp32"
    ratio, rate = float(rows["bf16"]["ratio"].rstrip("x")), float(rows["bf16"]["img/s"])
    assert ratio > 0 and rate > 0 and float(rows["bf16"]["s/kimg"]) == pytest.approx(1000 / rate, rel=0.01)
    assert "GFLOP per generator image" in out


@pytest.mark.timeout(120)
def test_cpu_loss_curves_compare_each_variant_with_the_first():
    out = run_script("--device", "cpu", "--preset", "digits", "--curves", "2", "--variants", "fp32,bf16",
                     "--batch", "16")
    rows = table(out)
    assert float(rows["fp32"]["fake-loss-dev"]) == 0 and float(rows["bf16"]["fake-loss-dev"]) > 0
    assert float(rows["bf16"]["G-update-dev"]) > 0 and rows["bf16"]["finite"] == "True"


def test_curves_refuse_variants_whose_noise_would_differ():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "step_throughput.py"), "--device", "cpu", "--preset",
                           "digits", "--curves", "2", "--variants", "fp32,fp32-mb8", "--batch", "16"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "same batch and micro-batch" in done.stderr


@pytest.mark.timeout(120)
def test_cpu_fid_cost_table_has_each_generator_and_detector_precision():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "fid_throughput.py"), "--device", "cpu", "--preset",
                           "digits", "--fid-images", "512", "--batch-per-device", "256", "--fid-detector",
                           "digits-features-v1", "--precisions", "fp32,bf16", "--detector-precisions", "fp32,bf16"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("generator"))
    header = lines[start].split()
    rows = [dict(zip(header, line.split())) for line in lines[start + 1:]]
    assert [(r["generator"], r["detector"]) for r in rows] == [("fp32", "fp32"), ("fp32", "bf16"), ("bf16", "fp32"),
                                                               ("bf16", "bf16")]
    assert float(rows[0]["FD-rel-change"]) == 0 and float(rows[0]["FD"]) > 0
    assert float(rows[1]["feature-err"]) > 0 and float(rows[2]["feature-err"]) == 0  # bf16 detector vs fp32


@pytest.mark.parametrize("name,expected", [
    ("official", dict(precision="fp32", batch=64, batch_per_device=16, memory_format="contiguous")),
    ("tf32", dict(precision="tf32", batch=64, batch_per_device=64)),
    ("bf16-cl", dict(precision="bf16", batch_per_device=64, memory_format="channels_last")),
    ("bf16-tf32-cl-fit-b256", dict(precision="bf16-tf32", batch=256, batch_per_device=0,
                                   memory_format="channels_last")),
    ("fp16-mb32", dict(precision="fp16", batch_per_device=32)),
    ("tf32-compile", dict(precision="tf32", compile="default")),
    ("fp32-cl-t1", dict(precision="fp32", memory_format="channels_last", batch_per_device=64)),
])
def test_variant_names_map_to_configs(name, expected):
    config = variant_config(name, preset("cifar10-uncond"), batch=64)
    assert {k: getattr(config, k) for k in expected} == expected


@pytest.mark.parametrize("name", ["bf8", "tf32-nhwc", "official-b", "cl"])
def test_unknown_variant_names_are_refused(name):
    with pytest.raises(ConfigError, match="variant"):
        variant_config(name, preset("cifar10-uncond"), batch=64)


@pytest.mark.parametrize("name,params", [  # the parity manifests (docs/sid-facts.md section 6)
    ("cifar10-uncond", 55_733_891), ("cifar10-cond", 55_735_299), ("ffhq64", 61_805_571),
    ("afhqv2-64", 61_805_571), ("imagenet64-cond", 295_899_267),
])
def test_benchmark_networks_are_the_official_architectures(name, params):
    with torch.device("meta"):
        net = EDMPrecond(**preset_architecture(name))
    assert sum(p.numel() for p in net.parameters()) == params


def phase(name: str, start: float, end: float, pid: int = 1) -> dict:
    return dict(phase=name, start=start, end=end, pid=pid)


def test_ray_share_counts_each_trials_wait_for_its_slot_and_its_time_outside_the_runs_work():
    # Two slots from t=0; trial A (pid 1) 1-11 with 8 s of work, B (pid 2) 2-12 with 9 s, C (pid 1) 13-23 with 9 s
    # takes A's slot (free at 11): Ray's time = (1 + 2) + (2 + 1) + (2 + 1) = 9 s, work 26 s.
    timeline = [phase("tune", 0, 24), phase("trial", 1, 11), phase("load_teacher", 1, 2), phase("train", 2, 9),
                phase("trial", 2, 12, 2), phase("train", 2.5, 11.5, 2), phase("trial", 13, 23),
                phase("train", 13.5, 22.5), phase("ray_start", -3, -1)]
    share, ray_s, trials, work_s = trial_shares(timeline, slots=2)
    assert (trials, ray_s, work_s) == (3, pytest.approx(9.0), pytest.approx(26.0))
    assert share == pytest.approx(9 / 35)


@pytest.mark.parametrize("rescore", [0.0, 2.5])  # a study's closing re-score is its own column, not 'rest'
def test_a_runs_phases_add_up_to_its_wall_time(rescore):
    timeline = [phase("ray_start", 1, 4), phase("load_teacher", 10, 11), phase("load_evaluator", 11, 12),
                phase("train", 12, 20), phase("evaluate", 20, 22), phase("write", 22, 23),
                *([phase("rescore", 24, 24 + rescore)] if rescore else [])]
    row = breakdown(30.0, timeline, start=0.0)
    assert row == dict(total=30.0, **{"ray start": 3.0, "load": 2.0, "train": 8.0, "eval": 2.0, "write": 1.0,
                                      "rescore": rescore, "to trial": 6.0, "rest": 8.0 - rescore})


@pytest.mark.parametrize("name, threads", [("fp32-t1", 1), ("bf16-tf32-cl-t4", 4), ("bf16-tf32", None),
                                           ("official-t2-b256", 2)])
def test_thread_suffix_is_read_from_the_variant_name(name, threads):
    assert variant_threads(name) == threads
