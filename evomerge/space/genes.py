"""What every space shares: genes with bounds and types, and the box the optimiser sees."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Gene:
    name: str  # e.g. "g0.rest.rot90.weight"
    low: float
    high: float
    kind: str = "real"  # real | int | bool | cat


def round_gene(v) -> float:
    """Decoded values are rounded to 6 decimals, the precision recipes are saved with, so that a recipe reloaded
    from YAML builds exactly the same model as the decoded one."""
    return round(float(v), 6)


def category_index(v, n: int) -> int:
    """A categorical gene: the nearest index, halves rounded up (floor(x + 0.5)), clipped to 0..n-1."""
    return int(np.clip(np.floor(float(v) + 0.5), 0, n - 1))


class GeneBox:
    """dim, bounds, variable types and names of a space, derived from its `genes` list (set by the space), and the
    rest of its declared shape: no constraints and no cache grid unless the space says otherwise."""

    genes: list[Gene]
    n_constraints: int = 0
    resolution: float | None = None  # the genome grid step the evaluation cache rounds to (None: 1e-6)

    def constraint(self, x) -> float:
        """Violation >= 0 (0: feasible); spaces with `n_constraints` > 0 override it."""
        return 0.0

    def _set_bounds(self) -> None:
        self._xl = np.array([g.low for g in self.genes])
        self._xu = np.array([g.high for g in self.genes])

    @property
    def dim(self) -> int:
        return len(self.genes)

    @property
    def xl(self) -> np.ndarray:
        return self._xl.copy()

    @property
    def xu(self) -> np.ndarray:
        return self._xu.copy()

    @property
    def var_types(self) -> list[str]:
        return [g.kind for g in self.genes]

    @property
    def gene_names(self) -> list[str]:
        return [g.name for g in self.genes]
