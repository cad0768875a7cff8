"""Architecture maps: which tensors form layer i, which are embeddings and heads, which are tied.

The maps are data (`arch/*.yaml`), one per family. Code asks a map to `locate` a tensor name; nothing else in
evomerge pattern-matches parameter names.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import yaml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchMap:
    name: str
    architectures: tuple[str, ...]
    num_layers_key: str
    layer_prefix: str  # e.g. "model.layers.{i}."
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # group -> substrings
    embed: tuple[str, ...] = ()
    head: tuple[str, ...] = ()
    final_norm: tuple[str, ...] = ()
    tied: dict[str, str] = field(default_factory=dict)  # tensor -> the tensor it shares storage with
    # The linear module (inside a decoder layer) whose output is the layer's MLP contribution to the residual
    # stream, e.g. "mlp.down_proj": where a data-flow hop scale acts and folds (evomerge/merge/dataflow.py).
    mlp_out: str | None = None
    inferred: bool = False

    @property
    def _layer_re(self) -> re.Pattern:
        return _compile_prefix(self.layer_prefix)

    def layer_of(self, name: str) -> int | None:
        m = self._layer_re.match(name)
        return int(m.group(1)) if m else None

    def group_of(self, name: str) -> str:
        """'attention', 'mlp' or 'other' (norms, biases and non-layer tensors fall in 'other')."""
        for group, needles in self.groups.items():
            if any(n in name for n in needles):
                return group
        return "other"

    def locate(self, name: str) -> tuple[int | None, str]:
        return self.layer_of(name), self.group_of(name)

    def layer_key(self, i: int) -> str:
        return self.layer_prefix.format(i=i)

    def rename_layer(self, name: str, new_index: int) -> str:
        """The same tensor name moved to layer `new_index` (used when layers are stacked)."""
        i = self.layer_of(name)
        if i is None:
            return name
        return self.layer_key(new_index) + name[len(self.layer_key(i)):]


@cache
def _compile_prefix(prefix: str) -> re.Pattern:
    head, tail = prefix.split("{i}")
    return re.compile(re.escape(head) + r"(\d+)" + re.escape(tail))


@cache
def known_maps() -> tuple[ArchMap, ...]:
    maps = []
    for entry in sorted(resources.files("evomerge.models").joinpath("arch").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            d = yaml.safe_load(entry.read_text())
            maps.append(
                ArchMap(
                    name=entry.name.removesuffix(".yaml"),
                    architectures=tuple(d["architectures"]),
                    num_layers_key=d["num_layers_key"],
                    layer_prefix=d["layer_prefix"],
                    groups={k: tuple(v) for k, v in (d.get("groups") or {}).items()},
                    embed=tuple(d.get("embed") or ()),
                    head=tuple(d.get("head") or ()),
                    final_norm=tuple(d.get("final_norm") or ()),
                    tied=dict(d.get("tied") or {}),
                    mlp_out=d.get("mlp_out"),
                )
            )
    return tuple(maps)


def arch_for(architecture: str, param_names: list[str] | None = None) -> ArchMap:
    """The map for an architecture class name; for unknown ones, infer the layer prefix from parameter names."""
    for m in known_maps():
        if architecture in m.architectures:
            return m
    if not param_names:
        raise ValueError(
            f"unknown architecture {architecture!r}: no map in evomerge/models/arch/ lists it "
            f"(known: {sorted(a for m in known_maps() for a in m.architectures)})"
        )
    return infer_arch(architecture, param_names)


def infer_arch(architecture: str, param_names: list[str]) -> ArchMap:
    """Guess the layer prefix as the most common '<path>.<int>.' pattern, and say so."""
    counts: dict[str, set[int]] = {}
    for name in param_names:
        for m in re.finditer(r"\.(\d+)\.", name):
            prefix = name[: m.start()] + ".{i}."
            counts.setdefault(prefix, set()).add(int(m.group(1)))
    if not counts:
        raise ValueError(f"{architecture}: cannot infer a layer structure; parameter names have no '.N.' part")
    prefix = max(counts, key=lambda p: len(counts[p]))
    log.warning(
        "No architecture map for %s: inferred layers as '%s' (%d layers). Add a YAML under "
        "evomerge/models/arch/ to make this explicit.", architecture, prefix, len(counts[prefix]),
    )
    return ArchMap(
        name=f"inferred:{architecture}",
        architectures=(architecture,),
        num_layers_key="num_hidden_layers",
        layer_prefix=prefix,
        groups={"attention": ("attn",), "mlp": ("mlp",)},
        inferred=True,
    )
