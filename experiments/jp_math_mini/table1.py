"""Sakana's Table 1 in miniature: source models, PS, DFS and PS+DFS on jp_math_mini, >= 3 search seeds.

Rows: the two experts (and the base), then each evolved stage; columns: the target (Japanese math: right number AND
Japanese answer, Sakana's MGSM-JA column), its number and format parts, and the Japanese general task (Sakana's
JP-LMEH column), all on the held-out test split. Evolved rows give the mean over seeds and a 95% bootstrap interval
(percentile, 10,000 resamples of the seeds: it covers seed-to-seed variation only, not the sampling noise of the
test items, whose standard error the script prints next to it); source rows are deterministic. The zoo is built once (zoo seed 0).

    python experiments/jp_math_mini/table1.py --seeds 0,1,2 --out experiments/jp_math_mini/table1.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from evomerge.offline import set_offline_env

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


def bootstrap(values: list[float], n: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=float)
    means = np.random.default_rng(seed).choice(v, size=(n, len(v)), replace=True).mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv=None) -> int:
    set_offline_env()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="experiments/jp_math_mini/table1.md")
    ap.add_argument("--runs", default="experiments/jp_math_mini/runs", help="run directories go here")
    ap.add_argument("--stages", default="ps,dfs,psdfs")
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
            cfg = compose(experiment, [f"seed={seed}", *extra, *args.overrides])
            if not final.exists():  # finished runs are reused, so the script can be resumed
                run(cfg, run_dir)
            done = json.loads(final.read_text())
            budgets[stage].add(int(done.get("evaluations") or cfg["search"]["budget"]))
            rows = done["final"]
            for r in rows:
                if r["model"] != "evolved (best)":
                    sources.setdefault(r["model"], r["metrics"])  # deterministic given the zoo: same in every run
            evolved[stage].append(next(r["metrics"] for r in rows if r["model"] == "evolved (best)"))
    minutes = (time.perf_counter() - t0) / 60
    test_file = cfg["evaluator"]["jp_math"]["test"]
    n_test = sum(1 for line in Path(test_file).read_text().splitlines() if line.strip())
    head = "| model | " + " | ".join(c for _, c in COLUMNS) + " |"
    budget_text = "; ".join(f"{LABEL[s]} {'/'.join(str(b) for b in sorted(budgets[s]))} evaluations" for s in stages)
    lines = [f"jp_math_mini (Sakana's Table 1 in miniature), held-out test split, accuracy in %. Evolved rows: mean "
             f"[95% bootstrap CI] over search seeds {seeds}. Search budgets per run: {budget_text}.", "",
             head, "|---|" + "---|" * len(COLUMNS)]
    for name, m in sources.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * m[k]:.1f}" for k, _ in COLUMNS) + " |")
    experts = {n: m for n, m in sources.items() if n not in ("plain average",) and not n.startswith("base")}
    best_expert = max(m[TARGET] for m in experts.values())
    verdicts = []
    for stage in stages:
        cells = []
        for k, _ in COLUMNS:
            mean, lo, hi = bootstrap([m[k] for m in evolved[stage]])
            cells.append(f"{100 * mean:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
            if k == TARGET:
                beats = lo > best_expert
                avg = sources.get("plain average", {}).get(TARGET)
                se = np.sqrt(mean * (1 - mean) / n_test)
                verdicts.append(
                    f"{LABEL[stage]}: {'beats' if beats else 'does NOT beat'} both experts on the target by the seed "
                    f"CI (lower end {100 * lo:.1f} vs best expert {100 * best_expert:.1f}); "
                    + ("" if avg is None else f"{'above' if lo > avg else 'not above'} the plain average "
                       f"({100 * avg:.1f}); ")
                    + f"test-sampling standard error of the mean {100 * se:.1f} points ({n_test} items), not in the CI")
        lines.append(f"| {LABEL[stage]} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed, target (JA math, JA answer) on test: " + "; ".join(
        f"{LABEL[s]} " + ", ".join(f"{100 * m[TARGET]:.1f}" for m in evolved[s]) for s in stages) + ".", ""]
    lines += [f"- {v}." for v in verdicts]
    cmd = "python experiments/jp_math_mini/table1.py " + " ".join(
        [f"--seeds {args.seeds}", f"--stages {args.stages}", *args.overrides])
    lines += ["", f"Command: `{cmd}` ({minutes:.1f} min wall for the runs not already in {args.runs}; zoo cached)."]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
