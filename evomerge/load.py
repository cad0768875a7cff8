"""Loading what evomerge wrote: `load_merged(path)` for exported models, `add_recipe_model` for staged searches.

A parameter-space merge exports to a plain stock checkpoint (any loader works). A data-flow (layer path) export is a
stock checkpoint too, its `mlp_output` hop scales folded into the weights; only `stream` scales (which cannot fold)
are kept in config.json as `evomerge_hop_scales`, which stock loaders ignore: use `load_merged` for those.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evomerge.merge.dataflow import (
    BASE_TYPE_KEY,
    SCALE_AT_KEY,
    SCALES_KEY,
    STOCK_REFUSES,
    _layers_attr,
    install_scales,
)


def load_merged(path: str | Path, dtype: torch.dtype | None = None, trust_remote_code: bool = False):
    """Load an evomerge export (a folder with config.json + safetensors), re-installing data-flow hop scales."""
    from evomerge.models.arch import arch_for
    from evomerge.models.pool import load_model

    path = Path(path).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"load_merged: {path} has no config.json; expected a folder written by evomerge")
    import json

    raw = json.loads((path / "config.json").read_text())
    if raw.get("model_type") == STOCK_REFUSES:  # hop scales stock loaders would drop: restore the real type here
        from transformers import AutoConfig, AutoModelForCausalLM

        fields = {k: v for k, v in raw.items() if k not in ("model_type", BASE_TYPE_KEY)}
        config = AutoConfig.for_model(raw[BASE_TYPE_KEY], **fields)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = AutoModelForCausalLM.from_pretrained(str(path), config=config, trust_remote_code=trust_remote_code,
                                                     **kwargs)
    else:
        model = load_model(str(path), dtype=dtype, trust_remote_code=trust_remote_code)
    scales = getattr(getattr(model, "config", None), SCALES_KEY, None)
    if scales:
        arch = arch_for(type(model).__name__, list(model.state_dict()))
        scale_at = getattr(model.config, SCALE_AT_KEY, None) or "stream"  # exports before the key were "stream"
        install_scales(model.get_submodule(_layers_attr(arch.layer_prefix)), [float(s) for s in scales], scale_at,
                       arch.mlp_out)
    model.eval()
    return model


@torch.no_grad()
def add_recipe_model(pool, name: str, recipe_path: str | Path) -> None:
    """Merge a saved parameter-space recipe over the pool's models and add the result to the pool as `name`.

    This is how a PS result becomes one of the models of a DFS stage (Sakana's PS+DFS): the recipe's models must
    be in the pool; the merged tensors are held like any other source model's.
    """
    from evomerge.merge.merger import Merger
    from evomerge.recipe import Recipe

    if name in pool.state:
        raise ValueError(f"space.recipe_models.{name}: the pool already has a model named {name!r}")
    recipe = Recipe.load(recipe_path)
    if recipe.path is not None:
        raise ValueError(f"space.recipe_models.{name}: {recipe_path} holds a layer path; expected a parameter-space "
                         "recipe (a data-flow stage cannot feed another one yet)")
    missing = [m for m in recipe.models + ([recipe.base] if recipe.base else []) if m not in pool.state]
    if missing:
        raise ValueError(f"space.recipe_models.{name}: recipe {recipe_path} names model(s) {missing} that are not "
                         f"in the pool {sorted(pool.state)}; load the stage-1 pool (same models section)")
    model = Merger(pool).apply(recipe)
    pool.state[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pool.paths[name] = f"recipe:{recipe_path}"
