"""Data-flow spaces: Sakana's slot encoding and Su & Geiping's depth-wise one. Sizes, decoding, the length
constraint, seeds that reproduce the anchor's logits, and a YAML round trip to the same logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from evomerge import space as space_pkg
from evomerge.merge.merger import Merger
from evomerge.models.pool import ModelSpec, load_pool
from evomerge.recipe import Recipe, Rule
from evomerge.space.dfs import DepthSpace, DFSSpace

IDS = torch.tensor([[1, 40, 41, 72, 19, 55, 60, 33]])


@pytest.fixture(scope="module")
def pool(tiny_llamas):
    return load_pool([ModelSpec(n, str(tiny_llamas[n])) for n in ("a", "b")], ModelSpec("base", str(tiny_llamas["base"])))


@pytest.fixture(scope="module")
def merger(pool):
    return Merger(pool)


def logits(merger, recipe):
    with torch.no_grad():
        return merger.apply(recipe)(IDS).logits.clone()


def test_sizes_follow_the_config(pool):
    per_slot = space_pkg.build({"kind": "dfs", "repeats": 3}, {}, pool)
    assert per_slot.dim == 2 * (2 * 4 * 3) and per_slot.models == ["a", "b"] and per_slot.anchor == "a"
    matrix = space_pkg.build({"kind": "dfs", "repeats": 2, "scales": "matrix"}, {}, pool)
    assert matrix.dim == 8 * 2 + 8 * 8
    assert space_pkg.build({"kind": "dfs", "scales": "none", "include_type": "bool"}, {}, pool).var_types == \
        ["bool"] * 24
    depth = space_pkg.build({"kind": "dfs_depth", "models": ["b", "a", "base"]}, {}, pool)
    assert depth.dim == (4 - 2) * (3 + 1 + 1) and depth.var_types[:5] == ["real"] * 3 + ["cat", "real"]
    assert depth.xu[3] == 5  # 3! orders


def test_slot_decoding_moves_forward_within_each_repeat(pool):
    s = DFSSpace(models=["a", "b"], num_layers=4, repeats=2, scales="per_slot")
    x = np.full(s.dim, -1.0)
    T = 16
    x[T:] = 1.0
    on = {1: 0.9, 5: 1.5, 10: 0.5}  # r0 a.1, r0 b.1, r1 a.2
    for k, scale in on.items():
        x[k], x[T + k] = 0.3, scale
    r = s.decode(x)
    assert [(h.model, h.layer, h.scale) for h in r.path] == \
        [("a", 0, 1.0), ("a", 1, 0.9), ("b", 1, 1.5), ("a", 2, 0.5), ("a", 3, 1.0)]
    assert r.models == ["a", "b"] and r.default is None  # non-layer tensors: models[0] = the anchor


def test_matrix_scales_use_the_transition_entry(pool):
    s = DFSSpace(models=["a", "b"], num_layers=4, repeats=1, scales="matrix")
    x = np.full(s.dim, -1.0)
    x[8:] = 1.0
    x[5] = 0.5  # slot b.1
    W = x[8:].reshape(8, 8)
    W[0, 5] = 0.25  # a.0 -> b.1
    W[5, 3] = 1.75  # b.1 -> a.3
    r = s.decode(x)
    assert [(h.model, h.layer, h.scale) for h in r.path] == [("a", 0, 1.0), ("b", 1, 0.25), ("a", 3, 1.75)]


def test_length_cap_is_a_constraint_and_decode_repairs(pool):
    s = DFSSpace(models=["a", "b"], num_layers=4, repeats=2, scales="none", max_path_length=5)
    x = np.ones(s.dim)  # all 16 slots: 2 + 16 hops
    assert s.n_constraints == 1 and s.constraint(x) == 18 - 5
    r = s.decode(x)
    assert len(r.path) == 5 and r.meta["violation"] == 13
    assert [(h.model, h.layer) for h in r.path] == [("a", 0), ("a", 0), ("a", 1), ("a", 2), ("a", 3)]
    assert s.constraint(s.seeds()["source:a"]) == 0


def test_repair_comes_before_the_scales(pool):
    """A hop kept by the length repair takes its scale from its new predecessor (matrix W, depth-wise output)."""
    s = DFSSpace(models=["a", "b"], num_layers=4, repeats=1, scales="matrix", max_path_length=3)
    x = np.full(s.dim, -1.0)
    x[5] = x[6] = 0.5  # slots b.1, b.2: a.0 b.1 b.2 a.3, one hop too many
    W = x[8:].reshape(8, 8)
    W[:] = 1.0
    W[0, 5], W[5, 6], W[6, 3], W[5, 3] = 0.25, 0.5, 1.75, 1.25  # a.0->b.1, b.1->b.2, b.2->a.3, b.1->a.3
    r = s.decode(x)
    assert [(h.model, h.layer, h.scale) for h in r.path] == [("a", 0, 1.0), ("b", 1, 0.25), ("a", 3, 1.25)]
    d = DepthSpace(models=["a", "b"], num_layers=4, max_path_length=4)
    r = d.decode(np.array([0.5, 0.5, 0.0, 1.5,  # depth 1: a.1 b.1, output scale 1.5
                           0.5, 0.5, 0.0, 0.5]))  # depth 2: a.2 b.2 (dropped by the cap), output scale 0.5
    assert [(h.model, h.layer, h.scale) for h in r.path] == [("a", 0, 1.0), ("a", 1, 1.0), ("b", 1, 1.0),
                                                             ("a", 3, 1.5)]


def test_include_thresholds_at_the_boundary(pool):
    """`bool` include genes count from 0.5 inclusive (as documented); `real` ones strictly above 0 (Sakana)."""
    b = DFSSpace(models=["a"], num_layers=4, repeats=1, scales="none", include_type="bool")
    x = np.zeros(b.dim)
    x[1], x[2] = 0.5, 0.4999
    assert [h.layer for h in b.decode(x).path] == [0, 1, 3]
    r = DFSSpace(models=["a"], num_layers=4, repeats=1, scales="none")
    x = np.full(r.dim, -1.0)
    x[1], x[2] = 0.0, 1e-9
    assert [h.layer for h in r.decode(x).path] == [0, 2, 3]
    d = DepthSpace(models=["a", "b"], num_layers=4, include_type="bool")
    assert [(h.model, h.layer) for h in d.decode(np.array([0.0, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])).path] == \
        [("a", 0), ("b", 1), ("a", 2), ("a", 3)]


def test_seed_reproduces_the_anchor_logits_exactly(pool, merger, tiny_llamas):
    stock = AutoModelForCausalLM.from_pretrained(tiny_llamas["b"]).eval()
    with torch.no_grad():
        expected = stock(IDS).logits
    for s in (DFSSpace(models=["b", "a"], num_layers=4, scales="matrix"),
              DFSSpace(models=["a", "b"], num_layers=4, anchor="b", include_type="bool"),
              DepthSpace(models=["b", "a"], num_layers=4)):
        seeds = s.seeds()
        assert list(seeds) == ["source:b"]
        recipe = s.decode(seeds["source:b"])
        assert recipe.models[0] == "b"
        assert [(h.model, h.layer, h.scale) for h in recipe.path] == [("b", i, 1.0) for i in range(4)]
        assert torch.equal(logits(merger, recipe), expected)


def test_depthwise_orders_includes_and_scales(pool):
    s = DepthSpace(models=["a", "b"], num_layers=4, fixed_ends=1)  # depths 1 and 2; block [in.a, in.b, order, scale]
    x = np.array([0.5, 0.5, 1.0, 1.5,  # depth 1: both, order (b, a), output scale 1.5
                  -0.5, -0.5, 0.0, 0.5])  # depth 2: none -> anchor's layer 2; its output scale feeds a.3
    r = s.decode(x)
    assert [(h.model, h.layer, h.scale) for h in r.path] == \
        [("a", 0, 1.0), ("b", 1, 1.0), ("a", 1, 1.0), ("a", 2, 1.5), ("a", 3, 0.5)]


def test_decode_deterministic_and_yaml_round_trip_gives_same_logits(pool, merger, tmp_path):
    s = DFSSpace(models=["a", "b"], num_layers=4, repeats=2, scales="per_slot")
    x = np.random.default_rng(3).uniform(s.xl, s.xu)
    r = s.decode(x)
    assert r.to_dict() == s.decode(x.copy()).to_dict()
    r.save(tmp_path / "path.yaml")
    again = Recipe.load(tmp_path / "path.yaml")
    assert again.to_dict() == r.to_dict()
    assert torch.equal(logits(merger, r), logits(merger, again))


def test_bad_options_fail_clearly(pool):
    with pytest.raises(ValueError, match=r"space.anchor: 'zz' is not one of"):
        space_pkg.build({"kind": "dfs", "anchor": "zz"}, {}, pool)
    with pytest.raises(ValueError, match=r"space.models: \['ps'\] not in the pool"):
        space_pkg.build({"kind": "dfs", "models": ["ps", "a"]}, {}, pool)
    with pytest.raises(ValueError, match="space.scales"):
        space_pkg.build({"kind": "dfs", "scales": "diag"}, {}, pool)
    with pytest.raises(ValueError, match="space.max_path_length"):
        space_pkg.build({"kind": "dfs", "max_path_length": 1}, {}, pool)
    with pytest.raises(ValueError, match="space.kind: unknown space 'dfx'"):
        space_pkg.build({"kind": "dfx"}, {}, pool)


def test_ps_recipe_becomes_a_dfs_model(tiny_llamas, tmp_path):
    """PS+DFS: a saved PS recipe is merged on load and its layers are then available to the path."""
    pool = load_pool([ModelSpec(n, str(tiny_llamas[n])) for n in ("a", "b")], ModelSpec("base", str(tiny_llamas["base"])))
    Recipe(models=["a", "b"], base="base", default=Rule("task_arithmetic", {"weight": [0.5, 0.25]})).save(
        tmp_path / "best_recipe.yaml")
    s = space_pkg.build({"kind": "dfs", "models": ["ps", "b"], "recipe_models": {"ps": str(tmp_path / "best_recipe.yaml")},
                         "repeats": 1}, {}, pool)
    st = {n: pool.state[n] for n in ("base", "a", "b")}
    for k, t in pool.state["ps"].items():  # task arithmetic by hand: base + 0.5 (a - base) + 0.25 (b - base)
        b = st["base"][k]
        torch.testing.assert_close(t, b + 0.5 * (st["a"][k] - b) + 0.25 * (st["b"][k] - b), rtol=0, atol=1e-6)
    recipe = s.decode(s.seeds()["source:ps"])
    assert [(h.model, h.layer) for h in recipe.path] == [("ps", i) for i in range(4)]
    stock = AutoModelForCausalLM.from_pretrained(tiny_llamas["a"]).eval()
    with torch.no_grad():
        stock.load_state_dict(pool.state["ps"])
        torch.testing.assert_close(Merger(pool).apply(recipe)(IDS).logits, stock(IDS).logits, rtol=0, atol=1e-5)
