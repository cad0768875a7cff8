"""Optimisers behind one ask/tell interface; `build` picks one by `optimizer.kind`.

All adapters minimise and work on the space's box [xl, xu]: `ask() -> X (n, dim)`, `tell(X, F (n, n_obj), G)`
with G the constraint violations (n,) (> 0 = infeasible) or None, `stop()`, and a `popsize` attribute. An optimiser
is never pickled: a resume rebuilds it from the config and seed and replays the recorded ask/tell calls
(evomerge/search/checkpoint.py), so adapters must be deterministic given how they were built and the global RNG
state (numpy's, which `cma` uses, is restored too), with their own generators seeded at construction.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Protocol

import numpy as np

from evomerge.registry import OPTIMIZERS

log = logging.getLogger(__name__)

STANDARD = ("kind", "n_obj", "seed", "initial", "var_types", "n_constr")  # what build passes when declared


class Optimizer(Protocol):
    popsize: int
    scalarises: bool              # sees one weighted sum of several objectives (the loop promotes rungs by it)
    weights: np.ndarray | None    # that weighting; None for optimisers that see the objective vector

    def ask(self) -> np.ndarray: ...

    def tell(self, X: np.ndarray, F: np.ndarray, G: np.ndarray | None = None) -> None: ...

    def stop(self) -> bool: ...


def is_scalarising(kind: str, n_obj: int) -> bool:
    """True when this optimiser sees one weighted sum instead of the objective vector."""
    return n_obj > 1 and kind in ("cmaes", "ga", "de", "pso")  # optuna's samplers see the vector (tpe, nsga2, ...)


def build(cfg: Any, xl: np.ndarray, xu: np.ndarray, n_obj: int, seed: int, initial: np.ndarray | None = None,
          var_types: list[str] | None = None, n_constr: int = 0) -> Optimizer:
    """The adapter registered as `optimizer.kind` (evomerge.registry.OPTIMIZERS). It receives the standard
    arguments it declares (bounds, n_obj, seed, initial genomes, var_types, n_constr; `kind` when one adapter serves
    several algorithms) and the config's options; an option it does not take is refused by name."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    if kind == "moead":
        raise ValueError("optimizer.kind=moead: pymoo's MOEA/D is steady-state (one candidate per ask, state in a "
                         "generator that cannot be checkpointed); use nsga2 or nsga3 for several objectives")
    cls = OPTIMIZERS.get(kind, "optimizer.kind")
    if is_scalarising(kind, n_obj):
        w = cfg.get("weights") or [1.0 / n_obj] * n_obj
        log.warning("optimizer %s is single-objective: it minimises the weighted sum of the %d objectives with "
                    "weights %s (optimizer.weights); the Pareto archive still keeps every non-dominated candidate",
                    kind, n_obj, [round(float(v), 4) for v in w])
    if kind == "nsga2" and n_obj == 1:
        log.info("optimizer nsga2 with one objective: an elitist GA (rank = fitness order, crowding distance for "
                 "diversity)")
    params = inspect.signature(cls.__init__).parameters
    if "weights" not in params:
        cfg.pop("weights", None)  # the one weighting lives in search.weights (config.optimizer_config)
    given = dict(zip(STANDARD, (kind, n_obj, seed, initial, var_types, n_constr), strict=True))
    standard = {k: v for k, v in given.items() if k in params}
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        valid = [p for p in params if p not in ("self", "xl", "xu", *STANDARD)]
        unknown = sorted(set(cfg) - set(valid))
        if unknown:
            raise ValueError(f"optimizer ({kind}): unknown option(s) {unknown}; valid options: {valid}")
    return cls(xl=xl, xu=xu, **standard, **cfg)
