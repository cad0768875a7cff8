"""Optimiser adapters on their own: ask/tell contract, seeding, mixed variables, restarts, pickling, bad options."""

from __future__ import annotations

import pickle

import cloudpickle
import numpy as np
import pytest

from evomerge import optimizer as optimizer_pkg

XL, XU = np.zeros(4), np.ones(4)


def sphere(X, c=0.3):
    return ((np.asarray(X) - c) ** 2).sum(1, keepdims=True)


def two(X):
    X = np.asarray(X)
    return np.hstack([sphere(X, 0.2), sphere(X, 0.8)])


def build(kind, n_obj=1, **kw):
    cfg = {"kind": kind, "popsize": kw.pop("popsize", 8), **kw.pop("cfg", {})}
    return optimizer_pkg.build(cfg, XL, XU, n_obj, kw.pop("seed", 0), **kw)


@pytest.mark.parametrize("kind", ["cmaes", "random", "nsga2", "ga", "de", "pso"])
def test_ask_tell_improves_and_seeds_come_first(kind):
    seeds = np.array([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    opt = build(kind, initial=seeds)
    X = opt.ask()
    assert X.shape[1] == 4 and np.all(X >= XL) and np.all(X <= XU)
    assert np.array_equal(X[:2], seeds)  # exactly the seeds, also for CMA-ES (no boundary transform applied)
    best = [sphere(X).min()]
    opt.tell(X, sphere(X))
    for _ in range(15):
        X = opt.ask()
        opt.tell(X, sphere(X))
        best.append(min(best[-1], sphere(X).min()))
    if kind != "random":
        assert best[-1] < 0.02, best[-1]


@pytest.mark.parametrize("kind", ["cmaes", "nsga2", "nsga3", "ga", "de", "pso", "random"])
def test_pickled_optimiser_continues_identically(kind):
    n_obj = 2 if kind == "nsga3" else 1
    f = two if n_obj == 2 else sphere
    opt = build(kind, n_obj=n_obj)
    for _ in range(3):
        X = opt.ask()
        opt.tell(X, f(X))
    clone = pickle.loads(cloudpickle.dumps(opt))
    state = np.random.get_state()
    a = opt.ask()
    np.random.set_state(state)
    b = clone.ask()
    assert np.array_equal(a, b)


def test_same_seed_same_proposals_different_seed_differs():
    runs = []
    for seed in (1, 1, 2):
        opt = build("nsga2", n_obj=2, seed=seed)
        X = opt.ask()
        opt.tell(X, two(X))
        runs.append(opt.ask())
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("kind", ["nsga2", "ga", "random"])
def test_mixed_variables_stay_integral(kind):
    xl, xu = np.array([0.0, 0, 0, 0]), np.array([1.0, 5, 1, 3])
    types = ["real", "int", "bool", "cat"]
    opt = optimizer_pkg.build({"kind": kind, "popsize": 10}, xl, xu, 1, 0, var_types=types)
    for _ in range(3):
        X = opt.ask()
        assert np.all(X[:, 1:] == np.round(X[:, 1:])) and np.all(X >= xl) and np.all(X <= xu)
        opt.tell(X, sphere(X))
    assert len(np.unique(X[:, 1])) > 1


def test_constraints_use_pymoo_constraint_domination():
    opt = build("ga", cfg={}, n_constr=1)
    for _ in range(10):
        X = opt.ask()
        G = np.maximum(0.0, X[:, 0] - 0.1)  # feasible only for x0 <= 0.1, while the optimum of f is at 0.3
        opt.tell(X, sphere(X), G)
    pop = opt.algorithm.pop
    assert np.all(pop.get("X")[:, 0] <= 0.1 + 1e-9)


def test_cmaes_scalarises_several_objectives_with_weights(caplog):
    with caplog.at_level("WARNING"):
        opt = build("cmaes", n_obj=2, cfg={"weights": [1.0, 0.0]})
    assert "weighted sum" in caplog.text and "[1.0, 0.0]" in caplog.text
    for _ in range(30):
        X = opt.ask()
        opt.tell(X, two(X))
    assert np.allclose(opt.es.result.xfavorite, 0.2, atol=0.05)  # only the first objective counted


@pytest.mark.parametrize("strategy", ["ipop", "bipop"])
def test_cmaes_restarts(strategy):
    opt = build("cmaes", popsize=6, cfg={"restarts": 3, "restart_strategy": strategy, "max_iter": 3})
    sizes = []
    for _ in range(14):
        X = opt.ask()
        sizes.append(len(X))
        opt.tell(X, sphere(X))
    assert opt.n_restarts >= 2 and sizes[0] == 6
    if strategy == "ipop":
        assert sizes[3] == 12 and sizes[6] == 24
    else:
        assert max(sizes) > 6 and opt.evals["small"] > 0
    while not opt.stop():
        X = opt.ask()
        opt.tell(X, sphere(X))
    assert opt.restarts_left == 0


@pytest.mark.parametrize("cfg,n_obj,match", [
    ({"kind": "cmaez"}, 1, r"optimizer.kind: unknown optimiser 'cmaez'; expected one of \['cmaes'"),
    ({"kind": "cmaes", "sigma": 0.3}, 1, r"optimizer \(cmaes\): unknown option\(s\) \['sigma'\]; valid options"),
    ({"kind": "cmaes", "popsize": 1}, 1, "optimizer.popsize: expected >= 2 for CMA-ES, found 1"),
    ({"kind": "cmaes", "weights": [1]}, 2, "optimizer.weights: 1 weights for 2 objectives"),
    ({"kind": "cmaes", "x0": 2.0}, 1, r"optimizer.x0: expected a number or 4 numbers in the unit cube"),
    ({"kind": "cmaes", "restart_strategy": "lpop"}, 1, "optimizer.restart_strategy: expected 'ipop' or 'bipop'"),
    ({"kind": "nsga3", "popsize": 8}, 1, "optimizer.kind=nsga3: needs at least 2 objectives"),
    ({"kind": "moead", "popsize": 8}, 2, "MOEA/D is steady-state"),
    ({"kind": "random", "popsize": 0}, 1, "optimizer.popsize: expected >= 1, found 0"),
])
def test_bad_options_are_clear(cfg, n_obj, match):
    with pytest.raises(ValueError, match=match):
        optimizer_pkg.build(cfg, XL, XU, n_obj, 0)


# ---- Optuna's samplers (evomerge/optimizer/optuna_adapter.py) -----------------------------------------------------


def optuna_opt(sampler, n_obj=1, **kw):
    cfg = {"kind": "optuna", "sampler": sampler, "popsize": kw.pop("popsize", 8), **kw.pop("cfg", {})}
    if sampler in ("tpe", "gp", "cmaes"):
        cfg["n_startup_trials"] = 8
    return optimizer_pkg.build(cfg, kw.pop("xl", XL), kw.pop("xu", XU), n_obj, kw.pop("seed", 0), **kw)


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2", "cmaes", "qmc", "random"])
def test_optuna_samplers_seed_first_and_improve(sampler):
    seeds = np.array([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    opt = optuna_opt(sampler, initial=seeds, popsize=4 if sampler == "gp" else 8)
    X = opt.ask()
    assert np.array_equal(X[:2], seeds) and np.all(X >= XL) and np.all(X <= XU)
    best = sphere(X).min()
    opt.tell(X, sphere(X))
    for _ in range(5 if sampler == "gp" else 8):
        X = opt.ask()
        opt.tell(X, sphere(X))
        best = min(best, sphere(X).min())
    if sampler in ("tpe", "gp", "cmaes"):
        assert best < 0.05, best  # the model-based samplers find the bowl at (0.3, ...) quickly


def test_optuna_same_seed_same_proposals_and_mixed_variables():
    xl, xu = np.array([0.0, 0, 0, 0]), np.array([1.0, 5, 1, 3])
    types = ["real", "int", "bool", "cat"]
    runs = []
    for seed in (1, 1, 2):
        opt = optuna_opt("tpe", xl=xl, xu=xu, var_types=types, seed=seed)
        for _ in range(3):
            X = opt.ask()
            assert np.all(X[:, 1:] == np.round(X[:, 1:])) and np.all(X >= xl) and np.all(X <= xu)
            opt.tell(X, sphere(X))
        runs.append(opt.ask())
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])
    assert len(np.unique(runs[0][:, 3])) > 1


def test_optuna_multi_objective_and_constraints():
    opt = optuna_opt("tpe", n_obj=2, n_constr=1)
    feasible = []
    for g in range(8):
        X = opt.ask()
        G = np.maximum(0.0, X[:, 0] - 0.2)  # feasible only for x0 <= 0.2
        opt.tell(X, two(X), G)
        if g >= 4:
            feasible.append(np.mean(G <= 0))
    assert np.mean(feasible) > 0.5  # the constrained TPE learns to stay in the feasible slice
    assert len(opt.study.best_trials) >= 2  # a Pareto set, not one best


def test_optuna_failed_candidates_are_failed_trials():
    from optuna.trial import TrialState

    from evomerge.search.objectives import WORST

    opt = optuna_opt("tpe")
    X = opt.ask()
    F = sphere(X)
    F[0] = WORST
    opt.tell(X, F)
    states = [t.state for t in opt.study.trials]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == len(X) - 1


@pytest.mark.parametrize("cfg,n_obj,match", [
    ({"sampler": "smac"}, 1, "optimizer.sampler: expected one of"),
    ({"sampler": "cmaes"}, 2, "single-objective"),
    ({"sampler": "tpe", "popsize": 0}, 1, "popsize"),
    ({"sampler": "tpe", "n_trials": 5}, 1, "unknown option"),
])
def test_optuna_bad_options_are_clear(cfg, n_obj, match):
    with pytest.raises(ValueError, match=match):
        optimizer_pkg.build({"kind": "optuna", **cfg}, XL, XU, n_obj, 0)


def test_cmaes_with_discrete_genes_survives_flat_generations():
    """Include bits (DFS): most bit flips change no answer, so whole generations score the same. Plain cma stops on
    the first flat generation (tolfun); with var_types, CMA-ES keeps a step-size floor on the discrete genes and only
    stops after 10 flat generations."""
    def flat_until_corner(X):
        return (np.round(X[:, :3]).sum(1, keepdims=True) == 3) * -1.0

    gens = {}
    for label, vt in (("real", None), ("bool", ["bool"] * 6)):
        opt = optimizer_pkg.build({"kind": "cmaes", "popsize": 8}, np.zeros(6), np.ones(6), 1, 0, var_types=vt)
        n = 0
        while not opt.stop() and n < 60:
            X = opt.ask()
            opt.tell(X, flat_until_corner(X))
            n += 1
        gens[label] = n
    assert gens["real"] == 1 and gens["bool"] >= 10, gens
    opt = optimizer_pkg.build({"kind": "cmaes", "popsize": 8, "tolflatfitness": 3}, np.zeros(6), np.ones(6), 1, 0,
                              var_types=["bool"] * 6)
    assert opt.es.opts["tolflatfitness"] == 3 and list(np.asarray(opt.es.opts["minstd"])) == [0.2] * 6
