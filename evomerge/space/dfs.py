"""Data-flow spaces (DFS): the genome chooses a layer path through the source models; weights are not merged.

Two encodings, both decoded into `Recipe.path` = [Hop(model, layer, scale), ...]. The recipe lists the `anchor`
model first and has no default rule: embeddings, final norm and head are models[0]'s (shared, not copied), the
convention of both the in-memory path model and the streaming export (evomerge/merge/export.py).

`DFSSpace` (space kind `dfs`, Sakana's encoding, shared/reference/anchors.md section 2):
- all layers of all models laid out in order (model 1's layers, then model 2's, ...: N layers) and repeated
  `repeats` (r) times: T = N * r slots. One include gene per slot: the slot's layer is on the path when the gene is
  > 0 (`include_type: real`, bounds [-1, 1], Sakana's I_k > 0) or >= 0.5 (`include_type: bool`, bounds [0, 1]). The path therefore
  only moves forward within each repeat.
- the anchor's first and last `fixed_ends` layers are fixed at the start and end of the path (Sakana: 1).
- scales (`scales`): `per_slot` - one gene per slot, the scale of the input of that slot's layer;
  `matrix` - Sakana's N x N matrix W: the hidden state passed from layer i to layer j is multiplied by W[i, j]
  (N^2 genes, most never used); `none` - all scales 1. Fixed hops get scale 1 except, with `matrix`, the hops
  after the first (their W entry is used). Where a scale acts is `scale_at` (default `mlp_output`, Sakana's released
  model: on the previous hop's MLP output; see evomerge/merge/dataflow.py).
- path-length cap `max_path_length` (fixed layers included) is a constraint: `constraint(x)` returns the violation
  max(0, len(path) - cap) >= 0 (0 = feasible) for optimisers that handle constraints (`n_constraints` = 1). `decode`
  always returns a runnable recipe: an over-long path is repaired by keeping the first included slots up to the cap
  (before scales are assigned, so a kept hop's `matrix` scale is that of its new predecessor), and the violation is
  recorded in `recipe.meta["violation"]`.

`DepthSpace` (space kind `dfs_depth`, Su & Geiping's DIS): for each depth position d (the anchor's first and last
`fixed_ends` layers are fixed), one include gene per model (model m's *own* layer d), one categorical permutation
gene ordering the included blocks (M! orders; omitted when M = 1), and a scale in `scale_bounds` (default [0, 2])
that multiplies the output of the last block at that depth (= the input of the next hop; at the very last
position, with no fixed layer after it, it would only feed the final RMSNorm and is dropped). A depth with no block
included uses the anchor's layer d. The same length cap and constraint apply.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from evomerge.recipe import SCALE_AT, Hop, Recipe
from evomerge.space.genes import Gene, GeneBox, category_index, round_gene


def _include_bounds(kind: str) -> tuple[float, float, float]:
    """(low, high, threshold) of an include gene."""
    if kind == "real":
        return -1.0, 1.0, 0.0
    if kind == "bool":
        return 0.0, 1.0, 0.5
    raise ValueError(f"space.include_type: expected 'real' or 'bool', found {kind!r}")


class _PathSpace(GeneBox):
    """What both encodings share: bounds, clipping, anchor rule, constraint, repair."""

    genes: list[Gene]
    models: list[str]
    anchor: str
    max_path_length: int | None
    seed: int
    scale_at: str

    @classmethod
    def from_config(cls, cfg: dict, merge_cfg: dict, pool, seed: int = 0) -> _PathSpace:
        """The `space` group (kind dfs or dfs_depth) over `pool`; `recipe_models` (PS+DFS) first adds saved recipes,
        merged on load, as models of the pool (evomerge/load.py)."""
        from evomerge.load import add_recipe_model

        for name, recipe_file in dict(cfg.get("recipe_models") or {}).items():
            if name not in pool.state:
                add_recipe_model(pool, str(name), str(recipe_file))
        models = list(cfg.get("models") or pool.names)
        unknown = [m for m in models if m not in pool.state]
        if unknown:
            raise ValueError(f"space.models: {unknown} not in the pool {sorted(pool.state)} (add them under models "
                             "or space.recipe_models)")
        common = dict(models=models, num_layers=pool.num_layers, anchor=cfg.get("anchor"),
                      fixed_ends=int(cfg.get("fixed_ends", 1)), max_path_length=cfg.get("max_path_length"),
                      scale_bounds=tuple(cfg.get("scale_bounds", (0.0, 2.0))),
                      include_type=str(cfg.get("include_type", "real")),
                      scale_at=str(cfg.get("scale_at", "mlp_output")), seed=seed)
        return cls(**common, **cls.options(cfg))

    @classmethod
    def options(cls, cfg: dict) -> dict:
        """This encoding's own settings from the config (none for the depth-only space)."""
        return {}

    def _finish(self) -> None:
        self._set_bounds()


    @property
    def n_constraints(self) -> int:
        return 1 if self.max_path_length else 0

    def _x(self, x) -> np.ndarray:
        x = np.clip(np.asarray(x, dtype=float).reshape(-1), self._xl, self._xu)
        if x.size != self.dim:
            raise ValueError(f"{self.kind} space: genome has {x.size} values, expected {self.dim}")
        return x

    def constraint(self, x) -> float:
        """Path-length violation: max(0, len(path) - max_path_length); 0 when feasible or uncapped."""
        n = len(self._entries(self._x(x)))
        return float(max(0, n - self.max_path_length)) if self.max_path_length else 0.0

    def _included(self, genes: np.ndarray) -> np.ndarray:
        """Include genes -> bools: `real` genes when > 0 (Sakana's I_k > 0), `bool` genes when >= 0.5."""
        return genes >= self._thr if self.include_type == "bool" else genes > self._thr

    def decode(self, x) -> Recipe:
        x = self._x(x)
        entries = self._entries(x)
        meta = {"space": self.kind}
        if self.max_path_length and len(entries) > self.max_path_length:
            meta["violation"] = len(entries) - self.max_path_length
            entries = self._repair(entries)
        path = self._scaled(entries, x)  # after the repair: a kept hop's scale follows its new predecessor
        models = [self.anchor] + [m for m in self.models if m != self.anchor]  # non-layer tensors: models[0]'s
        return Recipe(models=models, base=None, default=None, path=path, scale_at=self.scale_at, seed=self.seed,
                      meta=meta)

    def _repair(self, entries: list) -> list:
        """Keep the fixed ends and the first included hops up to the cap."""
        f = self.fixed_ends
        middle = entries[f:len(entries) - f] if f else entries
        keep = self.max_path_length - 2 * f
        tail = entries[len(entries) - f:] if f else []
        return entries[:f] + middle[:keep] + tail


@dataclass
class DFSSpace(_PathSpace):
    models: list[str]
    num_layers: int
    repeats: int = 3
    scales: str = "per_slot"  # per_slot | matrix | none
    scale_bounds: tuple[float, float] = (0.0, 2.0)
    include_type: str = "real"
    anchor: str | None = None  # embeddings, head, norm and the fixed first/last layers; default models[0]
    fixed_ends: int = 1
    max_path_length: int | None = None
    seed: int = 0
    scale_at: str = "mlp_output"  # where a hop scale acts (evomerge/recipe.py: SCALE_AT)
    kind = "dfs"

    @classmethod
    def options(cls, cfg: dict) -> dict:
        return {"repeats": int(cfg.get("repeats", 3)), "scales": str(cfg.get("scales", "per_slot"))}

    def __post_init__(self):
        self.anchor = self.anchor or self.models[0]
        _check_common(self)
        if self.repeats < 1:
            raise ValueError(f"space.repeats: expected >= 1, found {self.repeats}")
        if self.scales not in ("per_slot", "matrix", "none"):
            raise ValueError(f"space.scales: expected per_slot | matrix | none, found {self.scales!r}")
        lo, hi, self._thr = _include_bounds(self.include_type)
        L = self.num_layers
        self.n_layers_all = L * len(self.models)  # N
        self.slots = [(r, self.models[j // L], j % L) for r in range(self.repeats) for j in range(self.n_layers_all)]
        kind = "bool" if self.include_type == "bool" else "real"
        self.genes = [Gene(f"in.r{r}.{m}.{i}", lo, hi, kind) for r, m, i in self.slots]
        slo, shi = map(float, self.scale_bounds)
        if self.scales == "per_slot":
            self.genes += [Gene(f"scale.r{r}.{m}.{i}", slo, shi) for r, m, i in self.slots]
        elif self.scales == "matrix":
            names = [f"{m}.{i}" for m in self.models for i in range(L)]
            self.genes += [Gene(f"W.{a}->{b}", slo, shi) for a in names for b in names]
        self._finish()

    def _flat(self, model: str, layer: int) -> int:
        return self.models.index(model) * self.num_layers + layer

    def _entries(self, x: np.ndarray) -> list[tuple[str, int, int | None]]:
        """The uncapped path as (model, layer, slot index or None for a fixed hop)."""
        L, f = self.num_layers, self.fixed_ends
        out = [(self.anchor, i, None) for i in range(f)]
        out += [(self.slots[k][1], self.slots[k][2], int(k)) for k in np.flatnonzero(self._included(x[:len(self.slots)]))]
        return out + [(self.anchor, i, None) for i in range(L - f, L)]

    def _scaled(self, entries: list, x: np.ndarray) -> list[Hop]:
        T, N = len(self.slots), self.n_layers_all
        if self.scales == "per_slot":
            return [Hop(m, i, 1.0 if k is None else round_gene(x[T + k])) for m, i, k in entries]
        hops = [Hop(m, i, 1.0) for m, i, _ in entries]
        if self.scales == "matrix":
            W = x[T:].reshape(N, N)
            for prev, cur in zip(hops, hops[1:], strict=False):
                cur.scale = round_gene(W[self._flat(prev.model, prev.layer), self._flat(cur.model, cur.layer)])
        return hops

    def seeds(self) -> dict[str, np.ndarray]:
        """The anchor model itself: its own middle layers in the first repeat, every scale 1 (Sakana starts from
        the anchor's layers too). Other sources are not reachable: embeddings and head are the anchor's."""
        T, f = len(self.slots), self.fixed_ends
        off, on, _ = _include_bounds(self.include_type)  # at the bounds: far from the threshold, few flips
        x = np.full(self.dim, 1.0)
        x[:T] = off
        for k, (r, m, i) in enumerate(self.slots):
            if r == 0 and m == self.anchor and f <= i < self.num_layers - f:
                x[k] = on
        if np.any(x < self._xl) or np.any(x > self._xu):
            return {}
        return {f"source:{self.anchor}": x}


@dataclass
class DepthSpace(_PathSpace):
    models: list[str]
    num_layers: int
    scale_bounds: tuple[float, float] = (0.0, 2.0)
    include_type: str = "real"
    anchor: str | None = None
    fixed_ends: int = 1
    max_path_length: int | None = None
    seed: int = 0
    scale_at: str = "mlp_output"
    kind = "dfs_depth"

    def __post_init__(self):
        self.anchor = self.anchor or self.models[0]
        _check_common(self)
        lo, hi, self._thr = _include_bounds(self.include_type)
        M, f = len(self.models), self.fixed_ends
        self.depths = list(range(f, self.num_layers - f))
        self.orders = list(itertools.permutations(range(M)))
        kind = "bool" if self.include_type == "bool" else "real"
        slo, shi = map(float, self.scale_bounds)
        self.genes = []
        for d in self.depths:
            self.genes += [Gene(f"d{d}.in.{m}", lo, hi, kind) for m in self.models]
            if M > 1:
                self.genes.append(Gene(f"d{d}.order", 0.0, float(len(self.orders) - 1), "cat"))
            self.genes.append(Gene(f"d{d}.scale", slo, shi))
        self.block = M + (1 if M > 1 else 0) + 1
        self._finish()

    def _entries(self, x: np.ndarray) -> list[tuple[str, int, float]]:
        """The uncapped path as (model, layer, output scale): the last block of a depth carries the depth's scale."""
        M, f, L = len(self.models), self.fixed_ends, self.num_layers
        out = [(self.anchor, i, 1.0) for i in range(f)]
        for b, d in zip(x.reshape(-1, self.block), self.depths, strict=True):
            include = self._included(b[:M])
            order = self.orders[category_index(b[M], len(self.orders))] if M > 1 else (0,)
            chosen = [self.models[i] for i in order if include[i]] or [self.anchor]
            out += [(m, d, 1.0) for m in chosen[:-1]] + [(chosen[-1], d, round_gene(b[-1]))]
        return out + [(self.anchor, i, 1.0) for i in range(L - f, L)]

    def _scaled(self, entries: list, x: np.ndarray) -> list[Hop]:
        """A hop's input scale is its predecessor's output scale (the last hop's own output scale is dropped)."""
        return [Hop(m, d, 1.0 if h == 0 else entries[h - 1][2]) for h, (m, d, _) in enumerate(entries)]

    def seeds(self) -> dict[str, np.ndarray]:
        """The anchor model itself: only its own block at every depth, identity order, scale 1."""
        M = len(self.models)
        off, on, _ = _include_bounds(self.include_type)
        block = [on if m == self.anchor else off for m in self.models] + ([0.0] if M > 1 else []) + [1.0]
        x = np.tile(np.array(block), len(self.depths))
        if np.any(x < self._xl) or np.any(x > self._xu):
            return {}
        return {f"source:{self.anchor}": x}


def _check_common(space) -> None:
    if not space.models:
        raise ValueError("space.models: empty; expected the models whose layers the path may use")
    if space.anchor not in space.models:
        raise ValueError(f"space.anchor: {space.anchor!r} is not one of the space's models {space.models}")
    if not 0 <= space.fixed_ends <= space.num_layers // 2:
        raise ValueError(f"space.fixed_ends: expected 0..{space.num_layers // 2} (layers fixed at each end), found "
                         f"{space.fixed_ends}")
    if space.scale_at not in SCALE_AT:
        raise ValueError(f"space.scale_at: expected one of {list(SCALE_AT)}, found {space.scale_at!r}")
    lo, hi = space.scale_bounds
    if not lo <= hi:
        raise ValueError(f"space.scale_bounds: [{lo}, {hi}] is not ordered low <= high")
    cap = space.max_path_length
    if cap is not None and (not isinstance(cap, int) or cap < max(1, 2 * space.fixed_ends)):
        raise ValueError(f"space.max_path_length: expected an integer >= {max(1, 2 * space.fixed_ends)} "
                         f"(the fixed layers) or null, found {cap!r}")
