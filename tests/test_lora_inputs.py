"""LoRA adapters as merge inputs (evomerge/models/lora.py): folded by evomerge's own code, checked against peft's
`merge_and_unload` of the same adapter saved as a full checkpoint; then merged through `evomerge-merge`
(mergekit's `BASE+ADAPTER`) and through the in-memory pool (`models.sources[i].lora`), which must give the same
tensors as merging the explicitly folded checkpoint."""

from __future__ import annotations

from pathlib import Path

import peft  # installed with lm-eval[hf]; the smol_jp zoo needs it too
import pytest
import torch
import yaml
from safetensors.torch import load_file


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def make_adapter(base: Path, out: Path, seed: int, **lora_kw) -> tuple[Path, Path]:
    """A random (non-zero B) LoRA adapter on `base`, saved with save_pretrained, and peft's own folded model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = peft.LoraConfig(init_lora_weights=False, **lora_kw)
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():  # a small update, as a fine-tune's
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.mul_(0.3)
    adapter = out / "adapter"
    pm.save_pretrained(adapter)
    full = out / "folded_by_peft"
    pm.merge_and_unload().save_pretrained(full)
    AutoTokenizer.from_pretrained(base).save_pretrained(full)
    return adapter, full


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("kw", [
    {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    {"r": 4, "lora_alpha": 16, "use_rslora": True, "target_modules": ["k_proj", "up_proj"],
     "rank_pattern": {"up_proj": 2}, "alpha_pattern": {"k_proj": 3}},
    {"r": 2, "lora_alpha": 4, "target_modules": ["o_proj", "embed_tokens"], "modules_to_save": ["lm_head"]},
])
def test_fold_matches_peft_merge_and_unload(tmp_path, tiny_llamas, cache, kw):
    from evomerge.models.lora import materialize

    adapter, full = make_adapter(tiny_llamas["base"], tmp_path, seed=1, **kw)
    folded = materialize(tiny_llamas["base"], adapter)
    ours, peft_state, base = load_state(folded), load_state(full), load_state(tiny_llamas["base"])
    assert set(ours) == set(base)
    changed = [k for k in ours if not torch.equal(ours[k], base[k])]
    assert changed, "the adapter changed nothing"
    for k, v in peft_state.items():
        torch.testing.assert_close(ours[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert materialize(tiny_llamas["base"], adapter) == folded  # cached: folded once


def test_mergekit_base_plus_adapter_equals_the_folded_checkpoint(tmp_path, tiny_llamas, cache):
    from evomerge.merge.export import main

    base, a = str(tiny_llamas["base"]), str(tiny_llamas["a"])
    adapter, full = make_adapter(tiny_llamas["base"], tmp_path, seed=2, r=4, lora_alpha=8,
                                 target_modules=["q_proj", "up_proj"])
    outs = {}
    for label, ref in (("adapter", f"{base}+{adapter}"), ("full", str(full))):
        cfg = {"merge_method": "ties", "base_model": base, "dtype": "float32",
               "models": [{"model": a, "parameters": {"weight": 0.5, "density": 0.5}},
                          {"model": ref, "parameters": {"weight": 0.5, "density": 0.5}}]}
        (tmp_path / f"{label}.yaml").write_text(yaml.safe_dump(cfg))
        assert main([str(tmp_path / f"{label}.yaml"), str(tmp_path / f"out_{label}"), "--no-progress"]) == 0
        outs[label] = load_state(tmp_path / f"out_{label}")
    for k in outs["full"]:
        torch.testing.assert_close(outs["adapter"][k], outs["full"][k], rtol=1e-5, atol=1e-6, msg=k)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out_adapter")  # reloads and generates
    tok = AutoTokenizer.from_pretrained(tmp_path / "out_adapter")
    ids = tok("ab", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 3


def test_models_sources_lora_in_memory(tmp_path, tiny_llamas, cache):
    from evomerge import models

    adapter, full = make_adapter(tiny_llamas["base"], tmp_path, seed=3, r=4, lora_alpha=4,
                                 target_modules=["v_proj", "gate_proj"])
    base = {"name": "base", "path": str(tiny_llamas["base"])}
    with_lora = {"base": base, "sources": [{"name": "x", "lora": str(adapter)}, {"name": "a", "path": str(tiny_llamas["a"])}]}
    with_full = {"base": base, "sources": [{"name": "x", "path": str(full)}, {"name": "a", "path": str(tiny_llamas["a"])}]}
    p1, p2 = models.build(with_lora, str(tmp_path)), models.build(with_full, str(tmp_path))
    for k, v in p2.state["x"].items():
        torch.testing.assert_close(p1.state["x"][k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_bad_adapters_fail_before_work(tmp_path, tiny_llamas, cache):
    import json

    from evomerge.models import specs
    from evomerge.models.pool import check_exists

    base = str(tiny_llamas["base"])
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        check_exists(specs({"base": {"name": "b", "path": base},
                            "sources": [{"name": "x", "lora": str(tmp_path)}]})[0][0], "models.sources[0]")
    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                          "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        check_exists(specs({"base": {"name": "b", "path": base},
                            "sources": [{"name": "x", "lora": str(dora)}]})[0][0], "models.sources[0]")
    with pytest.raises(ValueError, match="models.sources.0.: unknown key"):
        specs({"sources": [{"name": "x", "path": base, "adapter": "y"}]})
