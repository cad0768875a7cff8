"""Data-flow path models: exactness against stock models, shared weights, KV cache with repeated layers, scales,
export and reload."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import evomerge
from evomerge.merge.dataflow import PathError, export_path_recipe
from evomerge.merge.merger import Merger
from evomerge.models.pool import ModelSpec, load_pool
from evomerge.recipe import Hop, Recipe, Rule
from evomerge.testing import tiny_causal_lm

IDS = torch.tensor([[1, 40, 41, 72, 19, 55, 60, 33, 12]])


def _pool(paths, names=("a", "b")):
    return load_pool([ModelSpec(n, str(paths[n])) for n in names], None)


def _path_recipe(path, anchor="a", models=("a", "b")):
    return Recipe(models=list(models), default=Rule("linear", {"weight": [float(m == anchor) for m in models]}),
                  path=[Hop(*h) for h in path])


@pytest.fixture(scope="module")
def pool(tiny_llamas):
    return _pool(tiny_llamas)


@pytest.fixture(scope="module")
def merger(pool):
    return Merger(pool)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_own_layers_reproduce_source_logits_exactly(tmp_path, arch):
    base = tiny_causal_lm(tmp_path / "base", arch=arch, seed=0, layers=3)
    other = tiny_causal_lm(tmp_path / "other", seed=5, perturb_from=base)
    pool = _pool({"a": other, "b": base})
    for name, path in (("a", other), ("b", base)):
        model = Merger(pool).apply(_path_recipe([(name, i) for i in range(3)], anchor=name))
        stock = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            assert torch.equal(model(IDS).logits, stock(IDS).logits), f"{arch} {name}"


def test_repeated_layers_share_storage_and_get_own_cache_slots(pool, merger):
    model = merger.apply(_path_recipe([("a", 0), ("a", 1), ("a", 1), ("b", 2), ("a", 1), ("a", 3)]))
    src = pool.state["a"]["model.layers.1.mlp.up_proj.weight"]
    layers = model.model.layers
    assert [layers[k].mlp.up_proj.weight.data_ptr() for k in (1, 2, 4)] == [src.data_ptr()] * 3
    assert [layers[k].self_attn.layer_idx for k in range(6)] == list(range(6))
    with torch.no_grad():
        out = model(IDS, use_cache=True)
    assert len(out.past_key_values.layers) == 6


def test_repeated_layer_path_generates_with_cache_like_without(merger):
    model = merger.apply(_path_recipe([("a", 0), ("a", 1), ("b", 1, 0.7), ("a", 1, 1.3), ("b", 2), ("a", 3)]))
    with torch.no_grad():
        full = model(IDS).logits
        first = model(IDS[:, :5], use_cache=True)
        rest = model(IDS[:, 5:], past_key_values=first.past_key_values, use_cache=True)
        torch.testing.assert_close(rest.logits, full[:, 5:], rtol=0, atol=1e-5)
        cached = model.generate(IDS, max_new_tokens=12, do_sample=False, min_new_tokens=12)
        plain = model.generate(IDS, max_new_tokens=12, do_sample=False, min_new_tokens=12, use_cache=False)
    assert cached.shape[1] == IDS.shape[1] + 12
    assert torch.equal(cached, plain)


def _reference_logits(stock, ids, scales, scale_at):
    """An independent forward with the residual wiring written out by hand over a stock model's own submodules.

    `mlp_output` is Sakana's released EvoMistral loop (anchors.md section 2): `hidden, residual = layer(hidden * s,
    residual)` with a fused add+norm, i.e. s multiplies the previous block's MLP output before it joins the residual
    stream, the embeddings at hop 0, and the last MLP output joins unscaled before the final norm. `stream`
    multiplies the whole stream entering each layer.
    """
    inner = stock.model
    pos = torch.arange(ids.shape[1])[None]
    rope = inner.rotary_emb(inner.embed_tokens(ids), pos)
    hidden, residual = inner.embed_tokens(ids), None
    for layer, s in zip(inner.layers, scales, strict=True):
        if scale_at == "stream":
            x = (hidden if residual is None else hidden + residual) * s
            x = x + layer.self_attn(layer.input_layernorm(x), position_embeddings=rope, attention_mask=None)[0]
            hidden, residual = layer.mlp(layer.post_attention_layernorm(x)), x
            continue
        residual = hidden * s if residual is None else hidden * s + residual
        residual = residual + layer.self_attn(layer.input_layernorm(residual), position_embeddings=rope,
                                              attention_mask=None)[0]
        hidden = layer.mlp(layer.post_attention_layernorm(residual))
    return stock.lm_head(inner.norm(hidden + residual))


@pytest.fixture(scope="module")
def two_layer(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_layer")
    path = tiny_causal_lm(root / "m", layers=2, seed=3)
    return path, _pool({"m": path}, names=("m",))


def test_reference_wiring_is_the_stock_model_at_unit_scales(two_layer):
    path, _ = two_layer
    stock = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        for scale_at in ("mlp_output", "stream"):
            torch.testing.assert_close(_reference_logits(stock, IDS, [1.0, 1.0], scale_at), stock(IDS).logits,
                                       rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale_at", ["mlp_output", "stream"])
def test_hop_scales_act_where_scale_at_says(two_layer, scale_at):
    """Pinned against the hand-wired forward: hop 1's scale acts mid-path, where the two semantics differ."""
    path, pool = two_layer
    stock = AutoModelForCausalLM.from_pretrained(path).eval()
    merger = Merger(pool)
    for scales in ([1.0, 0.5], [1.7, 1.0], [0.8, 1.6]):
        recipe = _path_recipe([("m", 0, scales[0]), ("m", 1, scales[1])], anchor="m", models=("m",))
        recipe.scale_at = scale_at
        with torch.no_grad():
            got = merger.apply(recipe)(IDS).logits
            torch.testing.assert_close(got, _reference_logits(stock, IDS, scales, scale_at), rtol=0, atol=1e-5)
            other = "stream" if scale_at == "mlp_output" else "mlp_output"
            if scales[1] != 1.0:
                assert (got - _reference_logits(stock, IDS, scales, other)).abs().max() > 1e-3


def test_default_scale_semantics_is_the_released_one():
    assert Recipe(models=["a"], path=[Hop("a", 0)]).scale_at == "mlp_output"
    assert Recipe.from_dict({"models": ["a"], "path": [["a", 0, 1.0]]}).scale_at == "mlp_output"
    with pytest.raises(ValueError, match=r"scale_at: expected one of \['mlp_output', 'stream'\]"):
        Recipe.from_dict({"models": ["a"], "path": [["a", 0, 1.0]], "scale_at": "input"})


@pytest.mark.parametrize("tied", [False, True])
def test_mlp_output_scales_fold_into_a_stock_checkpoint(tmp_path, tied):
    """Each hop is its own copy in the export, so hop k's scale folds into hop k-1's down_proj and hop 0's into the
    embeddings (a tied head is written untied): stock transformers reloads the same logits, without evomerge."""
    from evomerge.merge.export import main as merge_main

    src = tiny_causal_lm(tmp_path / "src", layers=3, seed=4, tie_word_embeddings=tied)
    pool = _pool({"s": src}, names=("s",))
    recipe = Recipe(models=["s"], path=[Hop("s", 0, 1.3), Hop("s", 1, 0.7), Hop("s", 1, 1.2), Hop("s", 2, 0.9)])
    with torch.no_grad():
        expected = Merger(pool).apply(recipe)(IDS).logits
    (tmp_path / "r.yaml").write_text(json.dumps({**recipe.to_dict(), "paths": {"s": str(src)}}))
    outs = [export_path_recipe(pool, recipe, tmp_path / "mem"), tmp_path / "stream"]
    assert merge_main([str(tmp_path / "r.yaml"), str(outs[1]), "--no-progress"]) == 0
    for out in outs:
        cfg = json.loads((out / "config.json").read_text())
        assert "evomerge_hop_scales" not in cfg and cfg["num_hidden_layers"] == 4
        assert cfg["tie_word_embeddings"] is False
        stock = AutoModelForCausalLM.from_pretrained(out).eval()
        with torch.no_grad():
            torch.testing.assert_close(stock(IDS).logits, expected, rtol=0, atol=1e-5)


def test_export_unit_scales_is_a_stock_checkpoint(pool, merger, tmp_path):
    recipe = _path_recipe([("a", 0), ("a", 1), ("b", 1), ("a", 1), ("a", 3)])
    with torch.no_grad():
        expected = merger.apply(recipe)(IDS).logits
    out = export_path_recipe(pool, recipe, tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 5 and "evomerge_hop_scales" not in cfg
    stock = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(stock(IDS).logits, expected)


def test_export_with_stream_scales_reloads_with_load_merged(pool, merger, tmp_path):
    recipe = _path_recipe([("a", 0), ("b", 1, 1.25), ("a", 1, 0.8), ("a", 3)])
    recipe.scale_at = "stream"
    model = merger.apply(recipe)
    with torch.no_grad():
        expected = model(IDS).logits
    model.save_pretrained(tmp_path / "m")  # what run.py does with the best model
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["evomerge_hop_scales"] == [1.0, 1.25, 0.8, 1.0] and cfg["evomerge_scale_at"] == "stream"
    reloaded = evomerge.load_merged(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, expected)
    # stock transformers would drop the scales: it must refuse the checkpoint loudly, never load it silently wrong
    with pytest.raises((ValueError, KeyError), match="evomerge_scaled_path"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m")


def test_path_model_save_pretrained_is_a_real_one_and_shards(pool, merger, tmp_path):
    """A path model's save_pretrained passes its options through (here max_shard_size): a sharded stock
    checkpoint with an index, which reloads to the same logits."""
    recipe = _path_recipe([("a", 0), ("b", 1), ("a", 1), ("a", 3)])
    model = merger.apply(recipe)
    with torch.no_grad():
        expected = model(IDS).logits
    model.save_pretrained(tmp_path / "m", max_shard_size="20KB")
    shards = sorted((tmp_path / "m").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "m" / "model.safetensors.index.json").exists()
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(stock(IDS).logits, expected)


def test_bad_paths_fail_clearly(merger):
    with pytest.raises(PathError, match=r"path\[1\]: layer 9 out of range 0..3"):
        merger.apply(_path_recipe([("a", 0), ("a", 9)]))
    with pytest.raises(PathError, match=r"path\[0\]: model 'zz' is not in the pool"):
        merger.apply(_path_recipe([("zz", 0)]))


def test_tied_embeddings_path_and_export(tmp_path):
    """SmolLM-style tied head: the path model and its stock export keep lm_head tied to the embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "t")
    pool = _pool({"t": tmp_path / "t"}, names=("t",))
    recipe = _path_recipe([("t", 0), ("t", 1), ("t", 1), ("t", 2)], anchor="t", models=("t",))
    model = Merger(pool).apply(recipe)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        expected = model(IDS % 100).logits
    out = export_path_recipe(pool, recipe, tmp_path / "out")
    stock = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.equal(stock(IDS % 100).logits, expected)


@pytest.mark.parametrize("arch,config", [("gpt2", {}), ("llama", {"attention_dropout": 0.3})])
def test_path_models_run_in_eval_mode(tmp_path, arch, config):
    """Dropout must be off whatever built the model: two forwards agree, and the own-layer path equals stock."""
    src = tiny_causal_lm(tmp_path / "m", arch=arch, layers=3, seed=2, **config)
    pool = _pool({"m": src}, names=("m",))
    model = Merger(pool).apply(_path_recipe([("m", i) for i in range(3)], anchor="m", models=("m",)))
    assert not any(mod.training for mod in model.modules())
    stock = AutoModelForCausalLM.from_pretrained(src).eval()
    with torch.no_grad():
        first, second = model(IDS).logits, model(IDS).logits
        assert torch.equal(first, second)
        torch.testing.assert_close(first, stock(IDS).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch,config", [("qwen2", {"use_sliding_window": True, "max_window_layers": 2,
                                                     "sliding_window": 4}),
                                          ("mistral", {"sliding_window": 4})])
def test_sliding_window_layers_on_a_path(tmp_path, arch, config):
    """Sliding-window layers (Qwen2's max_window_layers, Mistral's window) keep their masks on a path, repeats too."""
    src = tiny_causal_lm(tmp_path / "m", arch=arch, layers=4, seed=2, **config)
    pool = _pool({"m": src}, names=("m",))
    merger = Merger(pool)
    stock = AutoModelForCausalLM.from_pretrained(src).eval()
    long_ids = torch.cat([IDS, IDS], dim=1)  # longer than the window, so the sliding mask matters
    with torch.no_grad():
        own = merger.apply(_path_recipe([("m", i) for i in range(4)], anchor="m", models=("m",)))(long_ids).logits
        torch.testing.assert_close(own, stock(long_ids).logits, rtol=0, atol=1e-5)
        rep = merger.apply(_path_recipe([("m", 0), ("m", 2), ("m", 2), ("m", 3)], anchor="m", models=("m",)))
        if arch == "qwen2":
            assert rep.config.layer_types == [stock.config.layer_types[i] for i in (0, 2, 2, 3)]
            assert "sliding_attention" in rep.config.layer_types
        assert torch.isfinite(rep(long_ids).logits).all()
