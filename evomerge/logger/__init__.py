"""Loggers (config group `logger`): progress while a run is going and tracking. They never make a run fail.

Each logger is one class and one config (evomerge/conf/logger/NAME.yaml): `local` needs nothing, `wandb` adds
Weights & Biases. The search loop calls `evaluation(record)` after each candidate, `generation(...)` after each
generation, and run.py calls `finish(summary)` at the end.
"""

from __future__ import annotations

from typing import Any

from evomerge.registry import LOGGERS


def build(cfg: Any, run_dir, run_config: dict | None = None):
    """The logger named by `cfg.kind`; `run_config` is the whole resolved config (logged by trackers)."""
    cfg = dict(cfg or {"kind": "local"})
    return LOGGERS.get(cfg.get("kind"), "logger.kind")(cfg, run_dir, run_config)
