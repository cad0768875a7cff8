"""Evaluators (config group `evaluator`): a mapping of named evaluators, each with a `kind`.

Adding an evaluator is one class (the protocol in base.py) and one entry in KINDS: `kind -> (module:Class, needs
the pool's tokenizer)`. Every option of the entry except `kind` goes to the class's constructor, so a misspelt
option fails at build time, before any model work.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

KINDS = {
    "vision": ("evomerge.evaluator.vision:VisionEvaluator", False),
    "lm_eval": ("evomerge.evaluator.lm_eval:LMEvalEvaluator", True),
    "jp_math": ("evomerge.evaluator.jp_math:JPMathEvaluator", True),
    "perplexity": ("evomerge.evaluator.perplexity:PerplexityEvaluator", True),
}


def evaluator_class(kind: str):
    module, cls = KINDS[kind][0].split(":")
    return getattr(importlib.import_module(module), cls)


def build(cfg: Any, pool, seed: int = 0, device: str = "cpu") -> list:
    evaluators = []
    if not cfg:
        raise ValueError("evaluator: no evaluator configured")
    for name, ev in dict(cfg).items():
        if not isinstance(ev, dict) and not hasattr(ev, "items"):
            raise ValueError(f"evaluator.{name}: expected a mapping with a `kind`, found {ev!r}")
        ev = dict(ev)
        kind = ev.get("kind")
        if kind not in KINDS:
            raise ValueError(f"evaluator.{name}.kind: unknown evaluator {kind!r}; expected one of {sorted(KINDS)}")
        cls = evaluator_class(kind)
        options = {k: v for k, v in ev.items() if k not in ("kind", "anchors")}
        accepted = set(inspect.signature(cls).parameters) - {"tokenizer", "name", "seed", "device"}
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(f"evaluator.{name}: unknown option(s) {unknown} for kind {kind!r}; accepted: "
                             f"{sorted(accepted)}")
        if KINDS[kind][1]:
            options["tokenizer"] = getattr(pool, "tokenizer", None)
        built = cls(name=name, seed=seed, device=device, **options)
        if ev.get("anchors"):  # scored on anchor items, whole-split estimates (evomerge/evaluator/anchors.py)
            from evomerge.evaluator.anchors import AnchoredEvaluator

            a = dict(ev["anchors"])
            unknown = sorted(set(a) - {"k", "estimator"})
            if unknown:
                raise ValueError(f"evaluator.{name}.anchors: unknown option(s) {unknown}; expected k, estimator")
            built = AnchoredEvaluator(built, pool, seed=seed, **a)
        evaluators.append(built)
    names = [m for e in evaluators for m in e.metric_names()]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluator: two evaluators produce the same metric name(s) in {names}")
    return evaluators
