"""The search loop on a fake space and executor (no models): cache, fidelity, constraints, archive, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evomerge import optimizer as optimizer_pkg
from evomerge.executor.worker import Outcome
from evomerge.search.fidelity import Fidelity, promotion_order, told_values
from evomerge.search.loop import SearchSettings, run_search
from evomerge.search.objectives import WORST, Objective, to_min
from evomerge.search.pareto import hypervolume, pareto_mask
from evomerge.store import read_jsonl

N_FIT = 90


class FakeRecipe:
    def __init__(self, x):
        self.x = [float(v) for v in x]

    def to_dict(self):
        return {"x": self.x}


class FakeSpace:
    """3 genes in [0, 1]; decode keeps 3 decimals (so nearby genomes collide, like a space's resolution)."""

    xl, xu, var_types, resolution, n_constraints = np.zeros(3), np.ones(3), ["real"] * 3, 1e-3, 0

    def decode(self, x):
        return FakeRecipe(np.round(x, 3))

    def seeds(self):
        return {"corner": np.zeros(3), "centre": np.full(3, 0.5)}


class ConstrainedSpace(FakeSpace):
    n_constraints = 1

    def constraint(self, x):
        return float(x[0] - 0.6)  # infeasible when x0 > 0.6


class FakeExecutor:
    """Two objectives with a trade-off; the per-sample score is exact, so fidelity only changes the cost."""

    def __init__(self, fail_if=None, crash_after=None):
        self.calls, self.samples, self.fail_if, self.crash_after, self.evaluated = 0, 0, fail_if, crash_after, 0

    def map(self, recipes, split="fitness", indices=None):
        assert split == "fitness"
        n = N_FIT if indices is None else len(indices)
        out = []
        for r in recipes:
            if self.crash_after is not None and self.evaluated >= self.crash_after:
                raise Killed()
            self.evaluated += 1
            x = np.array(r.x)
            self.calls += 1
            self.samples += n
            if self.fail_if is not None and self.fail_if(x):
                out.append(Outcome(None, "FloatingPointError: non-finite logits", 0.01, 0))
                continue
            noise = 0.0 if indices is None else 0.001 * (sum(indices) % 7)
            out.append(Outcome({"acc/a": 1 - float(np.sum((x - 0.2) ** 2)) - noise,
                                "acc/b": 1 - float(np.sum((x - 0.7) ** 2)), "loss": float(x.sum())}, None, 0.01, n))
        return out


class Killed(BaseException):
    pass


OBJ2 = [Objective("acc/a", "max"), Objective("acc/b", "max")]
OBJ1 = [Objective("acc/a", "max")]


def search(tmp_path, kind="cmaes", objectives=OBJ1, budget=40, space=None, executor=None, resume=False,
           seed=0, **settings):
    space = space or FakeSpace()
    init = np.array(list(space.seeds().values()))
    cfg = {"kind": kind, "popsize": 8}
    if kind.startswith("optuna:"):  # Optuna's samplers: optuna:<sampler>
        cfg = {"kind": "optuna", "sampler": kind.split(":")[1], "popsize": 8}
        if cfg["sampler"] in ("tpe", "gp"):
            cfg["n_startup_trials"] = 8
    opt = optimizer_pkg.build(cfg, space.xl, space.xu, len(objectives), seed, init, space.var_types,
                              n_constr=1 if hasattr(space, "constraint") else 0)
    s = SearchSettings.parse({"budget": budget, **settings}, len(objectives))
    return run_search(space, opt, executor or FakeExecutor(), objectives, s, tmp_path, n_fitness=N_FIT, seed=seed,
                      resume=resume, config={"kind": kind, "seed": seed})


def essence(records):
    return [(r["id"], r["generation"], np.round(r["genome"], 12).tolist(), r["metrics"], r["rung"]) for r in records]


@pytest.mark.parametrize("kind", ["cmaes", "nsga2", "random", "ga", "de", "pso", "optuna:tpe", "optuna:nsga2"])
def test_every_optimiser_runs_through_the_loop_and_respects_direction(tmp_path, kind):
    res = search(tmp_path, kind, budget=32)
    assert len(res.records) == 32 and len(read_jsonl(tmp_path / "evaluations.jsonl")) == 32
    # the seeds come first, so the search never ends worse than them
    assert res.records[0]["genome"] == [0.0, 0.0, 0.0] and res.records[1]["genome"] == [0.5, 0.5, 0.5]
    best = max((r for r in res.records if r["metrics"]), key=lambda r: r["metrics"]["acc/a"])
    assert res.best["metrics"]["acc/a"] == best["metrics"]["acc/a"]  # max, not min
    assert res.best["objectives"][0] == -res.best["metrics"]["acc/a"]


def test_min_direction_is_respected(tmp_path):
    res = search(tmp_path, "random", objectives=[Objective("loss", "min")], budget=16)
    assert res.best["metrics"]["loss"] == min(r["metrics"]["loss"] for r in res.records)


def test_multi_objective_archive_and_hypervolume(tmp_path):
    res = search(tmp_path, "nsga2", objectives=OBJ2, budget=64)
    F = np.array([r["objectives"] for r in res.records])
    mask = pareto_mask(F)
    assert {r["id"] for r in res.front} == {r["id"] for r, m in zip(res.records, mask, strict=True) if m}
    assert len(res.front) > 1
    hv = [h["hypervolume"] for h in res.hypervolume]
    assert len(hv) == 8 and all(b >= a - 1e-12 for a, b in zip(hv, hv[1:], strict=False)) and hv[-1] > hv[0]
    arch = json.loads((tmp_path / "archive.json").read_text())
    assert len(arch["front"]) == len(res.front) and arch["hypervolume"][-1]["hypervolume"] == hv[-1]
    # reference point written back in metric units (accuracies: below the worst front value)
    assert all(ref < min(r["metrics"][o.metric] for r in res.front) for ref, o in zip(arch["reference_point"], OBJ2,
                                                                                          strict=True))


def test_hypervolume_with_successive_halving_is_measured(tmp_path):
    """Generation 0's top rung holds one point (8 -> 3 -> 1): the reference point comes from all its rungs."""
    from evomerge.report.analysis import hv_reference

    res = search(tmp_path, "nsga2", objectives=OBJ2, budget=48, fidelity={"rungs": [1 / 9, 1 / 3, 1.0], "eta": 3})
    gen0 = np.array([r["objectives"] for r in res.records if r["generation"] == 0 and r["metrics"]])
    span = gen0.max(axis=0) - gen0.min(axis=0)
    assert np.all(span > 0.01)
    np.testing.assert_allclose(res.ref_point, gen0.max(axis=0) + 0.1 * span)
    F = np.array([r["objectives"] for r in res.front])
    assert res.hypervolume[-1]["hypervolume"] == pytest.approx(hypervolume(F, np.array(res.ref_point)))
    assert res.hypervolume[0]["hypervolume"] > 1e-3
    # the report recomputes the same point from the log when archive.json is not given
    np.testing.assert_allclose(hv_reference(read_jsonl(tmp_path / "evaluations.jsonl"), objectives=OBJ2),
                               res.ref_point)


def test_hv_reference_point_from_config(tmp_path):
    res = search(tmp_path, "nsga2", objectives=OBJ2, budget=16, hv_ref=[0.0, 0.0])
    assert res.ref_point == [0.0, 0.0]
    F = np.array([r["objectives"] for r in res.front])
    assert res.hypervolume[-1]["hypervolume"] == pytest.approx(hypervolume(F, np.zeros(2)))


def test_cache_is_not_shared_across_evaluator_settings(tmp_path):
    """A fresh run in a folder that still holds cache.jsonl reuses metrics only if the evaluator settings match."""
    def run(evaluator, ex):
        space = FakeSpace()
        opt = optimizer_pkg.build({"kind": "random", "popsize": 8}, space.xl, space.xu, 1, 0)
        for name in ("evaluations.jsonl", "checkpoint.json", "archive.json"):
            (tmp_path / name).unlink(missing_ok=True)
        return run_search(space, opt, ex, OBJ1, SearchSettings(budget=16), tmp_path, n_fitness=N_FIT,
                          config={"evaluator": evaluator, "seed": 0})

    run({"kind": "jp_math", "max_new_tokens": 64}, FakeExecutor())
    same = FakeExecutor()
    run({"kind": "jp_math", "max_new_tokens": 64}, same)
    assert same.calls == 0  # everything came from the cache
    other = FakeExecutor()
    run({"kind": "jp_math", "max_new_tokens": 256}, other)
    assert other.calls == 16


def test_cache_hits_are_free_and_survive_restart(tmp_path):
    ex = FakeExecutor()
    res = search(tmp_path, "random", budget=16, executor=ex)
    # random search proposes the two seeds only once; re-propose them from a new run in the same cache
    assert ex.calls == 16
    (tmp_path / "evaluations.jsonl").unlink()
    (tmp_path / "checkpoint.json").unlink()
    ex2 = FakeExecutor()
    res2 = search(tmp_path, "random", budget=16, executor=ex2)
    assert ex2.calls == 0 and all(r["cached"] for r in res2.records)
    assert essence(res.records) == essence(res2.records)
    assert res2.n_samples == 0 and res.n_samples == 16 * N_FIT


def test_identical_recipes_within_resolution_are_evaluated_once(tmp_path):
    class Dup:
        popsize, scalarises, weights = 4, False, None

        def ask(self):
            return np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1000001, 0.2, 0.3], [0.4, 0.2, 0.3]])

        def tell(self, X, F, G=None):
            self.F = F

        def stop(self):
            return False

    ex = FakeExecutor()
    s = SearchSettings.parse({"budget": 8}, 1)
    res = run_search(FakeSpace(), Dup(), ex, OBJ1, s, tmp_path, n_fitness=N_FIT)
    assert ex.calls == 2 and [r["cached"] for r in res.records] == [False, True, True, False, True, True, True, True]
    assert len({json.dumps(r["metrics"]) for r in res.records}) == 2


def test_minibatch_fixed_unless_resampled(tmp_path):
    seen = []

    class Spy(FakeExecutor):
        def map(self, recipes, split="fitness", indices=None):
            seen.append(tuple(indices))
            return super().map(recipes, split, indices)

    search(tmp_path / "a", "random", budget=24, executor=Spy(), minibatch=30)
    assert len(set(seen)) == 1 and len(seen[0]) == 30
    seen.clear()
    search(tmp_path / "b", "random", budget=24, executor=Spy(), minibatch=30, resample=True)
    assert len(set(seen)) == 3 and all(len(s) == 30 for s in seen)
    with pytest.raises(ValueError, match="search.minibatch: 500 samples per generation, but the fitness split has 90"):
        search(tmp_path / "c", "random", minibatch=500)


@pytest.mark.parametrize("kind,objectives", [("cmaes", OBJ1), ("nsga2", OBJ2)])
def test_successive_halving(tmp_path, kind, objectives):
    ex = FakeExecutor()
    res = search(tmp_path, kind, objectives=objectives, budget=26, executor=ex,
                 fidelity={"rungs": [1 / 9, 1 / 3, 1.0], "eta": 3})
    by_gen = [r for r in res.records if r["generation"] == 0]
    rungs = [r["rung"] for r in by_gen]
    assert rungs == [0] * 8 + [1] * 3 + [2]  # 8 -> ceil(8/3)=3 -> 1
    assert [r["n_samples"] for r in by_gen][::5] == [10, 10, 30]
    assert by_gen[-1]["fidelity"] == 1.0 and by_gen[0]["fidelity"] == pytest.approx(10 / 90)
    # promoted candidates are the best of the rung below (in the optimiser's own view)
    low = [r for r in by_gen if r["rung"] == 0]
    promoted = {tuple(r["genome"]) for r in by_gen if r["rung"] == 1}
    if kind == "cmaes":
        top3 = sorted(low, key=lambda r: r["objectives"][0])[:3]
        assert promoted == {tuple(r["genome"]) for r in top3}
    # only top-rung evaluations compete for best and the archive
    assert res.best["rung"] == 2 and all(r["rung"] == 2 for r in res.front)
    assert ex.samples == res.n_samples < 26 * N_FIT / 2


def test_hyperband_cycles_the_starting_rung(tmp_path):
    res = search(tmp_path, "cmaes", budget=(8 + 3 + 1) + (8 + 3) + 8, executor=FakeExecutor(),
                 fidelity={"rungs": [1 / 9, 1 / 3, 1.0], "eta": 3, "mode": "hyperband"})
    by_gen = {g: [r["rung"] for r in res.records if r["generation"] == g] for g in range(3)}
    assert by_gen == {0: [0] * 8 + [1] * 3 + [2], 1: [1] * 8 + [2] * 3, 2: [2] * 8}
    with pytest.raises(ValueError, match="search.fidelity.mode: expected"):
        Fidelity.parse({"mode": "bohb"})


def test_failures_rank_below_every_finished_candidate_in_any_units():
    """A perplexity of e^700 is finished (just terrible); a failure must still rank worse, at every rung."""
    ppl = [Objective("ppl", "min")]
    huge, fail = to_min(ppl, {"ppl": float(np.exp(700))}), to_min(ppl, None)
    assert huge[0] < fail[0]
    acc = [Objective("acc", "max")]
    assert to_min(acc, {"acc": -1e300})[0] < to_min(acc, None)[0]
    F = np.array([[1.5], [float(np.exp(700))], [-3.0], [WORST]])
    F[:3] = np.clip(F[:3], None, to_min(ppl, {"ppl": float(np.exp(700))})[0])
    ok = np.array([True, True, True, False])
    told = told_values(F, np.array([2, 0, 1, 0]), 3, ok)
    assert told[3, 0] > told[:3, 0].max()  # the failure is last even after the rung offsets


def test_told_values_rank_rungs_lexicographically():
    F = np.array([[-0.9], [-0.2], [-0.5], [WORST]])
    rung = np.array([0, 2, 1, 0])
    ok = np.array([True, True, True, False])
    told = told_values(F, rung, 3, ok)
    assert list(np.argsort(told[:, 0])) == [1, 2, 0, 3]  # higher rung first, whatever the raw value
    F2 = np.array([[-0.9, -0.1], [-0.2, -0.3], [-0.5, -0.5]])
    told2 = told_values(F2, np.array([0, 2, 1]), 3, np.ones(3, bool))
    assert pareto_mask(told2).tolist() == [False, True, False]
    assert all(np.all(told2[1] < told2[2]) and np.all(told2[2] < told2[0]) for _ in [0])
    assert promotion_order(F2, np.ones(3, bool), None)[0] in (0, 1, 2)
    with pytest.raises(ValueError, match="search.fidelity.rungs"):
        Fidelity.parse({"rungs": [0.5, 0.2, 1.0]})
    with pytest.raises(ValueError, match="search.fidelity.eta"):
        Fidelity.parse({"eta": 1})


@pytest.mark.parametrize("kind", ["cmaes", "nsga2", "random"])
def test_constraints_are_penalised_not_evaluated(tmp_path, kind):
    ex = FakeExecutor()
    res = search(tmp_path, kind, budget=24, space=ConstrainedSpace(), executor=ex)
    bad = [r for r in res.records if not r["feasible"]]
    assert bad, "the box has an infeasible corner; some candidate should land there"
    assert all(r["metrics"] is None and "constraint violation" in r["error"] for r in bad)
    assert ex.calls == sum(r["feasible"] and not r["cached"] for r in res.records)
    assert res.best["genome"][0] <= 0.6


def test_failed_candidates_get_worst_fitness_and_search_continues(tmp_path):
    ex = FakeExecutor(fail_if=lambda x: x[1] > 0.6)
    res = search(tmp_path, "random", budget=24, executor=ex)
    failed = [r for r in res.records if r["error"]]
    assert failed and all(r["metrics"] is None and r["objectives"] == [WORST] for r in failed)
    assert "non-finite" in failed[0]["error"] and len(res.records) == 24


def test_same_seed_identical_different_seed_differs(tmp_path):
    a = search(tmp_path / "a", "cmaes", budget=24, seed=3)
    b = search(tmp_path / "b", "cmaes", budget=24, seed=3)
    c = search(tmp_path / "c", "cmaes", budget=24, seed=4)
    assert essence(a.records) == essence(b.records)
    assert essence(a.records) != essence(c.records)


@pytest.mark.parametrize("kind,objectives,extra", [
    ("cmaes", OBJ1, {}), ("nsga2", OBJ2, {}), ("random", OBJ1, {"minibatch": 40, "resample": True}),
    ("cmaes", OBJ1, {"fidelity": {"rungs": [0.111, 0.333, 1.0], "eta": 3}}), ("ga", OBJ2, {}),
    ("nsga2", OBJ2, {"fidelity": {"rungs": [0.111, 0.333, 1.0], "eta": 3, "mode": "hyperband"}}),
    ("optuna:tpe", OBJ1, {}), ("optuna:tpe", OBJ2, {}), ("optuna:gp", OBJ1, {}),
])
def test_crash_at_any_evaluation_then_resume_is_exact(tmp_path, kind, objectives, extra):
    """In-process stand-in for SIGKILL: the executor dies after k evaluations; a fresh loop resumes."""
    ref = search(tmp_path / "ref", kind, objectives=objectives, budget=30, **extra)
    for k in (0, 3, 8, 13, 21, 29):
        d = tmp_path / f"k{k}"
        with pytest.raises(Killed):
            search(d, kind, objectives=objectives, budget=30, executor=FakeExecutor(crash_after=k), **extra)
        res = search(d, kind, objectives=objectives, budget=30, resume=True, **extra)
        assert essence(res.records) == essence(ref.records), k
        assert essence(read_jsonl(d / "evaluations.jsonl")) == essence(ref.records)
        assert res.best["id"] == ref.best["id"] and res.hypervolume == ref.hypervolume


def test_fresh_run_refuses_a_used_directory_and_resume_checks_config(tmp_path):
    search(tmp_path, "cmaes", budget=8)
    with pytest.raises(RuntimeError, match="already holds a search.*resume=true"):
        search(tmp_path, "cmaes", budget=8)
    with pytest.raises(ValueError, match=r"resume: the config differs .* in \['seed'\]"):
        search(tmp_path, "cmaes", budget=16, seed=5, resume=True)
    # the same checks run in run.py before any model is loaded
    from evomerge.search.checkpoint import check_run_dir

    with pytest.raises(RuntimeError, match="already holds a search"):
        check_run_dir(tmp_path, False, None)
    with pytest.raises(ValueError, match=r"in \['seed'\]"):
        check_run_dir(tmp_path, True, {"kind": "cmaes", "seed": 5})
    check_run_dir(tmp_path, True, {"kind": "cmaes", "seed": 0})
    res = search(tmp_path, "cmaes", budget=16, resume=True)  # a bigger budget continues the run
    assert len(res.records) == 16 and res.records[8]["generation"] == 1


def test_settings_errors():
    with pytest.raises(ValueError, match="search: unknown key"):
        SearchSettings.parse({"budget": 3, "budgte": 4})
    with pytest.raises(ValueError, match="search.hv_ref: 1 values for 2 objectives"):
        SearchSettings.parse({"budget": 3, "hv_ref": [0]}, 2)
    with pytest.raises(ValueError, match="search.max_consecutive_failures"):
        SearchSettings.parse({"budget": 3, "max_consecutive_failures": 0})


@pytest.mark.slow
def test_cli_multi_objective_digits_pareto_front_and_hypervolume(tmp_path, zoo_root, digits_zoo):
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {**os.environ, "EVOMERGE_ZOO": str(zoo_root), "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "evomerge", "experiment=digits", "optimizer=nsga2", "optimizer.popsize=8",
         "search.budget=24", "evaluator.digits.fitness_samples=60",
         "search.objectives=[{metric: acc/rot90},{metric: acc/mirror},{metric: acc/invert}]", f"hydra.run.dir={out}"],
        env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    arch = json.loads((out / "archive.json").read_text())
    pareto = json.loads((out / "pareto_final.json").read_text())
    assert len(arch["front"]) > 1 and len(pareto) == len(arch["front"])
    assert all(set(p["test"]) >= {"acc/rot90", "acc/mirror", "acc/invert"} for p in pareto)  # held-out, once each
    hv = [h["hypervolume"] for h in arch["hypervolume"]]
    assert len(hv) == 3 and hv[-1] >= hv[0] > 0
    records = read_jsonl(out / "evaluations.jsonl")
    assert {r["split"] for r in records} == {"fitness"}  # the search never saw the held-out split


@pytest.mark.parametrize("kind", ["nsga2", "cmaes", "random", "ga"])
def test_dfs_space_with_bool_genes_and_path_cap(tmp_path, kind):
    """The real DFS space (int/bool genes, a path-length constraint) through the loop, scored by a fake."""
    from evomerge.space.dfs import DFSSpace

    space = DFSSpace(models=["a", "b"], num_layers=4, repeats=2, include_type="bool", max_path_length=6)

    class PathScore:
        def map(self, recipes, split="fitness", indices=None):
            return [Outcome({"acc/a": len(r.path) / 10 + 0.01 * sum(h.model == "b" for h in r.path)}, None, 0.0,
                            N_FIT) for r in recipes]

    opt = optimizer_pkg.build({"kind": kind, "popsize": 8}, space.xl, space.xu, 1, 0,
                              np.array(list(space.seeds().values())), space.var_types, n_constr=space.n_constraints)
    res = run_search(space, opt, PathScore(), OBJ1, SearchSettings(budget=40), tmp_path, n_fitness=N_FIT)
    feasible = [r for r in res.records if r["feasible"]]
    assert feasible and all(len(r["recipe"]["path"]) <= 6 for r in feasible if r["metrics"])
    assert len(res.best["recipe"]["path"]) <= 6
    if kind in ("nsga2", "ga"):  # mixed-variable operators keep the include genes binary
        T = len(space.slots)
        assert all(set(np.round(r["genome"][:T], 9)) <= {0.0, 1.0} for r in res.records)


def test_pareto_mask_matches_the_definition_with_ties_and_duplicates():
    """Against the definition, pair by pair: a row is kept unless another is <= everywhere and < somewhere."""
    rng = np.random.default_rng(0)
    for n, k in [(1, 2), (7, 2), (200, 2), (150, 3)]:
        F = rng.integers(0, 6, (n, k)).astype(float)  # few distinct values: many ties and exact duplicates
        F = np.vstack([F, F[: n // 3]])
        expected = [not any(np.all(G <= f) and np.any(G < f) for G in F) for f in F]
        assert pareto_mask(F).tolist() == expected
    assert pareto_mask(np.zeros((0, 2))).tolist() == []


def test_search_weights_reach_a_scalarising_optimiser():
    """search.weights is the one weighting: CMA-ES scalarises with it, and a conflicting optimizer.weights fails."""
    from evomerge.config import optimizer_config

    cfg = {"optimizer": {"kind": "cmaes"}, "search": {"weights": [1.0, 0.5, 0.5]}}
    assert optimizer_config(cfg)["weights"] == [1.0, 0.5, 0.5]
    opt = optimizer_pkg.build(optimizer_config(cfg), np.zeros(2), np.ones(2), 3, 0)
    assert list(opt.weights) == [1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="set the weighting once"):
        optimizer_config({"optimizer": {"kind": "cmaes", "weights": [0.2, 0.4, 0.4]}, "search": cfg["search"]})


def test_resume_may_change_budget_and_final_pareto_only(tmp_path):
    """Also against a checkpoint saved before final_pareto was exempt (its config still holds the old value)."""
    from evomerge.search.checkpoint import check_config as _check_config

    saved = {"seed": 0, "search": {"objectives": [{"metric": "acc/a"}], "final_pareto": False}}
    _check_config(tmp_path / "c", saved, {"seed": 0, "search": {"objectives": [{"metric": "acc/a"}]}}, tmp_path)
    with pytest.raises(ValueError, match=r"differs .* in \['search'\]"):
        _check_config(tmp_path / "c", saved, {"seed": 0, "search": {"objectives": [{"metric": "acc/b"}]}}, tmp_path)


def test_promotion_with_uncertainty_widens_only_when_scores_are_within_noise():
    from evomerge.search.fidelity import promoted

    F = np.array([[-0.50], [-0.45], [-0.20], [WORST]])  # accuracies 0.50, 0.45, 0.20 and a failure (minimised)
    ok = np.array([True, True, True, False])
    w = np.array([1.0])
    assert promoted(F, ok, w, 1, 10) == [0]                  # z = 0: the plain top 1/eta
    assert promoted(F, ok, w, 1, 10, z=1.0) == [0, 1]        # 10 items: 0.45 is within one standard error of 0.50
    assert promoted(F, ok, w, 1, 1000, z=1.0) == [0]         # 1000 items: it is not
    assert promoted(F, ok, w, 1, 10, z=10.0) == [0, 1, 2]    # a failure is never promoted
    with pytest.raises(ValueError, match="search.fidelity.z: expected a number of standard errors"):
        Fidelity.parse({"rungs": [0.5, 1.0], "z": -1})
    assert Fidelity.parse({"rungs": [0.5, 1.0], "z": 1}).z == 1.0
