"""Perplexity evaluator: text file and JSONL sources, windows and splits, in-place weights, NaN guard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from eval_models import JA_TEMPLATE, PAIRS, trained_models

from evomerge.evaluator import build
from evomerge.evaluator.perplexity import PerplexityEvaluator
from evomerge.executor.worker import Worker
from evomerge.models.pool import ModelSpec, load_pool
from evomerge.recipe import Recipe, Rule


@pytest.fixture(scope="session")
def lms(zoo_root) -> dict[str, Path]:
    return trained_models(str(zoo_root / "eval_lms"))


@pytest.fixture(scope="module")
def pool(lms):
    return load_pool([ModelSpec("expert", str(lms["expert"])), ModelSpec("random", str(lms["random"])),
                      ModelSpec("broken", str(lms["broken"]))], None)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ppl")
    (d / "sums.txt").write_text("".join(JA_TEMPLATE.format(question=f"{a}+{b}") + f"答えは{a + b}です\n"
                                        for a, b in PAIRS))
    for name, shift in (("right", 0), ("wrong", 3)):  # the same lines, with right or wrong sums
        (d / f"{name}.jsonl").write_text("".join(json.dumps({"text": JA_TEMPLATE.format(question=f"{a}+{b}")
                                                             + f"答えは{(a + b + shift) % 9}です\n"}) + "\n"
                                                 for a, b in PAIRS))
    (d / "docs.jsonl").write_text("".join(json.dumps({"body": f"{a}+{b}={a + b}\n"}) + "\n" for a, b in PAIRS))
    return d


def pick(name: str) -> Recipe:
    names = ["expert", "random", "broken"]
    return Recipe(models=names, default=Rule("linear", {"weight": [float(n == name) for n in names]}))


def test_windows_splits_and_metric_directions(pool, text):
    ev = PerplexityEvaluator(pool.tokenizer, str(text / "sums.txt"), max_length=32, fitness_samples=10, seed=2)
    n_chars = len((text / "sums.txt").read_text())
    assert ev.size("fitness") == 10 and ev.size("fitness") + ev.size("validation") == math.ceil(n_chars / 32)
    assert all(len(w) == 33 for w in ev.data["fitness"] if w is not ev.data["fitness"][-1])  # BOS + 32 tokens
    assert ev.higher_is_better() == {"ppl/nll": False, "ppl/ppl": False}
    docs = PerplexityEvaluator(pool.tokenizer, str(text / "docs.jsonl"), text_column="body", max_length=64)
    assert docs.size("fitness") == len(PAIRS)


def test_scores_follow_in_place_weights_and_nan_is_a_recorded_failure(pool, text):
    evs = build({"right": {"kind": "perplexity", "fitness": str(text / "right.jsonl"), "fitness_samples": 12},
                 "wrong": {"kind": "perplexity", "fitness": str(text / "wrong.jsonl"), "fitness_samples": 12}}, pool.tokenizer)
    worker = Worker(pool, evs)
    expert, rand, again = (worker.evaluate(pick(n)) for n in ("expert", "random", "expert"))
    # the expert knows the sums: right answers are much likelier than wrong ones; the random model cannot tell
    assert expert.metrics["wrong/nll"] - expert.metrics["right/nll"] > 0.2, expert.metrics
    assert abs(rand.metrics["wrong/nll"] - rand.metrics["right/nll"]) < 0.1, rand.metrics
    assert again.metrics == expert.metrics
    assert math.isclose(expert.metrics["right/ppl"], math.exp(expert.metrics["right/nll"]))
    broken = worker.evaluate(pick("broken"))
    assert broken.metrics is None and "non-finite logits" in broken.error


def test_batching_does_not_change_the_score(pool, text):
    model = pool.new_model()
    a = PerplexityEvaluator(pool.tokenizer, str(text / "docs.jsonl"), text_column="body", batch_size=1)
    b = PerplexityEvaluator(pool.tokenizer, str(text / "docs.jsonl"), text_column="body", batch_size=7)
    assert math.isclose(a.evaluate(model).metrics["ppl/nll"], b.evaluate(model).metrics["ppl/nll"], rel_tol=1e-5)


def test_bad_input(pool, text, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PerplexityEvaluator(pool.tokenizer, str(tmp_path / "none.txt"))
    with pytest.raises(ValueError, match=r"column\(s\) \['text'\] not found"):
        PerplexityEvaluator(pool.tokenizer, str(text / "docs.jsonl"))
    with pytest.raises(ValueError, match="fitness_samples"):
        PerplexityEvaluator(pool.tokenizer, str(text / "sums.txt"), max_length=64, fitness_samples=10_000)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        PerplexityEvaluator(None, str(text / "sums.txt"))
    ev = PerplexityEvaluator(pool.tokenizer, str(text / "sums.txt"), max_length=64)
    with pytest.raises(ValueError, match="'validation' split has no windows"):
        ev.evaluate(pool.new_model(), "validation")
