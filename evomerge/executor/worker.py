"""A worker holds the source models, one persistent merged model and the evaluators, and turns a recipe
into metrics. The serial executor has one; the Ray executor has one per actor."""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from evomerge.evaluator.anchors import AnchoredEvaluator
from evomerge.merge.merger import Merger
from evomerge.recipe import Recipe


@dataclass
class Outcome:
    metrics: dict[str, float] | None  # None when the candidate failed
    error: str | None = None
    wall_time: float = 0.0
    n_samples: int = 0
    records: dict[str, list] = field(default_factory=dict)


class Worker:
    def __init__(self, pool, evaluators: list, keep_records: bool = False):
        self.pool, self.evaluators, self.keep_records = pool, evaluators, keep_records
        self.merger = Merger(pool)

    def calibrate(self) -> None:
        """Calibrate anchor-item evaluators on the models this worker holds, once, before any candidate is merged
        into the live model (the references overwrite it)."""
        for ev in self.evaluators:
            if isinstance(ev, AnchoredEvaluator) and ev.fit is None:
                ev.calibrate(self.reference_models())

    def reference_models(self) -> Iterator[Any]:
        """Every pool model unchanged (base and sources, in `pool.all_names` order), then the sources' plain
        average: the models anchor items are calibrated on. Each is the one merged model, overwritten."""
        from evomerge.final import average_recipe

        for name in self.pool.all_names:
            yield self._load(name)
        yield self.merger.apply(average_recipe(self.pool))

    def evaluate(self, recipe: Recipe, split: str = "fitness", indices: Sequence[int] | None = None) -> Outcome:
        if split == "fitness":
            self.calibrate()
        t0 = time.perf_counter()
        try:
            model = self.merger.apply(recipe)
            return self.score(model, split, indices, t0)
        except Exception as e:  # a bad candidate is a recorded failure, never a crashed search
            msg = f"{type(e).__name__}: {e}"
            return Outcome(None, msg, time.perf_counter() - t0, 0, {"traceback": [traceback.format_exc()]})

    def evaluate_model(self, name: str, split: str) -> Outcome:
        """Score one pool model unchanged (base or a source), as a reference row."""
        if split == "fitness":
            self.calibrate()
        t0 = time.perf_counter()
        return self.score(self._load(name), split, None, t0)

    def _load(self, name: str) -> Any:
        model = self.merger.model
        for key, target in self.merger.targets.items():
            target.data.copy_(self.pool.state[name][key])
        model.eval()
        return model

    def score(self, model: Any, split: str, indices, t0: float) -> Outcome:
        if hasattr(model, "eval"):
            model.eval()  # evaluators compare models, so dropout is off whatever built this one
        metrics, records, n = {}, {}, 0
        for ev in self.evaluators:
            res = ev.evaluate(model, split, indices)
            metrics.update(res.metrics)
            n += res.n_samples
            if self.keep_records:
                records[ev.name] = res.records
        return Outcome(metrics, None, time.perf_counter() - t0, n, records)
