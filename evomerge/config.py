"""The run config at the edge: parsed and checked once into a typed `RunConfig`, with every check that needs no
model, so bad input fails in seconds, before any loading. Below `run.py` the steps receive its typed parts.

The per-kind sections (`evaluator`, `space`, `merge`, `optimizer`, `logger`) stay mappings here: each is read by
the class its `kind` names (evomerge.registry), which knows its own options and refuses unknown ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evomerge import preconditions as preconditions_pkg
from evomerge.executor import ExecutorConfig
from evomerge.models import ModelsConfig
from evomerge.preconditions import Precondition
from evomerge.search.settings import RESUME_FREE, SearchSettings


@dataclass(frozen=True)
class RunConfig:
    raw: dict                  # the resolved config as written: recorded in the run directory and sent to loggers
    seed: int
    device: str
    threads: int | None
    resume: bool | str
    dry_run: bool
    final_split: str
    report_metrics: list[str] | None
    models: ModelsConfig
    executor: ExecutorConfig
    search: SearchSettings
    preconditions: list[Precondition]
    evaluator: dict
    space: dict
    merge: dict
    optimizer: dict            # with search.weights as its weighting (optimizer_config)
    logger: dict

    @property
    def resume_key(self) -> dict:
        return resume_key(self.raw)

    def describe_search(self) -> str:
        return (f"space `{self.space['kind']}`, optimiser `{self.optimizer['kind']}`, {self.search.budget} "
                f"evaluations, seed {self.seed}")


def parse(cfg: dict[str, Any]) -> RunConfig:
    """The resolved config (a dict: CLI, tests, notebooks) checked and typed, once."""
    settings = _check(cfg)
    return RunConfig(
        raw=cfg, seed=int(cfg.get("seed", 0)), device=cfg.get("device", "cpu"), threads=cfg.get("threads"),
        resume=cfg.get("resume", False), dry_run=bool(cfg.get("dry_run")), final_split=cfg.get("final_split", "test"),
        report_metrics=cfg.get("report_metrics"),
        models=ModelsConfig.parse(cfg["models"], (cfg.get("paths") or {}).get("zoo", ".")),
        executor=ExecutorConfig.parse(cfg.get("executor")), search=settings,
        preconditions=preconditions_pkg.parse(cfg.get("preconditions")), evaluator=dict(cfg.get("evaluator") or {}),
        space=dict(cfg["space"]), merge=dict(cfg.get("merge") or {}), optimizer=optimizer_config(cfg),
        logger=dict(cfg.get("logger") or {"kind": "local"}))


def _check(cfg: dict) -> SearchSettings:
    """The run-level fields' checks (the sections' own checks are their parsers'), and the search settings."""
    search = cfg.get("search") or {}
    opt = cfg.get("optimizer") or {}
    pop, least = opt.get("popsize"), 1 if opt.get("kind") == "random" else 2  # CMA-ES and pymoo need 2
    if pop is not None and (isinstance(pop, bool) or not isinstance(pop, int) or pop < least):
        raise ValueError(f"optimizer.popsize: expected a positive integer, at least {least} for optimizer.kind="
                         f"{opt.get('kind')}; found {pop!r}")
    check_device(cfg.get("device", "cpu"))
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, found {seed!r}")
    if not search.get("objectives"):
        raise ValueError("search.objectives: empty; expected at least one {metric, direction}")
    for i, o in enumerate(search["objectives"]):
        direction = o.get("direction") if isinstance(o, dict) else None
        if direction not in (None, "max", "min"):
            raise ValueError(f"search.objectives[{i}].direction: expected max or min, found {direction!r}")
    settings = SearchSettings.parse(search, len(search["objectives"]))  # budget, minibatch, fidelity, ...
    resume = cfg.get("resume", False)
    if not isinstance(resume, bool | str):
        raise ValueError(f"resume: expected true/false or the path of a run directory, found {resume!r}")
    threads = cfg.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: expected a positive integer (torch CPU threads) or null, found {threads!r}")
    split = cfg.get("final_split", "test")
    if split not in ("fitness", "validation", "test"):
        raise ValueError(f"final_split: expected fitness, validation or test (the split of the held-out table), "
                         f"found {split!r}")
    shown = cfg.get("report_metrics")
    if shown is not None and (not isinstance(shown, list) or not all(isinstance(m, str) for m in shown)):
        raise ValueError(f"report_metrics: expected a list of metric names or null, found {shown!r}")
    return settings


def check_device(device) -> None:
    """`device=cuda` without CUDA fails here, not with an AssertionError after the models load."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: expected cpu, cuda or cuda:N, found {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device}: CUDA is not available on this machine; use device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device}: this machine has {torch.cuda.device_count()} CUDA device(s); expected "
                         f"cuda:0..cuda:{torch.cuda.device_count() - 1}")


def resume_key(cfg: dict) -> dict:
    """The settings a resumed run must share with the original (the budget may grow)."""
    key = {k: cfg.get(k) for k in ("models", "merge", "space", "optimizer", "evaluator", "seed")}
    key["search"] = {k: v for k, v in (cfg.get("search") or {}).items() if k not in RESUME_FREE}
    return key


def optimizer_config(cfg: dict) -> dict:
    """The optimiser's config, with `search.weights` as the weighting a single-objective optimiser scalarises with
    (one weighting for the search and its 'best'; a different `optimizer.weights` beside it is refused)."""
    opt, w = dict(cfg["optimizer"]), (cfg.get("search") or {}).get("weights")
    if w is not None:
        if opt.get("weights") is not None and [float(v) for v in opt["weights"]] != [float(v) for v in w]:
            raise ValueError(f"optimizer.weights {list(opt['weights'])} and search.weights {list(w)} differ; set "
                             "the weighting once, in search.weights")
        opt["weights"] = list(w)
    return opt
