"""Pareto utilities over minimisation vectors (rows of F): the one place both the search and reports use."""

from __future__ import annotations

import numpy as np


def pareto_mask(F: np.ndarray) -> np.ndarray:
    """True for rows not dominated by any other row (all objectives minimised; duplicates are all kept).
    pymoo's non-dominated sorting: a few ms at thousands of rows, where a pairwise Python loop took seconds."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    F = np.atleast_2d(np.asarray(F, float))
    mask = np.zeros(len(F), bool)
    if len(F):
        mask[NonDominatedSorting().do(F, only_non_dominated_front=True)] = True
    return mask


def hypervolume(F: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume dominated by the rows of F and bounded by the reference point (minimisation)."""
    F = np.atleast_2d(np.asarray(F, float))
    ref = np.asarray(ref, float)
    F = F[np.all(F < ref, axis=1)]
    if len(F) == 0:
        return 0.0
    from pymoo.indicators.hv import HV

    return float(HV(ref_point=ref)(F))


def default_reference(F: np.ndarray) -> np.ndarray:
    """The automatic hypervolume reference point (minimisation units), fixed once per run: the worst value of each
    objective over the first generation's successful evaluations *at every fidelity rung* (with successive halving
    the top rung of generation 0 may hold a single point, whose span is 0), pushed out by 10% of the span (at
    least 1e-4)."""
    F = np.atleast_2d(np.asarray(F, float))
    worst, span = F.max(axis=0), F.max(axis=0) - F.min(axis=0)
    return worst + 0.1 * np.maximum(span, 1e-3)


def reference_point(scored: list[dict], successes: list[dict], objectives, hv_ref=None) -> np.ndarray | None:
    """The hypervolume reference point in minimisation units, fixed for the whole run: `hv_ref` (metric units)
    when given, else `default_reference` over every successful evaluation (`successes`, all rungs) of the first
    generation with a top-fidelity success (`scored`). One rule for the search loop and for reports."""
    if hv_ref is not None:
        return np.array([o.to_min(float(v)) for o, v in zip(objectives, hv_ref, strict=True)], float)
    if not scored:
        return None
    first = min(r.get("generation", 0) for r in scored)
    return default_reference(np.array([r["objectives"] for r in successes if r.get("generation", 0) == first], float))

