"""One tensor plan for the in-memory merger, the streaming export and the path models (mergekit's "one planner, two
outputs"):
- `merged_value`: which rule applies (recipe.rule_for), the method with its checked arguments (merge/registry.py),
  its inputs (base and sources, fetched by the caller: from the pool's state dicts in memory, from memory-mapped
  shards in the export), the call with a per-tensor seed, and the finite check. A tensor without a rule, or not
  floating point, is the base's (or the first model's).
- `path_plan`: a layer-path recipe unrolled into stock tensors, each (output name, input name, model, factor)."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch

from evomerge.merge.kernels import all_finite
from evomerge.merge.registry import Method, get_method
from evomerge.models.pool import ModelPool
from evomerge.recipe import Recipe


class MergeError(RuntimeError):
    """A recipe that cannot be applied, or that produced non-finite weights."""


def tensor_seed(seed: int, name: str) -> int:
    """Per-tensor seed for randomised methods: stable across runs, processes and devices."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def plan_tensor(recipe: Recipe, arch, name: str, layer: int | None = None, group: str | None = None):
    """(method, keyword arguments) for one tensor, or None to copy it from the base/first model unchanged."""
    if layer is None and group is None:
        layer, group = arch.locate(name)
    rule = recipe.rule_for(layer, group, name)
    if rule is None:
        return None
    method = get_method(rule.method)
    where = f"recipe rule for {name} (layer {layer}, group {group})"
    if method.needs_base and recipe.base is None:
        raise MergeError(f"{where}: method '{method.name}' needs a base model, but the recipe has none")
    return method, method.resolve(rule.per_model, rule.params, len(recipe.models), where)


def run_method(method: Method, kwargs: dict, base: torch.Tensor | None, tensors: list[torch.Tensor],
               seed: int, name: str, memo: Memo | None = None) -> torch.Tensor:
    """Call one method on one tensor's inputs, with the per-tensor CPU generator when it is randomised."""
    generator = torch.Generator().manual_seed(tensor_seed(seed, name)) if method.randomized else None
    extra = {"memo": memo} if method.memoized else {}
    return method.fn(base, tensors, generator=generator, **extra, **kwargs)


class Memo(dict):
    """Scratch space for one tensor's inputs (see methods.py), drawing on a byte budget shared by one merger."""

    def __init__(self, budget: list[int]):
        super().__init__()
        self.budget = budget  # [bytes left], shared by every Memo of the merger

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.budget[0]

    def put(self, key, value: torch.Tensor) -> None:
        self.budget[0] -= value.nbytes
        self[key] = value


def default_memo_bytes(device: torch.device) -> int:
    """A quarter of physical RAM for CPU pools; 0 on accelerators, whose memory the models need."""
    if device.type != "cpu":
        return 0
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def merged_value(recipe: Recipe, arch, name: str, fetch: Callable[[str], torch.Tensor],
                 where: tuple[int | None, str | None] | None = None, memo: Callable[[], Memo] | None = None,
                 check_finite: bool = True) -> torch.Tensor:
    """The merged value of tensor `name`, from `fetch(model) -> that model's tensor`; `where` is its (layer,
    group) when the caller has located it, `memo()` the tensor's memo for methods that keep one."""
    fallback = fetch(recipe.base or recipe.models[0])
    plan = plan_tensor(recipe, arch, name, *(where or (None, None)))
    if plan is None or not fallback.is_floating_point():
        return fallback
    method, kwargs = plan
    base = fetch(recipe.base) if recipe.base else None
    out = run_method(method, kwargs, base, [fetch(m) for m in recipe.models], recipe.seed, name,
                     memo() if memo is not None and method.memoized else None)
    if check_finite and out.is_floating_point() and not all_finite(out):
        raise MergeError(f"merged tensor {name} has NaN/Inf values")
    return out


def merge_tensor(pool: ModelPool, recipe: Recipe, name: str) -> torch.Tensor:
    """The merged value of one tensor of the pool (not yet written anywhere)."""
    return merged_value(recipe, pool.arch, name, lambda m: pool.state[m][name])


def head_tensors(arch) -> tuple[str, ...]:
    """The non-layer tensors after the last decoder layer: final norm and head."""
    return tuple(arch.final_norm) + tuple(arch.head)


def is_mlp_out(arch, name: str) -> bool:
    """Whether a layer tensor belongs to the MLP output projection (weight or bias)."""
    i = arch.layer_of(name)
    return i is not None and name[len(arch.layer_key(i)):].rpartition(".")[0] == arch.mlp_out


class PlannedTensor(NamedTuple):
    out: str        # the output tensor's name
    source: str     # the input tensor's name
    model: str      # the model it is read from
    factor: float   # a folded hop scale (1.0: unchanged)


def path_plan(recipe: Recipe, arch, names: Callable[[str], Iterable[str]],
              folds: tuple[float, dict[int, float]]) -> list[PlannedTensor]:
    """A stacked-layer path as stock tensors: decoder layer k is hop k's source layer; the non-layer tensors are
    models[0]'s (final norm and head `recipe.head_from`'s when set; callers with a default rule merge them).
    `folds` (dataflow.fold_factors) puts the `mlp_output` hop scales into the weights: hop 0's into the embeddings
    (a tied head then keeps the unscaled embeddings, written untied), hop k's into hop k-1's MLP output projection;
    mergekit's per-slice `scale`s (hop.weight_scale) multiply in too. `names(model)` lists a model's tensors."""
    embed_factor, mlp_factors = folds
    first = recipe.models[0]
    own = list(names(first))
    head = set(head_tensors(arch)) if recipe.head_from else set()
    plan = [PlannedTensor(n, n, recipe.head_from if n in head else first, embed_factor if n in arch.embed else 1.0)
            for n in own if arch.layer_of(n) is None]
    if embed_factor != 1.0:
        plan += [PlannedTensor(tied, owner, first, 1.0) for tied, owner in arch.tied.items()
                 if tied not in own and owner in own]
    for k, hop in enumerate(recipe.path):
        for n in names(hop.model):
            if arch.layer_of(n) == hop.layer:
                factor = mlp_factors.get(k, 1.0) if is_mlp_out(arch, n) else 1.0
                factor *= hop.weight_scale.get(n[len(arch.layer_key(hop.layer)):], 1.0)
                plan.append(PlannedTensor(arch.rename_layer(n, k), n, hop.model, factor))
    return plan
