"""Failed candidates on the real digits worker: NaN/Inf weights, an evaluation that raises, too many in a row."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.evaluator.vision import VisionEvaluator
from evomerge.executor.serial import SerialExecutor
from evomerge.executor.worker import Worker
from evomerge.models.pool import ModelSpec, load_pool
from evomerge.search.loop import SearchSettings, TooManyFailures, run_search
from evomerge.search.objectives import WORST, Objective
from evomerge.space.ps import PSSpace
from evomerge.store import read_jsonl

pytestmark = pytest.mark.faults
EXPERTS = ["rot90", "mirror", "invert"]
OBJ = [Objective("acc/mean", "max")]


@pytest.fixture(scope="module")
def worker_space(digits_zoo):
    pool = load_pool([ModelSpec(e, str(digits_zoo / e)) for e in EXPERTS], ModelSpec("base", str(digits_zoo / "base")))
    worker = Worker(pool, [VisionEvaluator(tasks=EXPERTS, fitness_samples=30)])
    return worker, PSSpace(models=EXPERTS, base="base", num_layers=pool.num_layers, layer_granularity=0)


class Scripted:
    """Proposes the given genomes, one generation at a time."""
    scalarises, weights = False, None

    def __init__(self, generations):
        self.generations, self.told = list(generations), []
        self.popsize = len(self.generations[0])

    def ask(self):
        return np.array(self.generations[len(self.told) % len(self.generations)], float)

    def tell(self, X, F, G=None):
        self.told.append(np.array(F))

    def stop(self):
        return False


def test_nan_and_inf_candidates_are_recorded_and_the_search_continues(tmp_path, worker_space, monkeypatch):
    worker, space = worker_space
    real_apply = worker.merger.apply

    def apply(recipe):  # a merge that yields Inf weights for one recipe (as an unstable method would)
        model = real_apply(recipe)
        if recipe.default.per_model["weight"][0] == 0.25:
            next(model.parameters()).data.fill_(float("inf"))
        return model

    monkeypatch.setattr(worker.merger, "apply", apply)
    good, nan, inf = [1.0, 0.0, 0.0], [np.nan, 0.0, 0.0], [0.25, 1.0, 0.0]
    opt = Scripted([[good, nan, inf, [0.3, 0.3, 0.3]]])
    res = run_search(space, opt, SerialExecutor(worker), OBJ, SearchSettings(budget=8), tmp_path, n_fitness=30)
    recs = read_jsonl(tmp_path / "evaluations.jsonl")
    assert len(recs) == 8 and len(opt.told) == 2
    for r in (recs[1], recs[2]):
        assert r["metrics"] is None and r["objectives"] == [WORST] and r["error"], r
    assert "NaN" in recs[1]["error"] and "non-finite" in recs[2]["error"]
    assert opt.told[0][1, 0] == WORST and opt.told[0][2, 0] == WORST and opt.told[0][0, 0] < 0
    assert recs[0]["error"] is None and recs[3]["error"] is None  # the search went on
    assert res.best["id"] in (0, 3)


def test_evaluation_that_raises_is_a_recorded_failure(tmp_path, worker_space, monkeypatch):
    worker, space = worker_space

    def boom(model, split, indices, t0):
        raise MemoryError("simulated out of memory")

    monkeypatch.setattr(worker, "score", boom)
    opt = Scripted([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]])
    with pytest.raises(TooManyFailures) as e:
        run_search(space, opt, SerialExecutor(worker), OBJ, SearchSettings(budget=20, max_consecutive_failures=3),
                   tmp_path, n_fitness=30)
    msg = str(e.value)
    assert "3 failed evaluations in a row (search.max_consecutive_failures=3)" in msg
    assert "MemoryError: simulated out of memory" in msg and "evaluations.jsonl" in msg
    recs = read_jsonl(tmp_path / "evaluations.jsonl")
    assert len(recs) == 3 and all("MemoryError" in r["error"] for r in recs)


def test_failures_not_in_a_row_do_not_stop_the_search(tmp_path, worker_space):
    worker, space = worker_space
    good, nan = [1.0, 0.0, 0.0], [np.nan, 0.0, 0.0]
    opt = Scripted([[nan, nan, good], [nan, nan, [0.0, 1.0, 0.0]]])
    res = run_search(space, opt, SerialExecutor(worker), OBJ, SearchSettings(budget=12, max_consecutive_failures=3),
                     tmp_path, n_fitness=30)
    assert len(res.records) == 12 and sum(r["error"] is not None for r in res.records) == 8
