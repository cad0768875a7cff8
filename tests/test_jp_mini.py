"""The jp_mini zoo: data design (shared content, no copyable answers, disjoint splits), tokenizer coverage,
deterministic cached build, and experiment=jp_math_mini end to end on a much smaller zoo than the real one."""

from __future__ import annotations

import json
import random
import re

import pytest

from evomerge.zoo import jp_mini

TINY = dict(hidden=32, layers=2, heads=2, ffn=64, base_docs=300, base_steps=20, expert_steps=10, batch_size=8,
            n_fitness=12, n_validation=8, n_test=12, n_train_expert=60)


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpz") / "jp_mini"
    return jp_mini.build(root, **TINY)


def test_tokenizer_covers_both_scripts_without_unknowns():
    tok = jp_mini.tokenizer()
    rng = random.Random(1)
    texts = [jp_mini.base_document(rng) for _ in range(300)]
    data = jp_mini.datasets(0, 50, 20, 50, 100)
    texts += [f"{jp_mini.prompt(r['question'])} {r['answer']}" for rows in data.values() for r in rows]
    ids = tok(texts)["input_ids"]
    assert all(tok.unk_token_id not in x for x in ids)
    assert any("答え" in t for t in texts) and any("The answer is" in t for t in texts)
    assert tok.decode(tok("Ken は 3 個 の apples を もらいました 。")["input_ids"], skip_special_tokens=True) == \
        "Ken は 3 個 の apples を もらいました 。"


def test_data_is_deterministic_disjoint_and_not_copyable():
    a, b = jp_mini.datasets(3, 40, 20, 60, 200), jp_mini.datasets(3, 40, 20, 60, 200)
    assert a == b and jp_mini.datasets(4, 40, 20, 60, 200) != a
    questions = [r["question"] for rows in a.values() for r in rows]
    assert len(questions) == len(set(questions))  # no item in two files
    for r in a["ja_math/test"] + a["ja_math/fitness"] + a["en_math/test"]:
        numbers = [int(x) for x in re.findall(r"\d+", r["question"])]
        assert r["answer_number"] not in numbers  # copying a number from the question never scores
        assert r["answer"].endswith(f"{r['answer_number']} です 。" if r["lang"] == "ja" else f"is {r['answer_number']} .")
    assert all(r["answer"].startswith("答え は") for r in a["train/ja"])
    # the math expert answers with the equation, then "The answer is N ." (a one-line chain of thought)
    assert all(re.fullmatch(r"\( \d+ [+-] \d+ \) = \d+ \. The answer is \d+ \.", r["answer"]) for r in a["train/math"])
    assert {r["op"] for r in a["ja_math/test"]} == {"add", "sub"}
    # shared by construction: names, objects and digits are the same tokens in both languages
    en, ja = a["train/math"][0]["question"].split(), a["ja_math/test"][0]["question"].split()
    assert set(en) & set(jp_mini.NAMES) and set(ja) & set(jp_mini.NAMES)
    # the JA expert never sees the target's question template
    assert not any("今" in r["question"] and "何 個" in r["question"] for r in a["train/ja"])
    assert all("answer_number" in r for r in a["ja_general/test"])


def test_build_writes_models_data_and_marker_last_and_is_cached(tiny_zoo):
    marker = json.loads((tiny_zoo / "zoo.json").read_text())
    assert marker["spec"] == jp_mini.DEFAULTS | TINY and marker["version"] == jp_mini.VERSION
    for name in ("base", "ja", "math"):
        assert (tiny_zoo / name / "config.json").exists() and (tiny_zoo / name / "tokenizer.json").exists()
    for f in ("ja_math/fitness", "ja_math/test", "ja_general/test", "en_math/test", "train/math", "train/ja"):
        assert (tiny_zoo / "data" / f"{f}.jsonl").exists()
    from evomerge.evaluator.data import load_rows

    assert len(load_rows(str(tiny_zoo / "data" / "ja_math" / "test.jsonl"), "test")) == TINY["n_test"]
    mtime = (tiny_zoo / "ja" / "model.safetensors").stat().st_mtime
    jp_mini.build(tiny_zoo, **TINY)  # cached: nothing is retrained
    assert (tiny_zoo / "ja" / "model.safetensors").stat().st_mtime == mtime
    with pytest.raises(ValueError, match="unknown setting"):
        jp_mini.build(tiny_zoo, hidden_size=3)


def test_build_is_deterministic(tiny_zoo, tmp_path):
    from safetensors.torch import load_file

    other = jp_mini.build(tmp_path / "again", **TINY)
    a, b = load_file(str(tiny_zoo / "math" / "model.safetensors")), load_file(str(other / "math" / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
    assert (tiny_zoo / "data" / "ja_math" / "test.jsonl").read_text() == \
        (other / "data" / "ja_math" / "test.jsonl").read_text()


@pytest.mark.slow
def test_jp_math_mini_runs_end_to_end(tiny_zoo, tmp_path):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from evomerge.run import run

    opts = ",".join(f"{k}:{v}" for k, v in TINY.items())
    with initialize_config_module("evomerge.conf", version_base="1.3"):
        cfg = compose("config", overrides=["experiment=jp_math_mini", f"paths.zoo={tiny_zoo.parent}",
                                           f"models.zoo_options={{{opts}}}", "search.budget=6",
                                           "optimizer.popsize=3", "evaluator.jp_math.fitness_samples=null",
                                           "evaluator.ja_general.fitness_samples=null"])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    out = run(cfg, tmp_path / "run")
    models = [r["model"] for r in out["final"]]
    assert models[:3] == ["base (base)", "ja", "math"] and "evolved (best)" in models
    for r in out["final"]:
        assert {"jp_math/acc_ja", "jp_math/acc", "jp_math/ja_rate", "ja_general/acc_ja"} <= set(r["metrics"])
    assert (tmp_path / "run" / "final_table.md").exists()


@pytest.mark.parametrize("experiment", ["jp_math_mini_dfs", "jp_math_mini_psdfs"])
def test_dfs_stages_start_cma_es_at_the_anchors_own_path(experiment):
    """Sakana's initial mean: the anchor's first-repeat layers 2 sigma above the include threshold, every other
    include gene at it, scales 1. The x0 list in the config must match the space (4 layers, 2 models, 3 repeats,
    W matrix) gene for gene: its mean decodes to the anchor's own path, and sampling favours it."""
    import numpy as np
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from evomerge.space.dfs import DFSSpace

    extra = ["space.recipe_models.ps=unused.yaml"] if experiment.endswith("psdfs") else []
    with initialize_config_module("evomerge.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=[f"experiment={experiment}", *extra]), resolve=True)
    s = cfg["space"]
    L = jp_mini.DEFAULTS["layers"]
    space = DFSSpace(models=s["models"], num_layers=L, repeats=s["repeats"], scales=s["scales"], anchor=s["anchor"],
                     fixed_ends=s["fixed_ends"])
    x0 = np.asarray(cfg["optimizer"]["x0"], float)
    assert x0.shape == (space.dim,)
    mean = space.decode(space.xl + x0 * (space.xu - space.xl))
    assert [(h.model, h.layer, h.scale) for h in mean.path] == [(s["anchor"], i, 1.0) for i in range(L)]
    # CMA-ES's first samples (identity covariance, sigma0): the anchor's middle layers are on the path in the first
    # repeat in ~95% of them (both of 2 genes 2 sigma above the threshold), against 25% from a mean at the threshold
    rng = np.random.default_rng(0)
    U = np.clip(x0 + rng.normal(0, cfg["optimizer"]["sigma0"], (400, x0.size)), 0, 1)
    X = space.xl + U * (space.xu - space.xl)
    k = [space.slots.index((0, s["anchor"], i)) for i in (1, 2)]  # include genes of the anchor's layers 1, 2 in r0
    assert np.mean((X[:, k] > 0).all(axis=1)) > 0.9
