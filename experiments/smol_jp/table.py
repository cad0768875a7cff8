"""Sakana's jp_math study on real weights (the smol_jp zoo: SmolLM2-135M-Instruct and two LoRA experts).

Rows, all scored the same way on the held-out test split: the base, each expert, the plain average, task
arithmetic and TIES with their lambdas (and TIES's density) tuned on the validation split by a grid (what a careful
person would hand-tune), and the evolved PS merge (experiment=smol_jp, CMA-ES) over search seeds. Verdicts: a
paired bootstrap over seeds and test items against every other row. The test split is never used for selection.
Also: the preconditions, and the per-candidate cost (merge in memory vs scoring, evaluations per minute).

    python experiments/smol_jp/table.py --seeds 0,1,2 --runs <runs dir> --out experiments/smol_jp/table.md
Each search is a normal run directory under --runs: a finished one is reused, an interrupted one is resumed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from evomerge.offline import set_offline_env
from evomerge.results import bootstrap_mean, paired_bootstrap, provenance, save
from evomerge.store import atomic_write_text

TARGET = "jp_math/acc_ja"
COLUMNS = [("jp_math/acc_ja", "target (JA math, JA answer)"), ("jp_math/acc", "right number"),
           ("jp_math/ja_rate", "Japanese answer"), ("ja_general/acc_ja", "JA general")]
TA_GRID = "0.5,0.75,1"  # lambda per expert: 9 merges scored on validation (--ta-grid)
TIES_LAMBDAS, TIES_DENSITIES = "0.75,1,1.5", "0.3,0.7"  # 6 (lambda, density) merges (--ties-lambdas/--ties-densities)
# --tune-on graded: the grid point is chosen by the score the searches select with (smol_jp_graded's and
# smol_jp_nsga2's weights), not by the target alone, which is 0 on every point of the default grid.
GRADED = {"jp_math/acc_ja": 1.0, "jp_math/acc": 0.5, "jp_math/ja_rate": 0.5}
# search name -> (experiment config, row label)
SEARCHES = {"ps": ("smol_jp", "evolved PS (CMA-ES, target only)"),
            "graded": ("smol_jp_graded", "evolved PS (CMA-ES, graded fitness)"),
            "nsga2": ("smol_jp_nsga2", "evolved PS (NSGA-II, 3 objectives)"),
            "dfs": ("smol_jp_dfs", "evolved DFS (CMA-ES, graded fitness)"),
            "psdfs": ("smol_jp_psdfs", "evolved PS+DFS (CMA-ES, graded fitness)")}
STAGE1 = {"psdfs": "ps"}  # a two-stage search -> the search whose best recipe (same seed) is its model `ps`


def compose(overrides: list[str], experiment: str = "smol_jp") -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"experiment={experiment}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def pareto_plot(run_dirs: list[Path], out: Path, split: str, references: dict[str, dict]) -> int:
    """The NSGA-II fronts' members on the held-out split: right number vs Japanese answer (size: the target), with
    the reference rows (sources, average, tuned baselines) as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    n = 0
    for d in run_dirs:
        f = d / "pareto_final.json"
        if not f.exists():
            continue
        pts = [m[split] for m in json.loads(f.read_text()) if m.get(split)]  # (final.pareto_held_out's rows)
        n += len(pts)
        ax.scatter([100 * p["jp_math/acc"] for p in pts], [100 * p["jp_math/ja_rate"] for p in pts],
                   s=[20 + 400 * p["jp_math/acc_ja"] for p in pts], alpha=0.6, label=d.name)
    for i, (label, m) in enumerate(references.items()):
        x, y = 100 * m["jp_math/acc"], 100 * m["jp_math/ja_rate"]
        ax.scatter([x], [y], marker="x", color="black")
        ax.annotate(label.split(" (")[0], (x, y), fontsize=6, xytext=(3, 3 + 7 * (i % 2)), textcoords="offset points")
    ax.set_xlabel(f"right number, % ({split})")
    ax.set_ylabel(f"Japanese answer, % ({split})")
    ax.set_title("smol_jp NSGA-II fronts (marker size: target)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return n


def items(out, what: str) -> np.ndarray:
    if out.error:
        raise RuntimeError(f"{what}: {out.error}")
    return np.array([r["correct"] for r in out.records["jp_math"]], float)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def score(metrics: dict, tune_on: str) -> float:
    return metrics[TARGET] if tune_on == "target" else sum(w * metrics[k] for k, w in GRADED.items())


def tuned(worker, grid, recipe_for, tune_on: str) -> tuple[tuple, dict, dict]:
    """The grid point with the best validation score (ties: the first, i.e. the smallest settings), every point's
    score, and every point's validation target."""
    scores, targets = {}, {}
    for point in grid:
        metrics = worker.evaluate(recipe_for(*point), "validation").metrics
        scores[point], targets[point] = score(metrics, tune_on), metrics[TARGET]
    best = max(grid, key=lambda p: scores[p])
    return best, scores, targets


def main(argv=None) -> int:
    set_offline_env()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--runs", required=True, help="run directories go here (reused / resumed)")
    ap.add_argument("--out", default="experiments/smol_jp/table.md")
    ap.add_argument("--searches", default="ps", help=f"comma-separated, of {sorted(SEARCHES)}")
    ap.add_argument("--ta-grid", default=TA_GRID, help="task arithmetic: lambda values, per expert (a square grid)")
    ap.add_argument("--ties-lambdas", default=TIES_LAMBDAS, help="TIES: lambda values")
    ap.add_argument("--ties-densities", default=TIES_DENSITIES, help="TIES: density values")
    ap.add_argument("--tune-on", choices=("target", "graded"), default="target",
                    help="the validation score that picks the grid point: the target, or the searches' weighted "
                         f"score {GRADED}")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every search, e.g. search.budget=30")
    args = ap.parse_args(argv)
    from evomerge import models as models_pkg
    from evomerge import preconditions as preconditions_pkg
    from evomerge.executor import make_worker
    from evomerge.final import average_recipe
    from evomerge.load import add_recipe_model
    from evomerge.recipe import Recipe, Rule
    from evomerge.run import run

    t0 = time.perf_counter()
    ta_grid = [(a, b) for a in floats(args.ta_grid) for b in floats(args.ta_grid)]
    ties_grid = [(lam, d) for lam in floats(args.ties_lambdas) for d in floats(args.ties_densities)]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = Path(args.runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before any compute: the table and its plot go there
    cfg = compose(args.overrides)
    import torch

    torch.set_num_threads(int(cfg.get("threads") or 2))
    pool = models_pkg.build(cfg["models"], cfg["paths"]["zoo"])
    worker = make_worker(cfg["evaluator"], 0, True, pool, "cpu")
    experts = list(pool.names)

    def ta(lj, lm):
        return Recipe(models=experts, base=pool.base_name,
                      default=Rule("task_arithmetic", per_model={"weight": [lj, lm]}))

    def ties(lam, d):
        return Recipe(models=experts, base=pool.base_name, default=Rule(
            "ties", per_model={"weight": [1.0, 1.0], "density": [d, d]}, params={"lambda": lam}))

    def references() -> dict:
        """Preconditions, the source/average rows and the tuned baselines (each with its per-item test vector)."""
        pre = preconditions_pkg.measure(worker, preconditions_pkg.parse(cfg.get("preconditions")))
        print(preconditions_pkg.format_results(pre), flush=True)
        rows, vec = {}, {}
        for name in pool.all_names:
            label = name if name != pool.base_name else f"{name} (base)"
            out = worker.evaluate_model(name, "test")
            rows[label], vec[label] = out.metrics, items(out, label).tolist()
        out = worker.evaluate(average_recipe(pool), "test")
        rows["plain average"], vec["plain average"] = out.metrics, items(out, "plain average").tolist()
        t_grid = time.perf_counter()
        (lj, lm), ta_val, ta_target = tuned(worker, ta_grid, ta, args.tune_on)
        (lam, dens), ties_val, ties_target = tuned(worker, ties_grid, ties, args.tune_on)
        t_grid = time.perf_counter() - t_grid
        for label, recipe in ((f"task arithmetic (lambda ja {lj:g}, math {lm:g}, tuned on validation)", ta(lj, lm)),
                              (f"TIES (lambda {lam:g}, density {dens:g}, tuned on validation)", ties(lam, dens))):
            out = worker.evaluate(recipe, "test")
            rows[label], vec[label] = out.metrics, items(out, label).tolist()
        print(f"baselines tuned on {args.tune_on} in {t_grid:.0f} s: TA {lj}, {lm} (validation "
              f"{ta_val[(lj, lm)]:.3f}); TIES {lam}, {dens} (validation {ties_val[(lam, dens)]:.3f})", flush=True)
        return {"preconditions": pre, "rows": rows, "vec": vec,
                "ta_validation": {f"{a},{b}": v for (a, b), v in ta_val.items()},
                "ties_validation": {f"{a},{b}": v for (a, b), v in ties_val.items()},
                "ta_validation_target": {f"{a},{b}": v for (a, b), v in ta_target.items()},
                "ties_validation_target": {f"{a},{b}": v for (a, b), v in ties_target.items()}}

    # The reference rows do not depend on the searches: they are kept in <runs>/references.json, keyed by the
    # models, evaluators and grids, so that a table extended by more searches later does not score them again.
    key = {"models": cfg["models"], "evaluator": cfg["evaluator"], "preconditions": cfg.get("preconditions"),
           "ta_grid": floats(args.ta_grid), "ties_grid": [list(p) for p in ties_grid]}
    if args.tune_on != "target":  # (absent for the target, so caches made before the option stay valid)
        key["tune_on"] = args.tune_on
    cache = runs / "references.json"
    cached = json.loads(cache.read_text()) if cache.exists() else None
    if cached is not None and cached.get("key") == json.loads(json.dumps(key)):
        ref = cached["references"]
        print(f"reference rows reused from {cache}", flush=True)
    else:
        ref = references()
        runs.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps({"key": key, "references": ref}))
    pre, rows = ref["preconditions"], ref["rows"]
    vec = {label: np.asarray(v, float) for label, v in ref["vec"].items()}
    ta_val, ties_val = ref["ta_validation"], ref["ties_validation"]
    grid_targets = [v for k in ("ta_validation_target", "ties_validation_target") for v in ref.get(k, {}).values()]

    def search(name: str):
        """Each seed's run of search `name` (reused when finished, resumed when interrupted): its held-out
        metrics, per-item test vector, evaluations used and (merge s, evaluation s)."""
        experiment = SEARCHES[name][0]
        evolved, evo_vec, used, cost, dirs = [], [], [], [], []
        for seed in seeds:
            run_dir = runs / f"{name}_seed{seed}"
            dirs.append(run_dir)
            stage1 = []
            if name in STAGE1:  # Sakana's PS+DFS: this seed's PS result is merged on load as the model `ps`
                recipe_file = runs / f"{STAGE1[name]}_seed{seed}" / "best_recipe.yaml"
                if not recipe_file.exists():
                    raise FileNotFoundError(f"--searches {name} needs stage 1 first: {recipe_file} does not exist "
                                            f"(add {STAGE1[name]} before {name} in --searches)")
                stage1 = [f"space.recipe_models.ps={recipe_file}"]
                pool.state.pop("ps", None)
                add_recipe_model(pool, "ps", recipe_file)  # for re-scoring this seed's best path below
            scfg = compose([f"seed={seed}", *stage1, *args.overrides], experiment)
            if not (run_dir / "final.json").exists():
                run(scfg | {"resume": (run_dir / "evaluations.jsonl").exists()}, run_dir)
            final = json.loads((run_dir / "final.json").read_text())
            used.append(int(final["evaluations"]))
            m = next(r["metrics"] for r in final["final"] if r["model"] == "evolved (best)")
            best = Recipe.load(run_dir / "best_recipe.yaml")
            worker.merger.apply(best)  # warm (the first apply of a method builds its per-search memo)
            t1 = time.perf_counter()
            worker.merger.apply(best)
            t2 = time.perf_counter()
            out = worker.evaluate(best, "test")
            v = items(out, f"{name} seed {seed}")
            if abs(v.mean() - m[TARGET]) > 1e-9:
                raise RuntimeError(f"seed {seed}: re-scored target {v.mean()} != {m[TARGET]} in {run_dir}/final.json")
            evolved.append(m)
            evo_vec.append(v)
            recs = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines() if line]
            walls = [r["wall_time"] for r in recs if not r.get("cached") and r.get("wall_time")]
            cost.append((t2 - t1, float(np.median(walls)) if walls else float("nan")))
        return evolved, np.stack(evo_vec), used, cost, dirs

    head = "| model | " + " | ".join(c for _, c in COLUMNS) + " |"
    lines = [head, "|---|" + "---|" * len(COLUMNS)]
    for label, metrics in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{100 * metrics[k]:.1f}" for k, _ in COLUMNS) + " |")
    numbers = {f"{label.split(' (')[0]}/{k}": metrics[k] for label, metrics in rows.items() for k, _ in COLUMNS}
    verdicts, all_cost, pareto_dirs = [], [], []
    for name in args.searches.split(","):
        evolved, evo, used, cost, dirs = search(name)
        all_cost += cost
        if name == "nsga2":
            pareto_dirs = dirs
        label = SEARCHES[name][1]
        cells = []
        for k, _ in COLUMNS:
            mean, lo, hi = bootstrap_mean([m[k] for m in evolved])
            numbers[f"{label}/{k}"] = (mean, lo, hi)
            cells.append(f"{100 * mean:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
        lines.append(f"| {label} ({len(seeds)} seeds, {'/'.join(map(str, sorted(set(used))))} evaluations) | "
                     + " | ".join(cells) + " |")
        verdicts += ["", f"{label} against each row (paired bootstrap over seeds and test items, 10,000 resamples):",
                     ""]
        for other in rows:
            d, lo, hi = paired_bootstrap(evo, vec[other])
            verdicts.append(f"- minus {other}: {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] points: "
                            + ("**better**" if lo > 0 else "worse" if hi < 0 else "not distinguishable"))
    if pareto_dirs:
        png = Path(args.out).with_name(Path(args.out).stem + "_pareto.png")  # beside the table, named after it
        n_front = pareto_plot(pareto_dirs, png, cfg["final_split"], rows)
        verdicts += ["", f"Pareto plot: `{png.name}`, beside this table ({n_front} front members of the "
                     "NSGA-II runs, each scored once on the test split; never used for selection)."]
    cost = all_cost
    merge_s, eval_s = np.median([c[0] for c in cost]), np.median([c[1] for c in cost])
    n_test = len(next(iter(vec.values())))
    options = [f"--{k.replace('_', '-')} {v}" for k, v in (("ta_grid", args.ta_grid), ("ties_lambdas", args.ties_lambdas),
               ("ties_densities", args.ties_densities), ("tune_on", args.tune_on)) if v != ap.get_default(k)]
    cmd = "python experiments/smol_jp/table.py " + " ".join([f"--seeds {args.seeds}", f"--searches {args.searches}",
                                                              *options, *args.overrides])
    grid = (f"task arithmetic on a {len(floats(args.ta_grid))}x{len(floats(args.ta_grid))} lambda grid, TIES on "
            f"{len(ties_grid)} (lambda, density) points: {len(ta_grid) + len(ties_grid)} merges scored on validation, "
            f"chosen by {'the target' if args.tune_on == 'target' else f'the weighted score {GRADED}'}")
    if grid_targets:
        grid += f"; the best validation target of any grid merge: {100 * max(grid_targets):.1f}%"
    header, facts = provenance(cmd, Path(cfg["models"]["base"]["path"]).parent)
    text = "\n".join([
        "# smol_jp: Sakana's jp_math study on real weights (SmolLM2-135M-Instruct, LoRA experts)", "", *header,
        f"Wall time: {(time.perf_counter() - t0) / 60:.1f} min (finished searches under {args.runs} are reused)", "",
        f"Held-out test split ({n_test} problems), accuracy in %. Evolved: mean [95% bootstrap interval over the "
        f"search seeds {seeds}; with 3 seeds about their min-max]. Baselines tuned on the validation split "
        f"({grid}), scored once on test.", "", *lines, *verdicts, "", preconditions_pkg.format_results(pre), "",
        f"Per candidate: merge in memory {merge_s:.2f} s (warm), whole evaluation (merge + fitness scoring) {eval_s:.1f} s "
        f"(median over each search's evaluations), so {60 / eval_s:.1f} evaluations per minute; merging is "
        f"{100 * merge_s / eval_s:.0f}% of the cost."])
    print(text)
    numbers |= {f"precondition {p['model']} {p['metric']} ({p['split']})": p["value"] for p in pre}
    save(args.out, text, numbers, facts | {"seeds": seeds, "preconditions": pre, "ta_validation": ta_val,
                                           "ties_validation": ties_val})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
