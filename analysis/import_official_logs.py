"""Import the logs of the official SiD code (github.com/mingyuanzhou/SiD) into our evaluations schema, so that
published or old runs can be plotted beside ours (the data behind the SiD paper's Figs. 2-6 come from such logs).

Read per alpha from each official run folder:
  metric-fid50k_full-alpha-<alpha>.jsonl  one JSON object per evaluation: results.fid50k_full, num_gpus, timestamp,
                                          snapshot_pkl (a file name ending in the kimg, e.g. fakes_1.200000_000102.png)
  stats_<alpha>.jsonl                     one object per tick (blank line between them): {"<stat>": {"num", "mean",
                                          "std"}} with Progress/kimg, Timing/total_sec, Timing/maintenance_sec,
                                          Timing/sec_per_kimg, fake_score_Loss/loss, G_Loss/loss; optional
  training_options.json                   batch_size, seed, tmax, init_sigma, optimiser lrs, use_fp16, resume_pkl

kimg comes from the stats line of the same tick (exact cur_nimg / 1000) or else from the snapshot name (floored).
Losses are converted to this project's definition (the mean over generator images of the per-image loss, summed
over pixels, unscaled): the official value is the last accumulation round's sum times ls (or lsg) / per-GPU batch,
so it is multiplied by (batch / num_gpus) / (scale x micro-batch), with batch_gpu, loss_scaling and loss_scaling_G
from training_options.json (official defaults ls 1, lsg 100, micro-batch = per-GPU batch when the file lacks them).
Both are estimates of the same per-image mean; the official one averages one micro-batch per iteration.
wall_s is the run's total time minus its maintenance time (snapshots and metrics), matching our 'evaluations
excluded'; device_s = wall_s x num_gpus. Config values: flags first, then training_options.json, then the
official CLI defaults. Each (run, alpha) becomes one trial: <out>/evaluations/<run>-alpha<alpha>.parquet.

  python analysis/import_official_logs.py runs/00000-cifar10-... --out results/official --study official
"""

from __future__ import annotations

import argparse
import json
import math
import re
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import common
from sid.config import INCEPTION
from sid.files import EVALUATIONS_DIR
from sid.flags import Parser
from sid.results import write_evaluations

METRIC_FILE = re.compile(r"metric-(fid(\d+)k\w*)-alpha-(.+)\.jsonl")
SNAPSHOT_KIMG = re.compile(r"(\d+)\.(?:png|pkl)$")
# EDM pickles the official code starts from -> our preset (and teacher 'edm:<preset>') names.
EDM_PICKLES = {"edm-cifar10-32x32-uncond-vp.pkl": "cifar10-uncond", "edm-cifar10-32x32-cond-vp.pkl": "cifar10-cond",
               "edm-imagenet-64x64-cond-adm.pkl": "imagenet64-cond", "edm-ffhq-64x64-uncond-vp.pkl": "ffhq64",
               "edm-afhqv2-64x64-uncond-vp.pkl": "afhqv2-64"}
# sid_train.py's defaults, for values neither the options file nor a flag gives.
OFFICIAL_DEFAULTS = dict(preset="official", teacher="unknown", tmax=800, sigma_init=2.5, lr=1e-5, glr=1e-5,
                         batch=512, precision="fp32", seed=0)
LOSS_DEFAULTS = dict(batch_gpu=None, ls=1.0, lsg=100.0)  # micro-batch (None: the per-GPU batch), loss scales


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Objects of a JSON-lines file; blank lines skipped, a cut-off last line skipped with a warning."""
    lines = [(i, s) for i, s in enumerate(path.read_text().splitlines(), 1) if s.strip()]
    out = []
    for k, (number, text) in enumerate(lines):
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError as exc:
            if k < len(lines) - 1:
                raise common.AnalysisError(f"{path}:{number}: not a JSON object ({exc})") from exc
            warnings.warn(f"{path}:{number}: skipping a cut-off last line", stacklevel=2)
    return out


def options(run: Path) -> dict[str, Any]:
    """Config values from the run's training_options.json (empty when the file is absent)."""
    path = run / "training_options.json"
    if not path.exists():
        return {}
    o = json.loads(path.read_text())
    found = dict(batch=o.get("batch_size"), seed=o.get("seed"), tmax=o.get("tmax"), sigma_init=o.get("init_sigma"),
                 lr=o.get("fake_score_optimizer_kwargs", {}).get("lr"), glr=o.get("g_optimizer_kwargs", {}).get("lr"),
                 batch_gpu=o.get("batch_gpu"), ls=o.get("loss_scaling"), lsg=o.get("loss_scaling_G"))
    if "use_fp16" in o.get("network_kwargs", {}):
        found["precision"] = "fp16" if o["network_kwargs"]["use_fp16"] else "fp32"
    if o.get("resume_pkl"):
        name = EDM_PICKLES.get(Path(str(o["resume_pkl"])).name)
        found.update(preset=name or "official", teacher=f"edm:{name}" if name else str(o["resume_pkl"]))
    return {k: v for k, v in found.items() if v is not None}


def stats_by_kimg(path: Path) -> pd.DataFrame:
    """Per tick: exact kimg, training wall time (total minus maintenance so far), throughput and losses; indexed by
    the floored kimg that snapshot names carry."""
    records = read_jsonl(path) if path.exists() else []

    def mean(r: dict, key: str) -> float:
        return float(r.get(key, {}).get("mean", math.nan))

    frame = pd.DataFrame([{"kimg": mean(r, "Progress/kimg"), "total_s": mean(r, "Timing/total_sec"),
                           "maintenance_s": mean(r, "Timing/maintenance_sec"),
                           "sec_per_kimg": mean(r, "Timing/sec_per_kimg"),
                           "loss_fake_score": mean(r, "fake_score_Loss/loss"),
                           "loss_generator": mean(r, "G_Loss/loss")} for r in records],
                         columns=["kimg", "total_s", "maintenance_s", "sec_per_kimg", "loss_fake_score",
                                  "loss_generator"])
    frame = frame.dropna(subset=["kimg"]).sort_values("kimg")
    frame["wall_s"] = frame["total_s"] - frame["maintenance_s"].fillna(0).cumsum()
    frame["images_per_s"] = 1000 / frame["sec_per_kimg"]
    frame.index = frame["kimg"].map(math.floor)
    return frame[~frame.index.duplicated(keep="last")]  # a resumed run repeats ticks: its newest line wins


def per_image_loss_factors(config: dict[str, Any], world: int) -> tuple[float, float]:
    """Factors that turn the official fake-score and generator losses into per-image means (module docstring)."""
    per_gpu = config["batch"] / world
    micro = min(config["batch_gpu"] or per_gpu, per_gpu)  # EDM's loop caps batch_gpu at the per-GPU batch
    return per_gpu / (config["ls"] * micro), per_gpu / (config["lsg"] * micro)


def import_run(run: Path, *, study: str, overrides: dict[str, Any] | None = None) -> dict[str, pd.DataFrame]:
    """Evaluation rows of one official run folder, per trial id (one trial per alpha logged there)."""
    run = Path(run)
    if not run.is_dir():
        raise common.AnalysisError(f"{run}: not a folder (expected an official SiD run folder)")
    config = {**OFFICIAL_DEFAULTS, **LOSS_DEFAULTS, **options(run), **(overrides or {})}
    trials = {}
    for path in sorted(run.glob("metric-fid*-alpha-*.jsonl")):
        match = METRIC_FILE.fullmatch(path.name)
        if match is None:
            continue
        metric, thousands, alpha_text = match.groups()
        stats = stats_by_kimg(run / f"stats_{alpha_text}.jsonl")
        rows = []
        for r in read_jsonl(path):
            snapshot = SNAPSHOT_KIMG.search(str(r.get("snapshot_pkl", "")))
            if snapshot is None or metric not in r.get("results", {}):
                raise common.AnalysisError(f"{path}: a line lacks results.{metric} or a snapshot name ending in kimg")
            tick = stats.loc[int(snapshot.group(1))] if int(snapshot.group(1)) in stats.index else None
            kimg = float(tick["kimg"]) if tick is not None else float(snapshot.group(1))
            world = int(r.get("num_gpus", 1))
            wall = float(tick["wall_s"]) if tick is not None else math.nan
            fake_scale, g_scale = per_image_loss_factors(config, world)
            fid = float(r["results"][metric])
            rows.append(dict(
                study=study, trial_id=f"{run.name}-alpha{float(alpha_text):g}", alpha=float(alpha_text),
                **{k: config[k] for k in ("preset", "teacher", "tmax", "sigma_init", "lr", "glr", "batch", "precision",
                                          "seed")},
                world_size=world, kimg=kimg, iteration=round(kimg * 1000 / config["batch"]), wall_s=wall,
                device_s=wall * world, fid=fid, fid_detector=INCEPTION, fid_images=int(thousands) * 1000,
                loss_fake_score=tick["loss_fake_score"] * fake_scale if tick is not None else math.nan,
                loss_generator=tick["loss_generator"] * g_scale if tick is not None else math.nan,
                images_per_s=tick["images_per_s"] if tick is not None else math.nan,
                nan_samples=None,  # the official code does not count them
                status="ok" if math.isfinite(fid) else "diverged",
                written_at=datetime.fromtimestamp(float(r.get("timestamp", 0)), tz=UTC)))
        if rows:
            frame = pd.DataFrame(rows).drop_duplicates(subset=["kimg"], keep="last").sort_values("kimg")
            trials[rows[0]["trial_id"]] = frame.reset_index(drop=True)
    if not trials:
        raise common.AnalysisError(f"{run}: no metric-fid*-alpha-*.jsonl with evaluations (not an official SiD run?)")
    return trials


def build_parser() -> Parser:
    p = Parser(description=__doc__)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="official SiD run folders (sid_train.py --outdir ...)")
    p.add_argument("--out", required=True, help="study folder to write: <out>/evaluations/<trial>.parquet")
    p.add_argument("--study", default=None, help="study name in the rows (default: the --out folder's name)")
    for name, kind in (("preset", str), ("teacher", str), ("batch", int), ("seed", int), ("tmax", int),
                       ("sigma-init", float), ("lr", float), ("glr", float), ("precision", str)):
        p.add_argument(f"--{name}", type=kind, default=None, help=f"{name}; wins over training_options.json")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        overrides = {k: v for k, v in vars(args).items() if k in OFFICIAL_DEFAULTS and v is not None}
        study = args.study if args.study is not None else Path(args.out).resolve().name
        for run in args.runs:
            for trial, frame in import_run(Path(run), study=study, overrides=overrides).items():
                path = write_evaluations(Path(args.out) / EVALUATIONS_DIR / f"{trial}.parquet", frame)
                print(f"{path}: {len(frame)} evaluations, kimg {frame['kimg'].min():g}-{frame['kimg'].max():g}")

    common.cli(build_parser(), body, argv)


if __name__ == "__main__":
    main()
