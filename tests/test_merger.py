"""The in-memory merger (one persistent model, per-tensor seeds), architecture maps,
and the pool's checks before loading."""

from __future__ import annotations

import logging

import pytest
import torch

from evomerge.merge.merger import Merger, merge_tensor
from evomerge.models.arch import arch_for, infer_arch
from evomerge.models.pool import ModelSpec, load_pool
from evomerge.recipe import Recipe, Rule


@pytest.fixture(scope="module")
def pool(tiny_llamas):
    return load_pool([ModelSpec("a", str(tiny_llamas["a"])), ModelSpec("b", str(tiny_llamas["b"]))],
                     ModelSpec("base", str(tiny_llamas["base"])))


RULES = {
    "linear": Rule("linear", {"weight": [0.3, 0.9]}),
    "task_arithmetic": Rule("task_arithmetic", {"weight": [0.7, -0.2]}, {"lambda": 1.3}),
    "ties": Rule("ties", {"weight": [1.0, 0.5], "density": [0.4, 0.7]}),
    "dare_ties": Rule("dare_ties", {"weight": [1.0, 0.5], "density": [0.4, 0.7]}),
    "della": Rule("della", {"weight": [1.0, 0.5], "density": [0.4, 0.7]}),
    "model_stock": Rule("model_stock"),
    "multislerp": Rule("multislerp", {"weight": [1.0, 2.0]}),
}


@pytest.mark.parametrize("method", list(RULES))
def test_apply_equals_per_tensor_merge(pool, method):
    """The merger (with its memo) writes exactly what merge_tensor computes for each tensor on its own."""
    recipe = Recipe(models=["a", "b"], base="base", default=RULES[method], seed=2)
    merger = Merger(pool)
    out = merger.apply(recipe).state_dict()
    for name in out:
        assert torch.equal(out[name], merge_tensor(pool, recipe, name)), name


@pytest.mark.parametrize("method", ["ties", "dare_ties", "breadcrumbs_ties", "della"])
def test_memo_reused_across_candidates(pool, method):
    """The merger keeps sorted |delta| and DARE draws across candidates: later candidates with other densities and
    weights still equal the memo-free per-tensor merge, and a zero budget keeps nothing."""
    merger = Merger(pool)
    second = [0.6, 0.3] if method == "della" else [0.9, 0.1]  # della needs epsilon < density < 1 - epsilon
    for density, weight in (([0.4, 0.7], [1.0, 0.5]), (second, [0.3, 1.2]), ([0.25, 1.0], [1.0, 1.0])):
        recipe = Recipe(models=["a", "b"], base="base", default=Rule(method, {"weight": weight, "density": density}),
                        seed=4)
        out = merger.apply(recipe).state_dict()
        for name in out:
            assert torch.equal(out[name], merge_tensor(pool, recipe, name)), (name, density)
    assert any(len(m) for m in merger._memos.values())
    bare = Merger(pool, memo_bytes=0)
    bare.apply(recipe)
    assert not any(len(m) for m in bare._memos.values())


def test_one_persistent_model_and_layer_rules(pool):
    merger = Merger(pool)
    model = merger.apply(Recipe(models=["a", "b"], base="base", default=RULES["linear"]))
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    recipe = Recipe(models=["a", "b"], base="base", default=RULES["task_arithmetic"],
                    layers={1: {"mlp": Rule("linear", {"weight": [1.0, 0.0]}),
                                "filter:self_attn.o_proj": Rule("linear", {"weight": [0.0, 1.0]})}})
    again = merger.apply(recipe)
    assert again is model and {n: p.data_ptr() for n, p in again.named_parameters()} == ptrs
    sd = again.state_dict()
    a, b = pool.state["a"], pool.state["b"]
    assert torch.equal(sd["model.layers.1.mlp.up_proj.weight"], a["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(sd["model.layers.1.self_attn.o_proj.weight"], b["model.layers.1.self_attn.o_proj.weight"])
    assert not torch.equal(sd["model.layers.1.self_attn.q_proj.weight"], a["model.layers.1.self_attn.q_proj.weight"])


def test_randomised_merge_reproducible_across_mergers(pool):
    recipe = Recipe(models=["a", "b"], base="base", default=RULES["dare_ties"], seed=11)
    x = Merger(pool).apply(recipe).state_dict()
    y = Merger(pool).apply(recipe).state_dict()
    recipe.seed = 12
    z = Merger(pool).apply(recipe).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(x[name], y[name]) and not torch.equal(x[name], z[name])


def test_non_finite_merge_is_refused(pool):
    from evomerge.merge.merger import MergeError

    bad = Recipe(models=["a", "b"], base="base", default=Rule("ties", {"weight": [1.0, -1.0]}, {"normalize": True}))
    # agreeing entries with weights 1 and -1 never sum to zero per entry here, but a huge lambda overflows
    bad.default.params["lambda"] = 1e39
    with pytest.raises(MergeError, match="NaN/Inf"):
        Merger(pool).apply(bad)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gpt2"])
def test_arch_maps_locate_layers_and_groups(tmp_path, arch):
    from evomerge.testing import tiny_causal_lm

    path = tiny_causal_lm(tmp_path / arch, arch=arch, layers=3, hidden=32)
    p = load_pool([ModelSpec("x", str(path))], None)
    assert not p.arch.inferred and p.num_layers == 3
    layers = p.layer_names()
    assert sorted(layers) == [0, 1, 2]
    groups = {p.arch.group_of(n) for n in layers[1]}
    assert groups == {"attention", "mlp", "other"}
    non_layer = [n for n in p.state["x"] if p.arch.layer_of(n) is None]
    assert non_layer and all(n in p.arch.embed + p.arch.head + p.arch.final_norm for n in non_layer)


def test_digits_arch_map(tmp_path):
    from evomerge.zoo.digits import DigitsCNN

    torch.manual_seed(0)
    DigitsCNN().save_pretrained(tmp_path / "cnn")
    p = load_pool([ModelSpec("base", str(tmp_path / "cnn"))], None)
    assert p.arch.name == "digits_cnn" and p.num_layers == len(p.layer_names()) > 0


def test_unknown_architecture_is_inferred_with_a_warning(caplog):
    names = [f"encoder.block.{i}.attn.q.weight" for i in range(6)] + [f"encoder.block.{i}.mlp.fc.weight"
                                                                       for i in range(6)] + ["embed.weight"]
    with caplog.at_level(logging.WARNING):
        arch = infer_arch("FancyModel", names)
    assert arch.inferred and arch.layer_of("encoder.block.4.mlp.fc.weight") == 4
    assert arch.group_of("encoder.block.4.attn.q.weight") == "attention"
    assert "No architecture map for FancyModel" in caplog.text
    with pytest.raises(ValueError, match="unknown architecture"):
        arch_for("FancyModel")


def test_shape_mismatch_refused_before_loading(tmp_path, tiny_llamas, monkeypatch):
    from evomerge.models import pool as pool_mod
    from evomerge.testing import tiny_causal_lm

    wide = tiny_causal_lm(tmp_path / "wide", seed=3, hidden=32)

    def no_load(*a, **k):
        raise AssertionError("weights were loaded before the shape check")

    monkeypatch.setattr(pool_mod, "load_model", no_load)
    with pytest.raises(ValueError, match=r"different tensor shapes .*\(64, 128\) vs \(32, 64\)"):
        load_pool([ModelSpec("a", str(tiny_llamas["a"])), ModelSpec("w", str(wide))], None)


def test_vocab_truncation_in_pool(tmp_path, tiny_llamas):
    from evomerge.testing import char_tokenizer, tiny_causal_lm

    big = tiny_causal_lm(tmp_path / "big", seed=5, tokenizer=char_tokenizer("éü"))
    specs = [ModelSpec("big", str(big)), ModelSpec("a", str(tiny_llamas["a"]))]
    with pytest.raises(ValueError, match="truncate_vocab"):
        load_pool(specs, None)
    p = load_pool(specs, None, truncate_vocab=True)
    n = p.state["a"]["model.embed_tokens.weight"].shape[0]
    assert p.state["big"]["model.embed_tokens.weight"].shape[0] == n
    model = Merger(p).apply(Recipe(models=["big", "a"], default=Rule("linear", {"weight": [0.5, 0.5]})))
    assert model.get_input_embeddings().weight.shape[0] == n
