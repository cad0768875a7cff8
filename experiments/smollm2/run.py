"""experiment=smollm2_depth end to end, then a paired comparison of the found layer path with the unmodified model.

1. `evomerge.run.run` with experiment=smollm2_depth (the search, best recipe, held-out table on the test split);
2. the unmodified SmolLM2 and the found path scored again on the test split, keeping per-item records: the
   difference in arithmetic accuracy (200 problems) and in mean NLL (prose windows) with a 95% paired bootstrap
   interval over items, so a "better" number can be told from noise;
3. writes experiments/smollm2/result_seed<seed>.md (table, path, command, wall time).

    python experiments/smollm2/run.py                              # seed 0: ~13 min on one busy core
    python experiments/smollm2/run.py seed=1                       # another seed (CMA-ES and fitness subsample)
    python experiments/smollm2/run.py search.budget=12 --out /tmp/x.md   # a quick smoke run (not a result)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from evomerge.offline import set_offline_env

set_offline_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
ARITH, NLL = "smol_arith_fitness/acc,none", "ppl/nll"


def compose(*overrides: str) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(version_base="1.3", config_module="evomerge.conf"):
        cfg = hydra_compose("config", overrides=["experiment=smollm2_depth", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def paired_ci(diff: np.ndarray, weights: np.ndarray | None = None, n: int = 10000, seed: int = 0):
    """Mean difference (weighted by `weights`, e.g. tokens per window) and its 95% paired bootstrap interval."""
    w = np.ones_like(diff) if weights is None else weights
    idx = np.random.default_rng(seed).integers(0, len(diff), (n, len(diff)))
    boot = (diff[idx] * w[idx]).sum(1) / w[idx].sum(1)
    return float((diff * w).sum() / w.sum()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def describe_path(layers: list[int], num_layers: int) -> str:
    skipped = [i for i in range(num_layers) if i not in layers]
    repeated = sorted({i for i in layers if layers.count(i) > 1})
    return (f"{len(layers)} hops: {layers}; skipped {skipped or 'none'}; run twice {repeated or 'none'}")


def paired(cfg: dict, best_recipe) -> dict:
    """Per-item test scores of the unmodified model and the found path (same evaluators, same items)."""
    from evomerge import evaluator as evaluators_pkg
    from evomerge import models as models_pkg
    from evomerge.executor.worker import Worker

    pool = models_pkg.build(cfg["models"], cfg["paths"]["zoo"])
    evs = evaluators_pkg.build(cfg["evaluator"], pool.tokenizer, seed=int(cfg.get("seed", 0)))
    worker = Worker(pool, evs, keep_records=True)
    orig = worker.evaluate_model(pool.names[0], "test")
    found = worker.evaluate(best_recipe, "test")
    if found.error:
        raise RuntimeError(f"the found path failed on the test split: {found.error}")
    out = {"original": orig.metrics, "found": found.metrics}
    a = {r["id"]: r["acc"] for r in orig.records["arith"]}
    b = {r["id"]: r["acc"] for r in found.records["arith"]}
    ids = sorted(a)
    out["arith_diff"] = paired_ci(np.array([b[i] - a[i] for i in ids], float))
    a = {r["id"]: r for r in orig.records["ppl"]}
    b = {r["id"]: r for r in found.records["ppl"]}
    ids = sorted(a)
    out["nll_diff"] = paired_ci(np.array([b[i]["nll"] - a[i]["nll"] for i in ids]),
                                np.array([a[i]["tokens"] for i in ids], float))
    out["n_arith"], out["n_windows"] = len(orig.records["arith"]), len(ids)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. search.budget=12 seed=1")
    ap.add_argument("--run-dir", default=None, help="run directory (default: outputs/smollm2_depth-<time>)")
    ap.add_argument("--out", default=None, help="default: experiments/smollm2/result_seed<seed>.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")  # the search's per-generation lines
    from evomerge.recipe import Recipe
    from evomerge.run import run

    cfg = compose(*args.overrides)
    run_dir = Path(args.run_dir or f"outputs/smollm2_depth-{time.strftime('%Y%m%d-%H%M%S')}")
    t0 = time.perf_counter()
    summary = run(cfg, run_dir)
    t_search = time.perf_counter() - t0
    best = Recipe.load(run_dir / "best_recipe.yaml")
    cmp = paired(cfg, best)
    wall = time.perf_counter() - t0
    rows = {r["model"]: r["metrics"] for r in summary["final"]}
    n_fit = cfg["evaluator"]["arith"]["fitness_samples"]
    fit = summary["best"]["metrics"]
    command = "python experiments/smollm2/run.py" + "".join(f" {o}" for o in args.overrides)
    lines = [
        "# experiment=smollm2_depth: skip / repeat SmolLM2-135M-Instruct's own layers", "",
        f"Command: `{command}` (torch 1 thread, shared 2-core CPU). Wall time {wall / 60:.1f} min "
        f"(search + held-out table {t_search / 60:.1f} min, paired re-scoring the rest); "
        f"{summary['evaluations']} evaluations, seed {cfg.get('seed', 0)}.", "",
        f"Held-out test split: {cmp['n_arith']} few-shot arithmetic problems not used in the search (greedy exact "
        f"match), {cmp['n_windows']} windows of 128 tokens of prose from other topics than the fitness text "
        f"(mean token NLL, nats; ppl = exp).", "",
        "| model | arith acc (test) | NLL (test) | ppl (test) |", "|---|---|---|---|",
    ]
    for label, m in rows.items():
        lines.append(f"| {label} | {m[ARITH]:.3f} | {m[NLL]:.4f} | {m['ppl/ppl']:.2f} |")
    d_acc, d_nll = cmp["arith_diff"], cmp["nll_diff"]
    lines += [
        "", "(`plain average` of a single model is the model itself: the row checks that the search's model "
        "wiring reproduces it.)", "",
        f"Found path: {describe_path([h.layer for h in best.path], 30)}.", "",
        f"On the fitness split ({n_fit} problems, 8 windows) it scored arith acc {fit[ARITH]:.3f}, NLL "
        f"{fit[NLL]:.4f}.", "",
        "Paired test-split difference, found minus unmodified (95% bootstrap interval over items):", "",
        f"- arith accuracy: {d_acc[0]:+.3f} [{d_acc[1]:+.3f}, {d_acc[2]:+.3f}]",
        f"- mean NLL (token-weighted): {d_nll[0]:+.4f} [{d_nll[1]:+.4f}, {d_nll[2]:+.4f}] nats", "",
        f"Run directory: `{run_dir}` (evaluations.jsonl, best_recipe.yaml, final_table.md).",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out or HERE / f"result_seed{cfg.get('seed', 0)}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
