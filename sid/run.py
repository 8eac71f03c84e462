"""A run's folder and one rank of a run: rows, training state, G_ema snapshots, sample grids, and `run_rank()`, which
the one-run command and the Ray Train worker both use; `run_local()` runs one in this process, or this process's rank
of a torchrun run (`torchrun_rank()`, `process_group()`: torch.distributed without Ray, docs/distributed.md).

The folder's files and their names are listed once, in sid/files.py; snapshots, best.pt and the post-hoc EMA
profiles are saved generators (sid/saved.py).

Files are written beside their final name and renamed into place (sid.files), rows first: an interruption re-runs to
the same evaluation and rewrites its row instead of losing it. A diverged state is never saved: checkpoint, snapshots
and best.pt stay the last good ones. Every file holds plain tensors and containers (read with weights_only=True).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from sid.config import DistillConfig
from sid.datasets import label_distribution
from sid.distill import Distiller
from sid.files import (
    BEST,
    CHECKPOINT,
    CONFIG_FILE,
    EVALUATIONS,
    PHEMA,
    SNAPSHOT_PATTERN,
    SNAPSHOTS,
    link_atomic,
    phema_name,
    samples_name,
    save_torch_atomic,
    snapshot_name,
    write_file_atomic,
    write_text_atomic,
)
from sid.generators import load_generator
from sid.loop import Evaluator, Sink, train
from sid.micro_batch import fit_micro_batch
from sid.process_cache import cached_file
from sid.results import EVALUATION_SCHEMA, best_row, provenance, read_parquet, upsert_evaluations
from sid.safe_pickle import load_plain
from sid.saved import SavedGenerator
from sid.teachers import load_teacher, teacher_kind
from sid.timeline import phase
from sid.tracking import RunTracker, TrackingSettings

# Config fields a resumed run may change: they do not shape the numbers of the evaluations already made.
RESUMABLE_CHANGES = ("duration_kimg", "keep_snapshots", "eval_metrics")
# Fields added after the first checkpoints were written, with the value those runs had.
LATER_FIELDS = {"init_generator": "", "eval_schedule": "every", "phema": "", "phema_every_kimg": 0.0,
                "eval_tick_kimg": 10.0, "class_counts": "", "method": "sid"}
# Later fields that the runs written before them never read (SiDA's settings: those runs were SiD): a checkpoint
# without one matches any value.
UNREAD_LATER_FIELDS = ("data", "lsd", "lsg_gan", "generator_warmup_kimg", "adversarial_warmup_kimg")
# What torchrun (torch.distributed.run) sets in each process it starts; all of them mean "a rank of a torchrun run".
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TORCHRUN_RESTARTS = "TORCHELASTIC_RESTART_COUNT"  # set by torchrun too: restarts of the worker group so far
# How long a rank waits at a collective: the other ranks wait in their next all-reduce while rank 0 evaluates
# (Ray Train's TorchConfig default; torch's own default for NCCL, 10 min, is shorter than a large FID).
PROCESS_GROUP_TIMEOUT_S = 1800

def save_image_grid(images: torch.Tensor, path: Path, scale: int = 4) -> None:
    """Images in [-1, 1] (N, C, H, W) tiled into a square-ish PNG, upscaled `scale` times for small images."""
    from PIL import Image  # noqa: PLC0415 (Pillow: only image files need it)

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
    """Where rank 0 writes a run's evaluations (see the module docstring for the files): the first sink."""

    def __init__(self, out: Path, *, rows_path: Path | None = None, keep_state: bool = True,
                 config_text: str | None = None) -> None:  # config.yaml's text (default: the DistillConfig as YAML)
        self.out, self.config_text, self._config_written = Path(out), config_text, False
        self.rows_path = Path(rows_path) if rows_path is not None else self.out / EVALUATIONS
        self.state_path = self.out / CHECKPOINT if keep_state else None  # folders are made by the first write

    def best_until(self, trial_id: str, kimg: float) -> Mapping[str, Any] | None:
        """The best row of `trial_id` at or before `kimg` in the rows file (None without one): where a resumed
        run's running best starts."""
        if not self.rows_path.exists():
            return None
        rows = read_parquet(self.rows_path, EVALUATION_SCHEMA)
        best = best_row(rows[(rows["trial_id"] == trial_id) & (rows["kimg"] <= kimg)])
        return None if best is None else best.to_dict()

    def on_evaluation(self, row: dict[str, Any], distiller: Distiller, best: Mapping[str, Any] | None) -> None:
        """Write an evaluation: config.yaml (once), its row, its sample grid, and for a good state its snapshot,
        best.pt (when `best` is this row) and checkpoint.pt, in that order."""
        if not self._config_written:  # once per process: a resume rewrites it with its own values
            write_text_atomic(self.out / CONFIG_FILE,
                              self.config_text or yaml.safe_dump(distiller.config.to_dict(), sort_keys=False))
            self._config_written = True
        upsert_evaluations(self.rows_path, [row], provenance(distiller.config.to_dict(), str(distiller.device)))
        save_image_grid(distiller.sample(0, 64).cpu(), self.out / samples_name(distiller.iteration))
        if row["status"] != "ok":  # a diverged state is no snapshot and no checkpoint
            return
        self._snapshot(row, distiller, best_kimg=best["kimg"] if best is not None else None)
        if self.state_path is not None:
            save_torch_atomic({**distiller.state_dict(), "wall_s": row["wall_s"]}, self.state_path)

    def _snapshot(self, row: dict[str, Any], distiller: Distiller, *, best_kimg: float | None) -> None:
        folder = self.out / SNAPSHOTS
        path = snapshot_of(distiller, row).save(folder / snapshot_name(row["kimg"]))
        if best_kimg == row["kimg"]:
            link_atomic(path, self.out / BEST)
        kinds = distiller.config.keep_snapshots.split(",")
        if "all" in kinds:
            return
        keep = {path.name} if "last" in kinds else set()
        if "best" in kinds and best_kimg is not None:
            keep.add(snapshot_name(best_kimg))
        for stale in folder.glob(SNAPSHOT_PATTERN):
            if stale.name not in keep:
                stale.unlink()

    def write_phema(self, distiller: Distiller) -> None:
        """Save each post-hoc EMA profile of the generator (sid/phema.py); all are kept: any EMA is rebuilt from
        them."""
        for sigma_rel, gamma, net in distiller.profiles:
            profile = SavedGenerator.of(net, sigma_init=distiller.config.sigma_init, config=distiller.config.to_dict(),
                                        kimg=distiller.kimg, iteration=distiller.iteration, sigma_rel=sigma_rel,
                                        gamma=gamma)
            if not all(v.isfinite().all() for v in profile.state_dict.values() if v.is_floating_point()):
                continue  # a diverged profile is no snapshot: a reconstruction would only spread the NaN
            profile.save(self.out / PHEMA / phema_name(sigma_rel, distiller.kimg))


def snapshot_of(distiller: Distiller, row: Mapping[str, Any]) -> SavedGenerator:
    """The snapshot of an evaluation: G_ema with everything needed to sample it and the score it got."""
    return SavedGenerator.of(distiller.generator_ema, sigma_init=distiller.config.sigma_init,
                             config=distiller.config.to_dict(), kimg=row["kimg"], iteration=row["iteration"],
                             fid=row["fid"], fid_detector=row["fid_detector"], fid_images=row["fid_images"])


def load_checkpoint(path: Path, config: DistillConfig) -> dict:
    """A run's saved state, refused if it was made with a different config (RESUMABLE_CHANGES may differ)."""
    state = load_plain(path, "training checkpoint of this project")
    try:
        saved = {**LATER_FIELDS, **{k: getattr(config, k) for k in UNREAD_LATER_FIELDS}, **state["config"],
                 **{k: getattr(config, k) for k in RESUMABLE_CHANGES}}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a training checkpoint of this project (no config: {exc!r})") from exc
    if saved != config.to_dict():
        diff = {k: (saved.get(k), v) for k, v in config.to_dict().items() if saved.get(k) != v}
        raise ValueError(f"{path} was written with a different config (saved vs now: {diff})")
    return state


def check_rows_readable(folder: RunFolder) -> None:
    """A torn rows file (power loss, a cut copy) stops a resume before anything runs, leaving the file untouched."""
    if folder.rows_path.exists():
        read_parquet(folder.rows_path, EVALUATION_SCHEMA)


def run_rank(config: DistillConfig, folder: RunFolder | None, *, device: torch.device, rank: int = 0,
             world_size: int = 1,
             state: dict | None = None,                  # training state to continue from (load_checkpoint)
             study: str = "", trial_id: str = "run",     # the rows' labels
             setting: str = "",                          # a study's label of the trial's whole setting
             sinks: Sequence[Sink] = (),                 # after the run folder, on every rank (trackers, Ray's report)
             progress: bool = True) -> Distiller:
    """Run (or continue) one rank of a run to config.duration_kimg: rank 0 evaluates and writes `folder`."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals made CPU iterations up to 10x slower
    with phase("load_teacher"):  # once per process (sid.process_cache): a study's trials share their process
        teacher = cached_file("teacher", config.teacher, load_teacher)
        labels = label_distribution(config, teacher.label_dim, warn=rank == 0)
        # a factory-made init generator is rebuilt by the factory the user named as the teacher (never the file's)
        factory = config.teacher if teacher_kind(config.teacher) == "factory" else None
        generator = load_generator(config.init_generator, factory=factory)[0] if config.init_generator else None
    with phase("build_distiller"):
        micro_batch = 0
        if not config.batch_per_device:  # 0: the largest that fits, measured on this device before the run starts
            micro_batch = fit_micro_batch(config, teacher, device=device, world_size=world_size, generator=generator)
        distiller = Distiller(config, teacher, device=device, rank=rank, world_size=world_size, generator=generator,
                              micro_batch=micro_batch, labels=labels)
    wall_s, best = 0.0, None
    if rank == 0:
        for note in distiller.notes:  # said once per run, not per sigma
            print(note, flush=True)
    if state is not None:
        distiller.load_state_dict(state)
        wall_s = float(state["wall_s"])
        if rank == 0:
            print(f"continuing at kimg {distiller.kimg:g} (iteration {distiller.iteration})", flush=True)
            best = folder.best_until(trial_id, distiller.kimg) if folder is not None else None
    writes = rank == 0 and folder is not None
    with phase("load_evaluator"):
        evaluator = Evaluator(config, device) if rank == 0 else None
    train(distiller, evaluator=evaluator,
          sinks=[folder, *sinks] if writes else list(sinks), best=best, study=study, trial_id=trial_id, setting=setting,
          wall_s=wall_s, progress=progress and rank == 0, resumed=state is not None,
          phema_snapshot=folder.write_phema if (writes and config.phema) else None)
    return distiller


def run_local(config: DistillConfig, out: Path, *, device: torch.device, resume: bool, progress: bool = True,
              tracking: TrackingSettings = TrackingSettings(), config_text: str | None = None,  # noqa: B008 (frozen: safe to share)
              rank: int = 0, world_size: int = 1) -> Path:  # this process's rank (torchrun; process_group() first)
    """Run (or continue) one distillation in this process, or its rank of a torchrun run; return the evaluations
    file. `config_text`: the command's config.yaml (default: the DistillConfig's), written with the first evaluation.
    Every rank reads the checkpoint it continues from (a shared folder across nodes); only rank 0 writes."""
    folder = RunFolder(out, config_text=config_text)
    tracker = RunTracker(out, config.to_dict(), tracking) if rank == 0 else None
    state = None
    if resume:
        state = load_checkpoint(out / CHECKPOINT, config)
        check_rows_readable(folder)
        if rank == 0:
            print(f"resuming {out}")
    try:
        run_rank(config, folder if rank == 0 else None, device=device, rank=rank, world_size=world_size, state=state,
                 trial_id=out.name, progress=progress, sinks=[tracker] if tracker is not None else [])
    finally:
        if tracker is not None:
            tracker.close()
    return folder.rows_path


@dataclass(frozen=True)
class TorchrunRank:
    """This process's place in a torchrun run, from its environment."""
    rank: int
    world_size: int
    local_rank: int   # the rank on this node: its GPU is cuda:<local_rank>
    restart: int = 0  # how often torchrun restarted the group (--max-restarts): > 0 continues from checkpoint.pt


def torchrun_rank() -> TorchrunRank | None:
    """This process's rank when torchrun started it (every variable of TORCHRUN_ENV set), else None. ValueError for
    a partial or malformed environment (one line naming what is missing), not a hang in init_process_group."""
    found = {key: os.environ.get(key) for key in TORCHRUN_ENV}
    if not any(found.values()):
        return None
    missing = [key for key, value in found.items() if not value]
    if missing:
        raise ValueError(f"torchrun environment incomplete: {', '.join(missing)} not set (start the command with "
                         "torchrun, or unset " + ", ".join(k for k in TORCHRUN_ENV if k not in missing) + ")")
    try:
        rank = TorchrunRank(int(found["RANK"]), int(found["WORLD_SIZE"]), int(found["LOCAL_RANK"]),
                            int(os.environ.get(TORCHRUN_RESTARTS) or 0))
    except ValueError:
        raise ValueError(f"torchrun environment: RANK, WORLD_SIZE, LOCAL_RANK and {TORCHRUN_RESTARTS} must be "
                         f"integers, got {found['RANK']!r}, {found['WORLD_SIZE']!r}, {found['LOCAL_RANK']!r}, "
                         f"{os.environ.get(TORCHRUN_RESTARTS)!r}") from None
    if not 0 <= rank.rank < rank.world_size or rank.local_rank < 0:
        raise ValueError(f"torchrun environment: expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0, got {rank}")
    return rank


@contextlib.contextmanager
def process_group(device: torch.device, rank: TorchrunRank) -> Iterator[None]:
    """torch.distributed's default group for a torchrun rank (env:// rendezvous; waits for every rank): NCCL on a
    GPU, gloo on CPUs; destroyed on exit. Its keys live under a prefix per torchrun restart: torchrun keeps one store
    across restarts, and a restarted group that read the dead group's addresses failed to connect or hung."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=PROCESS_GROUP_TIMEOUT_S)
    store, _, _ = next(torch.distributed.rendezvous("env://", rank.rank, rank.world_size, timeout=timeout))
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                         store=torch.distributed.PrefixStore(f"sid/restart-{rank.restart}", store),
                                         rank=rank.rank, world_size=rank.world_size, timeout=timeout,
                                         device_id=device if device.type == "cuda" else None)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()
