"""NSGA-II on jp_math_mini: the Pareto front of Japanese math vs the Japanese general task, on validation and test.

Runs `experiment=jp_math_mini_pareto` (or reuses a finished run directory), then scores every front member (found on
the fitness split) on the validation split here; the run itself already scored them on the held-out test split
(`pareto_final.json`). Writes a Markdown report: the experts and the plain average for reference, the front on
both splits, the hypervolume per generation, and a copy of the run's Pareto plot.

    python experiments/jp_math_mini/pareto.py --run-dir /tmp/jp_pareto --out experiments/jp_math_mini/pareto.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from evomerge.offline import set_offline_env

sys.path.insert(0, str(Path(__file__).parent))
from table1 import compose  # noqa: E402  (same Hydra composition as the Table 1 script)

METRICS = [("jp_math/acc_ja", "target (JA math, JA answer)"), ("ja_general/acc_ja", "JA general"),
           ("jp_math/acc", "right number"), ("jp_math/ja_rate", "Japanese answer")]


def cells(m: dict) -> str:
    return " | ".join(f"{100 * m[k]:.1f}" for k, _ in METRICS)


def main(argv=None) -> int:
    set_offline_env()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", default="outputs/jp_math_mini_pareto")
    ap.add_argument("--out", default="experiments/jp_math_mini/pareto.md")
    ap.add_argument("--plot", default="experiments/jp_math_mini/pareto.png", help="copy of the run's Pareto plot")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. search.budget=96")
    args = ap.parse_args(argv)
    import torch

    from evomerge import evaluator as evaluators_pkg
    from evomerge import models as models_pkg
    from evomerge.executor.worker import Worker
    from evomerge.final import average_recipe
    from evomerge.recipe import Recipe
    from evomerge.results import mcnemar
    from evomerge.run import run

    torch.set_num_threads(1)
    cfg = compose("jp_math_mini_pareto", args.overrides)
    run_dir = Path(args.run_dir)
    t0 = time.perf_counter()
    if not (run_dir / "final.json").exists():
        run(cfg, run_dir)
    t_search = time.perf_counter() - t0
    final = json.loads((run_dir / "final.json").read_text())
    archive = json.loads((run_dir / "archive.json").read_text())
    test_by_id = {r["id"]: r for r in json.loads((run_dir / "pareto_final.json").read_text())}

    # validation scores: the same worker the run uses (pool loaded once, evaluators on the zoo's splits)
    evaluators = evaluators_pkg.build(cfg["evaluator"], models_pkg.tokenizer_only(cfg["models"], cfg["paths"]["zoo"]),
                                      seed=int(cfg["seed"]), device="cpu")
    pool = models_pkg.build(cfg["models"], cfg["paths"]["zoo"], device="cpu")
    worker = Worker(pool, evaluators, keep_records=True)  # per-item test scores for the paired test below
    refs = [(n, worker.evaluate_model(n, "validation").metrics) for n in pool.all_names if n != pool.base_name]
    refs.append(("plain average", worker.evaluate(average_recipe(pool), "validation").metrics))
    test_refs = {r["model"]: r["metrics"] for r in final["final"]}
    front = sorted(archive["front"], key=lambda r: -r["metrics"]["jp_math/acc_ja"])
    rows = []
    for rec in front:
        val = worker.evaluate(Recipe.from_dict(rec["recipe"]), "validation")
        test = test_by_id[rec["id"]]
        if val.error or test.get("error"):
            raise RuntimeError(f"front member {rec['id']}: {val.error or test['error']}")
        items = worker.evaluate(Recipe.from_dict(rec["recipe"]), final["final_split"]).records["jp_math"]
        rows.append((rec, val.metrics, test[final["final_split"]], [r["correct"] for r in items]))
    minutes = (time.perf_counter() - t0) / 60

    head = "| model | split | " + " | ".join(c for _, c in METRICS) + " |"
    sep = "|---|---|" + "---|" * len(METRICS)
    n_eval = final["evaluations"]
    lines = ["# jp_math_mini: NSGA-II Pareto front (Japanese math vs Japanese general)", "",
             f"`experiment=jp_math_mini_pareto`: PS space (DARE-TIES, 16 per-layer genes), NSGA-II population "
             f"{cfg['optimizer']['popsize']}, {n_eval} evaluations on the fitness split (budget "
             f"{cfg['search']['budget']}), seed {cfg['seed']}. Accuracy in %. Front members were selected on the "
             f"fitness split; validation (100 items per task) and test (300 items per task) are scored here.", "",
             "## Reference models", "", head, sep]
    for name, m in refs:
        lines.append(f"| {name} | validation | {cells(m)} |")
        tname = name if name in test_refs else None
        if tname:
            lines.append(f"| {name} | test | {cells(test_refs[tname])} |")
    lines += ["", f"## Front ({len(rows)} member(s), sorted by fitness-split target)", "",
              "| member (id, generation) | fitness target / JA general | split | "
              + " | ".join(c for _, c in METRICS) + " |", "|---|---|---|" + "---|" * len(METRICS)]
    for rec, val, test, _items in rows:
        f = rec["metrics"]
        tag = f"{rec['id']} (gen {rec['generation']})"
        fit = f"{100 * f['jp_math/acc_ja']:.0f} / {100 * f['ja_general/acc_ja']:.0f}"
        lines.append(f"| {tag} | {fit} | validation | {cells(val)} |")
        lines.append(f"| {tag} | | test | {cells(test)} |")
    experts = {n: m for n, m in test_refs.items() if n not in ("plain average", "evolved (best)")
               and not n.endswith("(base)")}
    best_name = max(experts, key=lambda n: experts[n]["jp_math/acc_ja"])
    p0, n = experts[best_name]["jp_math/acc_ja"], evaluators[0].size(final["final_split"])
    expert_items = [r["correct"] for r in worker.evaluate_model(best_name, final["final_split"]).records["jp_math"]]
    above = []
    for rec, _, test, items in rows:  # paired items: exact McNemar on the items where the two disagree
        if abs(sum(items) / len(items) - test["jp_math/acc_ja"]) > 1e-9:
            raise RuntimeError(f"front member {rec['id']}: re-scored items disagree with pareto_final.json")
        only_member, only_expert, p = mcnemar(items, expert_items)
        if only_member > only_expert and p < 0.05:
            above.append(f"{rec['id']} ({only_member} vs {only_expert} discordant items, p = {p:.3g})")
    lines += ["", f"Front members whose test target is clearly above the best expert's ({best_name}, {100 * p0:.1f}%; "
              f"exact McNemar test on the {n} paired test items, p < 0.05): "
              + (", ".join(above) if above else "none") + ". One run, one seed.", "",
              "## Hypervolume per generation (fitness split)", "",
              f"Reference point (metric units, set from generation 0): {archive['reference_point']}.", "",
              "| generation | evaluations | front size | hypervolume |", "|---|---|---|---|"]
    for h in archive["hypervolume"]:
        lines.append(f"| {h['generation']} | {h['evaluations']} | {h['front_size']} | {h['hypervolume']:.4f} |")
    plot = run_dir / "report" / "pareto.png"
    if plot.exists():
        shutil.copyfile(plot, args.plot)
        lines += ["", f"![Pareto front]({Path(args.plot).name}) (copy of `report/pareto.png` of the run)"]
    cmd = f"python experiments/jp_math_mini/pareto.py --run-dir {args.run_dir} " + " ".join(args.overrides)
    lines += ["", f"Command: `{cmd.strip()}` (search and final test scoring {t_search / 60:.1f} min "
              f"(0 if the run directory was reused), total {minutes:.1f} min wall; zoo cached)."]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
