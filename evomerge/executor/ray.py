"""Evaluate a population on long-lived Ray actors, one Worker each, from one machine to a cluster.

Why the pool travels through Ray's object store (and is not re-loaded from paths by each actor): the driver has
already loaded and checked the source models, paths need not exist on other nodes, and on a node every actor maps
the same shared-memory copy of the source tensors instead of holding its own (N workers on a CPU node cost one copy
of the sources, not N). The tensors are put once, as raw bytes, when the executor starts; per candidate only the
recipe (a few KB) and the outcome travel. Each actor keeps one persistent merged model (its Worker's Merger).

Dispatch is dynamic: every actor has at most one candidate in flight and a finishing actor takes the next one
(`ray.wait`), so a slow candidate does not idle the others; outcomes come back in population order.
Faults: an actor that dies (killed process, out of memory, lost node) is replaced by a fresh one and its candidate
is retried once; a candidate that kills its worker twice is recorded as a failed Outcome and the search goes on.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, OutOfMemoryError, RayActorError, RayTaskError
from torch import nn

from evomerge.executor.worker import Outcome, Worker
from evomerge.models.pool import ModelPool

log = logging.getLogger(__name__)

WORKER_DEATHS = (RayActorError, OutOfMemoryError)  # the process is gone: replace the actor, retry the candidate


# ---- the pool, packed for the object store ---------------------------------------------------------------------
def _pack_tensor(t: torch.Tensor) -> tuple[np.ndarray, torch.dtype, tuple[int, ...]]:
    """Raw bytes + dtype + shape: numpy arrays are zero-copy in Ray's object store, and bytes cover bfloat16."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy(), t.dtype, tuple(t.shape)


def _unpack_tensor(packed, device: str) -> torch.Tensor:
    data, dtype, shape = packed
    with warnings.catch_warnings():  # object-store arrays are read-only; source tensors are never written
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(data)
    return t.view(dtype).reshape(shape).to(device)


def skeleton(model: nn.Module) -> nn.Module:
    """A copy of `model` whose state-dict tensors are on the meta device: its structure, without its weights.

    Non-persistent buffers (e.g. rotary `inv_freq`) are not in the state dict and are copied with their values.
    """
    memo: dict[int, Any] = {}
    for t in model.state_dict(keep_vars=True).values():
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def pack_pool(pool: ModelPool) -> dict:
    """Everything a worker needs to rebuild the pool: small fields as they are, tensors as raw bytes."""
    fields = {f.name: getattr(pool, f.name) for f in dataclasses.fields(pool) if f.name not in ("state", "template")}
    state = {m: {k: _pack_tensor(t) for k, t in sd.items()} for m, sd in pool.state.items()}
    return {"fields": fields, "state": state, "skeleton": skeleton(pool.template),
            "template_source": pool.all_names[0]}


def unpack_pool(packed: dict, device: str) -> ModelPool:
    state = {m: {k: _unpack_tensor(p, device) for k, p in sd.items()} for m, sd in packed["state"].items()}
    template = packed["skeleton"]
    # like the driver's pool, the template's weights are the first model's tensors (assign: no copy)
    template.load_state_dict(state[packed["template_source"]], assign=True)
    template.to(device).eval()
    return ModelPool(**packed["fields"], state=state, template=template)


# ---- the actor -------------------------------------------------------------------------------------------------
class WorkerActor:
    """One Ray actor: rebuilds the pool from the object store and makes its Worker once, then evaluates recipes."""

    def __init__(self, packed_pool: dict, make_worker: Callable[[ModelPool, str], Worker], device: str,
                 num_threads: int):
        from evomerge.offline import set_offline_env

        set_offline_env()
        torch.set_num_threads(num_threads)
        self.worker = make_worker(unpack_pool(packed_pool, device), device)

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, recipe, split: str, indices) -> Outcome:
        return self.worker.evaluate(recipe, split, indices)


# ---- the executor ----------------------------------------------------------------------------------------------
_owner = False  # this process started (or joined) Ray in connect() and leaves it in disconnect()


def init_local(**kwargs: Any) -> None:
    """Start a local Ray instance (kwargs go to ray.init, e.g. num_cpus). Ray runs workers at nice 15 by default,
    behind every other job on the machine; evaluations are the work here, so they run at normal priority like a
    serial run (override: set RAY_worker_niceness; a `ray start` cluster keeps its own setting)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline-first: no usage report
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(include_dashboard=False, **kwargs)


def connect(address: str | None, runtime_env: dict | None = None) -> None:
    """Connect to Ray (or start a local instance), unless this process already has Ray (tests, notebooks: Ray
    started by the caller is left running by disconnect())."""
    global _owner
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"runtime_env": runtime_env} if runtime_env else {}
    if address is None:
        init_local(**kwargs)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError) as e:
            raise RuntimeError(
                f"executor.address={address!r}: cannot connect to a Ray cluster ({_first_line(e)}). Start one with "
                f"`ray start --head` (then use address=auto), give its client address ray://HOST:10001, or set "
                f"executor.address=null to start a local Ray instance."
            ) from e
    _owner = True


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) address must resolve and accept a TCP connection within seconds: Ray itself
    retries an unresolvable GCS address for many minutes before it gives up."""
    import socket

    if address in ("auto", "local") or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"executor.address={address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except socket.gaierror as e:
        raise RuntimeError(f"executor.address={address!r}: the host {host!r} does not resolve ({e.strerror}); "
                           "check the name, or set executor.address=null to start a local Ray instance") from None
    except OSError as e:
        raise RuntimeError(f"executor.address={address!r}: nothing accepts connections at {host}:{port} "
                           f"({e.strerror or e}); start the cluster with `ray start --head`, or set "
                           "executor.address=null to start a local Ray instance") from None


def disconnect() -> None:
    """Shut Ray down if connect() started or joined it (the next Hydra multirun job connects again)."""
    global _owner
    if _owner and ray.is_initialized():
        ray.shutdown()
    _owner = False


def fit_workers(num_cpus: float, num_gpus: float, resources: dict) -> tuple[int, dict]:
    """How many workers of this size `resources` (total or currently free) fit."""
    fits = []
    if num_cpus > 0:
        fits.append(math.floor(resources.get("CPU", 0) / num_cpus))
    if num_gpus > 0:
        fits.append(math.floor(resources.get("GPU", 0) / num_gpus))
    return (min(fits) if fits else 1), resources


def count_workers(address: str | None, num_workers: int | None, num_cpus: float, num_gpus: float) -> int:
    """The number of workers: as asked, or as many as the cluster fits; refused when they can never start."""
    fit, total = fit_workers(num_cpus, num_gpus, ray.cluster_resources())
    n = num_workers or fit
    if n < 1 or (address is None and n > fit):  # a local instance does not grow (no autoscaler)
        raise RuntimeError(
            f"executor: the Ray cluster has {total.get('CPU', 0)} CPUs and {total.get('GPU', 0)} GPUs, which fit "
            f"{fit} workers of executor.num_cpus={num_cpus}, executor.num_gpus={num_gpus}; "
            f"executor.num_workers={num_workers}. Lower num_workers or the per-worker resources, or add nodes."
        )
    return n


class RayExecutor:
    """map(recipes, split, indices) -> [Outcome] in population order, evaluated on `num_workers` Ray actors."""

    def __init__(self, pool: ModelPool, make_worker: Callable[[ModelPool, str], Worker], *, device: str = "cpu",
                 address: str | None = None, num_workers: int | None = None, num_cpus: float = 1,
                 num_gpus: float = 0, max_restarts: int = 3, startup_timeout_s: float = 600,
                 runtime_env: dict | None = None):
        connect(address, runtime_env)
        self.actors: list = []
        self.starting: dict[Any, int] = {}  # ready-check ref -> slot of a replacement worker still starting
        try:
            n = count_workers(address, num_workers, num_cpus, num_gpus)
        except RuntimeError:
            self.close()
            raise
        free, available = fit_workers(num_cpus, num_gpus, ray.available_resources())
        if n > free:
            log.warning("executor: %d workers requested but the free resources (%s) fit %d; the rest wait for "
                        "resources (held by other actors, or autoscaling) up to executor.startup_timeout_s=%s",
                        n, available, free, startup_timeout_s)
        t0 = time.perf_counter()
        self.pool_ref = ray.put(pack_pool(pool))  # once: every actor (and every restart) reads this object
        self.actor_cls = ray.remote(WorkerActor).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0,
                                                         max_task_retries=0)
        self.actor_args = (self.pool_ref, make_worker, device, max(1, int(num_cpus)))
        self.max_restarts, self.startup_timeout_s = max_restarts, startup_timeout_s
        self.restarts = [0] * n  # per worker slot
        self.actors = [self.actor_cls.remote(*self.actor_args) for _ in range(n)]
        try:
            self.pids = ray.get([a.pid.remote() for a in self.actors], timeout=startup_timeout_s)
        except GetTimeoutError:
            self.close()
            raise RuntimeError(
                f"executor: {n} Ray workers did not start within executor.startup_timeout_s={startup_timeout_s} s "
                f"(free resources: {ray.available_resources() if ray.is_initialized() else '?'}); lower "
                f"executor.num_workers, free the resources, or raise the timeout"
            ) from None
        except (RayActorError, RayTaskError) as e:
            self.close()
            raise RuntimeError(f"executor: a Ray worker failed while building its pool and evaluators: {e}") from e
        log.info("executor: %d Ray workers ready in %.1f s (num_cpus=%s, num_gpus=%s each, device %s)", n,
                 time.perf_counter() - t0, num_cpus, num_gpus, device)

    def _replace(self, slot: int, error: Exception) -> None:
        """Start a fresh actor in `slot` after its process died; it takes candidates once it answers."""
        ray.kill(self.actors[slot], no_restart=True)
        self.pids[slot] = None
        if self.restarts[slot] >= self.max_restarts:
            self.actors[slot] = None
            log.error("executor: worker %d died %d times; giving up on it (executor.max_restarts=%d)", slot,
                      self.restarts[slot] + 1, self.max_restarts)
            return
        self.restarts[slot] += 1
        log.warning("executor: worker %d died (%s); starting a new one (restart %d of %d)", slot,
                    type(error).__name__, self.restarts[slot], self.max_restarts)
        self.actors[slot] = self.actor_cls.remote(*self.actor_args)
        self.starting[self.actors[slot].pid.remote()] = slot

    def worker_pids(self) -> list[int | None]:
        """Process ids of the workers (None for a given-up slot); waits for replacements still starting."""
        return [ray.get(a.pid.remote()) if a is not None else None for a in self.actors]

    def map(self, recipes, split: str = "fitness", indices=None) -> list[Outcome]:
        n = len(recipes)
        outcomes: list[Outcome | None] = [None] * n
        attempts = [0] * n
        todo = deque(range(n))
        busy = set(self.starting.values())
        idle = deque(s for s, a in enumerate(self.actors) if a is not None and s not in busy)
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (worker slot, candidate index)
        idx = ray.put(list(indices)) if indices is not None else None  # once per population, not per candidate
        while todo or running:
            while todo and idle:  # dynamic dispatch: one candidate in flight per ready worker
                slot, i = idle.popleft(), todo.popleft()
                attempts[i] += 1
                running[self.actors[slot].evaluate.remote(recipes[i], split, idx)] = (slot, i)
            if not running and not self.starting:
                raise RuntimeError(
                    f"executor: every Ray worker died more than executor.max_restarts={self.max_restarts} times; "
                    f"{len(todo)} candidates left unevaluated. Check memory (an out-of-memory kill is the usual "
                    f"cause) and the Ray logs under /tmp/ray/session_latest/logs."
                )
            ready, _ = ray.wait([*running, *self.starting], num_returns=1,
                                timeout=None if running else self.startup_timeout_s)
            if not ready:
                raise RuntimeError(f"executor: replacement Ray workers did not start within "
                                   f"executor.startup_timeout_s={self.startup_timeout_s} s")
            ref = ready[0]
            if ref in self.starting:  # a replacement worker is up (or died while starting)
                slot = self.starting.pop(ref)
                try:
                    self.pids[slot] = ray.get(ref)
                    idle.append(slot)
                except (*WORKER_DEATHS, RayTaskError) as e:
                    self._replace(slot, e)
                continue
            slot, i = running.pop(ref)
            try:
                outcomes[i] = ray.get(ref)
                idle.append(slot)
            except WORKER_DEATHS as e:
                self._replace(slot, e)
                if attempts[i] < 2:
                    todo.appendleft(i)  # retried once, by the next ready worker
                else:
                    outcomes[i] = Outcome(None, f"WorkerDied: the worker process died twice while evaluating this "
                                                f"candidate (last: {type(e).__name__}: {_first_line(e)})")
            except RayTaskError as e:  # an error outside Worker.evaluate's own handling (e.g. unpickling)
                outcomes[i] = Outcome(None, f"RayTaskError: {_first_line(e)}")
                idle.append(slot)
        return outcomes  # type: ignore[return-value]

    def close(self) -> None:
        for a in self.actors:
            if a is not None:
                ray.kill(a, no_restart=True)
        self.actors, self.starting, self.pool_ref = [], {}, None
        disconnect()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
