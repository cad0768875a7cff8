"""`pip install evomerge` without extras: merging and a search with evomerge's own evaluators work when the optional
packages (lm-eval, datasets, pyarrow, peft, wandb, optuna, ray) are missing, and asking for one of them says which
extra to install. The packages are hidden from a subprocess by an import hook (this venv has them all)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import yaml

OPTIONAL = ["lm_eval", "datasets", "pyarrow", "peft", "wandb", "optuna", "ray"]
HIDE = textwrap.dedent(f"""
    import sys
    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {OPTIONAL!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (hidden: a light install)")
            return None
    sys.meta_path.insert(0, Hide())
""")


def run_light(code: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE + textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.mark.slow
def test_search_and_merge_without_the_optional_packages(tmp_path, zoo_root, digits_zoo, tiny_llamas):
    env = {**os.environ, "EVOMERGE_ZOO": str(zoo_root), "WANDB_MODE": "disabled"}
    out = tmp_path / "run"
    proc = run_light(f"""
        sys.argv = ["evomerge", "experiment=digits", "search.budget=6", "optimizer.popsize=6",
                    "hydra.run.dir={out}"]
        from evomerge.__main__ import main
        main()
        for m in {OPTIONAL!r}:
            assert m not in sys.modules, m
    """, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "best_model" / "config.json").exists()

    cfg = {"merge_method": "ties", "base_model": str(tiny_llamas["base"]),
           "models": [{"model": str(tiny_llamas["a"]), "parameters": {"weight": 0.5, "density": 0.5}},
                      {"model": str(tiny_llamas["b"]), "parameters": {"weight": 0.5, "density": 0.5}}]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_light(f"""
        from evomerge.merge.export import main
        assert main(["{tmp_path / 'm.yaml'}", "{tmp_path / 'merged'}", "--no-progress"]) == 0
    """, env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    proc = run_light("""
        from evomerge.evaluator.lm_eval import LMEvalEvaluator
        LMEvalEvaluator(object(), ["gsm8k"])
    """, env)
    assert proc.returncode != 0 and "pip install 'evomerge[eval]'" in proc.stderr
    proc = run_light("""
        from evomerge import optimizer
        import numpy as np
        optimizer.build({"kind": "optuna"}, np.zeros(2), np.ones(2), 1, 0)
    """, env)
    assert proc.returncode != 0 and "evomerge[optuna]" in proc.stderr
