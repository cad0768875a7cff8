"""Parameter space (PS): per-layer-group merge parameters for each source model and tensor group.

The genome is a flat real vector laid out, per layer group g (in depth order):
    [method gene (only when several methods are searched)]
    for each tensor set s (the `filters`, then "the rest"):
        for each model m: for each searched per-model parameter p: one gene      (mergekit-evolve's [G, M, F+1, P])
        for each searched global parameter q (lambda, t, ...): one gene
and, with `non_layer: own`, one more block of the same shape for embeddings, final norm and head.

Decoding rules (all deterministic, no randomness):
- A value outside [xl, xu] is clipped; decoded values are rounded to 6 decimals (the YAML precision). The method gene is categorical: index = floor(x + 0.5), clipped to the list.
- With `smooth`, the G groups are anchors at evenly spaced depths; every layer gets the linear interpolation of the
  anchor genes at its depth (the method gene takes the nearest anchor). Without it, layer i uses group i // size.
- Genes are flat and unconditional (as in Su & Geiping's LFS): a rule only receives the parameters its method
  accepts; the others are ignored for that group.
- Non-layer tensors (embeddings, final norm, lm_head), `non_layer`:
  `first` (default) use layer 0's rule for "the rest" (mergekit's convention: a gradient is read at t = 0 there);
  `own`   get their own gene block;
  `base`  are not merged: the base model's (or, without a base, the first source's) tensors are kept.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from evomerge.recipe import Recipe, Rule
from evomerge.space.genes import Gene, GeneBox, category_index, round_gene

log = logging.getLogger(__name__)

# Methods for which weight one-hot (+ density 1, lambda 1) gives back that source, and uniform weights the average.
SOURCE_METHODS = ("linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "della", "della_linear")
AVERAGE_METHODS = ("linear", "task_arithmetic", "dare_linear", "della_linear")
NON_LAYER = ("first", "own", "base")


@dataclass
class PSSpace(GeneBox):
    models: list[str]
    base: str | None
    num_layers: int
    method: str | list[str] = "task_arithmetic"  # a list -> a categorical method gene per layer group
    layer_granularity: int = 1  # layers per gene group; 0 = one group for the whole model
    searched: dict[str, tuple[float, float]] = field(default_factory=lambda: {"weight": (0.0, 1.0)})
    searched_global: dict[str, tuple[float, float]] = field(default_factory=dict)  # e.g. {lambda: [0.5, 1.5]}
    fixed_per_model: dict[str, float] = field(default_factory=dict)  # per-model params held constant
    params: dict[str, object] = field(default_factory=dict)  # fixed global method params (lambda, normalize, ...)
    filters: list[str] = field(default_factory=list)  # tensor groups with their own genes (attention, mlp, other)
    normalize: bool | None = None  # None keeps each method's default
    allow_negative_weights: bool = False
    smooth: bool = False
    non_layer: str = "first"
    seed: int = 0
    method_specs: dict = field(default_factory=dict, init=False, repr=False)  # name -> registry Method

    @classmethod
    def from_config(cls, cfg: dict, merge_cfg: dict, pool, seed: int = 0) -> PSSpace:
        """The `space` group (kind ps) over `pool`. The space may override the merge group's method (or list
        several: a categorical gene per layer group); the merge group's fixed params apply only when its method is
        used."""
        from evomerge.merge.registry import get_method
        from evomerge.space import bounds

        method = cfg.get("method") or merge_cfg["method"]
        for name in [method] if isinstance(method, str) else list(method):
            try:
                get_method(name)
            except ValueError as e:  # say which key the name came from
                raise ValueError(f"{'space.method' if cfg.get('method') else 'merge.method'}: {e}") from None
        groups = pool.arch.groups if pool.arch is not None else None
        if groups is not None:
            absent = [f for f in cfg.get("filters") or [] if f != "other" and f not in groups]
            if absent:
                raise ValueError(f"space.filters: {absent} match no tensor of this architecture (arch map "
                                 f"{pool.arch.name} defines groups {sorted(groups)}; 'other' is everything else)")
        params = cfg.get("params")
        if params is None:
            params = {} if cfg.get("method") else dict(merge_cfg.get("params") or {})
        return cls(
            models=list(pool.names), base=pool.base_name, num_layers=pool.num_layers,
            method=method if isinstance(method, str) else list(method),
            layer_granularity=int(cfg.get("layer_granularity", 1)),
            searched=bounds(cfg.get("searched", {"weight": [0.0, 1.0]}), "space.searched"),
            searched_global=bounds(cfg.get("searched_global"), "space.searched_global"),
            fixed_per_model=dict(cfg.get("fixed_per_model") or {}),
            params=dict(params),
            filters=list(cfg.get("filters") or []), normalize=cfg.get("normalize"),
            allow_negative_weights=bool(cfg.get("allow_negative_weights", False)),
            smooth=bool(cfg.get("smooth", False)), non_layer=str(cfg.get("non_layer", "first")), seed=seed,
        )

    def __post_init__(self):
        self.methods = [self.method] if isinstance(self.method, str) else list(self.method)
        self._check()
        size = self.layer_granularity or max(self.num_layers, 1)
        self.n_groups = max(1, math.ceil(self.num_layers / size))
        self.group_size = size
        # recipe keys per layer; "*" = every tensor no filter claims (absent when the filters cover all three groups)
        self.sets = list(self.filters) + ([] if set(self.filters) == {"attention", "mlp", "other"} else ["*"])
        self.rest = "other" if "other" in self.filters else "*"  # the set non-layer tensors (group "other") use
        blocks = [f"g{g}" for g in range(self.n_groups)] + (["nonlayer"] if self.non_layer == "own" else [])
        self.genes: list[Gene] = []
        for b in blocks:
            if len(self.methods) > 1:
                self.genes.append(Gene(f"{b}.method", 0.0, float(len(self.methods) - 1), "cat"))
            for s in self.sets:
                sname = "rest" if s == "*" else s
                for m in self.models:
                    for p, (lo, hi) in self.searched.items():
                        self.genes.append(Gene(f"{b}.{sname}.{m}.{p}", float(lo), float(hi)))
                for q, (lo, hi) in self.searched_global.items():
                    self.genes.append(Gene(f"{b}.{sname}.{q}", float(lo), float(hi)))
        self.block_dim = len(self.genes) // len(blocks)
        self._set_bounds()

    def _check(self) -> None:
        from evomerge.merge.registry import DOMAIN_WHY, DOMAINS, get_method

        where = "space"
        if self.layer_granularity < 0:
            raise ValueError(f"{where}.layer_granularity: expected >= 0, found {self.layer_granularity}")
        if not self.models:
            raise ValueError(f"{where}: no source models to merge")
        if not self.methods:
            raise ValueError(f"{where}.method: empty list; expected a method name or a list of names")
        if self.non_layer not in NON_LAYER:
            raise ValueError(f"{where}.non_layer: expected one of {NON_LAYER}, found {self.non_layer!r}")
        bad = [f for f in self.filters if f not in ("attention", "mlp", "other")]
        if bad or len(set(self.filters)) != len(self.filters):
            raise ValueError(f"{where}.filters: expected distinct names among [attention, mlp, other], found "
                             f"{self.filters}")
        self.method_specs = {}
        for name in self.methods:
            try:
                spec = get_method(name)
            except ValueError as e:
                raise ValueError(f"{where}.method: {e}") from None
            if spec.needs_base and self.base is None:
                raise ValueError(f"{where}.method: '{name}' needs a base model, but models.base is not set")
            self.method_specs[name] = spec
        for kind, names in (("searched", self.searched), ("fixed_per_model", self.fixed_per_model)):
            for p in names:
                if not any(p in s.per_model for s in self.method_specs.values()):
                    raise ValueError(f"{where}.{kind}.{p}: no method in {self.methods} has a per-model parameter "
                                     f"{p!r} (per-model parameters: "
                                     f"{sorted({k for s in self.method_specs.values() for k in s.per_model})})")
        for p in list(self.searched_global) + list(self.params):
            if not any(p in s.params for s in self.method_specs.values()):
                raise ValueError(f"{where}: no method in {self.methods} has a global parameter {p!r} (global: "
                                 f"{sorted({k for s in self.method_specs.values() for k in s.params})})")
        for p, (lo, hi) in {**self.searched, **self.searched_global}.items():
            if not lo <= hi:
                raise ValueError(f"{where}.searched.{p}: bounds [{lo}, {hi}] are not ordered low <= high")
        for kind, values in (("searched", self.searched), ("fixed_per_model", self.fixed_per_model)):
            for p, v in values.items():
                lo, hi = v if isinstance(v, tuple) else (v, v)
                if p in DOMAINS and not DOMAINS[p][0] <= lo <= hi <= DOMAINS[p][1]:
                    d_lo, d_hi = DOMAINS[p]
                    raise ValueError(f"{where}.{kind}.{p}: {list(v) if isinstance(v, tuple) else v} leaves the "
                                     f"parameter's domain [{d_lo:g}, {d_hi:g}] ({DOMAIN_WHY[p]}); every candidate "
                                     "outside it would fail")
        if not self.searched and not self.searched_global and len(self.methods) == 1:
            raise ValueError(f"{where}: nothing to search (searched: {{}}, searched_global: {{}}, one method "
                             f"{self.methods[0]!r}), so the genome has no genes. Set space.searched, e.g. "
                             "space.searched='{weight: [0.0, 1.0]}'. Note that Hydra merges a dict override into "
                             "the default (space.searched={} changes nothing); to replace the default use "
                             "~space.searched '+space.searched={density: [0.1, 1.0]}'")
        if "weight" in self.searched:
            lo, hi = self.searched["weight"]
            if self.allow_negative_weights and lo >= 0:
                self.searched = {**self.searched, "weight": (-hi, hi)}
            elif not self.allow_negative_weights and lo < 0:
                raise ValueError(f"{where}.searched.weight: lower bound {lo} < 0 but allow_negative_weights is false; "
                                 "set allow_negative_weights: true or a lower bound >= 0")
        for p, v in self.fixed_per_model.items():
            if p == "weight" and v < 0 and not self.allow_negative_weights:
                raise ValueError(f"{where}.fixed_per_model.weight: {v} < 0 but allow_negative_weights is false")

    # ---- what the optimiser sees -------------------------------------------------------------------------

    # ---- genome -> recipe --------------------------------------------------------------------------------
    def _rule(self, block: np.ndarray) -> dict[str, Rule]:
        """One block of genes (a layer group, an interpolated layer or the non-layer block) -> rule per set."""
        k = 0
        method = self.methods[0]
        if len(self.methods) > 1:
            method = self.methods[category_index(block[0], len(self.methods))]
            k = 1
        spec = self.method_specs[method]
        rules = {}
        for s in self.sets:
            per_model: dict[str, list[float]] = {}
            vals = block[k:k + len(self.models) * len(self.searched)].reshape(len(self.models), len(self.searched))
            k += len(self.models) * len(self.searched)
            for j, p in enumerate(self.searched):
                if p in spec.per_model:
                    per_model[p] = [round_gene(v) for v in vals[:, j]]
            for p, v in self.fixed_per_model.items():
                if p in spec.per_model:
                    per_model[p] = [float(v)] * len(self.models)
            params = {q: v for q, v in self.params.items() if q in spec.params}
            for q in self.searched_global:
                if q in spec.params:
                    params[q] = round_gene(block[k])
                k += 1
            if self.normalize is not None and "normalize" in spec.params:
                params["normalize"] = bool(self.normalize)
            rules[s] = Rule(method, per_model, params)
        return rules

    def _layer_blocks(self, groups: np.ndarray) -> list[np.ndarray]:
        """Gene block for each layer: its group's, or (smooth) interpolated between group anchors."""
        if not self.smooth or self.n_groups == 1:
            return [groups[i // self.group_size] for i in range(self.num_layers)]
        anchors = np.linspace(0.0, 1.0, self.n_groups)
        out = []
        for i in range(self.num_layers):
            t = i / max(self.num_layers - 1, 1)
            row = np.array([np.interp(t, anchors, groups[:, c]) for c in range(groups.shape[1])])
            if len(self.methods) > 1:  # categorical: nearest anchor, never a blend of two method indices
                row[0] = groups[int(np.argmin(np.abs(anchors - t))), 0]
            out.append(row)
        return out

    def decode(self, x: np.ndarray) -> Recipe:
        x = np.clip(np.asarray(x, dtype=float).reshape(-1), self._xl, self._xu)
        if x.size != self.dim:
            raise ValueError(f"ps space: genome has {x.size} values, expected {self.dim}")
        blocks = x.reshape(-1, self.block_dim)
        groups = blocks[: self.n_groups]
        layers = {i: self._rule(b) for i, b in enumerate(self._layer_blocks(groups))}
        if self.non_layer == "own":
            default = self._rule(blocks[-1])[self.rest]
        elif self.non_layer == "first":
            default = (layers[0] if layers else self._rule(groups[0]))[self.rest]
        else:
            default = None  # the merger keeps the base's (or first source's) non-layer tensors
        return Recipe(models=list(self.models), base=self.base, default=default, layers=layers, seed=self.seed,
                      meta={"space": "ps"})

    # ---- reference points the optimiser can be seeded with -----------------------------------------------
    def _genome(self, method: str, weights: list[float]) -> np.ndarray | None:
        """A genome whose every block uses `method` with these weights, density 1 and lambda 1 (None if the
        bounds exclude it)."""
        spec = self.method_specs[method]
        block = []
        if len(self.methods) > 1:
            block.append(float(self.methods.index(method)))
        for _ in self.sets:
            for w in weights:
                for p, (lo, _hi) in self.searched.items():
                    v = {"weight": w, "density": 1.0}.get(p, spec.per_model.get(p))
                    block.append(float(lo if v is None else v))
            for q, (lo, _hi) in self.searched_global.items():
                v = {"lambda": 1.0}.get(q, spec.params.get(q))
                block.append(float(lo if not isinstance(v, (int, float)) else v))
        x = np.tile(np.array(block), self.dim // len(block))
        fixed_ok = all(self.fixed_per_model.get(p, 1.0) == 1.0 for p in ("density",)) and \
            "weight" not in self.fixed_per_model and self.params.get("lambda", 1.0) == 1.0
        inside = np.all(x >= self._xl - 1e-12) and np.all(x <= self._xu + 1e-12)
        return x if fixed_ok and inside else None

    def seeds(self) -> dict[str, np.ndarray]:
        """Genomes that reproduce each source model and the plain average, where the methods and bounds allow it.

        A source needs a method in SOURCE_METHODS (weight one-hot, density 1, lambda 1); the average a method in
        AVERAGE_METHODS (uniform weights). With `non_layer: base` the sources' own embeddings/head are not
        reachable, so no seed is offered. Seeds that are impossible are left out (and logged), never approximated.
        """
        if "weight" not in self.searched or self.non_layer == "base":
            log.info("ps space: no seed genomes (weight not searched, or non_layer=base)")
            return {}
        out = {}
        n = len(self.models)
        targets = [(f"source:{m}", [1.0 if j == i else 0.0 for j in range(n)], SOURCE_METHODS)
                   for i, m in enumerate(self.models)]
        targets.append(("average", [1.0 / n] * n, AVERAGE_METHODS))
        for name, weights, allowed in targets:
            for method in self.methods:
                if method in allowed and (x := self._genome(method, weights)) is not None:
                    out[name] = x
                    break
            else:
                log.info("ps space: no genome of methods %s within the bounds reproduces %s", self.methods, name)
        return out
