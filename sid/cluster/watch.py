"""Watching a study from its Tune driver: a progress line (trials done / running / pending of the planned number, kimg
done of the total, img/s and an ETA), one line per evaluation, and what the trackers get of a report
(sid/cluster/study_trackers.py). Plain Python: no Ray import.

The ETA is the plan's model (sid.plan.finish_s: trials in `concurrency` slots) on what is left. Its rate is the
calibration's (the trial seconds --plan prices, sid.plan) from the start, `(calibrated)`; once a trial has measured its
own rate over an evaluation interval, the trials' measured rates, `(measured)`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sid.files import RUNS_DIR, samples_name
from sid.plan import Calibration, finish_s, trial_images, trial_seconds
from sid.results import EVALUATION_SCHEMA
from sid.tracking import metrics_of

PROGRESS_EVERY_S = 30.0   # at most one progress line per this many seconds between trial starts and ends
METRIC_KEYS = frozenset((*EVALUATION_SCHEMA.names, "best_fid"))  # a report's keys that come from the evaluation row
DONE_STATES = ("TERMINATED", "ERROR")


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """What a tracker logs of a Tune result: the evaluation row's metrics, nothing Tune added, no config field."""
    return metrics_of({k: v for k, v in result.items() if k in METRIC_KEYS})


def samples_path(folder: Path, trial_id: str, result: dict[str, Any]) -> Path | None:
    """The sample grid of the evaluation behind `result` in the trial's run folder, if it is there."""
    if "iteration" not in result:
        return None
    path = Path(folder) / RUNS_DIR / trial_id / samples_name(int(result["iteration"]))
    return path if path.is_file() else None


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def calibrated_trial_s(calibration: Calibration | None, config: Any, workers: int) -> float | None:
    """Seconds one trial of `config` (a DistillConfig) on `workers` devices takes by `calibration`, as --plan prices
    it (sid.plan); None without a calibration."""
    if calibration is None:
        return None
    images, eval_images = trial_images(config)
    return sum(trial_seconds(calibration, workers=workers, images=images, eval_images=eval_images))


@dataclass
class Progress:
    """The study's progress, from the trials Tune holds and the kimg of their reports (times on the driver's clock)."""

    planned: int                   # trials the study runs (grid: its combinations x num_samples; optuna: num_samples)
    final_kimg: float              # kimg of a trial that runs to the end
    concurrency: int = 0           # trials at once (0: as many as run now)
    trial_s: float | None = None   # seconds of one trial by the calibration (sid.plan); None: no ETA until measured
    every_s: float = PROGRESS_EVERY_S
    seen: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)  # id: t0, kimg0, t, kimg
    printed: float = -math.inf

    def observe(self, trial_id: str, kimg: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        t0, k0, _, _ = self.seen.get(trial_id, (now, kimg, now, kimg))
        self.seen[trial_id] = (t0, k0, now, kimg)

    def rate(self, trial_id: str) -> float | None:
        """kimg/s of a trial between its first and latest report (training and evaluations), None before one
        evaluation interval has been measured."""
        t0, k0, t, k = self.seen.get(trial_id, (0.0, 0.0, 0.0, 0.0))
        return (k - k0) / (t - t0) if k > k0 and t > t0 else None

    def line(self, trials: list, ended: Any = None, started: Any = None, now: float | None = None) -> str:
        """`ended`/`started`: a trial Tune is ending or starting (its status changes only after the callback)."""
        now = time.time() if now is None else now
        done = [t for t in trials if t.status in DONE_STATES or t is ended]
        running = [t for t in trials if (t.status == "RUNNING" or t is started) and t not in done]
        pending = max(0, self.planned - len(done) - len(running))
        last = {t.trial_id: float(t.last_result.get("kimg", 0.0) or 0.0) for t in trials}
        kimg_done = sum(last.values())
        # a stopped trial's budget ends where it stopped; every other trial runs to final_kimg
        total = sum(last[t.trial_id] for t in done) + (self.planned - len(done)) * self.final_kimg
        known = [r for r in map(self.rate, self.seen) if r is not None]
        # kimg/s of a trial without its own measured rate: the trials' mean, else the calibration's
        source, each = ("measured", sum(known) / len(known)) if known else \
            ("calibrated", self.final_kimg / self.trial_s) if self.trial_s else ("", 0.0)
        rates = [self.rate(t.trial_id) or each for t in running]
        speed = sum(rates) or (each if pending else 0.0)  # between trials: one trial's
        if pending == 0 and not running:
            eta = "finished"
        elif each <= 0:
            eta = "ETA unknown"
        else:
            left = [max(0.0, self.final_kimg - last[t.trial_id]) / r for t, r in zip(running, rates)]
            slots = self.concurrency or max(1, len(running))
            eta = f"ETA {duration(finish_s(left, pending, self.final_kimg / each, slots))} ({source})"
        self.printed = now
        return (f"study: {len(done)} of {self.planned} trials done, {len(running)} running, {pending} pending; "
                f"kimg {kimg_done:.4g}/{total:.4g}; {speed * 1000:.0f} img/s; {eta}")

    def due(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - self.printed >= self.every_s


def evaluation_line(trial_id: str, result: dict[str, Any], final_kimg: float, label: str) -> str:
    """`[id] kimg 0.016/0.032  FD 45.1234 ± 0.81  best 45.1234  123 img/s  loss_fake ..  loss_G ..  alpha=1`."""
    def get(key: str) -> float:
        value = result.get(key, math.nan)
        return float(value) if isinstance(value, (int, float)) else math.nan

    std = get("fid_std")
    spread = f" ± {std:.2g}" if math.isfinite(std) else " ± n/a"
    return (f"[{trial_id}] kimg {get('kimg'):.4g}/{final_kimg:.4g}  FD {get('fid'):.4f}{spread}  "
            f"best {get('best_fid'):.4f}  {get('images_per_s'):.0f} img/s  loss_fake {get('loss_fake_score'):.4g}  "
            f"loss_G {get('loss_generator'):.4g}  {label}")
