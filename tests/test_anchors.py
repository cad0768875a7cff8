"""Anchor items and IRT estimates (evomerge/evaluator/anchors.py): known answers on synthetic Rasch data, then the
wrapper on the digits zoo through the evaluator config."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.evaluator.anchors import AnchorFit, ability, choose_anchors, fit_rasch


def rasch(rng, theta, b):
    return (rng.random((len(theta), len(b))) < 1 / (1 + np.exp(-(theta[:, None] - b[None, :])))).astype(float)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    b = rng.normal(0, 1.2, 400)
    calib = rasch(rng, rng.normal(0, 1, 40), b)
    held_theta = rng.normal(0, 1, 30)
    held = rasch(rng, held_theta, b)
    return b, calib, held_theta, held


def test_rasch_fit_recovers_difficulties_and_ability(synthetic):
    b, calib, held_theta, held = synthetic
    _theta, b_hat = fit_rasch(calib)
    assert np.corrcoef(b, b_hat)[0, 1] > 0.9
    est = [ability(y, b_hat, 0.0) for y in held]
    assert np.corrcoef(held_theta, est)[0, 1] > 0.9


def test_every_item_as_anchor_gives_the_full_score(synthetic):
    _b, calib, _t, held = synthetic
    fit = AnchorFit.calibrate({"m": calib}, k=calib.shape[1])
    for y in held[:5]:
        for est in ("mean", "pirt"):
            assert fit.estimate("m", y, est) == pytest.approx(y.mean(), abs=1e-12)


def test_anchor_estimates_beat_a_random_subset_of_the_same_size(synthetic):
    """Held-out candidates: k = 30 of 400 items; both estimators within a few points of the full score, and no
    worse than the plain mean of 30 random items (the naive cheap estimate)."""
    _b, calib, _t, held = synthetic
    fit = AnchorFit.calibrate({"m": calib}, k=30, seed=0)
    full = held.mean(1)
    err = {e: np.abs([fit.estimate("m", y[fit.anchors], e) for y in held] - full).mean() for e in ("mean", "pirt")}
    rng = np.random.default_rng(1)
    rand = np.mean([np.abs(held[:, rng.choice(400, 30, replace=False)].mean(1) - full).mean() for _ in range(20)])
    assert err["pirt"] < 0.05 and err["mean"] < 0.06, err
    assert err["pirt"] < rand, (err, rand)


def test_choose_anchors_weights_and_determinism():
    rng = np.random.default_rng(3)
    feats = rng.random((100, 4)).round()
    a1, w1 = choose_anchors(feats, 10, seed=5)
    a2, w2 = choose_anchors(feats, 10, seed=5)
    assert np.array_equal(a1, a2) and np.allclose(w1, w2)
    assert len(set(a1.tolist())) == 10 and w1.sum() == pytest.approx(1.0)


def test_fewer_response_patterns_than_k_give_one_anchor_per_pattern():
    """4 calibration models with binary scores leave at most 16 patterns: with k = 40 each pattern is one anchor
    (k-means had empty clusters here and crashed), and the mean estimate is exact for every calibration model."""
    rng = np.random.default_rng(0)
    calib = (rng.random((4, 200)) < 0.5).astype(float)
    calib[:, 100:] = calib[:, :1]  # half of the items share the first one's pattern
    fit = AnchorFit.calibrate({"m": calib}, k=40)
    n_patterns = len(np.unique(calib.T, axis=0))
    assert len(fit.anchors) == n_patterns <= 16 and fit.weights.sum() == pytest.approx(1.0)
    same_as_first = (calib == calib[:, :1]).all(0).sum()  # >= 101: the copies, and the random items that match
    assert fit.weights[list(fit.anchors).index(0)] == pytest.approx(same_as_first / 200)
    for y in calib:
        assert fit.estimate("m", y[fit.anchors], "mean") == pytest.approx(y.mean(), abs=1e-12)


def test_anchored_digits_evaluator(zoo_root, digits_zoo):
    """Through the evaluator config: the fitness split is scored on k anchors (n_samples shrinks), the estimate is
    close to the full score for a merge the calibration never saw, and held-out splits stay in full."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from evomerge import evaluator as evaluators_pkg
    from evomerge import models as models_pkg
    from evomerge.executor.worker import Worker
    from evomerge.recipe import Recipe, Rule

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=["experiment=digits", f"paths.zoo={zoo_root}"]),
                                     resolve=True)
    pool = models_pkg.build(cfg["models"], str(zoo_root))
    full = Worker(pool, evaluators_pkg.build(cfg["evaluator"], pool.tokenizer))
    cfg["evaluator"]["digits"]["anchors"] = {"k": 40, "estimator": "pirt"}
    cheap = Worker(pool, evaluators_pkg.build(cfg["evaluator"], pool.tokenizer))
    recipe = Recipe(models=pool.names, base=pool.base_name,
                    default=Rule("task_arithmetic", per_model={"weight": [0.6, 0.3, 0.45]}))
    a, b = full.evaluate(recipe), cheap.evaluate(recipe)
    assert a.error is None and b.error is None
    assert b.n_samples == 40 * 3 and a.n_samples == 200 * 3
    assert abs(a.metrics["acc/mean"] - b.metrics["acc/mean"]) < 0.08, (a.metrics, b.metrics)
    assert cheap.evaluate(recipe, "test").n_samples == full.evaluate(recipe, "test").n_samples
    with pytest.raises(ValueError, match="anchors.estimator"):
        cfg["evaluator"]["digits"]["anchors"] = {"k": 10, "estimator": "irt3"}
        evaluators_pkg.build(cfg["evaluator"], pool.tokenizer)


def test_calibration_leaves_the_candidate_alone(zoo_root, digits_zoo):
    """The Worker loads the calibration models into its one live model: calibration must come before the candidate
    is merged there, or the first candidate's estimate would be the plain average's. The estimate equals the fit
    applied to the candidate's own anchor-item scores, measured on a separate Worker."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from evomerge import evaluator as evaluators_pkg
    from evomerge import models as models_pkg
    from evomerge.executor.worker import Worker
    from evomerge.recipe import Recipe, Rule

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=["experiment=digits", f"paths.zoo={zoo_root}"]),
                                     resolve=True)
    cfg["evaluator"]["digits"]["anchors"] = {"k": 40, "estimator": "pirt"}
    pool = models_pkg.build(cfg["models"], str(zoo_root))
    worker = Worker(pool, evaluators_pkg.build(cfg["evaluator"], pool.tokenizer))
    recipe = Recipe(models=pool.names, base=pool.base_name,
                    default=Rule("task_arithmetic", per_model={"weight": [0.6, 0.3, 0.45]}))
    got = worker.evaluate(recipe)  # the first evaluation: calibrates, then merges
    anchored = worker.evaluators[0]
    model = Worker(pool, [anchored.inner]).merger.apply(recipe)
    res = anchored.inner.evaluate(model, "fitness", [int(i) for i in anchored.fit.anchors])
    expected = {m: anchored.fit.estimate(m, y, "pirt") for m, y in anchored.inner.item_scores(res.records).items()}
    assert expected and all(got.metrics[m] == pytest.approx(v, abs=1e-9) for m, v in expected.items()), \
        (got.metrics, expected)
    with pytest.raises(RuntimeError, match="not calibrated"):  # outside a Worker it says what to do
        evaluators_pkg.build(cfg["evaluator"], pool.tokenizer)[0].evaluate(model)


def test_anchors_through_a_run(tmp_path, zoo_root, digits_zoo):
    """`evaluator.<name>.anchors` in a run's config: run.py builds the evaluators before the pool (tokenizer only),
    so the Worker that holds the pool calibrates them. Every candidate is scored on the k anchors of each task."""
    import json

    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from evomerge.run import run

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=[
            "experiment=digits", f"paths.zoo={zoo_root}", "search.budget=8", "optimizer.popsize=4",
            "logger.progress_bar=false", "+evaluator.digits.anchors={k: 20, estimator: mean}"]), resolve=True)
    summary = run(cfg, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "evaluations.jsonl").read_text().splitlines()]
    assert summary["evaluations"] == 8 and all(r.get("error") is None for r in records)
    assert {r["n_samples"] for r in records if not r.get("cached")} == {20 * 3}
