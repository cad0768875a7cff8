"""The FusionBench-style digits table (issue 7, `experiment=digits_multitask`): one row per method, one column per
task, accuracy on the TEST split (360 images per task), plus the average.

Rows: base, each expert, simple average, task arithmetic (lambda tuned on validation), TIES (lambda tuned on
validation, density fixed at 0.5), evolved per-layer PS (CMA-ES, experiment=digits) and the NSGA-II Pareto member
with the best average fitness (one objective per task). Searched rows: mean over seeds and a 95% bootstrap interval
over seeds. Everything (zoo, run directories) lives under --workdir.

    python experiments/digits_table.py --seeds 0 1 2 --budget 150 --out experiments/digits_table.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from evomerge.results import bootstrap_mean, provenance, save

TASKS = ["rot90", "mirror", "invert"]
PER_TASK = "search.objectives=[" + ",".join(f"{{metric: acc/{t}, direction: max}}" for t in TASKS) + "]"
LAMBDAS = [round(x, 2) for x in np.arange(0.1, 1.51, 0.1)]


def compose(zoo: Path, *overrides: str) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(version_base="1.3", config_module="evomerge.conf"):
        cfg = hydra_compose("config", overrides=["experiment=digits", f"paths.zoo={zoo}",
                                                 "logger.progress_bar=false", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def bootstrap_ci(values: list[float]) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean over seeds (crude with 3 seeds; it says how far seeds spread)."""
    return bootstrap_mean(values)[1:]


def accs(metrics: dict) -> list[float]:
    return [metrics[f"acc/{t}"] for t in TASKS]


def fixed_rows(cfg: dict) -> tuple[list[tuple[str, list[float], str]], dict]:
    """Base, experts, average, task arithmetic and TIES: deterministic given the zoo, tuned on validation."""
    from evomerge import models as models_pkg
    from evomerge.evaluator.vision import VisionEvaluator
    from evomerge.executor.worker import Worker
    from evomerge.final import average_recipe
    from evomerge.merge.merger import Merger
    from evomerge.recipe import Recipe, Rule

    pool = models_pkg.build(cfg["models"], cfg["paths"]["zoo"])
    ev_cfg = {k: v for k, v in cfg["evaluator"]["digits"].items() if k != "kind"}
    ev = VisionEvaluator(**ev_cfg)
    merger = Merger(pool)
    n = len(pool.names)
    rows = []
    for name in pool.all_names:
        label = "base model" if name == pool.base_name else f"expert: {name}"
        rows.append((label, accs(Worker(pool, [ev]).evaluate_model(name, "test").metrics), "deterministic"))
    rows.append(("simple average", accs(ev.evaluate(merger.apply(average_recipe(pool)), "test").metrics),
                 "deterministic"))

    def tuned(method: str, per_model: dict) -> tuple[float, list[float]]:
        def recipe(lam):
            return Recipe(models=list(pool.names), base=pool.base_name,
                          default=Rule(method, per_model=per_model, params={"lambda": lam}))
        val = {lam: ev.evaluate(merger.apply(recipe(lam)), "validation").metrics["acc/mean"] for lam in LAMBDAS}
        best = max(LAMBDAS, key=lambda lam: (val[lam], -lam))
        return best, accs(ev.evaluate(merger.apply(recipe(best)), "test").metrics)

    lam_ta, ta = tuned("task_arithmetic", {"weight": [1.0] * n})
    rows.append((f"task arithmetic (lambda={lam_ta} tuned on validation)", ta, "deterministic"))
    lam_ties, ties = tuned("ties", {"weight": [1.0] * n, "density": [0.5] * n})
    rows.append((f"TIES (density 0.5 fixed, lambda={lam_ties} tuned on validation)", ties, "deterministic"))
    return rows, {"n_test": ev.size("test"), "n_val": ev.size("validation"), "n_fitness": ev.size("fitness")}


def searched(cfg_overrides: list[str], zoo: Path, runs: Path, seeds: list[int], tag: str) -> list[list[float]]:
    from evomerge.run import run

    out = []
    for seed in seeds:
        run_dir = runs / f"{tag}_seed{seed}"
        summary = run(compose(zoo, f"seed={seed}", *cfg_overrides), run_dir)
        if tag == "cmaes":
            evolved = next(r for r in summary["final"] if r["model"] == "evolved (best)")
            out.append(accs(evolved["metrics"]))
        else:  # the Pareto member with the best mean fitness over the per-task objectives, scored on test
            front = json.loads((run_dir / "pareto_final.json").read_text())
            ok = [m for m in front if not m.get("error")]
            pick = max(ok, key=lambda m: np.mean(accs(m["fitness"])))
            out.append(accs(pick["test"]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=150)
    p.add_argument("--workdir", default="/tmp/evomerge_digits_table")
    p.add_argument("--out", default="experiments/digits_table.md")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    work = Path(args.workdir)
    shutil.rmtree(work / "runs", ignore_errors=True)
    zoo, runs = work / "zoo", work / "runs"
    budget = f"search.budget={args.budget}"

    rows, sizes = fixed_rows(compose(zoo))
    cma = searched([budget], zoo, runs, args.seeds, "cmaes")
    nsga = searched(["optimizer=nsga2", budget, PER_TASK], zoo, runs, args.seeds, "nsga2")
    wall = time.perf_counter() - t0

    cmd = "python experiments/digits_table.py " + " ".join(
        [f"--seeds {' '.join(map(str, args.seeds))}", f"--budget {args.budget}"])
    header, facts = provenance(cmd, zoo / "digits")
    numbers = {}
    lines = [
        "# Digits multi-task table (FusionBench-style)", "", *header,
        f"Wall time: {wall:.0f} s on 2 shared CPU cores", "",
        f"Accuracy on the **test** split ({sizes['n_test']} images per task). Lambdas tuned on the full validation "
        f"split ({sizes['n_val']} per task); searches score fitness on a {sizes['n_fitness']}-image subsample of "
        f"validation per task (seeded by the run seed). Searched rows: mean over seeds {args.seeds} "
        f"with a 95% percentile bootstrap interval of that mean over seeds (with {len(args.seeds)} seeds the "
        "interval mainly shows the spread; it is not a tight confidence interval).", "",
        "| method | " + " | ".join(TASKS) + " | average | runs |",
        "|---|" + "---|" * (len(TASKS) + 2),
    ]
    for label, a, note in rows:
        key = label.split(" (")[0]
        numbers |= {f"{key}/{t}": float(x) for t, x in zip([*TASKS, "average"], [*a, np.mean(a)], strict=True)}
        lines.append(f"| {label} | " + " | ".join(f"{x:.3f}" for x in a) + f" | {np.mean(a):.3f} | {note} |")
    for label, per_seed in ((f"evolved per-layer PS, CMA-ES (budget {args.budget})", cma),
                            (f"NSGA-II best-average Pareto member (budget {args.budget}, 3 objectives)", nsga)):
        arr = np.asarray(per_seed)
        cols = [*arr.T, arr.mean(1)]
        cells = []
        for t, c in zip([*TASKS, "average"], cols, strict=True):
            lo, hi = bootstrap_ci(list(c))
            cells.append(f"{c.mean():.3f} [{lo:.3f}, {hi:.3f}]")
            numbers[f"{label.split(' (')[0].split(',')[0]}/{t}"] = (float(c.mean()), lo, hi)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {len(per_seed)} seeds |")
    lines += ["", "Per-seed test averages: CMA-ES " + ", ".join(f"{np.mean(a):.3f}" for a in cma)
              + "; NSGA-II " + ", ".join(f"{np.mean(a):.3f}" for a in nsga) + "."]
    text = "\n".join(lines) + "\n"
    save(args.out, text, numbers, facts | {"seeds": args.seeds, "budget": args.budget})
    print(text)


if __name__ == "__main__":
    main()
