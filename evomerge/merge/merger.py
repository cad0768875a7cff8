"""The in-memory merger: applies a recipe by writing merged tensors into one persistent model object.

The search loop calls `apply` once per candidate. Source tensors are loaded once (in the pool); no model is
allocated and nothing touches disk per candidate. The arithmetic runs in evomerge/merge/kernels.py (compiled for large
tensors, in small eager blocks otherwise), so no full-size float32 temporaries are allocated per candidate.
What does not change between candidates of a search (each model's sorted |delta| for TIES/breadcrumbs thresholds,
DARE's draws for a fixed seed) is kept per tensor in a `Memo`, within a byte budget (default: a quarter of RAM on
CPU, nothing on accelerators); past the budget, methods compute it per call.
"""

from __future__ import annotations

import os
import zlib

import torch
from torch import nn

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


class Merger:
    def __init__(self, pool: ModelPool, check_finite: bool = True, memo_bytes: int | None = None):
        self.pool = pool
        self.model: nn.Module = pool.new_model()
        self.targets = self.model.state_dict(keep_vars=True)  # name -> the live Parameter/buffer
        self.where = {name: pool.arch.locate(name) for name in self.targets}  # name -> (layer, group)
        self.check_finite = check_finite
        self._path_builder = None  # data-flow model for recipes with a layer `path` (built on first use)
        device = next(iter(self.targets.values())).device if self.targets else torch.device("cpu")
        self._memo_budget = [default_memo_bytes(device) if memo_bytes is None else int(memo_bytes)]
        self._memos: dict[tuple, Memo] = {}

    def memo(self, recipe: Recipe, name: str) -> Memo:
        key = (name, recipe.seed, tuple(recipe.models), recipe.base)
        if key not in self._memos:
            self._memos[key] = Memo(self._memo_budget)
        return self._memos[key]

    def check(self, recipe: Recipe) -> None:
        unknown = [m for m in recipe.models + ([recipe.base] if recipe.base else []) if m not in self.pool.state]
        if unknown:
            raise MergeError(f"recipe names model(s) {unknown} that are not in the pool {self.pool.all_names}")

    @torch.no_grad()
    def apply(self, recipe: Recipe) -> nn.Module:
        if recipe.path is not None:  # a layer path: rewire a stock decoder (evomerge/merge/dataflow.py)
            from evomerge.merge.dataflow import PathModelBuilder

            if self._path_builder is None:
                self._path_builder = PathModelBuilder(self.pool)
            return self._path_builder.apply(recipe)
        self.check(recipe)
        fallback = self.pool.state[recipe.base or recipe.models[0]]
        for name, target in self.targets.items():
            inputs = tensor_inputs(self.pool, recipe, name, *self.where[name])
            if inputs is None:
                target.data.copy_(fallback[name])
                continue
            method, kwargs, base, tensors = inputs
            out = run_method(method, kwargs, base, tensors, recipe.seed, name,
                             self.memo(recipe, name) if method.memoized else None)
            self._check(out, name)
            target.data.copy_(out)
        return self.model

    def _check(self, out: torch.Tensor, name: str) -> None:
        if self.check_finite and out.is_floating_point() and not all_finite(out):
            raise MergeError(f"merged tensor {name} has NaN/Inf values")
