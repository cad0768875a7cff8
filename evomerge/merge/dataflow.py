"""Data-flow models: a layer path (list of Hop(model, layer, scale)) run as a stock transformers decoder.

Why this shape: the forward pass, the KV cache and `generate()` stay the stock ones (Llama / Mistral / Qwen2 family,
any decoder whose layers live under the arch map's `layer_prefix` and take `(config, layer_idx)`). Only the list of
decoder layers is rewired per candidate:

- every hop gets its *own* decoder-layer module, built on the meta device and then given the source layer's tensors
  with `load_state_dict(assign=True)`, so a repeated layer shares storage with the pool (no copies) while each hop
  has its own `layer_idx`, i.e. its own KV-cache slot;
- where a hop's scale acts is the recipe's `scale_at` (evomerge/recipe.py: SCALE_AT). The default, `mlp_output`, is
  Sakana's released EvoMistral (shared/reference/anchors.md, section 2, "Where the scale acts"): its fused-residual
  decoder layer runs `hidden, residual = layer(hidden * scale, residual)`, so the scale of hop k multiplies hop k-1's
  MLP output before it is added to the residual stream, and at hop 0 it multiplies the embeddings. Here that is a
  forward hook on hop k-1's MLP output projection (the arch map's `mlp_out`, e.g. `mlp.down_proj`) and, for hop 0,
  a pre-hook on the first layer's input (= the embeddings). `stream` multiplies the whole residual stream entering
  the hop (a pre-hook on its input), evomerge's earlier behaviour. Hooks keep module names stock; a scale of 1
  adds none;
- embeddings, final norm and head come from the recipe's `default` rule: a one-hot linear rule shares the chosen
  model's tensors; any other rule is merged with the ordinary merge engine (so PS-merged embeddings also work).

Export (`export_path_recipe`, and the streaming export in evomerge/merge/export.py): the path is unrolled into a
stock checkpoint with `num_hidden_layers = len(path)` (repeated layers are written once per hop). With `mlp_output`
scales the checkpoint is a plain stock one: each hop is its own copy, so hop k's scale folds into hop k-1's copy of
the MLP output projection (weight and bias), and hop 0's into the embeddings (a tied head is then written untied,
holding the unscaled embeddings): `fold_factors`. This is exact up to float rounding (the scale multiplies the weight
instead of the product). `stream` scales cannot fold (the scale multiplies the residual stream, which every later
layer adds onto, and RMSNorm removes it only from the branch input): they are stored in `config.json` as
`evomerge_hop_scales` (with `evomerge_scale_at`), and `evomerge.load_merged(path)` re-installs them.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import torch
from torch import nn

from evomerge.merge.tensor_plan import head_tensors, merge_tensor, path_plan
from evomerge.models.pool import ModelPool
from evomerge.recipe import SCALE_AT, Recipe

STOCK_REFUSES = "evomerge_scaled_path"  # model_type of an export whose hop scales stock transformers would drop
BASE_TYPE_KEY = "evomerge_model_type"  # config.json field: the real model_type of such an export
SCALES_KEY = "evomerge_hop_scales"  # config.json field: one input scale per decoder layer of an exported path model
SCALE_AT_KEY = "evomerge_scale_at"  # config.json field: where those scales act (absent in old exports: "stream")
PATH_KEY = "evomerge_path"  # provenance only: [[model, layer], ...] of the exported path


class PathError(ValueError):
    """A path that cannot be wired (unknown model, layer out of range, unsupported architecture)."""


def _scale_input(scale: float):
    def hook(module, args, kwargs):
        if args:
            return (args[0] * scale, *args[1:]), kwargs
        kwargs["hidden_states"] = kwargs["hidden_states"] * scale
        return args, kwargs

    return hook


def _scale_output(scale: float):
    def hook(module, args, output):
        return output * scale

    return hook


def install_scales(layers: nn.ModuleList, scales: list[float], scale_at: str, mlp_out: str | None) -> None:
    """Install the hop scales on a stack of decoder layers (one per hop), acting where `scale_at` says.

    `mlp_output`: scales[k] multiplies layer k-1's MLP output (hook on its `mlp_out` module); scales[0] the input
    of layer 0 (the embeddings). `stream`: scales[k] multiplies the input of layer k. Scales of exactly 1 add nothing.
    """
    if len(scales) != len(layers):
        raise PathError(f"{len(scales)} hop scales for {len(layers)} decoder layers")
    if scale_at not in SCALE_AT:
        raise PathError(f"scale_at: expected one of {list(SCALE_AT)}, found {scale_at!r}")
    for k, s in enumerate(map(float, scales)):
        if s == 1.0:
            continue
        if scale_at == "stream" or k == 0:
            layers[k].register_forward_pre_hook(_scale_input(s), with_kwargs=True)
        elif mlp_out is None:
            raise PathError("scale_at 'mlp_output' needs the arch map's `mlp_out` (the MLP output projection of a "
                            "decoder layer); this architecture's map has none: add it, or use scale_at: stream")
        else:
            layers[k - 1].get_submodule(mlp_out).register_forward_hook(_scale_output(s))


def fold_factors(arch, recipe: Recipe) -> tuple[float, dict[int, float]] | None:
    """How an exported path absorbs its `mlp_output` scales: (factor for the embeddings, {hop k: factor for hop k's
    MLP output projection}); factors of 1 are left out. None when the scales cannot fold (`stream`, or an arch map
    without `mlp_out`) and some scale is not 1."""
    scales = [float(h.scale) for h in recipe.path]
    if all(s == 1.0 for s in scales):
        return 1.0, {}
    if recipe.scale_at != "mlp_output" or arch.mlp_out is None:
        return None
    return scales[0], {k - 1: s for k, s in enumerate(scales) if k > 0 and s != 1.0}


def _layers_attr(layer_prefix: str) -> str:
    """'model.layers.{i}.' -> 'model.layers' (where the ModuleList of decoder layers lives)."""
    return layer_prefix.split(".{i}")[0]


def check_path(pool: ModelPool, recipe: Recipe) -> None:
    if not recipe.path:
        raise PathError("recipe.path is empty: a data-flow model needs at least one hop")
    if any(h.weight_scale for h in recipe.path):
        raise PathError("recipe.path has per-tensor weight scales (mergekit's slice `scale`): they are applied by "
                        "evomerge-merge's export only, not to in-memory path models")
    for k, hop in enumerate(recipe.path):
        if hop.model not in pool.state:
            raise PathError(f"recipe.path[{k}]: model {hop.model!r} is not in the pool {sorted(pool.state)}")
        if not 0 <= hop.layer < pool.num_layers:
            raise PathError(f"recipe.path[{k}]: layer {hop.layer} out of range 0..{pool.num_layers - 1}")


def non_layer_tensors(pool: ModelPool, recipe: Recipe) -> dict[str, torch.Tensor]:
    """Embeddings, final norm and head: from the recipe's default rule (one-hot linear = that model's own tensors,
    shared, not copied); models[0]'s when there is no default rule, except that `recipe.head_from` gives the final
    norm and head (mergekit passthrough takes them from the last slice's model)."""
    names = [n for n in next(iter(pool.state.values())) if pool.arch.layer_of(n) is None]
    rule = recipe.default
    if rule is None:
        out = {n: pool.state[recipe.models[0]][n] for n in names}
    else:
        w = rule.per_model.get("weight", [])
        if rule.method == "linear" and sorted(w) == [0.0] * (len(w) - 1) + [1.0]:
            src = recipe.models[w.index(1.0)]
            out = {n: pool.state[src][n] for n in names}
        else:
            out = {n: merge_tensor(pool, recipe, n) for n in names}
    if recipe.head_from is not None:
        out.update({n: pool.state[recipe.head_from][n] for n in head_tensors(pool.arch) if n in out})
    return out


class PathModelBuilder:
    """Owns one persistent output model (the pool's architecture) and rewires its decoder layers per recipe."""

    def __init__(self, pool: ModelPool):
        self.pool = pool
        template = pool.template
        if not hasattr(template, "config") or not hasattr(template, "generate"):
            raise PathError(
                f"data-flow paths need a transformers causal LM; the pool's template is {type(template).__name__}"
            )
        self.arch = pool.arch
        self.layers_attr = _layers_attr(self.arch.layer_prefix)
        try:
            src_layers = template.get_submodule(self.layers_attr)
        except AttributeError as e:
            raise PathError(f"arch map {self.arch.name}: no module {self.layers_attr!r} in {type(template).__name__}") from e
        self.layer_cls = type(src_layers[0])
        self.source_layer_types = list(getattr(template.config, "layer_types", None) or [])
        cfg = copy.deepcopy(template.config)
        cfg.num_hidden_layers = 0
        if self.source_layer_types:
            cfg.layer_types = []
        with torch.device("meta"):
            self.model = type(template)(cfg)
        # Non-persistent buffers (rotary inv_freq, ...) do not depend on depth: share the template's.
        for name, _ in list(self.model.named_buffers()):
            owner, _, leaf = name.rpartition(".")
            self.model.get_submodule(owner)._buffers[leaf] = template.get_buffer(name)
        self.model.generation_config = copy.deepcopy(template.generation_config)
        self.model.eval()
        self.parent = self.model.get_submodule(self.layers_attr.rpartition(".")[0])
        self.leaf = self.layers_attr.rpartition(".")[2]

    @torch.no_grad()
    def apply(self, recipe: Recipe) -> nn.Module:
        check_path(self.pool, recipe)
        path = recipe.path
        cfg = self.model.config
        cfg.num_hidden_layers = len(path)
        if self.source_layer_types:
            cfg.layer_types = [self.source_layer_types[h.layer] for h in path]
        layers = nn.ModuleList()
        for k, hop in enumerate(path):
            with torch.device("meta"):
                layer = self.layer_cls(cfg, k)
            prefix = self.arch.layer_key(hop.layer)
            src = self.pool.state[hop.model]
            wanted = layer.state_dict()
            try:
                layer.load_state_dict({n: src[prefix + n] for n in wanted}, assign=True, strict=True)
            except KeyError as e:
                raise PathError(f"recipe.path[{k}]: model {hop.model!r} has no tensor {e} for layer {hop.layer}") from e
            layers.append(layer)
        install_scales(layers, [h.scale for h in path], recipe.scale_at, self.arch.mlp_out)
        setattr(self.parent, self.leaf, layers)
        if hasattr(self.parent, "has_sliding_layers"):  # Qwen2/Qwen3 build the sliding-window mask only if set
            self.parent.has_sliding_layers = "sliding_attention" in (cfg.layer_types or [])
        missing, unexpected = self.model.load_state_dict(non_layer_tensors(self.pool, recipe), assign=True, strict=False)
        missing = [n for n in missing if self.arch.layer_of(n) is None]
        if missing or unexpected:
            raise PathError(f"non-layer tensors do not match the model: missing {missing}, unexpected {unexpected}")
        if getattr(cfg, "tie_word_embeddings", False):
            self.model.tie_weights()
        self.model.eval()  # the new layers are built in training mode (dropout on): evaluators need eval mode
        # A stock save_pretrained would trip over the shared (repeated) layers: save the unrolled path instead, through
        # a real save_pretrained (sharding, safe_serialization, push_to_hub and the other options all apply).
        self.model.save_pretrained = functools.partial(export_path_recipe, self.pool, recipe)
        return self.model


# ---- export and reload ------------------------------------------------------------------------------------------


def unrolled_state_dict(pool: ModelPool, recipe: Recipe) -> dict[str, torch.Tensor]:
    """The stock state dict of the path model, from the export's own plan (tensor_plan.path_plan): decoder layer k
    holds a copy of hop k's source layer, with the `mlp_output` scales folded in (`fold_factors`; the caller checks
    that they fold); the non-layer tensors follow the recipe's default rule (`non_layer_tensors`)."""
    check_path(pool, recipe)
    arch = pool.arch
    non_layer = non_layer_tensors(pool, recipe)
    out = {}
    for p in path_plan(recipe, arch, lambda m: pool.state[m].keys(), fold_factors(arch, recipe) or (1.0, {})):
        t = non_layer[p.source] if arch.layer_of(p.source) is None else pool.state[p.model][p.source]
        t = t.detach().clone().contiguous()
        out[p.out] = t * p.factor if p.factor != 1.0 else t
    return out


def export_path_recipe(pool: ModelPool, recipe: Recipe, out_dir: str | Path, **save_kwargs) -> Path:
    """Write a path recipe as a stock checkpoint through transformers' own `save_pretrained` (`save_kwargs`:
    max_shard_size, safe_serialization, push_to_hub, ... as for any model; default shards of 2GB).

    `mlp_output` scales fold into the weights. Scales that cannot fold (`stream`) are kept in config.json, and the
    config's `model_type` becomes STOCK_REFUSES, so that stock `from_pretrained` fails loudly instead of loading a
    model without its scales; `evomerge.load_merged` restores the type and the scales. The export CLI and the
    search's best-model step call this for recipes with a `path`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = unrolled_state_dict(pool, recipe)
    folds = fold_factors(pool.arch, recipe)
    cfg = copy.deepcopy(pool.template.config)
    cfg.num_hidden_layers = len(recipe.path)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[h.layer] for h in recipe.path]
    if getattr(cfg, "tie_word_embeddings", False):
        if folds is not None and folds[0] != 1.0:
            cfg.tie_word_embeddings = False  # hop 0's scale is in the embeddings, not in the head
        else:
            for tied, _owner in pool.arch.tied.items():
                state.pop(tied, None)  # re-tied from `owner`
    for key in (SCALES_KEY, SCALE_AT_KEY, PATH_KEY):
        if hasattr(cfg, key):
            delattr(cfg, key)
    if folds is None:  # scales that cannot fold into stock weights: load_merged re-installs them
        setattr(cfg, SCALES_KEY, [float(h.scale) for h in recipe.path])
        setattr(cfg, SCALE_AT_KEY, recipe.scale_at)
    setattr(cfg, PATH_KEY, [[h.model, h.layer] for h in recipe.path])
    with torch.device("meta"):
        stock = type(pool.template)(cfg)
    missing, unexpected = stock.load_state_dict(state, strict=False, assign=True)
    if getattr(cfg, "tie_word_embeddings", False):
        stock.tie_weights()
    missing = [n for n in missing if n not in pool.arch.tied]
    if missing or unexpected:
        raise PathError(f"the unrolled path does not match a {len(recipe.path)}-layer model: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}")
    if getattr(pool.template, "generation_config", None) is not None:
        stock.generation_config = copy.deepcopy(pool.template.generation_config)
    stock.save_pretrained(out_dir, **save_kwargs)
    if folds is None:
        cfg_file = out_dir / "config.json"
        d = json.loads(cfg_file.read_text())
        d[BASE_TYPE_KEY], d["model_type"] = d["model_type"], STOCK_REFUSES
        cfg_file.write_text(json.dumps(d, indent=2, sort_keys=True))
    if pool.tokenizer is not None:
        pool.tokenizer.save_pretrained(out_dir)
    recipe.save(out_dir / "evomerge_recipe.yaml")
    return out_dir
