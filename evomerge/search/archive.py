"""The Pareto archive of a search: the non-dominated top-fidelity successes and the hypervolume per generation.

The reference point is fixed once (search/pareto.reference_point), so hypervolumes of different generations, and of
a resumed run, compare. `archive.json` is its JSON form, in metric units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evomerge.search.objectives import Objective
from evomerge.search.pareto import hypervolume, pareto_mask, reference_point


@dataclass
class ParetoArchive:
    objectives: list[Objective]
    hv_ref: list[float] | None = None          # search.hv_ref, metric units (None: the automatic rule)
    ref_point: list[float] | None = None       # minimisation units, once fixed
    hypervolume: list[dict] = field(default_factory=list)  # one entry per generation
    front: list[dict] = field(default_factory=list)

    def update(self, records: list[dict], gen: int, evals: int, n_samples: int) -> None:
        """Recompute the front from every record so far and set generation `gen`'s hypervolume entry."""
        full = [r for r in records if r["metrics"] is not None and r.get("top_fidelity", True)]
        if not full:
            return
        F = np.array([r["objectives"] for r in full], float)
        mask = pareto_mask(F)
        self.front = [r for r, m in zip(full, mask, strict=True) if m]
        if self.ref_point is None:
            self.ref_point = reference_point(full, [r for r in records if r["metrics"] is not None],
                                             self.objectives, self.hv_ref).tolist()
        entry = {"generation": int(gen), "hypervolume": hypervolume(F[mask], np.asarray(self.ref_point)),
                 "evaluations": evals, "n_samples": n_samples, "front_size": len(self.front)}
        if self.hypervolume and self.hypervolume[-1]["generation"] == entry["generation"]:
            self.hypervolume[-1] = entry
        else:
            self.hypervolume.append(entry)

    def to_json(self, best: dict | None) -> dict:
        ref = self.ref_point
        return {
            "objectives": [{"metric": o.metric, "direction": o.direction} for o in self.objectives],
            "reference_point": None if ref is None else
            [o.to_min(v) for o, v in zip(self.objectives, ref, strict=True)],  # back to metric units
            "front": [{k: r[k] for k in ("id", "generation", "genome", "metrics", "objectives", "recipe")}
                      for r in self.front],
            "hypervolume": list(self.hypervolume),
            "best_id": None if best is None else best["id"],
        }
