"""Recipes: what to build, as plain data.

A recipe is what a search space decodes a genome into and what the merger applies. It knows nothing about
optimisers and holds no tensors, so it can be saved, diffed, reloaded and applied later (or elsewhere).

Parameter-space part: a `Rule` (method + parameters) per layer and tensor group, with a default rule for
everything else (embeddings, final norm, head). Data-flow part: an optional layer `path` of hops.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

GROUPS = ("attention", "mlp", "other")  # tensor groups a rule can target; "*" matches all of them
FILTER = "filter:"  # a layer key "filter:o_proj" targets the layer's tensors whose name contains "o_proj"
# Where a hop's scale acts (evomerge/merge/dataflow.py): "mlp_output" multiplies the previous hop's MLP output before
# it joins the residual stream (at hop 0: the embeddings), as Sakana's released EvoMistral does; "stream" multiplies
# the whole residual stream entering the hop (evomerge's earlier behaviour, kept as an option).
SCALE_AT = ("mlp_output", "stream")


@dataclass
class Rule:
    """How to merge one set of tensors: a registered method, its per-model and its global parameters."""

    method: str
    per_model: dict[str, list[float]] = field(default_factory=dict)  # e.g. weight: [w1, w2, w3]
    params: dict[str, Any] = field(default_factory=dict)  # global: lambda, normalize, t, ...

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"method": self.method}
        out.update({k: [_num(v) for v in vals] for k, vals in self.per_model.items()})
        if self.params:
            out["params"] = {k: _num(v) for k, v in self.params.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict, where: str = "rule") -> Rule:
        if "method" not in d:
            raise ValueError(f"{where}: missing 'method' (found keys {sorted(d)})")
        per_model = {}
        for k, v in d.items():
            if k in ("method", "params"):
                continue
            if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise ValueError(f"{where}.{k}: expected a list with one number per model (per-model parameters sit "
                                 f"beside 'method', global ones under 'params'), found {v!r}")
            per_model[k] = [float(x) for x in v]
        return cls(method=str(d["method"]), per_model=per_model, params=dict(d.get("params") or {}))


@dataclass
class Hop:
    """One step of a data-flow path: layer `layer` of source `model`, its input scaled by `scale` (see SCALE_AT)."""

    model: str
    layer: int
    scale: float = 1.0
    # mergekit's passthrough `scale` on a slice: layer tensor (name after the layer prefix) -> weight factor, for
    # the tensors whose factor is not 1. Applied when the path is exported (evomerge-merge); not in memory.
    weight_scale: dict[str, float] = field(default_factory=dict)


@dataclass
class Recipe:
    models: list[str]  # source-model names, in pool order; per-model lists follow this order
    base: str | None = None
    default: Rule | None = None  # tensors not matched by `layers`
    layers: dict[int, dict[str, Rule]] = field(default_factory=dict)  # layer -> group ("*" or GROUPS) -> rule
    path: list[Hop] | None = None  # data-flow path; None keeps each layer in place
    scale_at: str = "mlp_output"  # where the path's hop scales act: one of SCALE_AT
    head_from: str | None = None  # a path's final norm and head from this model (mergekit passthrough: the last
    # slice's model); None: models[0], like the embeddings
    seed: int = 0  # for randomised methods (DARE, DELLA)
    meta: dict[str, Any] = field(default_factory=dict)  # free-form provenance (space, genome, scores)

    def rule_for(self, layer: int | None, group: str, name: str | None = None) -> Rule | None:
        """The rule for a tensor of `group` in `layer` (None for non-layer tensors).

        Within a layer, "filter:<substring>" keys (mergekit-style name filters, first match wins) come first,
        then the tensor's group, then "*".
        """
        if layer is not None and layer in self.layers:
            by_group = self.layers[layer]
            if name is not None:
                for key, rule in by_group.items():
                    if key.startswith(FILTER) and key[len(FILTER):] in name:
                        return rule
            if group in by_group:
                return by_group[group]
            if "*" in by_group:
                return by_group["*"]
        return self.default

    # ---- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out: dict[str, Any] = {"models": list(self.models), "base": self.base, "seed": self.seed}
        if self.default is not None:
            out["default"] = self.default.to_dict()
        if self.layers:
            out["layers"] = {
                int(i): {g: r.to_dict() for g, r in groups.items()} for i, groups in sorted(self.layers.items())
            }
        if self.path is not None:
            out["path"] = [[h.model, h.layer, _num(h.scale)] + ([{"weight_scale": dict(h.weight_scale)}]
                                                                 if h.weight_scale else []) for h in self.path]
            out["scale_at"] = self.scale_at
            if self.head_from is not None:
                out["head_from"] = self.head_from
        if self.meta:
            out["meta"] = _plain(self.meta)
        return out

    @classmethod
    def from_dict(cls, d: dict, where: str = "recipe") -> Recipe:
        if not isinstance(d, dict) or "models" not in d:
            raise ValueError(f"{where}: expected a mapping with a 'models' list, found {type(d).__name__}")
        layers = {}
        for i, groups in (d.get("layers") or {}).items():
            layers[int(i)] = {
                g: Rule.from_dict(r, f"{where}.layers.{i}.{g}") for g, r in groups.items()
            }
            bad = {g for g in layers[int(i)] if g not in GROUPS and g != "*" and not g.startswith(FILTER)}
            if bad:
                raise ValueError(f"{where}.layers.{i}: unknown tensor group(s) {sorted(bad)}; expected {GROUPS}, "
                                 f"'*' or '{FILTER}<name substring>'")
        path = None
        if d.get("path") is not None:
            path = []
            for k, entry in enumerate(d["path"]):
                if not isinstance(entry, list | tuple) or len(entry) not in (3, 4):
                    raise ValueError(f"{where}.path[{k}]: expected [model, layer, scale] (+ {{weight_scale}}), "
                                     f"found {entry!r}")
                extra = entry[3] if len(entry) == 4 else {}
                ws = {str(n): float(v) for n, v in (extra.get("weight_scale") or {}).items()}
                path.append(Hop(str(entry[0]), int(entry[1]), float(entry[2]), ws))
        default = Rule.from_dict(d["default"], f"{where}.default") if d.get("default") else None
        recipe = cls(
            models=[str(m) for m in d["models"]],
            base=d.get("base"),
            default=default,
            layers=layers,
            path=path,
            scale_at=str(d.get("scale_at", "mlp_output")),
            head_from=None if d.get("head_from") is None else str(d["head_from"]),
            seed=int(d.get("seed", 0)),
            meta=dict(d.get("meta") or {}),
        )
        recipe.check(where)
        return recipe

    def check(self, where: str = "recipe") -> None:
        """Structural checks that need no model: per-model lists match the model count, numbers are finite."""
        if self.head_from is not None and self.head_from not in self.models:
            raise ValueError(f"{where}.head_from: {self.head_from!r} is not one of the recipe's models {self.models}")
        if self.scale_at not in SCALE_AT:
            raise ValueError(f"{where}.scale_at: expected one of {list(SCALE_AT)}, found {self.scale_at!r}")
        n = len(self.models)
        rules = [("default", self.default)] if self.default else []
        rules += [(f"layers.{i}.{g}", r) for i, gs in self.layers.items() for g, r in gs.items()]
        for name, rule in rules:
            for key, vals in rule.per_model.items():
                if len(vals) != n:
                    raise ValueError(
                        f"{where}.{name}.{key}: {len(vals)} values for {n} models {self.models}; expected one per model"
                    )
                if not all(math.isfinite(v) for v in vals):
                    raise ValueError(f"{where}.{name}.{key}: non-finite value in {vals}")

    def save(self, path: str | Path) -> None:
        from evomerge.store import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read recipe: {e}") from e
        return cls.from_dict(data, where=str(path))

    def summary(self) -> str:
        """A short human-readable description, for tables and logs."""
        parts = []
        if self.layers or self.default:
            rules = [r for gs in self.layers.values() for r in gs.values()] or [self.default]
            methods = sorted({r.method for r in rules if r})
            parts.append(f"ps[{','.join(methods)}; {len(self.layers)} layer rules]")
        if self.path is not None:
            parts.append("path[" + " ".join(f"{h.model}:{h.layer}" for h in self.path) + "]")
        return " + ".join(parts) or "empty"


def _num(v: Any) -> Any:
    """Round floats for readable, stable YAML (the genome itself is stored separately at full precision)."""
    if hasattr(v, "item") and not isinstance(v, (list, dict)):  # numpy/torch scalars: plain Python for YAML
        v = v.item()
    if isinstance(v, float):
        return round(v, 6)
    return v


def _plain(obj: Any) -> Any:
    """Convert numpy scalars/arrays and dataclasses into YAML-safe plain Python."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        return _plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
