"""The resources of one run, or of each trial of a study: DDP workers, GPUs and CPUs per worker, placement, restarts.

One value, validated once, carried by the one-run command, the study scripts, sid.cluster.study, sid.cluster.dry_run and
sid.cluster.distributed. Plain Python (no Ray, no torch): requests that cannot work on any cluster are refused here,
before
Ray starts; whether a given cluster can hold them is sid.cluster.distributed's `check_resources`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class TrialResources:
    workers: int = 1                         # DDP ranks (Ray Train workers) of one run or trial
    gpus_per_worker: float | None = None     # None: 1 if the cluster has GPUs, else 0 (CPU workers); < 1 only alone
    cpus_per_worker: float | None = None     # None: the runner's default (a study: 1; one run: an even share)
    placement_strategy: str | None = None    # PACK, SPREAD, STRICT_*; None: STRICT_PACK if one node fits
    max_failures: int = 2                    # worker-group restarts from the newest checkpoint before giving up

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError for a request that cannot work on any cluster. DDP ranks of one run sharing a GPU make NCCL fail
        with 'Duplicate GPU detected' (ray-project/ray#48012), and a rank drives exactly one device."""
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        gpus = self.gpus_per_worker
        if gpus is not None and not (isinstance(gpus, (int, float)) and math.isfinite(gpus) and gpus >= 0):
            raise ValueError(f"gpus_per_worker must be >= 0, got {gpus}")
        if gpus is not None and 0 < gpus < 1 and self.workers > 1:
            raise ValueError(f"gpus_per_worker={gpus} with {self.workers} workers would put several DDP ranks of one "
                             "run on one GPU (NCCL 'Duplicate GPU', ray-project/ray#48012); use whole GPUs per worker, "
                             "or a fraction only with 1 worker (to share a GPU between trials)")
        if gpus is not None and gpus > 1:
            raise ValueError(f"gpus_per_worker={gpus}: each DDP rank drives one GPU; ask for more workers instead")
        cpus = self.cpus_per_worker
        if cpus is not None and not (isinstance(cpus, (int, float)) and math.isfinite(cpus) and cpus > 0):
            raise ValueError(f"cpus_per_worker must be > 0, got {cpus}")
        if self.placement_strategy is not None and self.placement_strategy not in STRATEGIES:
            raise ValueError(f"placement_strategy must be one of {', '.join(STRATEGIES)}, "
                             f"got {self.placement_strategy!r}")
        if isinstance(self.max_failures, bool) or not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {self.max_failures}")

    def replace(self, **changes: Any) -> TrialResources:
        return dataclasses.replace(self, **changes)

    def per_worker(self) -> dict[str, float]:
        """Ray resources of one worker (gpus None counts as 0)."""
        return {"CPU": self.cpus_per_worker if self.cpus_per_worker is not None else 1.0,
                **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})}
