"""CMA-ES (the `cma` package) on the unit cube: genes are scaled to [0, 1] so sigma0 means the same for all.

Several objectives are scalarised, f = sum_k weights[k] * F[k] (all minimised; equal weights by default), and
the loop says so in the log. Restarts (IPOP: popsize doubles each restart; BIPOP: alternates such large runs with
small-population runs of smaller step size, giving each regime about the same number of evaluations) start from a
uniformly random point of the cube and are drawn from this object's own generator, so a replayed optimiser resumes
exactly. `cma` draws from numpy's global generator: the loop checkpoints and restores that state too.
"""

from __future__ import annotations

import logging

import cma
import numpy as np

log = logging.getLogger(__name__)


class CMAES:
    scalarises = True  # several objectives become one weighted sum
    def __init__(self, xl, xu, *, n_obj: int = 1, seed: int = 0, initial: np.ndarray | None = None,
                 popsize: int | None = None, sigma0: float = 1 / 6, x0: float | list[float] = 0.5,
                 weights: list[float] | None = None, max_iter: int | None = None, restarts: int = 0,
                 restart_strategy: str = "ipop", incpopsize: float = 2.0, tolflatfitness: int | None = None,
                 var_types: list[str] | None = None):
        self.xl, self.xu = np.asarray(xl, float), np.asarray(xu, float)
        dim = len(self.xl)
        # Integer, boolean and categorical genes (DFS include bits, a method gene): a floor on their step size, a
        # fifth of one value step in the unit cube (what cma's own integer handling does: its `integer_variables`
        # assumes unit steps, which the unit-cube scaling breaks), so that flat fitness cannot freeze them.
        types = list(var_types or ["real"] * dim)
        span = np.maximum(self.xu - self.xl, 1e-12)
        self.minstd = np.array([0.2 / span[i] if t != "real" and span[i] >= 1 else 0.0 for i, t in enumerate(types)])
        # cma stops as soon as a generation's values are all equal (`tolfun`: their range < 1e-11, and the first
        # generation's history is that generation). With discrete genes, and accuracies on a few dozen items, equal
        # values are common (a flipped bit that changes no answer), so such spaces only stop after `tolflatfitness`
        # flat generations (default 10 there; cma's defaults elsewhere).
        self.tolflatfitness = tolflatfitness if tolflatfitness is not None else (10 if self.minstd.any() else None)
        if popsize is not None and popsize < 2:
            raise ValueError(f"optimizer.popsize: expected >= 2 for CMA-ES, found {popsize}")
        if sigma0 <= 0:
            raise ValueError(f"optimizer.sigma0: expected > 0, found {sigma0}")
        if restarts < 0:
            raise ValueError(f"optimizer.restarts: expected >= 0, found {restarts}")
        if restart_strategy not in ("ipop", "bipop"):
            raise ValueError(f"optimizer.restart_strategy: expected 'ipop' or 'bipop', found {restart_strategy!r}")
        self.weights = np.asarray(weights if weights is not None else [1.0 / n_obj] * n_obj, float)
        if len(self.weights) != n_obj:
            raise ValueError(f"optimizer.weights: {len(self.weights)} weights for {n_obj} objectives")
        x0v = np.full(dim, x0, float) if np.isscalar(x0) else np.asarray(x0, float)
        if x0v.shape != (dim,) or np.any(x0v < 0) or np.any(x0v > 1):
            raise ValueError(f"optimizer.x0: expected a number or {dim} numbers in the unit cube [0, 1], found {x0}")
        self.seed, self.sigma0, self.max_iter = int(seed), float(sigma0), max_iter
        self.restarts_left, self.strategy, self.inc = int(restarts), restart_strategy, float(incpopsize)
        self.rng = np.random.default_rng([int(seed), 7])
        self.n_restarts = 0
        self.es = self._new_es(x0v, self.sigma0, popsize)
        self.popsize0 = self.large_popsize = self.es.popsize
        self.evals = {"large": 0, "small": 0}
        self.regime = "large"
        # Seeds are injected (cma puts them first in the next ask) and evaluated exactly: cma's boundary
        # transform would move a seed on the box edge (e.g. weight 0 or 1) slightly inside.
        self.seeds = [np.asarray(x, float) for x in np.atleast_2d(initial)] if initial is not None and len(initial) \
            else []
        if self.seeds:
            self.es.inject([self._to_unit(x) for x in self.seeds], force=True)

    @property
    def popsize(self) -> int:
        return self.es.popsize

    def _new_es(self, x0: np.ndarray, sigma0: float, popsize: int | None):
        # cma treats seed 0 as "random": offset it; every restart gets its own fixed seed.
        opts = {"bounds": [0.0, 1.0], "seed": self.seed * 1000 + self.n_restarts + 1, "verbose": -9}
        if popsize is not None:
            opts["popsize"] = int(popsize)
        if self.max_iter is not None:
            opts["maxiter"] = int(self.max_iter)
        if self.minstd.any():
            opts["minstd"] = self.minstd.tolist()
        if self.tolflatfitness is not None:
            opts["tolflatfitness"] = int(self.tolflatfitness)
            opts["tolfun"] = 0.0  # else `tolfun` ends the run on the first flat generation anyway
        return cma.CMAEvolutionStrategy(x0, sigma0, opts)

    def _restart(self) -> None:
        self.restarts_left -= 1
        self.n_restarts += 1
        x0 = self.rng.random(len(self.xl))
        if self.strategy == "bipop" and self.evals["small"] < self.evals["large"]:
            u = self.rng.random()
            pop = max(2, int(self.popsize0 * (0.5 * self.large_popsize / self.popsize0) ** (u ** 2)))
            sigma, self.regime = self.sigma0 * 10 ** (-2 * u), "small"
        else:
            self.large_popsize = int(round(self.large_popsize * self.inc))
            pop, sigma, self.regime = self.large_popsize, self.sigma0, "large"
        log.info("CMA-ES restart %d (%s): popsize %d, sigma0 %.4g", self.n_restarts, self.regime, pop, sigma)
        self.es = self._new_es(x0, sigma, pop)

    def _to_unit(self, x):
        span = np.where(self.xu > self.xl, self.xu - self.xl, 1.0)
        return (np.asarray(x, float) - self.xl) / span

    def _from_unit(self, u):
        return self.xl + np.clip(np.asarray(u, float), 0.0, 1.0) * (self.xu - self.xl)

    def ask(self) -> np.ndarray:
        if self.es.stop() and self.restarts_left > 0:
            self._restart()
        self._asked = self.es.ask()
        X = np.array([self._from_unit(u) for u in self._asked])
        k = min(len(self.seeds), len(X))
        if k:
            X[:k] = self.seeds[:k]
            self.seeds = self.seeds[k:]
        return X

    def tell(self, X: np.ndarray, F: np.ndarray, G: np.ndarray | None = None) -> None:
        """F is (n, n_obj), minimised; constraint violations G are already folded into F by the loop's penalty."""
        f = np.asarray(F, float) @ self.weights
        self.es.tell(self._asked, f.tolist())
        self.evals[self.regime] += len(f)

    def stop(self) -> bool:
        return bool(self.es.stop()) and self.restarts_left == 0
