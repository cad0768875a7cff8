"""Uniform random search: the baseline every optimiser has to beat at equal budget.

Integer, boolean and categorical genes (the space's var_types) are drawn uniformly among their allowed values.
"""

from __future__ import annotations

import numpy as np


class RandomSearch:
    scalarises, weights = False, None  # proposals ignore the objectives
    def __init__(self, xl, xu, *, seed: int = 0, initial: np.ndarray | None = None, popsize: int = 8,
                 var_types: list[str] | None = None, n_obj: int = 1):
        if popsize < 1:
            raise ValueError(f"optimizer.popsize: expected >= 1, found {popsize}")
        self.xl, self.xu, self.popsize = np.asarray(xl, float), np.asarray(xu, float), int(popsize)
        self.discrete = np.array([t != "real" for t in (var_types or ["real"] * len(self.xl))])
        self.rng = np.random.default_rng(seed)
        self.pending = list(np.atleast_2d(initial)) if initial is not None and len(initial) else []

    def ask(self) -> np.ndarray:
        X = self.xl + self.rng.random((self.popsize, len(self.xl))) * (self.xu - self.xl)
        if self.discrete.any():  # uniform over {xl, ..., xu} for int/bool/cat genes
            lo, hi = self.xl[self.discrete], self.xu[self.discrete]
            X[:, self.discrete] = np.floor(lo + self.rng.random((self.popsize, len(lo))) * (hi - lo + 1))
            X[:, self.discrete] = np.minimum(X[:, self.discrete], hi)
        for i, x in enumerate(self.pending[: self.popsize]):
            X[i] = x
        self.pending = self.pending[self.popsize:]
        return X

    def tell(self, X, F, G=None) -> None:
        pass

    def stop(self) -> bool:
        return False
