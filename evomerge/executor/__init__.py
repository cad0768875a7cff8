"""Executors (config group `executor`) run a population of recipes on workers and return outcomes in population
order: `map(recipes, split="fitness", indices=None) -> [Outcome]` and `close()`. The search loop cannot tell them
apart; `serial` evaluates in this process, `ray` on long-lived Ray actors (evomerge/executor/ray.py)."""

from __future__ import annotations

import functools
from typing import Any

from evomerge.executor.worker import Worker
from evomerge.registry import EXECUTORS

RAY_KEYS = {"kind", "address", "num_workers", "num_cpus", "num_gpus", "device", "max_restarts",
            "startup_timeout_s", "runtime_env"}


def check(cfg: Any) -> None:
    """Validate the `executor` config before anything is loaded (no Ray is started here)."""
    cfg = dict(cfg or {"kind": "serial"})
    kind = cfg.get("kind")
    EXECUTORS.check(kind, "executor.kind")
    if kind == "serial":
        return
    unknown = sorted(set(cfg) - RAY_KEYS)
    if unknown:
        raise ValueError(f"executor: unknown option(s) {unknown} for executor=ray; expected {sorted(RAY_KEYS)}")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ValueError("executor=ray needs Ray, which is not installed: pip install 'evomerge[ray]'") from None
    address = cfg.get("address")
    if address is not None and (not isinstance(address, str) or not address):
        raise ValueError(f"executor.address: expected null (start Ray locally), 'auto', 'ray://HOST:PORT' or "
                         f"'HOST:PORT', found {address!r}")
    n = cfg.get("num_workers")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"executor.num_workers: expected a positive integer or null (fit the cluster), found {n!r}")
    for key in ("num_cpus", "num_gpus"):
        v = cfg.get(key, 0)
        if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
            raise ValueError(f"executor.{key}: expected a non-negative number of {key[4:].upper()}s per worker, "
                             f"found {v!r}")
    if not cfg.get("num_cpus") and not cfg.get("num_gpus") and n is None:
        raise ValueError("executor: num_cpus and num_gpus are both 0, so the number of workers cannot be derived "
                         "from the cluster; set executor.num_workers")
    r = cfg.get("max_restarts", 3)
    if not isinstance(r, int) or isinstance(r, bool) or r < 0:
        raise ValueError(f"executor.max_restarts: expected a non-negative integer, found {r!r}")
    t = cfg.get("startup_timeout_s", 600)
    if not isinstance(t, int | float) or isinstance(t, bool) or t <= 0:
        raise ValueError(f"executor.startup_timeout_s: expected a positive number of seconds, found {t!r}")
    env = cfg.get("runtime_env")
    if env is not None and not isinstance(env, dict):
        raise ValueError(f"executor.runtime_env: expected a mapping (Ray runtime_env) or null, found {env!r}")


def connect(cfg: Any) -> None:
    """For executor=ray, connect to (or start) Ray now, before any model is loaded, so that a wrong
    executor.address, or workers that cannot fit, fail in seconds. The executor built later reuses the connection."""
    cfg = dict(cfg or {"kind": "serial"})
    if cfg.get("kind") == "ray":
        from evomerge.executor import ray as ray_executor

        ray_executor.connect(cfg.get("address"), cfg.get("runtime_env"))
        ray_executor.count_workers(cfg.get("address"), cfg.get("num_workers"), cfg.get("num_cpus", 1),
                                   cfg.get("num_gpus", 0))


def make_worker(evaluator_cfg: Any, seed: int, keep_records: bool, pool, device: str) -> Worker:
    """Build a Worker the way run.py builds its own: same evaluators, same seed, hence the same metrics."""
    from evomerge import evaluator as evaluators_pkg

    return Worker(pool, evaluators_pkg.build(evaluator_cfg, pool, seed=seed, device=device), keep_records)


def build(cfg: dict, worker: Worker, pool):
    """The executor chosen by `cfg["executor"]`; `worker` is the driver's own Worker (serial uses it as is)."""
    ex = dict(cfg.get("executor") or {"kind": "serial"})
    check(ex)
    executor = EXECUTORS.get(ex["kind"], "executor.kind")
    if ex["kind"] == "serial":
        return executor(worker)
    factory = functools.partial(make_worker, cfg["evaluator"], int(cfg.get("seed", 0)), worker.keep_records)
    return executor(
        pool, factory, device=ex.get("device") or cfg.get("device", "cpu"), address=ex.get("address"),
        num_workers=ex.get("num_workers"), num_cpus=ex.get("num_cpus", 1), num_gpus=ex.get("num_gpus", 0),
        max_restarts=ex.get("max_restarts", 3), startup_timeout_s=ex.get("startup_timeout_s", 600),
        runtime_env=ex.get("runtime_env"),
    )
