"""Sakana's Table 1 in miniature: source models, PS, DFS and PS+DFS on jp_math_mini, >= 3 search seeds.

Rows: the two experts (and the base), then each evolved stage; columns: the target (Japanese math: right number AND
Japanese answer, Sakana's MGSM-JA column), its number and format parts, and the Japanese general task (Sakana's
JP-LMEH column), all on the held-out test split. Evolved rows give the mean over seeds and a 95% bootstrap interval
(percentile, 10,000 resamples of the seeds: it covers seed-to-seed variation only, not the sampling noise of the
test items, whose standard error the script prints next to it); source rows are deterministic. The zoo is built once
per zoo seed (`--zoo-seed`, default 0) under `$EVOMERGE_ZOO/zoo_seed<k>`. Writes the table (`--out`) and its numbers
(same name, `.json`) for `experiments/regenerate.py`.

    python experiments/jp_math_mini/table1.py --seeds 0,1,2 --out experiments/jp_math_mini/table1.md
    python experiments/jp_math_mini/table1.py --zoo-seed 1 --runs /tmp/t1_zoo1 --out experiments/jp_math_mini/table1_zoo1.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from evomerge.offline import set_offline_env
from evomerge.results import bootstrap_mean as bootstrap
from evomerge.results import paired_bootstrap, provenance, save

TARGET = "jp_math/acc_ja"
EXPERIMENTS = {"ps": "jp_math_mini", "dfs": "jp_math_mini_dfs", "psdfs": "jp_math_mini_psdfs"}
LABEL = {"ps": "evolved PS", "dfs": "evolved DFS", "psdfs": "evolved PS+DFS"}
COLUMNS = [("jp_math/acc_ja", "target (JA math, JA answer)"), ("jp_math/acc", "right number"),
           ("jp_math/ja_rate", "Japanese answer"), ("ja_general/acc_ja", "JA general")]


def compose(experiment: str, overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"experiment={experiment}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def item_scores(cfgs, runs, stages, seeds, sources, evolved, preconditions: list):
    """Per-test-item target scores (1 = right number in Japanese) of every source and every evolved best recipe,
    re-scored here with the run's own pool and evaluators; each must reproduce the run's final.json number."""
    from evomerge import models as models_pkg
    from evomerge import space as space_pkg
    from evomerge.executor import make_worker
    from evomerge.final import average_recipe
    from evomerge.recipe import Recipe

    def vec(out, expected, what):
        v = np.array([r["correct"] for r in out.records["jp_math"]], float)
        if out.error or abs(v.mean() - expected) > 1e-9:
            raise RuntimeError(f"{what}: re-scored target {v.mean()} != {expected} in final.json ({out.error})")
        return v

    items_src, items_evo = {}, {s: [] for s in stages}
    for i, seed in enumerate(seeds):
        for stage in stages:
            cfg = cfgs[stage, seed]
            pool = models_pkg.build(cfg["models"], cfg["paths"]["zoo"])
            space_pkg.build(cfg["space"], cfg["merge"], pool, seed=seed)  # adds the PS model of PS+DFS to the pool
            worker = make_worker(cfg["evaluator"], seed, True, pool, "cpu")
            if not items_src:
                for name in pool.all_names:
                    row = name if name != pool.base_name else f"{name} (base)"
                    items_src[row] = vec(worker.evaluate_model(name, "test"), sources[row][TARGET], row)
                from evomerge import preconditions as preconditions_pkg

                preconditions += preconditions_pkg.measure(worker, preconditions_pkg.parse(cfg.get("preconditions")))
                items_src["plain average"] = vec(worker.evaluate(average_recipe(pool), "test"),
                                                 sources["plain average"][TARGET], "plain average")
            best = Recipe.load(runs / f"{stage}_seed{seed}" / "best_recipe.yaml")
            items_evo[stage].append(vec(worker.evaluate(best, "test"), evolved[stage][i][TARGET],
                                        f"{stage} seed {seed}"))
    return items_src, items_evo


def main(argv=None) -> int:
    set_offline_env()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="experiments/jp_math_mini/table1.md")
    ap.add_argument("--runs", default="experiments/jp_math_mini/runs", help="run directories go here")
    ap.add_argument("--stages", default="ps,dfs,psdfs")
    ap.add_argument("--zoo-seed", type=int, default=0, help="the jp_mini zoo's seed (its data and training)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. search.budget=60")
    args = ap.parse_args(argv)
    import torch

    from evomerge.run import run

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    stages = args.stages.split(",")
    t0 = time.perf_counter()
    runs = Path(args.runs)
    sources: dict[str, dict] = {}
    evolved: dict[str, list[dict]] = {s: [] for s in stages}
    budgets: dict[str, set] = {s: set() for s in stages}
    cfgs: dict[tuple[str, int], dict] = {}
    # each zoo seed has its own folder: a zoo of another seed in the same folder would be rebuilt over it
    zoo_root = Path(compose(EXPERIMENTS["ps"], [])["paths"]["zoo"]).expanduser() / f"zoo_seed{args.zoo_seed}"
    zoo = [f"models.zoo_seed={args.zoo_seed}", f"paths.zoo={zoo_root}"]
    for seed in seeds:
        for stage in stages:
            experiment = EXPERIMENTS[stage]
            # PS+DFS merges *this seed's* PS result on load (Sakana's PS+DFS: the PS model is DFS's model A)
            extra = [f"space.recipe_models.ps={runs / f'ps_seed{seed}' / 'best_recipe.yaml'}"] if stage == "psdfs" else []
            if stage == "psdfs" and not (runs / f"ps_seed{seed}" / "best_recipe.yaml").exists():
                raise SystemExit(f"--stages {args.stages}: psdfs needs the PS run of seed {seed} "
                                 f"({runs / f'ps_seed{seed}'}); put ps before psdfs in --stages")
            run_dir = runs / f"{stage}_seed{seed}"
            final = run_dir / "final.json"
            cfg = cfgs[stage, seed] = compose(experiment, [f"seed={seed}", *zoo, *extra, *args.overrides])
            if not final.exists():  # finished runs are reused, so the script can be resumed
                run(cfg, run_dir)
            done = json.loads(final.read_text())
            budgets[stage].add(int(done.get("evaluations") or cfg["search"]["budget"]))
            rows = done["final"]
            for r in rows:
                if r["model"] != "evolved (best)":
                    sources.setdefault(r["model"], r["metrics"])  # deterministic given the zoo: same in every run
            evolved[stage].append(next(r["metrics"] for r in rows if r["model"] == "evolved (best)"))
    preconditions: list[dict] = []
    items_src, items_evo = item_scores(cfgs, runs, stages, seeds, sources, evolved, preconditions)
    minutes = (time.perf_counter() - t0) / 60
    n_test = len(next(iter(items_src.values())))
    head = "| model | " + " | ".join(c for _, c in COLUMNS) + " |"
    budget_text = "; ".join(f"{LABEL[s]} {'/'.join(str(b) for b in sorted(budgets[s]))} of "
                            f"{cfgs[s, seeds[0]]['search']['budget']}" for s in stages)
    lines = [f"jp_math_mini (Sakana's Table 1 in miniature), held-out test split ({n_test} items per task), accuracy "
             f"in %. Evolved rows: mean [95% bootstrap CI over the seeds] over search seeds {seeds}. Evaluations used "
             f"per run, of the configured budget (CMA-ES may stop early on a flat fitness): {budget_text}.", "",
             head, "|---|" + "---|" * len(COLUMNS)]
    for name, m in sources.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * m[k]:.1f}" for k, _ in COLUMNS) + " |")
    experts = [n for n in items_src if n != "plain average" and not n.endswith("(base)")]
    for stage in stages:
        cells = []
        for k, _ in COLUMNS:
            mean, lo, hi = bootstrap([m[k] for m in evolved[stage]])
            cells.append(f"{100 * mean:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
        lines.append(f"| {LABEL[stage]} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed, target (JA math, JA answer) on test: " + "; ".join(
        f"{LABEL[s]} " + ", ".join(f"{100 * m[TARGET]:.1f}" for m in evolved[s]) for s in stages) + ".", "",
        "The bracketed intervals above resample the 3 seeds only (with 3 seeds they are about [min, max]) and ignore "
        "the noise of the test sample. Differences on the target with a paired bootstrap over seeds AND test items "
        "(10,000 resamples; each resample draws seeds and items with replacement, the same items for both rows):", ""]
    verdicts: dict[str, dict] = {}
    for stage in stages:
        evo = np.stack(items_evo[stage])
        diffs = []
        for ref in [*experts, "plain average"]:
            d, lo, hi = paired_bootstrap(evo, items_src[ref])
            diffs.append((ref, d, lo, hi))
        beats = all(lo > 0 for ref, _, lo, _ in diffs if ref in experts)
        verdicts[LABEL[stage]] = {"beats_both_experts": beats, "beats_plain_average": next(
            lo > 0 for ref, _, lo, _ in diffs if ref == "plain average")}
        text = "; ".join(f"minus {ref} {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" for ref, d, lo, hi in diffs)
        lines.append(f"- {LABEL[stage]}: {text} points. "
                     + ("**Beats both experts** (every interval above 0)." if beats
                        else "Does NOT beat both experts (an interval includes or is below 0)."))
    cmd = "python experiments/jp_math_mini/table1.py " + " ".join(
        [f"--seeds {args.seeds}", f"--stages {args.stages}", f"--zoo-seed {args.zoo_seed}", *args.overrides])
    header, facts = provenance(cmd, zoo_root / "jp_mini")
    from evomerge.preconditions import format_results

    lines = [f"# jp_math_mini: Sakana's Table 1 in miniature (zoo seed {args.zoo_seed})", "", *header,
             f"Wall time: {minutes:.1f} min (runs found in {args.runs} are reused)", "", *lines, "",
             format_results(preconditions)]
    numbers = {f"{name}/{k}": m[k] for name, m in sources.items() for k, _ in COLUMNS}
    for stage in stages:
        numbers |= {f"{LABEL[stage]}/{k}": bootstrap([m[k] for m in evolved[stage]]) for k, _ in COLUMNS}
    text = "\n".join(lines)
    print(text)
    numbers |= {f"precondition {p['model']} {p['metric']} ({p['split']})": p["value"] for p in preconditions}
    save(args.out, text, numbers, facts | {"zoo_seed": args.zoo_seed, "seeds": seeds, "preconditions": preconditions,
                                           "verdicts": verdicts})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
