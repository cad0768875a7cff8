"""The run config at the edge: every check that needs no model, so bad input fails in seconds, before any loading,
and the settings derived from the config once (search settings, the resume key, the optimiser's config)."""

from __future__ import annotations

from evomerge import executor as executor_pkg
from evomerge import models as models_pkg
from evomerge import preconditions as preconditions_pkg
from evomerge.search import settings as search_settings
from evomerge.search.settings import RESUME_FREE, SearchSettings


def validate(cfg: dict) -> SearchSettings:
    """Checks that need no model, so that bad input fails in seconds, before any loading or training."""
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
    models_pkg.specs(cfg["models"])
    executor_pkg.check(cfg.get("executor"))
    preconditions_pkg.parse(cfg.get("preconditions"))
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


def check_minibatch(search: dict, evaluators: list) -> None:
    search_settings.check_minibatch(search.get("minibatch"), min(ev.size("fitness") for ev in evaluators))


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
