"""Stopping rules of a study, on FD-versus-kimg curves, plain Python (no Ray): the study's Tune stopper
(sid.cluster.study.CurveStopper) and the efficiency benchmark's replay (benchmarks/study_efficiency.py) apply the same
code.

* Rungs (asynchronous successive halving, ASHA's rule): at rung kimg grace * eta^k a trial goes on if its smoothed FD
  is within the best 1/eta of the values recorded at that rung so far, or within `z` times the measured noise of
  that cutoff (a difference below the evaluation noise is a tie, and ties go on).
* Curve extrapolation (optional): a power law fitted to a trial's curve (log FD linear in log kimg, evaluations after
  kimg 0) predicts its FD at the end of the run; the trial stops when even the optimistic end of the prediction
  (prediction - z * its standard error) cannot beat the best final FD seen so far.

The smoothed FD at an evaluation is the median of the last `window` evaluations (robust to one noisy evaluation).
The noise of an evaluation is its `fid_std` where measured, else the spread of the last evaluations around that
median (a trial's own jitter), and the noise of a difference adds both sides in quadrature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SCHEDULERS = ("none", "asha", "asha+curve")


@dataclass(frozen=True)
class Point:
    """One evaluation of one trial."""

    kimg: float
    fid: float
    fid_std: float = math.nan  # the evaluation's own sampling error, where measured


def smoothed(points: Sequence[Point], window: int = 3) -> tuple[float, float]:
    """(smoothed FD, its noise) at the last point: the median of the last `window` finite FDs after kimg 0, and the
    noise as described in the module docstring (NaN when it cannot be told)."""
    recent = [p for p in points if p.kimg > 0 and math.isfinite(p.fid)][-window:]
    if not recent:
        return math.nan, math.nan
    values = np.array([p.fid for p in recent])
    median = float(np.median(values))
    stds = [p.fid_std for p in recent if math.isfinite(p.fid_std)]
    if stds:
        noise = float(np.mean(stds)) / math.sqrt(len(recent))
    elif len(recent) >= 2:
        noise = float(np.std(values, ddof=1)) / math.sqrt(len(recent))
    else:
        noise = math.nan
    return median, noise


def power_law_forecast(points: Sequence[Point], at_kimg: float) -> tuple[float, float]:
    """(predicted FD at `at_kimg`, standard error of the prediction) from a least-squares line of log FD on log kimg
    over the finite evaluations after kimg 0; NaN with fewer than 3 such evaluations."""
    pts = [p for p in points if p.kimg > 0 and math.isfinite(p.fid) and p.fid > 0]
    if len(pts) < 3:
        return math.nan, math.nan
    x = np.log([p.kimg for p in pts])
    y = np.log([p.fid for p in pts])
    design = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    dof = len(pts) - 2
    s2 = float(residual @ residual) / dof if dof > 0 else 0.0
    at = np.array([1.0, math.log(at_kimg)])
    var = s2 * float(at @ np.linalg.pinv(design.T @ design) @ at)
    log_pred = float(at @ coef)
    return math.exp(log_pred), math.exp(log_pred) * math.sqrt(max(var, 0.0))  # delta method on exp


@dataclass
class CurveRule:
    """The stopping decisions of one study (state: the values seen at each rung, the best final FD)."""

    grace_kimg: float                  # the first rung
    final_kimg: float                  # where a trial ends by itself
    eta: float = 2.0                   # keep the best 1/eta at each rung
    z: float = 1.0                     # differences below z x noise are ties
    window: int = 3                    # evaluations in the smoothed FD
    curve: bool = False                # also stop on the power-law forecast
    rungs: dict[float, list[tuple[float, float]]] = field(default_factory=dict)  # rung -> (value, noise) seen
    best_final: float = math.inf       # lowest smoothed FD of a trial that reached final_kimg
    passed: dict[str, set[float]] = field(default_factory=dict)  # trial -> rungs it was judged at

    def rung_points(self) -> list[float]:
        points, k = [], self.grace_kimg
        while k < self.final_kimg - 1e-9:
            points.append(k)
            k *= self.eta
        return points

    def decide(self, trial: str, points: Sequence[Point]) -> str | None:
        """Why `trial` should stop now, given its evaluations so far (any order), or None to go on."""
        points = sorted(points, key=lambda p: p.kimg)
        if not points:
            return None
        now = points[-1].kimg
        if now >= self.final_kimg - 1e-9:
            value = smoothed(points, self.window)[0]
            if math.isfinite(value):
                self.best_final = min(self.best_final, value)
            return None
        judged = self.passed.setdefault(trial, set())
        for rung in self.rung_points():
            if now + 1e-9 < rung or rung in judged:
                continue
            judged.add(rung)
            # the curve as it was at the rung: a trial first seen later (a restore) is not judged on later values
            value, noise = smoothed([p for p in points if p.kimg <= rung + 1e-9], self.window)
            if not math.isfinite(value):
                continue
            seen = self.rungs.setdefault(rung, [])
            seen.append((value, noise))
            if len(seen) >= self.eta:  # ASHA: needs others at this rung to compare with
                values = sorted(v for v, _ in seen)
                cutoff = values[max(0, math.ceil(len(values) / self.eta) - 1)]
                margin = self.z * math.hypot(noise if math.isfinite(noise) else 0.0,
                                             _median_noise(seen))
                if value > cutoff + margin:
                    return (f"asha: smoothed FD {value:.4g} at rung {rung:g} kimg is above the best 1/{self.eta:g} "
                            f"cutoff {cutoff:.4g} + {margin:.3g} noise")
        if self.curve and math.isfinite(self.best_final):
            predicted, error = power_law_forecast(points, self.final_kimg)
            if math.isfinite(predicted) and predicted - self.z * error > self.best_final:
                return (f"curve: forecast FD {predicted:.4g} +- {error:.3g} at {self.final_kimg:g} kimg cannot beat "
                        f"the best final {self.best_final:.4g}")
        return None


def _median_noise(seen: list[tuple[float, float]]) -> float:
    noises = [n for _, n in seen if math.isfinite(n)]
    return float(np.median(noises)) if noises else 0.0
