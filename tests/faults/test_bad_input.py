"""Bad input (issue 10): each case gets a clear error naming the field/file, found vs expected, before any model
is loaded or any compute starts. Plus the safety guarantees (no remote code, weights_only pickles, no shell).

Most tests call `evomerge.run.run(cfg, run_dir)` on tiny local Llamas with `load_model` replaced by a tripwire:
reaching it means the bad input was not caught in time, and the test fails. `test_tripwire_is_reached...` proves
the tripwire fires on good input, so the other tests can fail.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.faults

BAD = (ValueError, FileNotFoundError)


class ModelLoaded(AssertionError):
    pass


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if any model weights are loaded or any zoo is built."""
    import evomerge.models.pool as pool_mod
    import evomerge.zoo as zoo_mod

    def trip(*a, **k):
        raise ModelLoaded(f"a model was loaded: {a}")

    monkeypatch.setattr(pool_mod, "load_model", trip)
    monkeypatch.setattr(zoo_mod, "ensure", trip)


@pytest.fixture(scope="module")
def base_cfg() -> dict:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        cfg = compose("config", overrides=["experiment=digits", "logger.progress_bar=false"])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture
def qa_file(tmp_path) -> Path:
    f = tmp_path / "qa.jsonl"
    f.write_text("".join(json.dumps({"question": f"{i}+1", "answer_number": i + 1}) + "\n" for i in range(6)))
    return f


@pytest.fixture
def cfg(base_cfg, tiny_llamas, qa_file) -> dict:
    """A valid config: task arithmetic over two tiny Llamas, jp_math fitness on a 6-row local file."""
    c = copy.deepcopy(base_cfg)
    c["models"] = {"zoo": None, "dtype": None, "trust_remote_code": False, "truncate_vocab": False,
                   "tokenizer_source": None, "base": {"name": "base", "path": str(tiny_llamas["base"])},
                   "sources": [{"name": "a", "path": str(tiny_llamas["a"])},
                               {"name": "b", "path": str(tiny_llamas["b"])}]}
    c["evaluator"] = {"jp_math": {"kind": "jp_math", "fitness": str(qa_file), "test": str(qa_file),
                                  "prompt_template": "{question}=", "max_new_tokens": 2, "batch_size": 6,
                                  "extraction": "robust"}}
    c["search"]["objectives"] = [{"metric": "jp_math/acc", "direction": "max"}]
    c["search"]["budget"] = 4
    c["optimizer"]["popsize"] = 4
    return c


def refused(cfg: dict, run_dir: Path, *patterns: str) -> str:
    """Run and expect a clear error matching every pattern; the run directory gets no content."""
    from evomerge.run import run

    with pytest.raises(BAD) as e:
        run(cfg, run_dir)
    msg = str(e.value)
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in: {msg}"
    assert "Traceback" not in msg
    assert not (run_dir / "evaluations.jsonl").exists()
    return msg


def test_tripwire_is_reached_with_good_input(cfg, tmp_path, no_loading):
    from evomerge.run import run

    with pytest.raises(ModelLoaded):
        run(cfg, tmp_path / "run")


# ---- source models ------------------------------------------------------------------------------------------------


def _variant(tmp_path, name, **kw) -> str:
    from evomerge.testing import tiny_causal_lm

    return str(tiny_causal_lm(tmp_path / name, seed=3, **kw))


def test_sources_with_different_architectures(cfg, tmp_path, no_loading):
    cfg["models"]["sources"][1]["path"] = _variant(tmp_path, "gpt2", arch="gpt2")
    refused(cfg, tmp_path / "run", "architecture", "LlamaForCausalLM", "GPT2LMHeadModel", "'b'")


def test_sources_with_different_layer_counts(cfg, tmp_path, no_loading):
    cfg["models"]["sources"][1]["path"] = _variant(tmp_path, "two_layers", layers=2)
    refused(cfg, tmp_path / "run", "num_hidden_layers", r"\b4\b", r"\b2\b", "'b'")


def test_sources_with_different_tensor_shapes(cfg, tmp_path, no_loading):
    cfg["models"]["sources"][1]["path"] = _variant(tmp_path, "narrow", hidden=32)
    refused(cfg, tmp_path / "run", "different tensor shapes", r"\(\d+, 64\) vs \(\d+, 32\)", "'b'")


def test_base_missing_for_a_method_that_needs_one(cfg, tmp_path, no_loading):
    cfg["models"]["base"] = None
    refused(cfg, tmp_path / "run", "task_arithmetic", "needs a base model", "models.base")


def test_model_path_that_does_not_exist(cfg, tmp_path, no_loading):
    cfg["models"]["sources"][0]["path"] = str(tmp_path / "nowhere")
    refused(cfg, tmp_path / "run", r"models.sources\[0\]", "nowhere", "does not exist", "nothing was loaded")


def test_hub_id_while_offline(cfg, tmp_path, no_loading):
    cfg["models"]["sources"][1]["path"] = "someone/not-downloaded-7b"
    refused(cfg, tmp_path / "run", r"models.sources\[1\]", "someone/not-downloaded-7b", "offline", "local copy")


def _copy_model(src, dst) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_corrupt_safetensors(cfg, tmp_path, no_loading, tiny_llamas):
    bad = _copy_model(tiny_llamas["a"], tmp_path / "corrupt")
    (bad / "model.safetensors").write_bytes(b"\x07garbage, not a safetensors header" * 10)
    cfg["models"]["sources"][0]["path"] = str(bad)
    refused(cfg, tmp_path / "run", "corrupt or truncated", re.escape(str(bad / "model.safetensors")))


def test_truncated_safetensors(cfg, tmp_path, no_loading, tiny_llamas):
    bad = _copy_model(tiny_llamas["a"], tmp_path / "truncated")
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    cfg["models"]["sources"][0]["path"] = str(bad)
    refused(cfg, tmp_path / "run", "corrupt or truncated", re.escape(str(f)))


# ---- mergekit YAML and hand-written recipes (evomerge-merge) --------------------------------------------------------


def merge_cli(config: dict, tmp_path, capsys, *extra) -> str:
    from evomerge.merge.export import main

    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    assert main([str(path), str(out), "--no-progress", *extra]) == 2
    assert not out.exists() or not any(out.iterdir())  # nothing merged or written
    err = capsys.readouterr().err
    assert err.startswith("evomerge-merge: error:")
    return err


def _mk(tiny_llamas, **over) -> dict:
    d = {"merge_method": "task_arithmetic", "base_model": str(tiny_llamas["base"]),
         "models": [{"model": str(tiny_llamas["a"]), "parameters": {"weight": 0.5}},
                    {"model": str(tiny_llamas["b"]), "parameters": {"weight": 0.5}}], "dtype": "float32"}
    d.update(over)
    return d


def test_mergekit_unknown_method(tmp_path, capsys, tiny_llamas):
    err = merge_cli(_mk(tiny_llamas, merge_method="frobnicate"), tmp_path, capsys)
    assert "merge_method" in err and "frobnicate" in err and "task_arithmetic" in err  # lists the known ones


def test_mergekit_unknown_key(tmp_path, capsys, tiny_llamas):
    err = merge_cli(_mk(tiny_llamas, normalise_everything=True), tmp_path, capsys)
    assert "normalise_everything" in err and "unsupported key" in err


def test_mergekit_unknown_parameter(tmp_path, capsys, tiny_llamas):
    cfg = _mk(tiny_llamas)
    cfg["models"][0]["parameters"] = {"wieght": 0.5}
    err = merge_cli(cfg, tmp_path, capsys)
    assert "wieght" in err


def _recipe(tiny_llamas, **over) -> dict:
    d = {"models": ["a", "b"], "base": "base",
         "default": {"method": "ties", "weight": [0.5, 0.5], "density": [0.5, 0.5]},
         "paths": {k: str(v) for k, v in tiny_llamas.items()}}
    d.update(over)
    return d


def test_recipe_density_out_of_bounds(tmp_path, capsys, tiny_llamas):
    r = _recipe(tiny_llamas)
    r["default"]["density"] = [1.5, 0.5]
    err = merge_cli(r, tmp_path, capsys)
    assert "density" in err and "1.5" in err and "[0, 1]" in err


def test_recipe_layer_index_out_of_range(tmp_path, capsys, tiny_llamas):
    r = _recipe(tiny_llamas, layers={99: {"*": {"method": "linear", "weight": [0.5, 0.5]}}})
    err = merge_cli(r, tmp_path, capsys)
    assert "layers.99" in err and "4 layers" in err


def test_recipe_path_hop_out_of_range(tmp_path, capsys, tiny_llamas):
    r = _recipe(tiny_llamas, path=[["a", 0, 1.0], ["b", 7, 1.0]])
    del r["default"]
    err = merge_cli(r, tmp_path, capsys)
    assert "path[1]" in err and "layer 7" in err and "0..3" in err


def test_recipe_wrong_number_of_values(tmp_path, capsys, tiny_llamas):
    r = _recipe(tiny_llamas)
    r["default"]["weight"] = [0.5]
    err = merge_cli(r, tmp_path, capsys)
    assert "default.weight" in err and "1 values for 2 models" in err


# ---- objectives, evaluators and data --------------------------------------------------------------------------------


def test_objective_naming_a_metric_no_evaluator_produces(cfg, tmp_path, no_loading):
    cfg["search"]["objectives"] = [{"metric": "jp_math/accuracy", "direction": "max"}]
    refused(cfg, tmp_path / "run", r"search.objectives\[0\].metric", "jp_math/accuracy", "jp_math/acc_ja")


def test_unknown_evaluator_kind(cfg, tmp_path, no_loading):
    cfg["evaluator"]["jp_math"]["kind"] = "jp_maths"
    refused(cfg, tmp_path / "run", "evaluator.jp_math.kind", "jp_maths", "jp_math")


def test_unknown_evaluator_option(cfg, tmp_path, no_loading):
    cfg["evaluator"]["jp_math"]["fitnes_samples"] = 3
    refused(cfg, tmp_path / "run", "evaluator.jp_math", "fitnes_samples", "fitness_samples")


def test_lm_eval_task_that_does_not_exist(cfg, tmp_path, no_loading):
    cfg["evaluator"] = {"lm": {"kind": "lm_eval", "tasks": ["no_such_task_xyz"], "fitness_samples": None}}
    cfg["search"]["objectives"] = [{"metric": "no_such_task_xyz/acc,none", "direction": "max"}]
    refused(cfg, tmp_path / "run", "evaluator.lm", "no_such_task_xyz")


def test_lm_eval_include_path_that_does_not_exist(cfg, tmp_path, no_loading):
    missing = tmp_path / "my_tasks"
    cfg["evaluator"] = {"lm": {"kind": "lm_eval", "tasks": ["my_task"], "include_path": str(missing),
                               "fitness_samples": None}}
    cfg["search"]["objectives"] = [{"metric": "my_task/acc,none", "direction": "max"}]
    refused(cfg, tmp_path / "run", r"evaluator.lm.include_path: \[.*my_tasks'\] do not exist")


def test_jp_math_data_file_that_does_not_exist(cfg, tmp_path, no_loading):
    cfg["evaluator"]["jp_math"]["fitness"] = str(tmp_path / "missing.jsonl")
    refused(cfg, tmp_path / "run", "evaluator.jp_math.fitness", "missing.jsonl", "does not exist")


def test_empty_dataset(cfg, tmp_path, no_loading):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg["evaluator"]["jp_math"]["fitness"] = str(empty)
    refused(cfg, tmp_path / "run", "evaluator.jp_math.fitness", "empty")


def test_dataset_without_the_configured_columns(cfg, tmp_path, no_loading):
    f = tmp_path / "cols.jsonl"
    f.write_text(json.dumps({"q": "1+1", "a": 2}) + "\n")
    cfg["evaluator"]["jp_math"]["fitness"] = str(f)
    refused(cfg, tmp_path / "run", "evaluator.jp_math.fitness", "question", "columns")


@pytest.mark.parametrize("n", [7, 0, -1])
def test_subsample_larger_than_the_data_or_not_positive(cfg, tmp_path, no_loading, n):
    cfg["evaluator"]["jp_math"]["fitness_samples"] = n
    refused(cfg, tmp_path / "run", "evaluator.jp_math.fitness_samples", str(n), "6 rows")


def test_minibatch_larger_than_the_fitness_data(cfg, tmp_path, no_loading):
    cfg["search"]["minibatch"] = 50
    refused(cfg, tmp_path / "run", "search.minibatch", "50", r"\b6\b")


def test_vision_subsample_larger_than_the_data(base_cfg):
    """The digits evaluator's check (its data are sklearn's digits, no zoo needed). run.py builds evaluators before
    the pool, as the jp_math tests above show through run()."""
    from evomerge import evaluator as evaluators_pkg

    ev = copy.deepcopy(base_cfg["evaluator"])
    ev["digits"]["fitness_samples"] = 10**6
    with pytest.raises(ValueError, match=r"fitness_samples: 1000000 for task 'rot90', whose validation split has "
                                         r"\d+ items; expected 1\.\.\d+"):
        evaluators_pkg.build(ev, None)


@pytest.mark.slow
def test_cli_prints_one_clear_error_and_exits_2(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "evomerge", "experiment=digits", "search.budget=0",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "error: search.budget: expected a positive integer number of evaluations, found 0" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- budgets, population sizes, DFS cap ----------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [("search.budget", 0), ("search.budget", -5), ("search.budget", 2.5),
                                         ("optimizer.popsize", 0), ("optimizer.popsize", -3),
                                         ("search.max_consecutive_failures", 0), ("search.minibatch", 0)])
def test_non_positive_budgets_and_population_sizes(cfg, tmp_path, no_loading, field, value):
    group, key = field.split(".")
    cfg[group][key] = value
    refused(cfg, tmp_path / "run", re.escape(field), re.escape(repr(value)), "positive")


def test_dfs_cap_smaller_than_the_fixed_layers(cfg, tmp_path, no_loading):
    cfg["space"] = {"kind": "dfs", "models": None, "recipe_models": {}, "anchor": None, "repeats": 1,
                    "scales": "none", "scale_bounds": [0.0, 2.0], "include_type": "bool", "fixed_ends": 1,
                    "max_path_length": 1}
    cfg["optimizer"] = {"kind": "random", "popsize": 4}
    refused(cfg, tmp_path / "run", "space.max_path_length", ">= 2", "found 1")


def test_unknown_search_key(cfg, tmp_path, no_loading):
    cfg["search"]["budgett"] = 10
    refused(cfg, tmp_path / "run", "search", "budgett")


# ---- safety --------------------------------------------------------------------------------------------------------


def test_trust_remote_code_is_off_unless_set(tmp_path, tiny_llamas):
    """A model folder whose config points at custom code: evomerge never runs it unless trust_remote_code=true."""
    from evomerge.models import pool as pool_mod

    conf = Path(pool_mod.__file__).parent.parent / "conf" / "models"
    for f in conf.glob("*.yaml"):
        assert yaml.safe_load(f.read_text()).get("trust_remote_code") is False, f
    evil = _copy_model(tiny_llamas["a"], tmp_path / "evil")
    marker = tmp_path / "remote_code_ran"
    (evil / "evil_model.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                        "from transformers import LlamaForCausalLM as EvilForCausalLM\n")
    c = json.loads((evil / "config.json").read_text())
    c["auto_map"] = {"AutoModelForCausalLM": "evil_model.EvilForCausalLM"}
    (evil / "config.json").write_text(json.dumps(c))
    model = pool_mod.load_model(str(evil))  # default: the stock Llama class, the custom file ignored
    assert type(model).__name__ == "LlamaForCausalLM"
    pool_mod.load_tokenizer(str(evil))
    assert not marker.exists()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_bin_checkpoints_load_with_weights_only(cfg, tmp_path, no_loading, tiny_llamas):
    """A pickle that would run code when unpickled: refused with a clear error naming the file, code not run."""
    evil = tmp_path / "evil_bin"
    evil.mkdir()
    shutil.copy(tiny_llamas["a"] / "config.json", evil / "config.json")
    marker = tmp_path / "pickle_ran"
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, evil / "pytorch_model.bin")
    cfg["models"]["sources"][0]["path"] = str(evil)
    refused(cfg, tmp_path / "run", re.escape(str(evil / "pytorch_model.bin")), "weights_only")
    assert not marker.exists()


def test_nothing_in_the_package_runs_shell_commands_or_instantiates_from_config():
    import evomerge

    root = Path(evomerge.__file__).parent
    banned = re.compile(r"\b(subprocess|os\.system|os\.popen|pty\.spawn|hydra\.utils\.instantiate|instantiate\(|"
                        r"(?<![.\w])eval\(|(?<![.\w])exec\(|yaml\.load\(|yaml\.unsafe_load|shell=True)")
    hits = [f"{p.relative_to(root)}:{i}: {line.strip()}" for p in root.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert not hits, hits
    for f in (root / "conf").rglob("*.yaml"):
        assert "_target_" not in f.read_text() and "callbacks" not in f.read_text(), f


def test_shell_syntax_in_config_values_is_just_text(cfg, tmp_path, no_loading):
    marker = tmp_path / "shell_ran"
    cfg["models"]["sources"][0]["path"] = f"$(touch {marker})"
    cfg["evaluator"]["jp_math"]["_target_"] = "os.system"
    from evomerge.run import run

    with pytest.raises(BAD):
        run(cfg, tmp_path / "run")
    assert not marker.exists()


def test_recipes_and_results_are_plain_yaml_and_json(tmp_path):
    import numpy as np

    from evomerge.recipe import Recipe, Rule
    from evomerge.store import append_jsonl, atomic_write_json

    r = Recipe(models=["a", "b"], base="base",
               default=Rule("ties", {"weight": [np.float32(0.25), np.float64(0.75)], "density": [0.5, 0.5]},
                            {"lambda": np.float64(1.0)}), seed=3)
    r.save(tmp_path / "r.yaml")
    text = (tmp_path / "r.yaml").read_text()
    assert "!!" not in text  # no python tags
    assert yaml.safe_load(text)["default"]["weight"] == [0.25, 0.75]
    append_jsonl(tmp_path / "e.jsonl", {"genome": np.array([0.5, 1.0]).tolist(), "f": np.float64(0.5)})
    atomic_write_json(tmp_path / "f.json", {"x": np.float32(0.5)})
    assert json.loads((tmp_path / "e.jsonl").read_text().splitlines()[0])["f"] == 0.5
    assert json.loads((tmp_path / "f.json").read_text())["x"] == 0.5


# ---- messages that name the field (issue 22) ------------------------------------------------------------------


def test_corrupt_config_json_names_the_file_before_loading(cfg, tmp_path, no_loading, tiny_llamas):
    bad = _copy_model(tiny_llamas["a"], tmp_path / "emptycfg")
    (bad / "config.json").write_text("")
    cfg["models"]["sources"][0]["path"] = str(bad)
    refused(cfg, tmp_path / "run", re.escape(str(bad / "config.json")), "not a readable config.json")


@pytest.mark.parametrize("field, value, pattern", [
    ("seed", -1, r"seed: expected a non-negative integer, found -1"),
    ("search.hv_ref", ["abc"], r"search.hv_ref\[0\]: expected a number \(in metric units\), found 'abc'"),
    ("search.objectives", [{"metric": "jp_math/acc", "direction": "up"}],
     r"search.objectives\[0\].direction: expected max or min, found 'up'"),
    ("merge.method", "tiez", r"merge.method: unknown merge method 'tiez'; registered: \[.*'ties'"),
])
def test_a_bad_value_names_its_field(cfg, tmp_path, no_loading, field, value, pattern):
    node = cfg
    *parents, leaf = field.split(".")
    for k in parents:
        node = node[k]
    node[leaf] = value
    if field == "merge.method":
        cfg["space"].pop("method", None)
    refused(cfg, tmp_path / "run", pattern)


def test_a_recipe_model_without_a_folder_says_how_to_give_one(tmp_path, capsys, tiny_llamas):
    recipe = {"models": ["a", "b"], "base": "base", "default": {"method": "linear", "weight": [0.5, 0.5]}}
    err = merge_cli(recipe, tmp_path, capsys)
    assert "model 'a'" in err and "paths: {a: /path/to/a}" in err and "--model a=PATH" in err


def test_truncate_vocab_can_be_set_on_every_model_config():
    """README's advice `models.truncate_vocab=true` must work with every models group (Hydra refuses absent keys)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        for group in ("digits", "jp_mini", "jp_math", "smollm2"):
            assert compose("config", overrides=[f"models={group}", "models.truncate_vocab=true"]).models.truncate_vocab


def test_a_nan_in_a_source_model_names_that_model_and_tensor(cfg, tmp_path, tiny_llamas):
    from safetensors.torch import load_file, save_file

    from evomerge.run import run

    bad = _copy_model(tiny_llamas["b"], tmp_path / "nan_model")
    weights = load_file(bad / "model.safetensors")
    name = next(k for k in weights if k.endswith("mlp.down_proj.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    cfg["models"]["sources"][1]["path"] = str(bad)
    with pytest.raises(ValueError, match=rf"model 'b' \({re.escape(str(bad))}\) holds NaN or Inf values in 1 "
                                         rf"tensor\(s\), e.g. \['{re.escape(name)}'\]"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "evaluations.jsonl").exists()
