"""mergekit YAML <-> Recipe: parameter semantics (scalars, gradients, filters, precedence), slices, refusals,
and the round trip Recipe -> mergekit -> Recipe giving the same rule for every tensor."""

from __future__ import annotations

import pytest

from evomerge.merge.mergekit import (
    MergekitConfigError,
    NotExpressible,
    from_mergekit,
    param_value,
    recipe_to_mergekit,
)
from evomerge.models.arch import arch_for
from evomerge.recipe import Hop, Recipe, Rule

ARCH = arch_for("LlamaForCausalLM")
L = 4
SUFFIXES = ["input_layernorm.weight", "mlp.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
            "post_attention_layernorm.weight", "self_attn.k_proj.weight", "self_attn.o_proj.weight",
            "self_attn.q_proj.weight", "self_attn.v_proj.weight"]
NON_LAYER = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
ALL = NON_LAYER + [ARCH.layer_key(i) + s for i in range(L) for s in SUFFIXES]


def convert(cfg):
    return from_mergekit(cfg, ARCH, L, SUFFIXES, NON_LAYER)


def rule_of(recipe, name):
    layer, group = ARCH.locate(name)
    return recipe.rule_for(layer, group, name)


def test_param_values():
    assert param_value(0.3, 0.7, "x", "w") == 0.3
    assert param_value([0.0, 1.0], 0.25, "x", "w") == pytest.approx(0.25)
    assert param_value([0.0, 1.0, 0.0], 0.25, "x", "w") == pytest.approx(0.5)
    assert param_value([0.0, 1.0, 0.0], 1.0, "x", "w") == pytest.approx(0.0)
    spec = [{"filter": "self_attn", "value": 0.1}, {"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.9}]
    assert param_value(spec, 0.5, "model.layers.1.self_attn.q_proj.weight", "w") == 0.1
    assert param_value(spec, 0.5, "model.layers.1.mlp.up_proj.weight", "w") == pytest.approx(0.5)
    assert param_value(spec, 0.5, "model.norm.weight", "w") == 0.9
    assert param_value([{"filter": "mlp", "value": 1.0}], 0.0, "model.norm.weight", "w") is None
    with pytest.raises(MergekitConfigError, match="gradient list"):
        param_value("high", 0.0, "x", "cfg weight")


def test_models_form_gradients_filters_precedence():
    cfg = {
        "merge_method": "ties", "base_model": "B",
        "models": [{"model": "B"},
                   {"model": "A", "parameters": {"weight": [0.2, 0.8], "density": 0.5}},
                   {"model": "C", "parameters": {"weight": [{"filter": "mlp", "value": 0.7}, {"value": 0.3}]}}],
        "parameters": {"normalize": False, "lambda": [1.0, 2.0], "density": 0.9, "int8_mask": True},
        "dtype": "bfloat16",
    }
    job = convert(cfg)
    r = job.recipe
    assert r.models == ["A", "C"] and r.base == "B" and job.dtype == "bfloat16"
    for name in ALL:
        layer, _ = ARCH.locate(name)
        t = 0.0 if layer is None else layer / (L - 1)
        rule = rule_of(r, name)
        assert rule.method == "ties"
        assert rule.per_model["weight"][0] == pytest.approx(0.2 + 0.6 * t)
        assert rule.per_model["weight"][1] == (0.7 if "mlp" in name else 0.3)
        assert rule.per_model["density"] == [0.5, 0.9]  # model value beats the global one
        assert rule.params["lambda"] == pytest.approx(1.0 + t) and rule.params["normalize"] is False


def test_filter_finer_than_groups_uses_filter_keys():
    cfg = {"merge_method": "task_arithmetic", "base_model": "B",
           "models": [{"model": "A", "parameters": {"weight": [{"filter": "o_proj", "value": 0.1}, {"value": 1.0}]}}]}
    r = convert(cfg).recipe
    assert any(k.startswith("filter:") for g in r.layers.values() for k in g)
    for name in ALL:
        assert rule_of(r, name).per_model["weight"] == [0.1 if "o_proj" in name else 1.0]


def test_identity_slices_with_per_slice_gradients():
    cfg = {"merge_method": "slerp", "base_model": "A",
           "slices": [{"sources": [{"model": "A", "layer_range": [0, 2]}, {"model": "B", "layer_range": [0, 2]}],
                       "parameters": {"t": [0.0, 1.0]}},
                      {"sources": [{"model": "A", "layer_range": [2, 4]}, {"model": "B", "layer_range": [2, 4]}],
                       "parameters": {"t": [{"filter": "self_attn", "value": 0.25}, {"value": [1.0, 0.5]}]}}]}
    r = convert(cfg).recipe
    assert r.models == ["B"] and r.base == "A"
    expect = {0: 0.0, 1: 1.0, 2: 1.0, 3: 0.5}
    for i in range(L):
        for s in SUFFIXES:
            t = rule_of(r, ARCH.layer_key(i) + s).params["t"]
            assert t == pytest.approx(0.25 if (i >= 2 and "self_attn" in s) else expect[i])
    assert rule_of(r, "model.norm.weight").params["t"] == 0.0


def test_passthrough_slices_become_a_path():
    cfg = {"merge_method": "passthrough",
           "slices": [{"sources": [{"model": "A", "layer_range": [0, 3]}]},
                      {"sources": [{"model": "B", "layer_range": [1, 4]}]},
                      {"sources": [{"model": "A", "layer_range": [2, 4]}]}]}
    job = convert(cfg)
    assert job.recipe.models == ["A", "B"]
    assert [(h.model, h.layer, h.scale) for h in job.recipe.path] == \
        [("A", 0, 1.0), ("A", 1, 1.0), ("A", 2, 1.0), ("B", 1, 1.0), ("B", 2, 1.0), ("B", 3, 1.0),
         ("A", 2, 1.0), ("A", 3, 1.0)]
    back = recipe_to_mergekit(job.recipe, ARCH, L)
    assert back == cfg


@pytest.mark.parametrize("cfg,match", [
    ({"merge_method": "ties", "models": [{"model": "A"}], "base_model": "B", "foo": 1}, "unsupported key 'foo'"),
    ({"merge_method": "linear", "models": [{"model": "A", "parameters": {"weight": 1}}],
      "tokenizer": {"source": "union", "pad": 8}}, r"tokenizer: unknown key\(s\) \['pad'\]"),
    ({"merge_method": "linear", "models": [{"model": "A", "parameters": {"weight": 1}}],
      "tokenizer": {"tokens": {"<x>": {"source": {"kind": "model_token", "model": "A", "token": "y"}}}}},
     "model_token sources are not supported"),
    ({"merge_method": "linear", "models": [{"model": "A", "parameters": {"weight": 1}}],
      "tokenizer": {"pad_to_multiple_of": 0}}, "pad_to_multiple_of: expected a positive integer"),
    ({"merge_method": "linear", "models": [{"model": "A", "parameters": {"weight": 1}}],
      "tokenizer_source": "union", "tokenizer": {"source": "union"}}, "not both"),
    ({"models": [{"model": "A"}]}, "missing 'merge_method'"),
    ({"merge_method": "linear", "models": [{"model": "A"}], "slices": []}, "exactly one of"),
    ({"merge_method": "nope", "models": [{"model": "A"}]}, "unknown merge method"),
    ({"merge_method": "ties", "base_model": "B", "models": [{"model": "A", "parameters": {"weight": 1,
                                                                                          "normalize": True}}]},
     "not per-model parameters"),
    ({"merge_method": "ties", "base_model": "B", "models": [{"model": "A", "parameters": {"weight": 1}}],
      "parameters": {"densty": 0.5}}, "not a parameter of ties"),
    ({"merge_method": "ties", "models": [{"model": "A", "parameters": {"weight": 1}}]}, "needs base_model"),
    ({"merge_method": "ties", "base_model": "B", "models": [{"model": "A"}, {"model": "C",
                                                                            "parameters": {"weight": 1}}]},
     "not set for"),
    ({"merge_method": "ties", "base_model": "A",
      "slices": [{"sources": [{"model": "A", "layer_range": [0, 4]}, {"model": "B", "layer_range": [0, 4]}]},
                 {"sources": [{"model": "A", "layer_range": [0, 4]}, {"model": "B", "layer_range": [0, 4]}]}],
      "parameters": {"weight": 1}}, "does not continue"),
    ({"merge_method": "passthrough",
      "slices": [{"sources": [{"model": "A", "layer_range": [0, 2]}, {"model": "B", "layer_range": [0, 2]}]}]},
     "exactly one source"),
    ({"merge_method": "linear", "models": [{"model": "A", "parameters": {"weight": 1}}], "dtype": "int4"},
     "dtype"),
    ({"merge_method": "linear", "models": [{"model": "A", "parameters": {"weight": 1}}], "chat_template": "vicuna"},
     "neither a known template name"),
    ({"merge_method": "linear", "models": [{"model": "A", "parameters": {"weight": 1}}], "chat_template": 3},
     "chat_template: expected a template name"),
])
def test_refusals(cfg, match):
    with pytest.raises(MergekitConfigError, match=match):
        convert(cfg)


def _random_recipe(method="dare_ties"):
    import random

    rnd = random.Random(0)

    def rule():
        return Rule(method, {"weight": [round(rnd.uniform(-1, 2), 3) for _ in range(2)],
                             "density": [round(rnd.uniform(0.1, 1), 3) for _ in range(2)]},
                    {"lambda": round(rnd.uniform(0.5, 2), 3), "normalize": False})

    layers = {i: {"attention": rule(), "mlp": rule(), "other": rule()} for i in range(L)}
    layers[1]["filter:self_attn.o_proj"] = rule()
    layers[2] = {"*": rule()}
    return Recipe(models=["A", "C"], base="B", default=rule(), layers=layers, seed=3)


def test_roundtrip_recipe_mergekit_recipe():
    r = _random_recipe()
    cfg = recipe_to_mergekit(r, ARCH, L, paths={"A": "/m/a", "B": "/m/b", "C": "/m/c"})
    assert cfg["merge_method"] == "dare_ties" and cfg["base_model"] == "/m/b"
    back = convert(cfg).recipe
    assert back.models == ["/m/a", "/m/c"]
    for name in ALL:
        a, b = rule_of(r, name), rule_of(back, name)
        assert a.method == b.method
        for k in a.per_model:
            assert b.per_model[k] == pytest.approx(a.per_model[k]), (name, k)
        assert b.params["lambda"] == pytest.approx(a.params["lambda"]) and b.params["normalize"] is False


def test_roundtrip_uniform_recipe_is_compact():
    r = Recipe(models=["A", "C"], base="B", default=Rule("ties", {"weight": [0.5, 0.5], "density": [0.3, 0.7]}))
    cfg = recipe_to_mergekit(r, ARCH, L)
    assert cfg["models"][0]["parameters"] == {"density": 0.3, "weight": 0.5}


def test_not_expressible():
    r = Recipe(models=["A", "C"], base="B", default=Rule("ties", {"weight": [1, 1]}),
               layers={0: {"*": Rule("linear", {"weight": [1, 1]})}})
    with pytest.raises(NotExpressible, match="mixes"):
        recipe_to_mergekit(r, ARCH, L)
    with pytest.raises(NotExpressible, match="scale"):
        recipe_to_mergekit(Recipe(models=["A"], path=[Hop("A", 0, 0.5)]), ARCH, L)
    with pytest.raises(NotExpressible, match="no default rule"):
        recipe_to_mergekit(Recipe(models=["A"], base="B", layers={0: {"*": Rule("ties", {"weight": [1]})}}), ARCH, L)


def test_save_mergekit_for_a_search_result(tmp_path):
    """What run.py writes next to best_recipe.yaml: a per-layer PS recipe on the digits CNN (no tensor groups)."""
    from types import SimpleNamespace

    import yaml

    from evomerge.merge.mergekit import save_mergekit

    arch = arch_for("DigitsCNN")
    pool = SimpleNamespace(arch=arch, num_layers=2, paths={"base": "/z/base", "x": "/z/x", "y": "/z/y"})
    r = Recipe(models=["x", "y"], base="base", default=Rule("task_arithmetic", {"weight": [0.5, 0.5]}),
               layers={0: {"*": Rule("task_arithmetic", {"weight": [0.2, 0.9]})},
                       1: {"*": Rule("task_arithmetic", {"weight": [0.4, 0.1]})}})
    assert save_mergekit(r, pool, tmp_path / "mk.yaml") is None
    cfg = yaml.safe_load((tmp_path / "mk.yaml").read_text())
    names = ["blocks.0.weight", "blocks.1.bias", "head.weight"]
    back = from_mergekit(cfg, arch, 2, ["weight", "bias"], ["head.weight"]).recipe
    for n in names:
        layer, group = arch.locate(n)
        assert back.rule_for(layer, group, n).per_model["weight"] == pytest.approx(
            r.rule_for(layer, group, n).per_model["weight"])
    mixed = Recipe(models=["x"], base="base", default=Rule("ties", {"weight": [1]}),
                   layers={0: {"*": Rule("linear", {"weight": [1]})}})
    assert "mixes" in save_mergekit(mixed, pool, tmp_path / "no.yaml")
    assert not (tmp_path / "no.yaml").exists()
