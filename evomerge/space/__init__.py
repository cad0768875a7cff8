"""Search spaces (config group `space`): a flat real vector <-> a recipe.

Every space offers `dim, xl, xu, var_types, decode(x) -> Recipe, seeds() -> {name: genome}`; the data-flow spaces
also `constraint(x) -> violation >= 0` and `n_constraints`. Kinds: `ps` (evomerge/space/ps.py), `dfs` and
`dfs_depth` (evomerge/space/dfs.py). PS+DFS is a DFS space whose `recipe_models` adds a saved PS recipe, merged on
load, as one more model of the pool (evomerge/load.py: add_recipe_model).
"""

from __future__ import annotations

from typing import Any

KINDS = ("ps", "dfs", "dfs_depth")


def _bounds(d: dict, where: str) -> dict[str, tuple[float, float]]:
    out = {}
    for k, v in dict(d or {}).items():
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise ValueError(f"{where}.{k}: expected [low, high], found {v!r}")
        out[k] = (float(v[0]), float(v[1]))
    return out


def build(cfg: Any, merge_cfg: Any, pool, seed: int = 0):
    cfg = dict(cfg)
    kind = cfg.get("kind")
    if kind == "ps":
        from evomerge.space.ps import PSSpace

        # The space may override the merge group's method (or list several: a categorical gene per layer group);
        # the merge group's fixed params apply only when its method is used.
        method = cfg.get("method") or merge_cfg["method"]
        from evomerge.merge.registry import get_method

        for name in [method] if isinstance(method, str) else list(method):
            try:
                get_method(name)
            except ValueError as e:  # say which key the name came from
                raise ValueError(f"{'space.method' if cfg.get('method') else 'merge.method'}: {e}") from None
        groups = getattr(getattr(pool, "arch", None), "groups", None)
        if groups is not None:
            absent = [f for f in cfg.get("filters") or [] if f != "other" and f not in groups]
            if absent:
                raise ValueError(f"space.filters: {absent} match no tensor of this architecture (arch map "
                                 f"{pool.arch.name} defines groups {sorted(groups)}; 'other' is everything else)")
        params = cfg.get("params")
        if params is None:
            params = {} if cfg.get("method") else dict(merge_cfg.get("params") or {})
        return PSSpace(
            models=list(pool.names), base=pool.base_name, num_layers=pool.num_layers,
            method=method if isinstance(method, str) else list(method),
            layer_granularity=int(cfg.get("layer_granularity", 1)),
            searched=_bounds(cfg.get("searched", {"weight": [0.0, 1.0]}), "space.searched"),
            searched_global=_bounds(cfg.get("searched_global"), "space.searched_global"),
            fixed_per_model=dict(cfg.get("fixed_per_model") or {}),
            params=dict(params),
            filters=list(cfg.get("filters") or []), normalize=cfg.get("normalize"),
            allow_negative_weights=bool(cfg.get("allow_negative_weights", False)),
            smooth=bool(cfg.get("smooth", False)), non_layer=str(cfg.get("non_layer", "first")), seed=seed,
        )
    if kind in ("dfs", "dfs_depth"):
        from evomerge.space.dfs import DepthSpace, DFSSpace

        for name, recipe_file in dict(cfg.get("recipe_models") or {}).items():
            from evomerge.load import add_recipe_model

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
        if kind == "dfs":
            return DFSSpace(repeats=int(cfg.get("repeats", 3)), scales=str(cfg.get("scales", "per_slot")), **common)
        return DepthSpace(**common)
    raise ValueError(f"space.kind: unknown space {kind!r}; expected one of {list(KINDS)}")
