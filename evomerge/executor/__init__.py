"""Executors (config group `executor`) run a population of recipes on workers and return outcomes in population
order: `map(recipes, split="fitness", indices=None) -> [Outcome]` and `close()`. The search loop cannot tell them
apart; `serial` evaluates in this process, `ray` on long-lived Ray actors (evomerge/executor/ray.py)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from evomerge.executor.worker import Worker
from evomerge.registry import EXECUTORS

RAY_KEYS = {"kind", "address", "num_workers", "num_cpus", "num_gpus", "device", "max_restarts",
            "startup_timeout_s", "runtime_env"}


@dataclass(frozen=True)
class ExecutorConfig:
    """The `executor:` block, checked (no Ray is started here)."""
    kind: str = "serial"
    address: str | None = None        # Ray: null starts Ray locally; 'auto', 'ray://HOST:PORT' or 'HOST:PORT'
    num_workers: int | None = None    # None: as many as fit the cluster
    num_cpus: float = 1
    num_gpus: float = 0
    device: str | None = None         # the workers' device (None: the run's)
    max_restarts: int = 3
    startup_timeout_s: float = 600
    runtime_env: dict | None = None

    @classmethod
    def parse(cls, cfg: Any) -> ExecutorConfig:
        if isinstance(cfg, ExecutorConfig):
            return cfg
        check(cfg)
        cfg = dict(cfg or {"kind": "serial"})
        if cfg["kind"] == "serial":
            return cls()
        return cls(**{k: v for k, v in cfg.items() if k in RAY_KEYS})


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


def connect(cfg: ExecutorConfig | Any) -> None:
    """For executor=ray, connect to (or start) Ray now, before any model is loaded, so that a wrong
    executor.address, or workers that cannot fit, fail in seconds. The executor built later reuses the connection."""
    ec = ExecutorConfig.parse(cfg)
    if ec.kind == "ray":
        from evomerge.executor import ray as ray_executor

        ray_executor.connect(ec.address, ec.runtime_env)
        ray_executor.count_workers(ec.address, ec.num_workers, ec.num_cpus, ec.num_gpus)


def make_worker(evaluator_cfg: Any, seed: int, keep_records: bool, pool, device: str) -> Worker:
    """Build a Worker the way run.py builds its own: same evaluators, same seed, hence the same metrics."""
    from evomerge import evaluator as evaluators_pkg

    return Worker(pool, evaluators_pkg.build(evaluator_cfg, pool.tokenizer, seed=seed, device=device), keep_records)


def build(cfg: ExecutorConfig | Any, worker: Worker, pool, evaluator_cfg: Any = None, seed: int = 0,
          device: str = "cpu"):
    """The executor `cfg` names; `worker` is the driver's own Worker (serial uses it as is). Ray actors build their
    own Worker each from `evaluator_cfg` and `seed`, as the driver built its own."""
    ec = ExecutorConfig.parse(cfg)
    executor = EXECUTORS.get(ec.kind, "executor.kind")
    if ec.kind == "serial":
        return executor(worker)
    factory = functools.partial(make_worker, evaluator_cfg, seed, worker.keep_records)
    return executor(pool, factory, device=ec.device or device, address=ec.address, num_workers=ec.num_workers,
                    num_cpus=ec.num_cpus, num_gpus=ec.num_gpus, max_restarts=ec.max_restarts,
                    startup_timeout_s=ec.startup_timeout_s, runtime_env=ec.runtime_env)
