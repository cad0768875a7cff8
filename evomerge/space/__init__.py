"""Search spaces (config group `space`): a flat real vector <-> a recipe.

Every space offers `dim, xl, xu, var_types, decode(x) -> Recipe, seeds() -> {name: genome}`; the data-flow spaces
also `constraint(x) -> violation >= 0` and `n_constraints`. Kinds (evomerge.registry.SPACES): `ps`
(evomerge/space/ps.py), `dfs` and `dfs_depth` (evomerge/space/dfs.py); each class reads its own config group in
`from_config(cfg, merge_cfg, pool, seed)`. PS+DFS is a DFS space whose `recipe_models` adds a saved PS recipe, merged on
load, as one more model of the pool (evomerge/load.py: add_recipe_model).
"""

from __future__ import annotations

from typing import Any

from evomerge.registry import SPACES


def bounds(d: dict, where: str) -> dict[str, tuple[float, float]]:
    out = {}
    for k, v in dict(d or {}).items():
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise ValueError(f"{where}.{k}: expected [low, high], found {v!r}")
        out[k] = (float(v[0]), float(v[1]))
    return out


def build(cfg: Any, merge_cfg: Any, pool, seed: int = 0):
    cfg = dict(cfg)
    return SPACES.get(cfg.get("kind"), "space.kind").from_config(cfg, merge_cfg, pool, seed)
