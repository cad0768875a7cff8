"""Parameter space: sizes and bounds from config, deterministic decoding, YAML round trip to the same model, the
options (filters, smooth, method gene, non-layer rule, negative weights) and seeds that reproduce the sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evomerge import space as space_pkg
from evomerge.merge.merger import Merger
from evomerge.models.pool import ModelSpec, load_pool
from evomerge.recipe import Recipe
from evomerge.space.ps import AVERAGE_METHODS, SOURCE_METHODS, PSSpace

SOURCES = ["a", "b"]


@pytest.fixture(scope="module")
def pool(tiny_llamas):
    return load_pool([ModelSpec(n, str(tiny_llamas[n])) for n in SOURCES], ModelSpec("base", str(tiny_llamas["base"])))


@pytest.fixture(scope="module")
def merger(pool):
    return Merger(pool)


def space(pool, **kw) -> PSSpace:
    return PSSpace(models=SOURCES, base="base", num_layers=pool.num_layers, **kw)


def test_dim_bounds_and_types_follow_the_config(pool):
    cfg = {"kind": "ps", "method": ["ties", "task_arithmetic"], "layer_granularity": 2,
           "filters": ["attention", "mlp"], "searched": {"weight": [0.0, 1.0], "density": [0.2, 1.0]},
           "searched_global": {"lambda": [0.5, 1.5]}}
    s = space_pkg.build(cfg, {"method": "linear"}, pool)
    groups, sets, per_set = 2, 3, 2 * 2 + 1  # 4 layers / 2; attention, mlp, rest; M*P + Q
    assert s.dim == groups * (1 + sets * per_set)
    assert s.var_types.count("cat") == groups and s.var_types[0] == "cat"
    assert s.gene_names[:4] == ["g0.method", "g0.attention.a.weight", "g0.attention.a.density",
                                "g0.attention.b.weight"]
    assert s.xl[2] == 0.2 and s.xu[0] == 1.0 and s.xl[5] == 0.5
    whole = space_pkg.build({"kind": "ps", "layer_granularity": 0}, {"method": "task_arithmetic"}, pool)
    assert whole.dim == 2 and whole.var_types == ["real", "real"]


def test_decode_is_deterministic_and_round_trips_through_yaml(pool, merger, tmp_path):
    s = space(pool, method=["dare_ties", "ties", "linear"], filters=["mlp"],
              searched={"weight": (0.0, 1.5), "density": (0.3, 1.0)}, layer_granularity=2)
    x = np.random.default_rng(1).uniform(s.xl, s.xu)
    r1, r2 = s.decode(x), s.decode(x.copy())
    assert r1.to_dict() == r2.to_dict()
    r1.save(tmp_path / "r.yaml")
    again = Recipe.load(tmp_path / "r.yaml")
    assert again.to_dict() == r1.to_dict()
    first = {k: v.clone() for k, v in merger.apply(r1).state_dict().items()}
    second = merger.apply(again).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_filters_give_each_group_its_own_rule(pool):
    s = space(pool, filters=["attention", "mlp"])
    x = np.zeros(s.dim)
    x[[0, 1]] = [0.1, 0.2]  # layer group 0, attention, a and b
    x[[2, 3]] = [0.3, 0.4]  # mlp
    x[[4, 5]] = [0.5, 0.6]  # the rest (norms)
    r = s.decode(x)
    assert r.rule_for(0, "attention").per_model["weight"] == [0.1, 0.2]
    assert r.rule_for(0, "mlp").per_model["weight"] == [0.3, 0.4]
    assert r.rule_for(0, "other").per_model["weight"] == [0.5, 0.6]
    assert r.rule_for(None, "other").per_model["weight"] == [0.5, 0.6]  # non_layer=first: layer 0's rest rule


def test_smooth_interpolates_anchor_genes_over_depth(pool):
    s = space(pool, layer_granularity=2, smooth=True)  # 2 anchors at depth 0 and 1, 4 layers
    r = s.decode(np.array([0.0, 1.0, 0.9, 0.0]))
    got = [r.rule_for(i, "mlp").per_model["weight"] for i in range(4)]
    assert got == [[0.0, 1.0], [0.3, pytest.approx(2 / 3, abs=1e-6)], [0.6, pytest.approx(1 / 3, abs=1e-6)],
                   [0.9, 0.0]]


def test_method_gene_decodes_by_rounding_and_passes_only_accepted_params(pool):
    s = space(pool, method=["linear", "ties"], layer_granularity=0, searched={"weight": (0, 1), "density": (0, 1)})
    lin = s.decode(np.array([0.49, 0.5, 0.2, 0.5, 0.2]))
    ties = s.decode(np.array([0.51, 0.5, 0.2, 0.5, 0.2]))
    assert lin.rule_for(1, "mlp").method == "linear" and "density" not in lin.rule_for(1, "mlp").per_model
    assert ties.rule_for(1, "mlp").method == "ties" and ties.rule_for(1, "mlp").per_model["density"] == [0.2, 0.2]
    assert s.decode(np.array([7.0, 0.5, 0.5, 0.2, 0.2])).rule_for(0, "mlp").method == "ties"  # clipped
    assert s.decode(np.array([0.5, 0.5, 0.5, 0.2, 0.2])).rule_for(0, "mlp").method == "ties"  # halves round up


def test_non_layer_rules(pool, merger):
    own = space(pool, layer_granularity=0, non_layer="own", method="linear")
    assert own.dim == 4
    r = own.decode(np.array([0.2, 0.8, 1.0, 0.0]))
    assert r.rule_for(None, "other").per_model["weight"] == [1.0, 0.0]
    model = merger.apply(r)
    assert torch.equal(model.state_dict()["model.embed_tokens.weight"], merger.pool.state["a"]["model.embed_tokens.weight"])
    base = space(pool, layer_granularity=0, non_layer="base")
    assert base.decode(np.array([0.5, 0.5])).default is None
    model = merger.apply(base.decode(np.array([0.5, 0.5])))
    assert torch.equal(model.state_dict()["lm_head.weight"], merger.pool.state["base"]["lm_head.weight"])
    assert base.seeds() == {}  # the sources' own heads are not reachable


def test_negative_weights(pool):
    assert space(pool, allow_negative_weights=True).xl.min() == -1.0
    with pytest.raises(ValueError, match="allow_negative_weights is false"):
        space(pool, searched={"weight": (-1.0, 1.0)})


@pytest.mark.parametrize("bad, match", [
    ({"method": "nope"}, "unknown merge method 'nope'"),
    ({"method": "linear", "searched": {"density": (0, 1)}}, r"searched.density: no method in \['linear'\]"),
    ({"filters": ["attn"]}, "space.filters"),
    ({"non_layer": "middle"}, "space.non_layer"),
    ({"searched": {"weight": (1.0, 0.0)}}, "not ordered"),
])
def test_bad_options_fail_before_any_merge(pool, bad, match):
    with pytest.raises(ValueError, match=match):
        space(pool, **bad)


@pytest.mark.parametrize("method", SOURCE_METHODS)
def test_seeds_reproduce_each_source_on_real_merged_weights(pool, merger, method):
    s = space(pool, method=method, layer_granularity=2, filters=["attention"],
              searched={"weight": (0.0, 1.0), **({"density": (0.1, 1.0)} if method not in ("linear",
                                                  "task_arithmetic") else {})})
    seeds = s.seeds()
    for m in SOURCES:
        merged = merger.apply(s.decode(seeds[f"source:{m}"])).state_dict()
        for name, value in merged.items():
            exact = method == "linear"  # 1*x + 0*y is bitwise x; base + (x - base) is x up to one fp32 rounding
            torch.testing.assert_close(value, pool.state[m][name], rtol=0, atol=0 if exact else 1e-6)
    if method in AVERAGE_METHODS:
        merged = merger.apply(s.decode(seeds["average"])).state_dict()
        for name, value in merged.items():
            torch.testing.assert_close(value, (pool.state["a"][name] + pool.state["b"][name]) / 2, rtol=0, atol=1e-6)
    else:
        assert "average" not in seeds  # e.g. ties elects signs: no ties genome is the plain average


def test_method_gene_seeds_pick_a_method_that_can_reproduce(pool, merger):
    s = space(pool, method=["ties", "linear"], searched={"weight": (0.0, 1.0), "density": (0.1, 1.0)})
    seeds = s.seeds()
    assert s.decode(seeds["source:a"]).rule_for(0, "mlp").method == "ties"
    avg = s.decode(seeds["average"])
    assert avg.rule_for(2, "mlp").method == "linear"
    merged = merger.apply(avg).state_dict()
    for name, value in merged.items():
        torch.testing.assert_close(value, (pool.state["a"][name] + pool.state["b"][name]) / 2, rtol=0, atol=1e-6)


def test_out_of_bounds_seeds_are_left_out(pool):
    assert "source:a" not in space(pool, searched={"weight": (0.2, 1.0)}).seeds()


def test_newer_methods_are_gene_choices_with_searched_globals(pool, merger):
    """sce, ram, ramplus_tl and karcher (mergekit 0.1.5's, global parameters only) as categorical choices: each
    layer group's method gene picks one, its searched global (select_topk, epsilon, r) comes from its gene, and
    the decoded recipe merges to finite weights that differ from the base."""
    methods = ["dare_ties", "sce", "ram", "ramplus_tl", "karcher"]
    s = space(pool, method=methods, layer_granularity=1, searched={"weight": (0.0, 1.0), "density": (0.2, 1.0)},
              searched_global={"select_topk": (0.2, 1.0), "r": (0.0, 0.5)})
    seen = set()
    for seed in range(8):
        r = s.decode(np.random.default_rng(seed).uniform(s.xl, s.xu))
        for i in range(pool.num_layers):
            rule = r.rule_for(i, "mlp")
            seen.add(rule.method)
            if rule.method == "sce":
                assert set(rule.params) == {"select_topk"} and not rule.per_model
            if rule.method == "ramplus_tl":
                assert set(rule.params) == {"r"} and not rule.per_model
        state = merger.apply(r).state_dict()
        assert all(torch.isfinite(v.float()).all() for v in state.values())
        assert any(not torch.equal(state[k], pool.state["base"][k]) for k in state if k in pool.state["base"])
    assert seen == set(methods)
