"""What Ray costs a study: the same training as a one-trial study and as `sid distill` in one process, phase by phase.

    python benchmarks/ray_overhead.py                        # digits-study (9.6 kimg), one trial, 2 rounds
    python benchmarks/ray_overhead.py --kimg 1.92 --repeat 3 --modes in-process,study,train-group
    python benchmarks/ray_overhead.py --trials 9 --kimg 1.92 # the default study's 3 alphas x 3 seeds: Ray's share

Every mode is a whole command in its own process, as a user runs it (Python, torch and Ray imports included):
`in-process` is `python -m sid distill`; `study` is `studies/alpha_sweep.py` with one alpha and one seed (its one
trial runs in Tune's trial process; `--rescore-trials none`: a study's closing re-score of its best generator on
fresh latents is work `sid distill` does not do, timed as the phase `rescore` when a study runs it); `train-group`
runs the same config through a Ray Train worker group of one (`run_distributed`), the path every study trial took
before. The study's trial and the Train worker hold as many CPUs as the in-process run has torch threads
(OMP_NUM_THREADS if set, else the machine's CPUs), so all three train with the same threads. The modes alternate
within each round, and the table gives each mode's median over the rounds, its ratio to the in-process run of the
same round (median), and the load average beside it.

The phases come from the timeline every process of a run appends to (sid/timeline.py): `ray start`, `to trial`
(Ray up -> the first line of the run's own code: Tune's trial process or Train's worker group, imports), `load`
(teacher, networks, detector and reference), `train`, `eval` (FD), `write` (rows, snapshots, checkpoints, Ray
reports) and `rest` (the process's start and end: imports, Ray's shutdown).

--trials N runs one study of N trials (alphas x seeds, one CPU each, as many at once as the CPUs allow) and reports
Ray's share per trial: for each trial, the time Ray takes between the previous trial on its slot and the trial's own
work, plus the trial's own time outside that work, over the trial's whole time; `with start` adds the study's
one-off costs (process start, Ray's start and end) once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sid.config import preset
from sid.testing.fixtures import flags
from sid.timeline import TIMELINE_ENV, read_timeline

ROOT = Path(__file__).resolve().parents[1]
WORK = ("load_teacher", "build_distiller", "load_evaluator", "train", "evaluate", "write")  # the run's own phases
COLUMNS = {"ray start": ("ray_start",), "load": WORK[:3], "train": ("train",), "eval": ("evaluate",),
           "write": ("write",), "rescore": ("rescore",)}
MODES = ("in-process", "study", "train-group")
# torch threads of the in-process run; the study's trial and the Train worker get as many CPUs, so as many threads
THREADS = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def total(phases: list[dict], names: tuple[str, ...]) -> float:
    return sum(p["end"] - p["start"] for p in phases if p["phase"] in names)


def command(mode: str, args: argparse.Namespace, out: Path, alphas: str = "1.0", seeds: int = 1) -> list[str]:
    config = flags(duration_kimg=args.kimg, eval_every_kimg=args.kimg / args.evaluations)
    preset_flags = ["--preset", args.preset, *config]
    if mode == "in-process":
        return [sys.executable, "-m", "sid", "distill", *preset_flags, "--out", str(out), "--device", "cpu",
                "--no-progress"]
    if mode == "study":
        cpus = [] if args.trials > 1 else ["--cpus-per-worker", str(THREADS)]
        return [sys.executable, "studies/alpha_sweep.py", *preset_flags, "--alphas", alphas, "--seeds", str(seeds),
                "--storage", str(out), "--name", "study", "--rescore-trials", "none", *cpus]
    return [sys.executable, __file__, "--train-group", str(out), "--preset", args.preset, "--kimg", str(args.kimg),
            "--evaluations", str(args.evaluations)]


def run(cmd: list[str], timeline: Path) -> tuple[float, list[dict]]:
    """Wall time of the command and the phases it recorded."""
    env = {**os.environ, TIMELINE_ENV: str(timeline), "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.time()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall, [p for p in read_timeline(timeline) if start <= p["start"]]


def breakdown(wall: float, phases: list[dict], start: float) -> dict[str, float]:
    """The table's columns for one run (seconds)."""
    row = {name: total(phases, keys) for name, keys in COLUMNS.items()}
    work = [p for p in phases if p["phase"] in WORK]
    up = max((p["end"] for p in phases if p["phase"] == "ray_start"), default=None)
    first = min((p["start"] for p in work), default=start)
    row["to trial"] = first - up if up is not None else 0.0
    row["rest"] = wall - sum(row.values())
    return {"total": wall, **row}


def trial_shares(phases: list[dict], slots: int) -> tuple[float, float, int, float]:
    """(Ray's share per trial, Ray's seconds, trials, the runs' own seconds) from a study's timeline: each trial
    takes the slot that freed first; its Ray time is the wait from that moment to its start plus its time outside
    the run's own phases."""
    tune = next(p for p in phases if p["phase"] == "tune")
    trials = sorted((p for p in phases if p["phase"] == "trial"), key=lambda p: p["start"])
    free = [tune["start"]] * slots
    ray_s = work_s = 0.0
    for trial in trials:
        slot = min(range(slots), key=free.__getitem__)
        own = sum(p["end"] - p["start"] for p in phases if p["phase"] in WORK and p["pid"] == trial["pid"]
                  and trial["start"] <= p["start"] <= trial["end"])
        ray_s += max(0.0, trial["start"] - free[slot]) + (trial["end"] - trial["start"] - own)
        work_s += own
        free[slot] = trial["end"]
    return ray_s / (ray_s + work_s), ray_s, len(trials), work_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="digits-study", help="config preset (default: the default study's)")
    parser.add_argument("--kimg", type=float, default=9.6, help="duration of each run in kimg")
    parser.add_argument("--evaluations", type=int, default=5, help="evaluations after kimg 0 (the preset's: 5)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds over the modes (the table: medians)")
    parser.add_argument("--modes", default="in-process,study", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--trials", type=int, default=1, help="9: the default study (3 alphas x 3 seeds) instead")
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temp folder)")
    parser.add_argument("--train-group", type=Path, default=None, help=argparse.SUPPRESS)  # the train-group child
    args = parser.parse_args()
    config = preset(args.preset, duration_kimg=args.kimg, eval_every_kimg=args.kimg / args.evaluations)
    if args.train_group is not None:  # runs in the child process: Ray imported here only
        from sid.cluster.distributed import run_distributed  # noqa: PLC0415
        from sid.cluster.resources import TrialResources  # noqa: PLC0415

        run_distributed(config, args.train_group, address=None, resume=False,
                        resources=TrialResources(workers=1, gpus_per_worker=0.0, cpus_per_worker=THREADS))
        return
    root = args.out or Path(tempfile.mkdtemp(prefix="ray_overhead-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{args.preset}: {args.kimg} kimg = {config.iterations} iterations of batch {config.batch}, "
          f"{args.evaluations + 1} evaluations of {config.fid_images} images; {os.cpu_count()} CPUs; in {root}")
    if args.trials > 1:
        seeds = 3
        alphas = ",".join(str(a) for a in [0.5, 1.0, 1.2, 1.5, 0.75, 0.25][: -(-args.trials // seeds)])
        wall, phases = run(command("study", args, root / "study", alphas, seeds), root / "timeline.jsonl")
        share, ray_s, trials, work_s = trial_shares(phases, slots=os.cpu_count())
        once = wall - (max(p["end"] for p in phases if p["phase"] == "trial") - next(
            p["start"] for p in phases if p["phase"] == "tune"))
        print(f"\n{trials} trials, {os.cpu_count()} at once, {wall:.1f} s; Ray per trial {ray_s / trials:.1f} s, "
              f"the run's own work {work_s / trials:.1f} s, one-off {once:.1f} s; load average "
              f"{os.getloadavg()[0]:.1f}")
        print(f"Ray's share per trial: {share:.3f}; with the one-off costs once: "
              f"{(ray_s + once) / (ray_s + work_s + once):.3f}")
        return
    modes = args.modes.split(",")
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    for k in range(args.repeat):
        for mode in modes:
            out = root / f"round{k}-{mode}"
            start = time.time()
            wall, phases = run(command(mode, args, out), root / f"round{k}-{mode}.jsonl")
            results[mode].append({**breakdown(wall, phases, start), "load avg": os.getloadavg()[0]})
            print(f"round {k} {mode:<12} {wall:7.1f} s  load average {os.getloadavg()[0]:.1f}", flush=True)
    names = ["total", "ratio", *COLUMNS, "to trial", "rest", "load avg"]
    print(f"\n{'mode':<12}" + "".join(f"{n:>10}" for n in names))
    for mode in modes:
        rows = results[mode]
        median = {n: statistics.median(r[n] for r in rows) for n in rows[0]}
        median["ratio"] = statistics.median(r["total"] / b["total"] for r, b in zip(rows, results[modes[0]]))
        print(f"{mode:<12}" + "".join(f"{median[n]:>10.2f}" for n in names))
    print(f"(seconds, medians of {args.repeat} rounds; ratio: total over the same round's {modes[0]})")


if __name__ == "__main__":
    main()
