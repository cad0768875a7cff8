"""Which fitness samples a generation sees, and successive halving over the number of samples.

Sample selection: by default every candidate sees the whole fitness split. With `search.minibatch: k` each
generation sees k samples drawn from it; the draw is the same for every generation unless `search.resample: true`
(Sakana's minibatch fitness), in which case it is redrawn per generation. Draws depend only on (seed, generation),
so a resumed run sees exactly the samples an uninterrupted run sees.

Successive halving (`search.fidelity: {rungs: [0.111, 0.333, 1.0], eta: 3}`), after Su & Geiping: every candidate
of a generation is scored on the first 1/9 of the generation's samples, the best 1/eta are promoted to the first 1/3,
and the best 1/eta of those to all samples. Rung subsets are nested prefixes of one seeded permutation.

How ranks across fidelities are compared (what the optimiser is told): a candidate's value is its objective
vector at the highest rung it reached, plus (top rung - its rung) * S, where S = 1 + the spread of this
generation's successful objective values (per objective). Every candidate that reached a higher rung therefore
ranks before (and Pareto-dominates) every candidate stopped lower, and candidates on the same rung keep their
order. CMA-ES (rank-based) and NSGA-II (non-dominated sorting) both see exactly this lexicographic order within a
generation. Promotion inside a rung uses the optimiser's view: the weighted sum for single-objective optimisers,
non-dominated rank then the mean objective for multi-objective ones. Only top-rung evaluations compete for the
best candidate and the Pareto archive.

Promotion with uncertainty (`z: 1.0`): besides the best 1/eta, every candidate whose score is within z standard
errors of the last one promoted (the two intervals overlap) goes up too, so a noisy low rung does not decide alone.

Hyperband (`mode: hyperband`) hedges against low rungs that are too noisy: generation g runs the bracket that starts
at rung g mod (number of rungs), so with three rungs one generation in three is full successive halving, one starts
at 1/3, and one evaluates every candidate on all samples. It is a per-generation simplification of Hyperband: the
population size stays the optimiser's in every bracket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fidelity:
    rungs: tuple[float, ...] = (1.0,)
    eta: int = 3
    mode: str = "successive_halving"  # or "hyperband"
    z: float = 0.0  # > 0: also promote candidates whose optimistic score reaches the last promoted one's pessimistic

    @classmethod
    def parse(cls, cfg) -> Fidelity:
        if not cfg:
            return cls()
        cfg = dict(cfg)
        unknown = sorted(set(cfg) - {"rungs", "eta", "mode", "z"})
        if unknown:
            raise ValueError(f"search.fidelity: unknown key(s) {unknown}; expected rungs, eta, mode, z")
        z = cfg.get("z", 0.0)
        if isinstance(z, bool) or not isinstance(z, int | float) or not 0 <= z <= 10:
            raise ValueError(f"search.fidelity.z: expected a number of standard errors in [0, 10] (0: plain top "
                             f"1/eta), found {z!r}")
        mode = cfg.get("mode", "successive_halving")
        if mode not in ("successive_halving", "hyperband"):
            raise ValueError(f"search.fidelity.mode: expected 'successive_halving' or 'hyperband', found {mode!r}")
        rungs = tuple(float(r) for r in cfg.get("rungs") or (1 / 9, 1 / 3, 1.0))
        eta = cfg.get("eta", 3)
        if not rungs or any(not 0 < r <= 1 for r in rungs) or list(rungs) != sorted(set(rungs)) or rungs[-1] != 1:
            raise ValueError(f"search.fidelity.rungs: expected increasing fractions in (0, 1] ending with 1.0, found "
                             f"{list(rungs)}")
        if not isinstance(eta, int) or isinstance(eta, bool) or eta < 2:
            raise ValueError(f"search.fidelity.eta: expected an integer >= 2, found {eta!r}")
        return cls(rungs, eta, mode, float(z))

    @property
    def multi(self) -> bool:
        return len(self.rungs) > 1

    def sizes(self, n: int) -> list[int]:
        return [max(1, math.ceil(r * n - 1e-9)) for r in self.rungs]

    def first_rung(self, gen: int) -> int:
        return gen % len(self.rungs) if self.mode == "hyperband" else 0

    def promote(self, n: int) -> int:
        return max(1, math.ceil(n / self.eta))


def promoted(F: np.ndarray, ok: np.ndarray, weights: np.ndarray | None, k: int, n_samples: int,
             z: float = 0.0) -> list[int]:
    """Positions promoted to the next rung: the best `k` (promotion_order), and with z > 0 also every candidate
    whose optimistic score (score - z * se) reaches the pessimistic score (score + z * se) of the k-th: a low rung
    whose scores are within noise of each other promotes more of them instead of a random third. `se` is the
    binomial standard error at `n_samples` items of the (weighted) objectives whose values are proportions in
    [0, 1] (accuracies); other objectives count as exact."""
    order = promotion_order(F, ok, weights)
    keep = [int(j) for j in order[:k] if ok[j]]
    if z <= 0 or not keep or n_samples < 1:
        return keep
    F = np.asarray(F, float)
    w = weights if weights is not None else np.full(F.shape[1], 1.0 / F.shape[1])
    score = F @ w
    p = np.abs(F)
    var = np.where(p <= 1.0, p * (1.0 - np.clip(p, 0.0, 1.0)), 0.0)
    se = np.sqrt((var * w**2).sum(axis=1) / n_samples)
    bar = score[keep[-1]] + z * se[keep[-1]]
    return keep + [int(j) for j in order[k:] if ok[j] and score[j] - z * se[j] <= bar]


def generation_samples(n_fitness: int, minibatch: int | None, resample: bool, seed: int, gen: int,
                       shuffle: bool) -> list[int] | None:
    """The fitness indices a generation uses, in rung order (prefixes = rungs); None = all, unshuffled."""
    if minibatch is None and not shuffle:
        return None
    g = gen if resample else 0
    perm = np.random.default_rng([int(seed), int(g), 1234]).permutation(n_fitness)
    return [int(i) for i in (perm[:minibatch] if minibatch is not None else perm)]


def told_values(F: np.ndarray, rung: np.ndarray, n_rungs: int, ok: np.ndarray) -> np.ndarray:
    """Objective vectors as told to the optimiser: lexicographic in (rung reached, objectives); see module doc."""
    F = np.array(F, float)
    if n_rungs == 1 or not ok.any():
        return F
    span = F[ok].max(axis=0) - F[ok].min(axis=0)
    S = 1.0 + span
    out = F.copy()
    out[ok] += (n_rungs - 1 - rung[ok])[:, None] * S[None, :]
    return out


def promotion_order(F: np.ndarray, ok: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Candidate positions, best first. weights given: weighted sum; otherwise non-dominated rank, then mean."""
    F = np.asarray(F, float)
    if weights is not None:
        score = F @ weights
        key_rank = np.zeros(len(F))
    else:
        from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

        key_rank = np.full(len(F), np.inf)
        if ok.any():
            idx = np.flatnonzero(ok)
            for r, front in enumerate(NonDominatedSorting().do(F[idx])):
                key_rank[idx[front]] = r
        score = F.mean(axis=1)
    failed = (~ok).astype(float)
    return np.lexsort((np.arange(len(F)), score, key_rank, failed))
