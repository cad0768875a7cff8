"""Search spaces (config group `space`): a flat real vector <-> a recipe.

Every space declares its shape, `dim, xl, xu, var_types, n_constraints, resolution` (genes.GeneBox), and offers
`decode(x) -> Recipe`, `seeds() -> {name: genome}` and `constraint(x) -> violation >= 0` (0 unless the data-flow
spaces cap the path length). Kinds (evomerge.registry.SPACES): `ps`
(evomerge/space/ps.py), `dfs` and `dfs_depth` (evomerge/space/dfs.py); each class reads its own config group in
`from_config(cfg, merge_cfg, pool, seed)`. PS+DFS is a DFS space whose `recipe_models` adds a saved PS recipe, merged on
load, as one more model of the pool (evomerge/load.py: add_recipe_model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evomerge.registry import SPACES


def bounds(d: dict, where: str) -> dict[str, tuple[float, float]]:
    out = {}
    for k, v in dict(d or {}).items():
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise ValueError(f"{where}.{k}: expected [low, high], found {v!r}")
        out[k] = (float(v[0]), float(v[1]))
    return out


@dataclass(frozen=True)
class PoolShape:
    """What a space reads of a pool: the sources, the base, the depth, every model a recipe may name (`state`'s
    keys; PS+DFS recipe models too) and the architecture map when known. A loaded ModelPool has these attributes;
    a dry run or a pre-flight check builds a PoolShape from the config alone."""
    names: list[str]
    base_name: str | None
    num_layers: int
    state: dict[str, dict]
    arch: Any = None


def build(cfg: Any, merge_cfg: Any, pool: PoolShape | Any, seed: int = 0):
    cfg = dict(cfg)
    return SPACES.get(cfg.get("kind"), "space.kind").from_config(cfg, merge_cfg, pool, seed)
