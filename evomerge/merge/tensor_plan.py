"""One tensor's merge plan, shared by the in-memory merger, the streaming export and the path models: which rule
applies (recipe.rule_for), the method with its checked arguments (merge/registry.py), its inputs (base and sources),
and the call with a per-tensor seed. A tensor without a rule, or not floating point, is copied from the base (or
the first model)."""

from __future__ import annotations

import os
import zlib

import torch

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


def tensor_inputs(pool: ModelPool, recipe: Recipe, name: str, layer: int | None = None, group: str | None = None):
    """(method, kwargs, base, sources) for one tensor, or None when it is copied from the base/first model."""
    plan = plan_tensor(recipe, pool.arch, name, layer, group)
    if plan is None or not pool.state[recipe.base or recipe.models[0]][name].is_floating_point():
        return None
    method, kwargs = plan
    base = pool.state[recipe.base][name] if recipe.base else None
    return method, kwargs, base, [pool.state[m][name] for m in recipe.models]


def merge_tensor(pool: ModelPool, recipe: Recipe, name: str) -> torch.Tensor:
    """The merged value of one tensor (not yet written anywhere)."""
    inputs = tensor_inputs(pool, recipe, name)
    if inputs is None:
        return pool.state[recipe.base or recipe.models[0]][name]
    return run_method(*inputs, recipe.seed, name)
