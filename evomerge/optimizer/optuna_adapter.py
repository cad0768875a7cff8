"""Optuna's samplers behind evomerge's ask/tell interface (`optimizer.kind: optuna`, `optimizer.sampler: ...`).

Optuna has a native ask/tell API; this adapter only maps genes to its distributions: real genes to
`suggest_float(xl, xu)`, integer and boolean genes to `suggest_int`, categorical genes (a PS method gene, DFS
choices) to `suggest_categorical` over their indices. Samplers: `tpe` (multivariate TPE, also multi-objective),
`gp` (Gaussian-process BO), `nsga2`, `nsga3`, `cmaes` (Optuna's, for comparison), `qmc`, `random`; each is seeded.
Seeds from the space (the sources, their average) are enqueued as the first trials. Constraints (a space's G > 0)
reach the samplers that take a `constraints_func` (tpe, gp, nsga2, nsga3). A failed candidate (objective at
evomerge's WORST) is told as a failed trial, so it never enters a surrogate model.

Determinism: each sampler is seeded at construction and its state advances only through ask/tell, so evomerge's
checkpoint replay (rebuild, replay the recorded calls) reproduces the same asks after a resume.
"""

from __future__ import annotations

import logging

import numpy as np

from evomerge.search.objectives import WORST

SAMPLERS = ("tpe", "gp", "nsga2", "nsga3", "cmaes", "qmc", "random")


def _constraints(trial) -> list[float]:
    return trial.user_attrs.get("constraint", [0.0])


class OptunaOptimizer:
    scalarises, weights = False, None  # the samplers see the objective vector
    def __init__(self, xl, xu, *, n_obj: int = 1, seed: int = 0, initial: np.ndarray | None = None,
                 var_types: list[str] | None = None, n_constr: int = 0, sampler: str = "tpe", popsize: int = 8,
                 n_startup_trials: int | None = None, options: dict | None = None):
        try:
            import optuna
        except ImportError:
            raise ImportError("optimizer.kind=optuna needs Optuna: pip install 'evomerge[optuna]' (or optuna>=4)") \
                from None
        if sampler not in SAMPLERS:
            raise ValueError(f"optimizer.sampler: expected one of {list(SAMPLERS)}, found {sampler!r}")
        if popsize < 1:
            raise ValueError(f"optimizer.popsize: expected >= 1, found {popsize}")
        if sampler == "cmaes" and n_obj > 1:
            raise ValueError("optimizer.sampler=cmaes: Optuna's CMA-ES sampler is single-objective; use tpe, gp, "
                             "nsga2 or nsga3 for several objectives (or optimizer.kind=cmaes with weights)")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logging.getLogger("optuna").setLevel(logging.WARNING)
        self.xl, self.xu = np.asarray(xl, float), np.asarray(xu, float)
        self.types = list(var_types or ["real"] * len(self.xl))
        self.popsize, self.n_obj = int(popsize), int(n_obj)
        opts = dict(options or {})
        cf = {"constraints_func": _constraints} if n_constr else {}
        if n_startup_trials is not None:
            if sampler not in ("tpe", "gp", "cmaes"):
                raise ValueError(f"optimizer.n_startup_trials: the {sampler} sampler has no start-up phase (only "
                                 "tpe, gp and cmaes do); remove the option")
            opts["n_startup_trials"] = int(n_startup_trials)
        s = optuna.samplers
        make = {
            "tpe": lambda: s.TPESampler(seed=seed, multivariate=True, **cf, **opts),
            "gp": lambda: s.GPSampler(seed=seed, **cf, **opts),
            "nsga2": lambda: s.NSGAIISampler(seed=seed, population_size=max(2, self.popsize), **cf, **opts),
            "nsga3": lambda: s.NSGAIIISampler(seed=seed, population_size=max(2, self.popsize), **cf, **opts),
            "cmaes": lambda: s.CmaEsSampler(seed=seed, popsize=max(2, self.popsize), **opts),
            "qmc": lambda: s.QMCSampler(seed=seed, **opts),
            "random": lambda: s.RandomSampler(seed=seed, **opts),
        }
        if n_constr and sampler in ("cmaes", "qmc", "random"):
            raise ValueError(f"optimizer.sampler={sampler}: Optuna's {sampler} sampler ignores constraints; use "
                             "tpe, gp, nsga2 or nsga3 with a constrained space")
        self.study = optuna.create_study(directions=["minimize"] * self.n_obj, sampler=make[sampler]())
        self._trials = []
        for x in np.atleast_2d(initial) if initial is not None and len(initial) else []:
            self.study.enqueue_trial(self._params(np.asarray(x, float)))

    # ---- genes <-> Optuna parameters ----------------------------------------------------------------------------
    def _params(self, x: np.ndarray) -> dict:
        out = {}
        for i, (t, v) in enumerate(zip(self.types, x, strict=True)):
            v = float(np.clip(v, self.xl[i], self.xu[i]))
            out[f"x{i}"] = v if t == "real" else int(round(v))
        return out

    def _suggest(self, trial) -> np.ndarray:
        x = np.empty(len(self.xl))
        for i, t in enumerate(self.types):
            lo, hi, name = self.xl[i], self.xu[i], f"x{i}"
            if lo == hi:
                x[i] = lo
            elif t == "real":
                x[i] = trial.suggest_float(name, lo, hi)
            elif t == "cat":
                x[i] = trial.suggest_categorical(name, list(range(int(round(lo)), int(round(hi)) + 1)))
            else:  # int, bool
                x[i] = trial.suggest_int(name, int(round(lo)), int(round(hi)))
        return x

    # ---- ask / tell ---------------------------------------------------------------------------------------------
    def ask(self) -> np.ndarray:
        self._trials = [self.study.ask() for _ in range(self.popsize)]
        return np.stack([self._suggest(t) for t in self._trials])

    def tell(self, X, F, G=None) -> None:
        from optuna.trial import TrialState

        F = np.atleast_2d(np.asarray(F, float))
        if len(F) != len(self._trials):
            raise ValueError(f"optuna: told {len(F)} results for {len(self._trials)} asked candidates")
        for k, (trial, f) in enumerate(zip(self._trials, F, strict=True)):
            if G is not None:
                trial.set_user_attr("constraint", [float(np.asarray(G).reshape(-1)[k])])
            if not np.all(np.isfinite(f)) or np.any(f >= WORST):
                self.study.tell(trial, state=TrialState.FAIL)
            else:
                self.study.tell(trial, values=[float(v) for v in f])
        self._trials = []

    def stop(self) -> bool:
        return False
