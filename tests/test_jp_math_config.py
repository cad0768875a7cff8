"""experiment=jp_math (paper scale): the dry-run plan, and the fast, clear failure when models/data are missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evomerge.run import run


def compose(*overrides: str) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def test_jp_math_is_sakanas_setting():
    cfg = compose("experiment=jp_math")
    assert cfg["models"]["base"]["path"] == "mistralai/Mistral-7B-v0.1"
    assert [s["path"] for s in cfg["models"]["sources"]] == [
        "augmxnt/shisa-gamma-7b-v1", "WizardLM/WizardMath-7B-V1.1", "GAIR/Abel-7B-002"]
    assert cfg["space"]["method"] == "dare_ties" and set(cfg["space"]["searched"]) == {"density", "weight"}
    assert cfg["space"]["layer_granularity"] == 0
    assert cfg["optimizer"]["kind"] == "cmaes" and cfg["optimizer"]["x0"] == 0.5
    assert abs(cfg["optimizer"]["sigma0"] - 1 / 6) < 1e-6
    assert cfg["search"]["budget"] == 1000
    assert cfg["search"]["objectives"] == [{"metric": "jp_math/acc_ja", "direction": "max"}]
    assert cfg["evaluator"]["jp_math"]["fitness"]["path"] == "SakanaAI/gsm8k-ja-test_250-1319"
    assert cfg["evaluator"]["jp_math"]["test"] == {"path": "juletxara/mgsm", "name": "ja", "split": "test"}


def test_dry_run_prints_the_plan_without_loading(tmp_path, capsys):
    cfg = compose("experiment=jp_math", "dry_run=true")
    with pytest.raises(FileNotFoundError, match="6 input"):  # the plan is printed, then the missing inputs fail it
        run(cfg, tmp_path / "run")
    text = capsys.readouterr().out
    for name in ("mistralai/Mistral-7B-v0.1", "augmxnt/shisa-gamma-7b-v1", "WizardLM/WizardMath-7B-V1.1",
                 "GAIR/Abel-7B-002", "SakanaAI/gsm8k-ja-test_250-1319", "juletxara/mgsm"):
        assert name in text
    assert "genome 6 genes" in text  # 3 models x (density, weight)
    assert "popsize 9" in text  # 4 + floor(3 ln 6)
    assert "1000 evaluations (~112 generations)" in text
    assert "missing (hub offline)" in text and "6 model(s)/dataset(s) missing" in text
    assert not (tmp_path / "run" / "evaluations.jsonl").exists()


def test_per_layer_genome_uses_the_depth_hint(tmp_path, capsys):
    cfg = compose("experiment=jp_math", "dry_run=true", "space.layer_granularity=1")
    with pytest.raises(FileNotFoundError):
        run(cfg, tmp_path / "run")
    assert "genome 192 genes (32 layers)" in capsys.readouterr().out  # 32 groups x 3 models x 2


def test_offline_failure_names_every_missing_input(tmp_path):
    cfg = compose("experiment=jp_math")
    with pytest.raises(FileNotFoundError) as err:
        run(cfg, tmp_path / "run")
    msg = str(err.value)
    assert "6 input(s) missing, nothing was loaded" in msg
    for where in ("models.base", "models.sources[0]", "models.sources[1]", "models.sources[2]",
                  "evaluator.jp_math.fitness", "evaluator.jp_math.test"):
        assert f"point {where}" in msg or f"{where}.path" in msg, where
    assert "augmxnt/shisa-gamma-7b-v1" in msg and "HF_HUB_OFFLINE" in msg


def test_local_copies_pass_the_check(tiny_llamas, tmp_path, capsys):
    data = tmp_path / "gsm8k_ja.jsonl"
    data.write_text(json.dumps({"question": "1 たす 2 は ?", "answer_number": 3}, ensure_ascii=False) + "\n")
    local = [f"models.base.path={tiny_llamas['base']}", f"models.sources.0.path={tiny_llamas['a']}",
             f"models.sources.1.path={tiny_llamas['b']}", f"models.sources.2.path={tiny_llamas['a']}",
             f"evaluator.jp_math.fitness={data}", f"evaluator.jp_math.test={data}"]
    run(compose("experiment=jp_math", "dry_run=true", *local), tmp_path / "run")
    text = capsys.readouterr().out
    assert "everything the run needs is available" in text and "4 layers" in text
    from evomerge.config import parse
    from evomerge.plan import preflight

    preflight(parse(compose("experiment=jp_math", *local)))  # no error: all inputs exist
    with pytest.raises(FileNotFoundError, match=r"evaluator\.jp_math\.test: dataset .*nope\.jsonl.* does not exist"):
        preflight(parse(compose("experiment=jp_math", *local[:-1], f"evaluator.jp_math.test={tmp_path / 'nope.jsonl'}")))


@pytest.mark.parametrize("stage", ["jp_math_dfs", "jp_math_psdfs"])
def test_dfs_stages_compose_and_plan(stage, tmp_path, capsys):
    extra = ["space.recipe_models.ps=/some/best_recipe.yaml"] if stage == "jp_math_psdfs" else []
    cfg = compose(f"experiment={stage}", "dry_run=true", *extra)
    assert cfg["space"]["kind"] == "dfs" and cfg["space"]["repeats"] == 3 and cfg["space"]["scales"] == "matrix"
    assert cfg["optimizer"]["popsize"] == 128 and cfg["search"]["budget"] == 12800
    with pytest.raises(FileNotFoundError):  # the 7B models are not here: the plan prints, the dry run fails
        run(cfg, tmp_path / "run")
    text = capsys.readouterr().out
    # 2 models x 32 layers, 3 repeats: T = 192 include genes + a 64 x 64 scaling matrix (Sakana's 4288 genes)
    assert "genome 4288 genes" in text, text


@pytest.mark.slow
def test_cli_dry_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "evomerge", "experiment=jp_math", "dry_run=true",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 2, proc.stderr[-2000:]  # the plan, then "6 input(s) missing": a failed dry run
    assert "genome 6 genes" in proc.stdout and "6 input(s) missing" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "evomerge", "experiment=jp_math", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 2 and "augmxnt/shisa-gamma-7b-v1" in proc.stderr
