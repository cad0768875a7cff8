"""End to end through the real CLI in a subprocess, and the foundation's bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def run_cli(args: list[str], zoo: Path, out: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    if not any(a.startswith("experiment=") or a.startswith("--") for a in args):
        args = ["experiment=digits", *args]  # the default experiment (jp_math_mini) builds a larger zoo
    env = {**os.environ, "EVOMERGE_ZOO": str(zoo), "EVOMERGE_OUTPUTS": str(out), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "evomerge", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.slow
def test_digits_end_to_end(tmp_path, zoo_root, digits_zoo):
    out = tmp_path / "out"
    preconds = ("preconditions=[{model: rot90, metric: acc/rot90, at_least: 0.5, split: test},"
                "{model: mirror, metric: acc/rot90, at_least: 0.99, split: test}]")
    proc = run_cli(["experiment=digits", "search.budget=24", "optimizer.popsize=6", preconds,
                    f"hydra.run.dir={out}"], zoo_root, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in [".hydra/config.yaml", "evaluations.jsonl", "best_recipe.yaml", "final_table.md", "final.json",
                 "best_model/config.json", "best_model/model.safetensors"]:
        assert (out / name).exists(), name
    records = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    assert len(records) == 24
    assert all({"genome", "recipe", "metrics", "wall_time"} <= set(r) for r in records)
    # The plain average is in the seeded first generation; the best fitness can only be at least as good.
    average = next(r for r in records if r["recipe"]["layers"]["0"]["*"]["weight"] == [0.333333] * 3)
    best = yaml.safe_load((out / "best_recipe.yaml").read_text())
    assert best["meta"]["fitness"]["acc/mean"] >= average["metrics"]["acc/mean"]
    final = json.loads((out / "final.json").read_text())
    rows = {r["model"]: r["metrics"] for r in final["final"]}
    assert set(rows) == {"base (base)", "rot90", "mirror", "invert", "plain average", "evolved (best)"}
    assert "| evolved (best) |" in proc.stdout and "Held-out `test` split" in proc.stdout
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "best_model" / "README.md")  # local sources: named in the text, no base_model
    assert card.data.library_name == "transformers" and "merge" in card.data.tags and "## Recipe" in card.text
    assert card.data.base_model is None and "rot90" in card.text
    # Preconditions are measured on the named split: the same numbers as the table's rows for those models.
    pre = final["preconditions"]
    assert [p["ok"] for p in pre] == [True, False]
    assert pre[0]["value"] == pytest.approx(rows["rot90"]["acc/rot90"])
    assert pre[1]["value"] == pytest.approx(rows["mirror"]["acc/rot90"]) and pre[1]["value"] < 0.99
    table = (out / "final_table.md").read_text()
    assert "rot90 acc/rot90 on test" in table and "FAILS" in table and "WARNING: a precondition fails" in table
    # The environment the numbers were made in travels with them.
    import torch

    env = final["environment"]
    assert env["packages"]["torch"] == torch.__version__ and env["device"] == "cpu" and env["torch_threads"] >= 1
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # The saved model reloads and reproduces the evolved row of the table.
    from evomerge.evaluator.vision import VisionEvaluator
    from evomerge.zoo.digits import DigitsCNN

    model = DigitsCNN.from_pretrained(out / "best_model")
    metrics = VisionEvaluator(tasks=["rot90", "mirror", "invert"]).evaluate(model, "test").metrics
    assert metrics["acc/mean"] == pytest.approx(rows["evolved (best)"]["acc/mean"])


@pytest.mark.slow
def test_select_on_validation_picks_the_best_generation_snapshot(tmp_path, zoo_root, digits_zoo):
    """Minibatch fitness redrawn per generation: the kept recipe is the best of the generations' bests re-scored on
    the validation split, not the luckiest minibatch score."""
    out = tmp_path / "out"
    proc = run_cli(["experiment=digits", "search.budget=24", "optimizer.popsize=6", "search.minibatch=40",
                    "search.resample=true", "search.select_on=validation", f"hydra.run.dir={out}"], zoo_root, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads((out / "final.json").read_text())
    records = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    cands = final["selection"]["candidates"]
    per_gen = {}
    for r in records:
        if r["metrics"] and (r["generation"] not in per_gen or r["metrics"]["acc/mean"] >
                             per_gen[r["generation"]]["metrics"]["acc/mean"]):
            per_gen[r["generation"]] = r
    assert sorted(c["id"] for c in cands) == sorted(r["id"] for r in per_gen.values())  # one per generation
    win = max(cands, key=lambda c: (c["validation"]["acc/mean"], -c["id"]))
    assert final["best"]["id"] == win["id"]
    best = yaml.safe_load((out / "best_recipe.yaml").read_text())
    assert best["meta"]["evaluation_id"] == win["id"] and best["meta"]["validation"] == win["validation"]
    from evomerge.evaluator.vision import VisionEvaluator
    from evomerge.zoo.digits import DigitsCNN

    model = DigitsCNN.from_pretrained(out / "best_model")  # the saved model is the chosen one
    val = VisionEvaluator(tasks=["rot90", "mirror", "invert"]).evaluate(model, "validation").metrics
    assert val["acc/mean"] == pytest.approx(win["validation"]["acc/mean"])


def test_help_and_cfg_job(tmp_path, zoo_root):
    proc = run_cli(["--help"], zoo_root, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for group in ("experiment=NAME", "merge=NAME", "space=NAME", "optimizer=NAME"):
        assert any(group in ln for ln in lines), group

    def described(name, words):
        return any(ln.startswith("  ") and ln.split()[0] == name and words in ln for ln in lines)

    assert described("digits", "three digits experts") and described("cmaes", "CMA-ES") and described("tpe", "TPE")
    assert described("sce", "select_topk") and described("ps", "Parameter space")
    assert run_cli(["--hydra-help"], zoo_root, tmp_path).returncode == 0
    proc = run_cli(["experiment=digits", "optimizer.popsize=8", "seed=3", "--cfg", "job"], zoo_root, tmp_path)
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["optimizer"]["popsize"] == 8 and cfg["seed"] == 3


@pytest.mark.parametrize("args, expected", [
    (["experiment=digitz"], "Could not find 'experiment/digitz'"),
    (["optimizer=cmaez"], "Could not find 'optimizer/cmaez'"),
    (["search.budget=0"], "search.budget: expected a positive integer"),
    (["search.budget=-5"], "search.budget: expected a positive integer"),
    (["optimizer.popsize=0"], "optimizer.popsize: expected a positive integer"),
    (["threads=0"], "threads: expected a positive integer"),
    (["search.objectives=[{metric: acc/nope}]"], "search.objectives[0].metric: 'acc/nope' is produced by no evaluator"),
    (["preconditions=[{model: nope, metric: acc/rot90, at_least: 0.5}]"],
     "preconditions[0].model: 'nope' is not a model of the pool"),
    (["preconditions=[{model: rot90, metric: acc/nope, at_least: 0.5}]"],
     "preconditions[0].metric: 'acc/nope' is not a metric"),
    (["preconditions=[{model: rot90, metric: acc/rot90, at_least: high}]"],
     "preconditions[0].at_least: expected a number"),
])
def test_bad_input_is_one_clear_error(tmp_path, zoo_root, digits_zoo, args, expected):
    proc = run_cli(args + [f"hydra.run.dir={tmp_path / 'run'}"], zoo_root, tmp_path)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert expected in text
    assert "Traceback" not in text


def test_unbuildable_zoo_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_cli([f"hydra.run.dir={tmp_path / 'run'}"], blocker, tmp_path)
    assert proc.returncode != 0
    assert "cannot create the digits zoo folder" in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_cached_model(tmp_path, digits_zoo):
    import shutil

    zoo = tmp_path / "zoo"
    shutil.copytree(digits_zoo, zoo / "digits")
    weights = zoo / "digits" / "mirror" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    proc = run_cli([f"hydra.run.dir={tmp_path / 'run'}"], zoo, tmp_path)
    assert proc.returncode != 0
    assert "mirror/model.safetensors" in proc.stderr and "corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_wandb_project_resume_path_replays_overrides_and_keeps_the_wandb_run(tmp_path, zoo_root, digits_zoo):
    """Through the CLI: logger.project switches W&B online (here, without credentials, it says so and logs
    offline); the run writes config.resolved.yaml (no interpolations left) and evomerge.log; resume=PATH replays
    the run's overrides (popsize 6, which a plain resume would refuse as a different config) and continues the same
    W&B run."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "EVOMERGE_DEFAULT"))}
    env |= {"EVOMERGE_ZOO": str(zoo_root), "NETRC": str(tmp_path / "no-netrc"), "WANDB_DIR": str(tmp_path / "wb"),
            "WANDB_CONFIG_DIR": str(tmp_path / "wbc"), "WANDB_CACHE_DIR": str(tmp_path / "wbcache")}
    first = ["experiment=digits", "search.budget=12", "optimizer.popsize=6", "logger=wandb", "logger.project=evo-test",
             "logger.progress_bar=false", f"hydra.run.dir={out}"]
    proc = subprocess.run([sys.executable, "-m", "evomerge", *first], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_text = (out / "evomerge.log").read_text()
    assert "needs an API key" in log_text  # resolved online, then fell back for want of a key
    resolved = (out / "config.resolved.yaml").read_text()
    assert "${" not in resolved and "popsize: 6" in resolved
    run_id = (out / "wandb_run_id").read_text().strip()
    again = subprocess.run([sys.executable, "-m", "evomerge", f"resume={out}", "search.budget=18",
                            f"hydra.run.dir={tmp_path / 'second'}"], capture_output=True, text=True, env=env,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "replaying the run's overrides" in again.stderr and "optimizer.popsize=6" in again.stderr
    assert len((out / "evaluations.jsonl").read_text().splitlines()) == 18
    assert (out / "wandb_run_id").read_text().strip() == run_id


def test_evomerge_eval_scores_a_saved_model_like_the_search(tmp_path, zoo_root, digits_zoo):
    """The console script scores a model folder with the experiment's evaluators; the numbers equal the evaluator
    run directly on the same model, and a bad split or folder is one clear error."""
    import shutil

    from evomerge.evaluator.vision import VisionEvaluator
    from evomerge.zoo.digits import DigitsCNN

    exe = Path(sys.executable).with_name("evomerge-eval")
    env = {**os.environ, "EVOMERGE_ZOO": str(zoo_root)}
    model = digits_zoo / "rot90"
    out = tmp_path / "scores.json"
    proc = subprocess.run([str(exe), str(model), "experiment=digits", "split=validation", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())
    want = VisionEvaluator(tasks=["rot90", "mirror", "invert"]).evaluate(DigitsCNN.from_pretrained(model),
                                                                         "validation").metrics
    assert got["split"] == "validation" and got["metrics"]["acc/mean"] == pytest.approx(want["acc/mean"])
    assert "acc/mean\t" in proc.stdout
    bad = subprocess.run([str(exe), str(model), "experiment=digits", "split=train"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2 and "expected fitness, validation or test" in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run([str(exe), str(empty)], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "no config.json" in bad.stderr
    shutil.rmtree(empty)
