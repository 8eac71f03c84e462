"""Shared test setup: Ray environment for a 2-core machine (see ray_notes.md sections 4.2-4.3)."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

import torch  # noqa: E402

torch.set_flush_denormal(True)
