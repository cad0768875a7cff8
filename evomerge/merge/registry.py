"""The merge-method registry: one decorated function per method, with its typed parameters declared beside it.

A method is `fn(base, tensors, *, generator, **params) -> Tensor`: `base` is the base tensor (or None), `tensors`
the source tensors in recipe order; per-model parameters arrive as lists (one value per source), global ones as
scalars. Methods are pure: no I/O, no global RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., torch.Tensor]
    needs_base: bool
    per_model: dict[str, Any] = field(default_factory=dict)  # name -> default (None = required)
    params: dict[str, Any] = field(default_factory=dict)  # global name -> default (None = required)
    randomized: bool = False
    min_models: int = 1
    max_models: int | None = None
    memoized: bool = False  # takes `memo`, per-tensor scratch space the in-memory merger keeps across candidates

    def resolve(self, per_model: dict[str, list[float]], params: dict[str, Any], n: int, where: str) -> dict:
        """Fill defaults, refuse unknown or missing parameters, return the keyword arguments for `fn`."""
        unknown = (set(per_model) - set(self.per_model)) | (set(params) - set(self.params))
        if unknown:
            raise ValueError(
                f"{where}: method '{self.name}' has no parameter(s) {sorted(unknown)}; per-model: "
                f"{sorted(self.per_model)}, global: {sorted(self.params)}"
            )
        if n < self.min_models or (self.max_models is not None and n > self.max_models):
            raise ValueError(f"{where}: method '{self.name}' takes {self.min_models}..{self.max_models} models, got {n}")
        kwargs: dict[str, Any] = {}
        for key, default in self.per_model.items():
            if key in per_model:
                vals = list(per_model[key])
                if len(vals) != n:
                    raise ValueError(f"{where}: per-model '{key}' has {len(vals)} values for {n} models")
                kwargs[key] = [_typed(v, 0.0, f"{where}: per-model '{key}'") for v in vals]
            elif default is None:
                raise ValueError(f"{where}: method '{self.name}' needs per-model '{key}'")
            else:
                kwargs[key] = [default] * n
            if key in DOMAINS and not all(DOMAINS[key][0] <= v <= DOMAINS[key][1] for v in kwargs[key]):
                raise ValueError(f"{where}: per-model '{key}' of method '{self.name}' is {DOMAIN_WHY[key]}; "
                                 f"expected values in [{DOMAINS[key][0]:g}, {DOMAINS[key][1]:g}], found {kwargs[key]}")
        for key, default in self.params.items():
            if key in params:
                kwargs[key] = _typed(params[key], default, f"{where}: method '{self.name}' global '{key}'")
            elif default is None:
                raise ValueError(f"{where}: method '{self.name}' needs global '{key}'")
            else:
                kwargs[key] = default
        return kwargs


# Per-model parameters that only make sense in a range (checked per call, and against a search space's bounds
# before a search starts, so a bad bound fails once instead of candidate by candidate).
DOMAINS = {"density": (0.0, 1.0), "gamma": (0.0, 1.0)}
DOMAIN_WHY = {"density": "a fraction of the weights kept", "gamma": "a fraction of the largest weights dropped"}


def _typed(value: Any, default: Any, where: str) -> Any:
    """Coerce a parameter to its declared type: bool when the default is a bool, else a finite float."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, found {value!r}")
        return value
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, found {value!r}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise ValueError(f"{where}: expected a finite number (NaN/Inf are refused), found {value!r}")
    return out


METHODS: dict[str, Method] = {}


def register(name: str, *, needs_base: bool, per_model: dict | None = None, params: dict | None = None,
             randomized: bool = False, min_models: int = 1, max_models: int | None = None,
             memoized: bool = False):
    """Register `fn` as merge method `name`. `per_model`/`params` map parameter names to defaults (None =
    required); `needs_base` methods get the base tensor, others get it too when the recipe has one (nuslerp and
    multislerp then work on task vectors)."""

    def deco(fn):
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is registered twice")
        METHODS[name] = Method(name, fn, needs_base, dict(per_model or {}), dict(params or {}), randomized,
                               min_models, max_models, memoized)
        return fn

    return deco


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown merge method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name]
