"""Optimisers behind one ask/tell interface; `build` picks one by `optimizer.kind`.

All adapters minimise and work on the space's box [xl, xu]: `ask() -> X (n, dim)`, `tell(X, F (n, n_obj), G)`
with G the constraint violations (n,) (> 0 = infeasible) or None, `stop()`, and a `popsize` attribute. An optimiser
is never pickled: a resume rebuilds it from the config and seed and replays the recorded ask/tell calls
(evomerge/search/checkpoint.py), so adapters must be deterministic given how they were built and the global RNG
state (numpy's, which `cma` uses, is restored too), with their own generators seeded at construction.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

KINDS = ["cmaes", "random", "nsga2", "nsga3", "ga", "de", "pso", "optuna"]


class Optimizer(Protocol):
    popsize: int

    def ask(self) -> np.ndarray: ...

    def tell(self, X: np.ndarray, F: np.ndarray, G: np.ndarray | None = None) -> None: ...

    def stop(self) -> bool: ...


def is_scalarising(kind: str, n_obj: int) -> bool:
    """True when this optimiser sees one weighted sum instead of the objective vector."""
    return n_obj > 1 and kind in ("cmaes", "ga", "de", "pso")  # optuna's samplers see the vector (tpe, nsga2, ...)


def build(cfg: Any, xl: np.ndarray, xu: np.ndarray, n_obj: int, seed: int, initial: np.ndarray | None = None,
          var_types: list[str] | None = None, n_constr: int = 0) -> Optimizer:
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    if kind == "moead":
        raise ValueError("optimizer.kind=moead: pymoo's MOEA/D is steady-state (one candidate per ask, state in a "
                         "generator that cannot be checkpointed); use nsga2 or nsga3 for several objectives")
    if is_scalarising(kind, n_obj):
        w = cfg.get("weights") or [1.0 / n_obj] * n_obj
        log.warning("optimizer %s is single-objective: it minimises the weighted sum of the %d objectives with "
                    "weights %s (optimizer.weights); the Pareto archive still keeps every non-dominated candidate",
                    kind, n_obj, [round(float(v), 4) for v in w])
    if kind == "nsga2" and n_obj == 1:
        log.info("optimizer nsga2 with one objective: an elitist GA (rank = fitness order, crowding distance for "
                 "diversity)")
    if kind == "cmaes":
        from evomerge.optimizer.cmaes import CMAES

        return CMAES(xl, xu, n_obj=n_obj, seed=seed, initial=initial, var_types=var_types,
                     **_options(cfg, CMAES, kind))
    if kind == "random":
        from evomerge.optimizer.random_search import RandomSearch

        cfg.pop("weights", None)
        return RandomSearch(xl, xu, seed=seed, initial=initial, var_types=var_types, n_obj=n_obj,
                            **_options(cfg, RandomSearch, kind))
    if kind == "optuna":
        from evomerge.optimizer.optuna_adapter import OptunaOptimizer

        cfg.pop("weights", None)
        return OptunaOptimizer(xl, xu, n_obj=n_obj, seed=seed, initial=initial, var_types=var_types,
                               n_constr=n_constr, **_options(cfg, OptunaOptimizer, kind))
    if kind in KINDS:
        from evomerge.optimizer.pymoo_adapter import PymooOptimizer

        return PymooOptimizer(kind, xl, xu, n_obj=n_obj, seed=seed, initial=initial, var_types=var_types,
                              n_constr=n_constr, **cfg)
    raise ValueError(f"optimizer.kind: unknown optimiser {kind!r}; expected one of {KINDS}")


def _options(cfg: dict, cls, kind: str) -> dict:
    """Refuse option names the adapter does not take, naming the valid ones (instead of a TypeError)."""
    import inspect

    valid = [p for p in inspect.signature(cls.__init__).parameters
             if p not in ("self", "xl", "xu", "n_obj", "seed", "initial", "var_types", "n_constr")]
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ValueError(f"optimizer ({kind}): unknown option(s) {unknown}; valid options: {valid}")
    return cfg
