"""The in-memory merger: applies a recipe by writing merged tensors into one persistent model object.

The search loop calls `apply` once per candidate. Source tensors are loaded once (in the pool); no model is
allocated and nothing touches disk per candidate. The arithmetic runs in evomerge/merge/kernels.py (compiled for large
tensors, in small eager blocks otherwise), so no full-size float32 temporaries are allocated per candidate.
What does not change between candidates of a search (each model's sorted |delta| for TIES/breadcrumbs thresholds,
DARE's draws for a fixed seed) is kept per tensor in a `Memo`, within a byte budget (default: a quarter of RAM on
CPU, nothing on accelerators); past the budget, methods compute it per call.
"""

from __future__ import annotations

import torch
from torch import nn

from evomerge.merge.dataflow import PathModelBuilder
from evomerge.merge.tensor_plan import (  # noqa: F401  (MergeError and merge_tensor are part of the merger's API)
    Memo,
    MergeError,
    default_memo_bytes,
    merge_tensor,
    merged_value,
)
from evomerge.models.pool import ModelPool
from evomerge.recipe import Recipe


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
            if self._path_builder is None:
                self._path_builder = PathModelBuilder(self.pool)
            return self._path_builder.apply(recipe)
        self.check(recipe)
        state = self.pool.state
        for name, target in self.targets.items():
            out = merged_value(recipe, self.pool.arch, name, lambda m, n=name: state[m][n], self.where[name],
                               lambda n=name: self.memo(recipe, n), self.check_finite)
            target.data.copy_(out)
        return self.model
