"""lm-eval on the in-memory merged model: custom task YAMLs over JSONL written here, a tiny Llama trained to add."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from eval_models import PAIRS, trained_models

from evomerge.evaluator import build
from evomerge.evaluator.lm_eval import LMEvalEvaluator
from evomerge.executor.worker import Worker
from evomerge.models.pool import ModelSpec, load_pool
from evomerge.recipe import Recipe, Rule


@pytest.fixture(scope="session")
def lms(zoo_root) -> dict[str, Path]:
    return trained_models(str(zoo_root / "eval_lms"))


@pytest.fixture(scope="session")
def pool(lms):
    return load_pool([ModelSpec("expert", str(lms["expert"])), ModelSpec("random", str(lms["random"])),
                      ModelSpec("broken", str(lms["broken"]))], None)


def pick(name: str) -> Recipe:
    names = ["expert", "random", "broken"]
    return Recipe(models=names, default=Rule("linear", {"weight": [float(n == name) for n in names]}))


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lm_tasks")
    rows = [{"question": f"{a}+{b}=", "answer": str(a + b), "choices": [str(a + b), str((a + b + 3) % 10),
             str((a + b + 6) % 10)], "label": 0} for a, b in PAIRS]
    (d / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"""dataset_path: json
dataset_kwargs: {{data_files: {{test: {d / 'arith.jsonl'}}}}}
test_split: test
fewshot_split: test
doc_to_text: "{{{{question}}}}"
target_delimiter: ""
metadata: {{version: 1.0}}
"""
    (d / "gen.yaml").write_text("task: t_gen\noutput_type: generate_until\n" + common + """doc_to_target: "{{answer}}"
generation_kwargs: {until: ["\\n"], max_gen_toks: 3, do_sample: false}
metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]
filter_list:
  - name: strict
    filter: [{function: regex, regex_pattern: "(\\\\d+)"}, {function: take_first}]
  - name: raw
    filter: [{function: take_first}]
""")
    (d / "mc.yaml").write_text("task: t_mc\noutput_type: multiple_choice\n" + common + """doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]
""")
    (d / "ll.yaml").write_text("task: t_ll\noutput_type: loglikelihood\n" + common + """doc_to_target: "{{answer}}"
metric_list: [{metric: perplexity, aggregation: perplexity, higher_is_better: false}, {metric: acc, aggregation: mean, higher_is_better: true}]
""")
    (d / "roll.yaml").write_text("task: t_roll\noutput_type: loglikelihood_rolling\n" + common + """doc_to_target: "{{question}}{{answer}}"
metric_list: [{metric: word_perplexity, higher_is_better: false}, {metric: bits_per_byte, higher_is_better: false}]
""")
    return d


@pytest.fixture(scope="module")
def evaluator(pool, task_dir) -> LMEvalEvaluator:
    return LMEvalEvaluator(pool.tokenizer, ["t_gen", "t_mc", "t_ll"], include_path=str(task_dir), fitness_samples=10,
                           seed=3, batch_size=25)


def test_metric_keys_and_directions_come_from_the_tasks(evaluator):
    hib = evaluator.higher_is_better()
    assert set(hib) == {"t_gen/exact_match,strict", "t_gen/exact_match,raw", "t_mc/acc,none",
                        "t_ll/perplexity,none", "t_ll/acc,none"}
    assert hib["t_ll/perplexity,none"] is False and hib["t_mc/acc,none"] is True
    assert evaluator.size("fitness") == 10 and evaluator.size("validation") == 15


def test_rolling_loglikelihood_task(pool, task_dir):
    ev = LMEvalEvaluator(pool.tokenizer, ["t_roll"], include_path=str(task_dir), fitness_samples=6)
    assert ev.higher_is_better() == {"t_roll/word_perplexity,none": False, "t_roll/bits_per_byte,none": False}
    model = pool.new_model()
    with torch.no_grad():
        model.load_state_dict(pool.state["expert"])
    expert = ev.evaluate(model).metrics
    with torch.no_grad():
        model.load_state_dict(pool.state["random"])
    rand = ev.evaluate(model).metrics
    assert expert["t_roll/bits_per_byte,none"] != rand["t_roll/bits_per_byte,none"]


def test_weights_changed_in_place_give_new_scores(pool, evaluator):
    """Through the Worker: one persistent model, rewritten per candidate; every score must follow the weights."""
    worker = Worker(pool, [evaluator], keep_records=True)
    good = worker.evaluate(pick("expert"))
    assert good.error is None, good.error
    bad = worker.evaluate(pick("random"))
    again = worker.evaluate(pick("expert"))
    for key in ("t_gen/exact_match,strict", "t_mc/acc,none", "t_ll/acc,none"):
        assert good.metrics[key] == 1.0 and again.metrics[key] == 1.0, (key, good.metrics)
        assert bad.metrics[key] < 0.5, (key, bad.metrics)
    assert good.metrics["t_ll/perplexity,none"] < 1.5 < bad.metrics["t_ll/perplexity,none"]
    assert evaluator._lm.model is worker.merger.model  # wrapped once, the same object every time
    assert good.n_samples == 30
    recs = good.records[evaluator.name]
    gen = [r for r in recs if r["task"] == "t_gen" and r["filter"] == "strict"]
    assert len(gen) == 10 and all(r["output"] == [r["target"]] for r in gen)


def test_indices_select_exact_documents_and_splits_are_disjoint(pool, evaluator):
    model = pool.new_model()
    fit, val = evaluator.ids["fitness"]["t_gen"], evaluator.ids["validation"]["t_gen"]
    assert not set(fit) & set(val) and len(fit) + len(val) == len(PAIRS)
    res = evaluator.evaluate(model, "validation", [4, 0, 2])
    got = sorted({r["id"] for r in res.records if r["task"] == "t_mc"})
    assert got == sorted([val[4], val[0], val[2]]) and res.n_samples == 9
    with pytest.raises(IndexError, match="out of range"):
        evaluator.evaluate(model, "fitness", [10])


def test_fewshot_prompts_are_identical_for_every_candidate(pool, task_dir):
    ev = LMEvalEvaluator(pool.tokenizer, ["t_gen"], include_path=str(task_dir), fitness_samples=5, num_fewshot=2,
                         batch_size=8)
    model = pool.new_model()
    first = [r["input"] for r in ev.evaluate(model).records if r["filter"] == "raw"]
    second = [r["input"] for r in ev.evaluate(model).records if r["filter"] == "raw"]
    assert first == second
    assert all(p.count("=") == 3 for p in first), first[0]  # two solved examples, then the question


def test_chat_template_and_system_instruction_reach_the_prompt(pool, task_dir):
    tok = copy.deepcopy(pool.tokenizer)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}[{{ m['content'] }}]{% else %}"
                         "{{ m['content'] }}{% endif %}{% endfor %}")
    ev = LMEvalEvaluator(tok, ["t_gen"], include_path=str(task_dir), fitness_samples=3, apply_chat_template=True,
                         system_instruction="sum")
    recs = ev.evaluate(pool.new_model()).records
    assert recs and all(r["input"].startswith("[sum]") for r in recs), recs[0]["input"]
    with pytest.raises(ValueError, match="no chat template"):
        LMEvalEvaluator(pool.tokenizer, ["t_gen"], include_path=str(task_dir), apply_chat_template=True)


def test_batched_generation_is_masked_when_pad_is_eos(pool, task_dir, tmp_path):
    """Left padding must be masked even when the pad token is the EOS token (transformers cannot infer the mask
    then): a prompt's output may not depend on its batch neighbours."""
    rows = [{"question": "1+" * (i % 6) + f"{a}+{b}=", "answer": str(a + b)} for i, (a, b) in enumerate(PAIRS)]
    (tmp_path / "var.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = (task_dir / "gen.yaml").read_text().replace("task: t_gen", "task: t_var")
    (tmp_path / "var.yaml").write_text(text.replace(str(task_dir / "arith.jsonl"), str(tmp_path / "var.jsonl")))
    tok = copy.deepcopy(pool.tokenizer)
    tok.pad_token = tok.eos_token
    model = pool.new_model()
    with torch.no_grad():  # random weights: outputs are sensitive to anything the prompt attends to
        model.load_state_dict(pool.state["random"])
    outputs = {}
    for bs in (1, 25):
        ev = LMEvalEvaluator(tok, ["t_var"], include_path=str(tmp_path), batch_size=bs)
        outputs[bs] = [r["output"] for r in ev.evaluate(model).records if r["filter"] == "raw"]
    assert outputs[1] == outputs[25]


def test_nan_logits_and_a_raise_inside_generation_are_recorded_failures(pool, evaluator):
    worker = Worker(pool, [evaluator])
    broken = worker.evaluate(pick("broken"))
    assert broken.metrics is None and "non-finite logits" in broken.error
    model = worker.merger.model

    def boom(module, args):
        raise RuntimeError("kernel exploded")

    handle = model.model.layers[0].register_forward_pre_hook(boom)
    try:
        failed = worker.evaluate(pick("expert"))
    finally:
        handle.remove()
    assert failed.metrics is None and "kernel exploded" in failed.error
    ok = worker.evaluate(pick("expert"))  # the search goes on, and nothing stale is left behind
    assert ok.error is None and ok.metrics["t_gen/exact_match,strict"] == 1.0


def test_bad_configuration_fails_before_any_evaluation(pool, task_dir):
    with pytest.raises(ValueError, match="t_nope"):
        LMEvalEvaluator(pool.tokenizer, ["t_nope"], include_path=str(task_dir))
    with pytest.raises(ValueError, match="fitness_samples: 99"):
        LMEvalEvaluator(pool.tokenizer, ["t_gen"], include_path=str(task_dir), fitness_samples=99)
    with pytest.raises(ValueError, match="not produced by the tasks"):
        LMEvalEvaluator(pool.tokenizer, ["t_gen"], include_path=str(task_dir), metrics=["t_gen/acc,none"])
    with pytest.raises(ValueError, match="unknown option"):
        build({"lm": {"kind": "lm_eval", "tasks": ["t_gen"], "include_path": str(task_dir), "fewshot": 2}}, pool)


def test_test_tasks_report_under_the_fitness_names(pool, task_dir, tmp_path):
    import shutil

    shutil.copy(task_dir / "arith.jsonl", tmp_path / "arith.jsonl")
    text = (task_dir / "mc.yaml").read_text().replace("task: t_mc", "task: t_mc_test")
    (tmp_path / "mc_test.yaml").write_text(text)
    ev = LMEvalEvaluator(pool.tokenizer, ["t_mc"], include_path=[str(task_dir), str(tmp_path)],
                         test_tasks=["t_mc_test"], fitness_samples=5)
    res = ev.evaluate(pool.new_model(), "test", [0, 1, 2])
    assert set(res.metrics) == {"t_mc/acc,none"} and res.n_samples == 3
    assert ev.size("test") == len(PAIRS)
    with pytest.raises(ValueError, match="scored on"):
        LMEvalEvaluator(pool.tokenizer, ["t_mc"], include_path=str(task_dir), test_tasks=["t_gen"])


def test_fitness_drawn_from_a_test_split_is_warned_about(pool, task_dir, caplog):
    """As mergekit-evolve warns: lm-eval scores a task on its test split when it has one, so fitting on it tunes on
    the benchmark's test set. A task over a validation split only gets no warning."""
    import logging

    (task_dir / "val_only.yaml").write_text((task_dir / "mc.yaml").read_text().replace("task: t_mc", "task: t_val")
                                            .replace("{test: ", "{validation: ").replace("test_split: test",
                                                                                        "validation_split: validation")
                                            .replace("fewshot_split: test", "fewshot_split: validation"))
    with caplog.at_level(logging.WARNING):
        LMEvalEvaluator(pool.tokenizer, ["t_mc"], include_path=str(task_dir), fitness_samples=10)
    assert any("draws its documents from its test split" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        LMEvalEvaluator(pool.tokenizer, ["t_val"], include_path=str(task_dir), fitness_samples=10)
    assert not any("test split" in r.getMessage() for r in caplog.records)


def test_evomerge_eval_writes_lm_evals_results_layout(evaluator, tmp_path):
    from evomerge.eval_cli import lm_eval_results

    metrics = {m: 0.5 for m in evaluator.metric_names()}
    out = lm_eval_results(evaluator, metrics, tmp_path, "test")
    assert set(out["results"]) == {"t_gen", "t_mc", "t_ll"}
    assert out["results"]["t_gen"]["exact_match,strict"] == 0.5 and out["results"]["t_mc"]["acc,none"] == 0.5
