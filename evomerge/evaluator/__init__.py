"""Evaluators (config group `evaluator`): a mapping of named evaluators, each with a `kind`.

Adding an evaluator is one class (the protocol in base.py) and one line in `evomerge.registry.EVALUATORS`. Every
option of the entry except `kind` goes to the class's constructor, so a misspelt option fails at build time, before
any model work; a class whose constructor takes `tokenizer` gets the models' tokenizer (built before their weights
are loaded). An evaluator with `anchors` is calibrated on the pool models by the Worker that holds them.
"""

from __future__ import annotations

import inspect
from typing import Any

from evomerge.registry import EVALUATORS


def build(cfg: Any, tokenizer=None, seed: int = 0, device: str = "cpu") -> list:
    evaluators = []
    if not cfg:
        raise ValueError("evaluator: no evaluator configured")
    for name, ev in dict(cfg).items():
        if not isinstance(ev, dict) and not hasattr(ev, "items"):
            raise ValueError(f"evaluator.{name}: expected a mapping with a `kind`, found {ev!r}")
        ev = dict(ev)
        kind = ev.get("kind")
        cls = EVALUATORS.get(kind, f"evaluator.{name}.kind")
        options = {k: v for k, v in ev.items() if k not in ("kind", "anchors")}
        parameters = set(inspect.signature(cls).parameters)
        accepted = parameters - {"tokenizer", "name", "seed", "device"}
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(f"evaluator.{name}: unknown option(s) {unknown} for kind {kind!r}; accepted: "
                             f"{sorted(accepted)}")
        if "tokenizer" in parameters:
            options["tokenizer"] = tokenizer
        built = cls(name=name, seed=seed, device=device, **options)
        if ev.get("anchors"):  # scored on anchor items, whole-split estimates (evomerge/evaluator/anchors.py)
            from evomerge.evaluator.anchors import AnchoredEvaluator

            a = dict(ev["anchors"])
            unknown = sorted(set(a) - {"k", "estimator"})
            if unknown:
                raise ValueError(f"evaluator.{name}.anchors: unknown option(s) {unknown}; expected k, estimator")
            built = AnchoredEvaluator(built, seed=seed, **a)
        evaluators.append(built)
    names = [m for e in evaluators for m in e.metric_names()]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluator: two evaluators produce the same metric name(s) in {names}")
    return evaluators
