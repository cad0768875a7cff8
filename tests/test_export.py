"""evomerge-merge end to end on tiny Llama checkpoints: a mergekit YAML per method, reload with
AutoModelForCausalLM and generate; stacked slices; sharding; agreement with the in-memory merger; refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from evomerge.merge.export import load_job, main

pytestmark = pytest.mark.slow


def mk(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def load_state(out: Path) -> dict[str, torch.Tensor]:
    if (out / "model.safetensors").exists():
        return load_file(out / "model.safetensors")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    state = {}
    for f in sorted(set(index["weight_map"].values())):
        state.update(load_file(out / f))
    return state


def reload_and_generate(out: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("ab", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 4
    return model


def method_configs(m: dict[str, str]) -> dict[str, dict]:
    base, a, b = m["base"], m["a"], m["b"]
    two = lambda **p: [{"model": a, "parameters": p}, {"model": b, "parameters": p}]  # noqa: E731
    return {
        "linear": {"models": [{"model": a, "parameters": {"weight": 0.6}}, {"model": b, "parameters": {"weight": 0.4}}]},
        "task_arithmetic": {"base_model": base, "models": two(weight=0.5), "parameters": {"lambda": 0.8}},
        "ties": {"base_model": base, "models": [{"model": base}] + two(weight=[0.3, 0.7], density=0.5)},
        "dare_linear": {"base_model": base, "models": two(weight=0.5, density=0.6)},
        "dare_ties": {"base_model": base, "models": two(weight=0.5, density=0.6), "parameters": {"int8_mask": True}},
        "breadcrumbs": {"base_model": base, "models": two(weight=0.5, density=0.8, gamma=0.05)},
        "breadcrumbs_ties": {"base_model": base, "models": two(weight=0.5, density=0.8, gamma=0.05)},
        "della": {"base_model": base, "models": two(weight=1.0, density=0.5, epsilon=0.1)},
        "della_linear": {"base_model": base, "models": two(weight=0.5, density=0.5, epsilon=0.1)},
        "slerp": {"base_model": base, "models": [{"model": base}, {"model": a}],
                  "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 1]}, {"value": 0.3}]}},
        "nuslerp": {"models": two(weight=0.5)},
        "multislerp": {"base_model": base, "models": two(weight=1.0)},
        "model_stock": {"base_model": base, "models": [{"model": a}, {"model": b}]},
        "passthrough": {"models": [{"model": a}]},
        "sce": {"base_model": base, "models": [{"model": a}, {"model": b}], "parameters": {"select_topk": 0.5}},
        "karcher": {"base_model": base, "models": [{"model": a}, {"model": b}]},
        "nearswap": {"base_model": base, "models": [{"model": a}], "parameters": {"t": 0.001}},
        "arcee_fusion": {"base_model": base, "models": [{"model": base}, {"model": a}]},
        "ram": {"base_model": base, "models": [{"model": a}, {"model": b}]},
        "ramplus_tl": {"base_model": base, "models": [{"model": a}, {"model": b}], "parameters": {"r": 0.5}},
    }


@pytest.fixture(scope="module")
def m(tiny_llamas):
    return {k: str(v) for k, v in tiny_llamas.items()}


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
                                    "breadcrumbs_ties", "della", "della_linear", "slerp", "nuslerp", "multislerp",
                                    "model_stock", "passthrough", "sce", "karcher", "nearswap", "arcee_fusion",
                                    "ram", "ramplus_tl"])
def test_mergekit_yaml_each_method(tmp_path, m, method):
    cfg = {"merge_method": method, **method_configs(m)[method], "dtype": "bfloat16", "tokenizer_source": "base"}
    out = tmp_path / "out"
    assert main([str(mk(tmp_path, cfg)), str(out), "--no-progress", "--seed", "4"]) == 0
    state = load_state(out)
    model = reload_and_generate(out)
    assert next(model.parameters()).dtype == torch.bfloat16
    src = {k: load_file(Path(p) / "model.safetensors") for k, p in m.items()}
    name = "model.layers.1.mlp.up_proj.weight"
    if method == "passthrough":
        assert torch.equal(state[name], src["a"][name].bfloat16())
    else:  # merged: differs from every input
        assert all(not torch.equal(state[name], s[name].bfloat16()) for s in src.values())
    w = {k: v[name].bfloat16().float() for k, v in src.items()}  # inputs as the bf16 merge sees them
    by_hand = {"linear": 0.6 * w["a"] + 0.4 * w["b"],
               "task_arithmetic": w["base"] + 0.8 * (0.5 * (w["a"] - w["base"]) + 0.5 * (w["b"] - w["base"]))}
    if method in by_hand:  # the definition, computed here: equal up to bf16 rounding of the output
        torch.testing.assert_close(state[name].float(), by_hand[method].bfloat16().float(), rtol=0, atol=4e-3)
    assert "## Recipe" in (out / "README.md").read_text()


def test_export_matches_in_memory_merger(tmp_path, m):
    """Same recipe, same seed: the streamed export and the in-memory Merger write the same tensors."""
    from evomerge.merge.merger import Merger
    from evomerge.models.pool import ModelSpec, load_pool

    for method in ("ties", "dare_ties", "della", "task_arithmetic", "sce", "karcher", "arcee_fusion", "ramplus_tl"):
        cfg = {"merge_method": method, **method_configs(m)[method]}
        out = tmp_path / method
        assert main([str(mk(tmp_path, cfg, f"{method}.yaml")), str(out), "--no-progress", "--seed", "9"]) == 0
        job = load_job(tmp_path / f"{method}.yaml")
        job.recipe.seed = 9
        pool = load_pool([ModelSpec(n, n) for n in job.recipe.models], ModelSpec(m["base"], m["base"]))
        merged = Merger(pool).apply(job.recipe).state_dict()
        exported = load_state(out)
        for k, v in exported.items():
            assert torch.equal(v, merged[k]), (method, k)


def test_passthrough_slices_stack_layers(tmp_path, m):
    cfg = {"merge_method": "passthrough",
           "slices": [{"sources": [{"model": m["a"], "layer_range": [0, 3]}]},
                      {"sources": [{"model": m["b"], "layer_range": [2, 4]}]},
                      {"sources": [{"model": m["b"], "layer_range": [2, 3]}]}]}
    out = tmp_path / "stack"
    assert main([str(mk(tmp_path, cfg)), str(out), "--no-progress", "--shard-size", "200KB"]) == 0
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 6
    assert (out / "model.safetensors.index.json").exists()
    state = load_state(out)
    b = load_file(Path(m["b"]) / "model.safetensors")
    a = load_file(Path(m["a"]) / "model.safetensors")
    w = "self_attn.q_proj.weight"
    assert torch.equal(state[f"model.layers.3.{w}"], b[f"model.layers.2.{w}"])
    assert torch.equal(state[f"model.layers.5.{w}"], b[f"model.layers.2.{w}"])
    assert torch.equal(state["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    model = reload_and_generate(out)
    assert len(model.model.layers) == 6


def test_passthrough_takes_embeddings_from_the_first_slice_and_head_from_the_last(tmp_path, m):
    """mergekit: embed_tokens from the first slice's model, final norm and lm_head from the last slice's model."""
    from transformers import AutoModelForCausalLM

    from evomerge.merge.merger import Merger
    from evomerge.models.pool import ModelSpec, load_pool

    cfg = {"merge_method": "passthrough", "base_model": m["base"],
           "slices": [{"sources": [{"model": m["a"], "layer_range": [0, 2]}]},
                      {"sources": [{"model": m["base"], "layer_range": [1, 3]}]},
                      {"sources": [{"model": m["b"], "layer_range": [3, 4]}]}]}
    out = tmp_path / "three"
    assert main([str(mk(tmp_path, cfg)), str(out), "--no-progress"]) == 0
    state = load_state(out)
    src = {k: load_file(Path(m[k]) / "model.safetensors") for k in ("a", "b", "base")}
    want = {"model.embed_tokens.weight": "a", "model.norm.weight": "b", "lm_head.weight": "b"}
    non_layer = sorted(n for n in state if not n.startswith("model.layers."))
    assert non_layer == sorted(want)
    for name, model in want.items():
        assert torch.equal(state[name], src[model][name]), name
    # the in-memory path model (what a search evaluates) agrees, and the recipe writes back the same YAML
    job = load_job(tmp_path / "cfg.yaml")
    assert job.recipe.head_from == m["b"]
    pool = load_pool([ModelSpec(n, n) for n in job.recipe.models], None)
    with torch.no_grad():
        model = Merger(pool).apply(job.recipe)
        assert torch.equal(model.model.norm.weight, src["b"]["model.norm.weight"])
        assert torch.equal(model.lm_head.weight, src["b"]["lm_head.weight"])
        assert torch.equal(model.model.embed_tokens.weight, src["a"]["model.embed_tokens.weight"])
        stock = AutoModelForCausalLM.from_pretrained(out).eval()
        ids = torch.tensor([[1, 40, 41, 72, 19]])
        assert torch.equal(stock(ids).logits, model(ids).logits)


def test_evomerge_recipe_with_paths_and_scaled_path(tmp_path, m):
    recipe = {"models": ["a", "b"], "base": "base", "seed": 1, "paths": m,
              "default": {"method": "task_arithmetic", "weight": [0.5, 0.5]},
              "layers": {2: {"mlp": {"method": "ties", "weight": [1.0, 1.0], "density": [0.4, 0.4]}}}}
    out = tmp_path / "rec"
    assert main([str(mk(tmp_path, recipe)), str(out), "--no-progress"]) == 0
    reload_and_generate(out)
    scaled = {"models": ["a", "b"], "paths": m, "path": [["a", 0, 1.0], ["b", 1, 0.8], ["a", 3, 1.0]]}
    out2 = tmp_path / "scaled"
    assert main([str(mk(tmp_path, scaled, "scaled.yaml")), str(out2), "--no-progress"]) == 0
    cfg = json.loads((out2 / "config.json").read_text())  # mlp_output scales fold into the weights: stock config
    assert cfg["num_hidden_layers"] == 3 and "evomerge_hop_scales" not in cfg
    stream = {**scaled, "scale_at": "stream"}  # stream scales cannot fold: kept for load_merged
    out3 = tmp_path / "stream"
    assert main([str(mk(tmp_path, stream, "stream.yaml")), str(out3), "--no-progress"]) == 0
    cfg = json.loads((out3 / "config.json").read_text())
    assert cfg["evomerge_hop_scales"] == [1.0, 0.8, 1.0] and cfg["evomerge_scale_at"] == "stream"


def test_refusals_before_work(tmp_path, m, capsys):
    from evomerge.testing import tiny_causal_lm

    wide = tiny_causal_lm(tmp_path / "wide", seed=3, hidden=32)
    cfg = {"merge_method": "linear", "models": [{"model": m["a"], "parameters": {"weight": 1}},
                                                {"model": str(wide), "parameters": {"weight": 1}}]}
    out = tmp_path / "never"
    assert main([str(mk(tmp_path, cfg)), str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "different tensor shapes" in err and "model.layers.0.mlp.down_proj.weight: (64, 128) vs (32, 64)" in err
    assert not out.exists()
    bad = {"merge_method": "linear", "models": [{"model": m["a"], "parameters": {"weight": 1}}], "foo": 1}
    assert main([str(mk(tmp_path, bad, "bad.yaml")), str(out), "--no-progress"]) == 2
    assert "unsupported key 'foo'" in capsys.readouterr().err
    missing = {"merge_method": "linear", "models": [{"model": str(tmp_path / "nope"), "parameters": {"weight": 1}}]}
    assert main([str(mk(tmp_path, missing, "missing.yaml")), str(out), "--no-progress"]) == 2
    assert "not a local folder" in capsys.readouterr().err


def test_vocab_truncation_only_when_asked(tmp_path, m, capsys):
    from evomerge.testing import char_tokenizer, tiny_causal_lm

    big = tiny_causal_lm(tmp_path / "big", seed=5, tokenizer=char_tokenizer("éü"))
    cfg = {"merge_method": "linear", "models": [{"model": m["a"], "parameters": {"weight": 1}},
                                                {"model": str(big), "parameters": {"weight": 1}}]}
    p = mk(tmp_path, cfg)
    assert main([str(p), str(tmp_path / "o1"), "--no-progress"]) == 2
    assert "truncate" in capsys.readouterr().err
    assert main([str(p), str(tmp_path / "o2"), "--no-progress", "--truncate-vocab"]) == 0
    small = json.loads((Path(m["a"]) / "config.json").read_text())["vocab_size"]
    assert json.loads((tmp_path / "o2" / "config.json").read_text())["vocab_size"] == small
    reload_and_generate(tmp_path / "o2")


def test_console_script(tmp_path, m):
    cfg = {"merge_method": "linear", "models": [{"model": m["a"], "parameters": {"weight": 1}},
                                                {"model": m["b"], "parameters": {"weight": 1}}]}
    exe = Path(sys.executable).parent / "evomerge-merge"
    res = subprocess.run([str(exe), str(mk(tmp_path, cfg)), str(tmp_path / "o"), "--no-progress"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "o" / "model.safetensors").exists()


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "gpt2"])
def test_other_architectures_export_and_generate(tmp_path, arch):
    from evomerge.testing import tiny_causal_lm

    base = tiny_causal_lm(tmp_path / "base", arch=arch, seed=0, layers=2, hidden=32)
    a = tiny_causal_lm(tmp_path / "a", arch=arch, seed=1, perturb_from=base)
    cfg = {"merge_method": "ties", "base_model": str(base),
           "models": [{"model": str(a), "parameters": {"weight": 1.0, "density": 0.5}}]}
    out = tmp_path / "out"
    assert main([str(mk(tmp_path, cfg)), str(out), "--no-progress"]) == 0
    reload_and_generate(out)


@pytest.mark.parametrize("template", ["chatml", "auto", "literal"])
def test_chat_template_written_into_the_tokenizer(tmp_path, m, template):
    """mergekit's chat_template: a name, `auto` (the inputs' most common template) or Jinja text, written so that
    AutoTokenizer of the merged model renders with it."""
    from transformers import AutoTokenizer

    from evomerge.merge import chat_template

    literal = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    src = {}
    for k in ("a", "b"):  # copies of the experts whose tokenizers carry a template (a, b: literal; base: none)
        src[k] = tmp_path / f"src_{k}"
        import shutil

        shutil.copytree(m[k], src[k])
        chat_template.write(src[k], literal)
    value = literal if template in ("auto", "literal") else template
    cfg = {"merge_method": "linear", "chat_template": "auto" if template == "auto" else value,
           "models": [{"model": str(src["a"]), "parameters": {"weight": 0.5}},
                      {"model": str(src["b"]), "parameters": {"weight": 0.5}}], "tokenizer_source": m["base"]}
    out = tmp_path / "out"
    assert main([str(mk(tmp_path, cfg)), str(out), "--no-progress"]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == ("<|im_start|>user\nhi<|im_end|>\n" if template == "chatml" else "<user>hi")
    reload_and_generate(out)


def test_modules_default_is_the_single_module_form(tmp_path, m):
    """`modules: {default: ...}` (mergekit's own spelling for a single-module model) merges as the top-level form;
    other module names are refused by name."""
    flat = {"merge_method": "task_arithmetic", "base_model": m["base"], "parameters": {"lambda": 0.7},
            "models": [{"model": m["a"], "parameters": {"weight": 0.5}}, {"model": m["b"], "parameters": {"weight": 0.5}}]}
    nested = {"merge_method": "task_arithmetic", "base_model": m["base"],
              "modules": {"default": {"models": flat["models"], "parameters": {"lambda": 0.7}}}}
    for name, cfg in (("flat", flat), ("nested", nested)):
        assert main([str(mk(tmp_path, cfg, f"{name}.yaml")), str(tmp_path / name), "--no-progress"]) == 0
    a, b = load_state(tmp_path / "flat"), load_state(tmp_path / "nested")
    assert all(torch.equal(a[k], b[k]) for k in a)
    bad = {**nested, "modules": {"text_decoder": nested["modules"]["default"], "vision_tower": {"models": []}}}
    assert main([str(mk(tmp_path, bad, "bad.yaml")), str(tmp_path / "bad"), "--no-progress"]) != 0
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def extra_token_model(tiny_llamas, tmp_path_factory):
    """Expert b with one more token, '<|x|>' (an added special token, as chat fine-tunes add), and its rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("extra") / "bx"
    tok = AutoTokenizer.from_pretrained(tiny_llamas["b"])
    tok.add_special_tokens({"additional_special_tokens": ["<|x|>"]})
    model = AutoModelForCausalLM.from_pretrained(tiny_llamas["b"])
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        model.get_input_embeddings().weight[-1] = torch.randn(model.config.hidden_size, generator=g)
        model.get_output_embeddings().weight[-1] = torch.randn(model.config.hidden_size, generator=g)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("tokens", [None, "zero"])
def test_union_tokenizer_lays_every_model_out_in_the_union_vocabulary(tmp_path, m, extra_token_model, tokens):
    """mergekit's union: the output tokenizer is the base's plus '<|x|>'; a model lacking a token takes the donor's
    row (the only model with it) unless `tokens:` says otherwise; shared tokens merge as usual; padding rows are
    the mean row. Checked against rows computed here from the inputs, then reloaded and generated from."""
    from transformers import AutoTokenizer

    block = {"source": "union", "pad_to_multiple_of": 8}
    if tokens == "zero":
        block["tokens"] = {"<|x|>": {"source": {"kind": "zero"}}}
    cfg = {"merge_method": "linear", "dtype": "float32", "tokenizer": block,
           "models": [{"model": m["a"], "parameters": {"weight": 0.75}},
                      {"model": str(extra_token_model), "parameters": {"weight": 0.25}}]}
    out = tmp_path / "out"
    assert main([str(mk(tmp_path, cfg)), str(out), "--no-progress"]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    xid = tok.convert_tokens_to_ids("<|x|>")
    n = len(tok)
    state = load_state(out)
    a = load_file(str(Path(m["a"]) / "model.safetensors"))
    bx = load_state(extra_token_model)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        w = state[name]
        assert w.shape[0] == -(-n // 8) * 8 > n  # padded
        shared = a[name].shape[0]
        torch.testing.assert_close(w[:shared], 0.75 * a[name] + 0.25 * bx[name][:shared])
        x_row = bx[name][-1]
        want = 0.75 * x_row + 0.25 * x_row if tokens is None else 0.25 * x_row  # a's row: the donor's, or zeros
        torch.testing.assert_close(w[xid], want)
        torch.testing.assert_close(w[n:], w[:n].mean(0, keepdim=True).expand(w.shape[0] - n, -1))
    assert json.loads((out / "config.json").read_text())["vocab_size"] == state["lm_head.weight"].shape[0]
    reload_and_generate(out)


def test_passthrough_slice_scale_multiplies_the_slices_tensors(tmp_path, m):
    """mergekit's passthrough `scale` on a slice (a filter list here: o_proj halved, the rest kept) multiplies
    that slice's tensors; other slices are untouched; the result reloads and generates."""
    cfg = {"merge_method": "passthrough", "dtype": "float32", "slices": [
        {"sources": [{"model": m["a"], "layer_range": [0, 2]}]},
        {"sources": [{"model": m["b"], "layer_range": [1, 3]}],
         "parameters": {"scale": [{"filter": "o_proj", "value": 0.5}, {"value": 1.0}]}}]}
    out = tmp_path / "out"
    assert main([str(mk(tmp_path, cfg)), str(out), "--no-progress"]) == 0
    state = load_state(out)
    a, b = (load_file(str(Path(m[k]) / "model.safetensors")) for k in ("a", "b"))
    for k_out, (src, layer, halved) in enumerate([(a, 0, False), (a, 1, False), (b, 1, True), (b, 2, True)]):
        for suffix in ("self_attn.o_proj.weight", "self_attn.q_proj.weight", "mlp.down_proj.weight"):
            want = src[f"model.layers.{layer}.{suffix}"].float()
            if halved and "o_proj" in suffix:
                want = 0.5 * want
            assert torch.equal(state[f"model.layers.{k_out}.{suffix}"], want), (k_out, suffix)
    reload_and_generate(out)
    bad = {**cfg, "slices": [{**cfg["slices"][0], "parameters": {"weight": 0.5}}]}
    assert main([str(mk(tmp_path, bad, "bad.yaml")), str(tmp_path / "bad"), "--no-progress"]) != 0
