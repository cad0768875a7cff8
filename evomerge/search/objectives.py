"""Objectives: which metrics the search optimises and in which direction, mapped to a minimisation vector."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A failed evaluation is told WORST for every objective (CMA-ES and pymoo both need finite values). Finished
# candidates' objectives are clipped to +-CAP, so that a failure ranks below every finished candidate in every
# objective's units: a perplexity can reach e^700, far above any fixed "worst" value, and successive halving adds
# rung offsets of at most 2 * (1 + the spread) <= 4e11 + 2 (fidelity.told_values) on top, still below WORST.
CAP = 1e11
WORST = 1e12


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str = "max"  # max | min

    def __post_init__(self):
        if self.direction not in ("max", "min"):
            raise ValueError(f"search.objectives: direction of {self.metric!r} must be 'max' or 'min', "
                             f"found {self.direction!r}")

    def to_min(self, value: float) -> float:
        return -value if self.direction == "max" else value


def parse(objectives: list, available: dict[str, bool]) -> list[Objective]:
    """Build objectives from config, refusing metrics that no evaluator produces (before any compute).

    `available` maps each metric the evaluators produce to its higher-is-better flag; a direction given in the
    config must agree with it, and is taken from it when omitted.
    """
    if not objectives:
        raise ValueError("search.objectives: empty; expected at least one {metric, direction}")
    out = []
    for i, o in enumerate(objectives):
        o = dict(o) if not isinstance(o, str) else {"metric": o}
        metric = o.get("metric")
        if metric not in available:
            raise ValueError(f"search.objectives[{i}].metric: {metric!r} is produced by no evaluator; available: "
                             f"{sorted(available)}")
        natural = "max" if available[metric] else "min"
        direction = o.get("direction") or natural
        if direction not in ("max", "min"):
            raise ValueError(f"search.objectives[{i}].direction: expected max or min, found {direction!r}")
        if direction != natural:
            raise ValueError(f"search.objectives[{i}]: {metric!r} is {'higher' if natural == 'max' else 'lower'}-is-"
                             f"better, but direction is {direction!r}")
        out.append(Objective(metric, direction))
    return out


def to_min(objectives: list[Objective], metrics: dict[str, float] | None) -> np.ndarray:
    """The minimisation vector, clipped to +-CAP; a failed evaluation (no metrics) gets WORST for every objective."""
    if metrics is None:
        return np.full(len(objectives), WORST)
    return np.clip(np.array([o.to_min(metrics[o.metric]) for o in objectives], float), -CAP, CAP)


def scalar(F: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Scalarised minimisation value used to pick 'the best' candidate (weighted sum; mean by default)."""
    F = np.asarray(F, float)
    return float(F @ weights) if weights is not None else float(np.mean(F))


def selection_candidates(records: list[dict], weights, top: int | None) -> list[dict]:
    """Each generation's best top-fidelity success (what Sakana snapshots), the `top` best of them by fitness.

    With a minibatch redrawn every generation, "the best fitness" compares scores on different samples and favours
    lucky minibatches; re-scoring these candidates on one held-out split (`search.select_on: validation`) does not.
    """
    best: dict[int, dict] = {}
    for r in records:
        if r["metrics"] is None or not r.get("top_fidelity", True):
            continue
        g = r["generation"]
        if g not in best or scalar(r["objectives"], weights) < scalar(best[g]["objectives"], weights):
            best[g] = r
    ranked = sorted(best.values(), key=lambda r: (scalar(r["objectives"], weights), r["id"]))
    return ranked[:top] if top else ranked
