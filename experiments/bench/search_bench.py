"""Search benchmark on the digits experiment: which optimiser, and does multi-fidelity save evaluations?

Part A - random search vs CMA-ES vs NSGA-II at equal budget (same evaluations, same seeds, objective acc/mean on
the fitness split). Reported: best fitness, and the held-out test accuracy of each run's best candidate.

Part B - full fidelity vs successive halving (rungs 1/9, 1/3, 1 of the fitness split, eta 3), both CMA-ES. For each
run we follow the best-so-far candidate (top fidelity only) against the number of samples actually evaluated, and
score every new best once on the held-out test split. The target is the full-fidelity run's final held-out score
(same seed); reported is how many evaluated samples each needed to first reach it, and the ratio MF / full.
Goal: <= 1/3. Medians over seeds.

Part C - a multi-objective run (one objective per task, NSGA-II): Pareto front size and hypervolume per generation.

Part D - the search-efficiency goal (issue 18): CMA-ES at full fidelity is the reference; for each method (random
search, Optuna's TPE and GP samplers, CMA-ES on anchor-item estimates, CMA-ES with successive halving) and each
seed, the evaluated samples until the best-so-far candidate's held-out test score first reaches the reference's
final held-out score, as a ratio to the reference's total evaluated samples (the reference's own row: when it first
got there), and each method's held-out score within the reference's total samples. Anchor runs count their calibration (every pool model and the average
scored on the whole fitness split) in their samples. Goal: median ratio <= 1/3.

    python experiments/bench/search_bench.py            # 3 seeds (about 10-20 min on 2 busy cores)
    python experiments/bench/search_bench.py --quick    # 1 seed, small budgets (a smoke test)
    python experiments/bench/search_bench.py --parts D --seeds 5   # the issue-18 goal table
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from evomerge.offline import set_offline_env

set_offline_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from evomerge import evaluator as evaluators_pkg  # noqa: E402
from evomerge import models as models_pkg  # noqa: E402
from evomerge import optimizer as optimizer_pkg  # noqa: E402
from evomerge import space as space_pkg  # noqa: E402
from evomerge.executor.serial import SerialExecutor  # noqa: E402
from evomerge.executor.worker import Worker  # noqa: E402
from evomerge.recipe import Recipe  # noqa: E402
from evomerge.search.loop import SearchSettings, run_search  # noqa: E402
from evomerge.search.objectives import Objective  # noqa: E402

FITNESS_SAMPLES: list[str] = []  # extra override, e.g. ["evaluator.digits.fitness_samples=360"]


STUDIES = {  # name -> (experiment overrides, the objective and held-out metric, the evaluator anchors wrap)
    "digits": (["experiment=digits"], "acc/mean", "digits"),
    # jp_math_mini without its second task (ja_general is reported, never searched): the search's fitness alone
    "jp_math_mini": (["experiment=jp_math_mini", "~evaluator.ja_general"], "jp_math/acc_ja", "jp_math"),
}
STUDY = "digits"


def load_digits(seed: int, anchors: dict | None = None):
    """(cfg, pool, space, worker, evaluators) of the current STUDY (digits unless --study says otherwise)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    overrides, _, ev_name = STUDIES[STUDY]
    with initialize_config_module(config_module="evomerge.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=[*overrides, f"seed={seed}", *FITNESS_SAMPLES]),
                                     resolve=True)
    if anchors:
        cfg["evaluator"][ev_name]["anchors"] = anchors
    pool = models_pkg.build(cfg["models"], cfg["paths"]["zoo"])
    space = space_pkg.build(cfg["space"], cfg["merge"], pool, seed=seed)
    evaluators = evaluators_pkg.build(cfg["evaluator"], pool.tokenizer, seed=seed)
    return cfg, pool, space, Worker(pool, evaluators), evaluators


def metric() -> str:
    return STUDIES[STUDY][1]


class CountingLogger:
    """Follows the best-so-far top-fidelity record against cumulative evaluated samples."""

    def __init__(self, objectives):
        self.samples, self.best, self.trace = 0, None, []  # trace: (samples, record) at every new best
        self.objectives = objectives

    def evaluation(self, r):
        if not r["cached"]:
            self.samples += r["n_samples"]
        if r["metrics"] is None or not r["top_fidelity"]:
            return
        if self.best is None or np.mean(r["objectives"]) < np.mean(self.best["objectives"]):
            self.best = r
            self.trace.append((self.samples, r))

    def generation(self, *a, **k):
        pass


def search(space, worker, objectives, kind, popsize, budget, seed, fidelity=None, n_fitness=200, options=None):
    seeds = np.array(list(space.seeds().values()))
    opt = optimizer_pkg.build({"kind": kind, "popsize": popsize, **(options or {})}, space.xl, space.xu,
                              len(objectives), seed, seeds, space.var_types)
    logger = CountingLogger(objectives)
    with tempfile.TemporaryDirectory() as d:
        res = run_search(space, opt, SerialExecutor(worker), objectives,
                         SearchSettings(budget=budget) if fidelity is None else
                         SearchSettings.parse({"budget": budget, "fidelity": fidelity}, len(objectives)),
                         Path(d), logger, n_fitness=n_fitness, seed=seed)
    return res, logger


_held_out_cache: dict = {}


def held_out(worker, record) -> float:
    key = (STUDY, json.dumps(record["recipe"], sort_keys=True))
    if key not in _held_out_cache:
        _held_out_cache[key] = worker.evaluate(Recipe.from_dict(record["recipe"]), "test").metrics[metric()]
    return _held_out_cache[key]


def part_a(seeds, budget):
    print(f"\n## A. Equal budget: {budget} evaluations, objective acc/mean (fitness split), seeds {seeds}\n")
    rows = {}
    for kind, pop in (("random", 12), ("cmaes", 12), ("nsga2", 12)):
        fit, test = [], []
        for seed in tqdm(seeds, desc=kind, file=sys.stderr):
            _, pool, space, worker, evs = load_digits(seed)
            res, _ = search(space, worker, [Objective("acc/mean", "max")], kind, pop, budget, seed,
                            n_fitness=evs[0].size("fitness"))
            fit.append(res.best["metrics"]["acc/mean"])
            test.append(held_out(worker, res.best))
        rows[kind] = (statistics.median(fit), statistics.median(test), fit, test)
    print("| optimiser (popsize 12) | best fitness acc/mean (median) | held-out test acc/mean of best (median) | "
          "per seed (test) |")
    print("|---|---|---|---|")
    for kind, (f, t, _, ts) in rows.items():
        print(f"| {kind} | {f:.4f} | {t:.4f} | {', '.join(f'{v:.4f}' for v in ts)} |")
    base = rows["random"][1]
    print(f"\nheld-out gain over random search (median): cmaes {rows['cmaes'][1] - base:+.4f}, "
          f"nsga2 {rows['nsga2'][1] - base:+.4f}")
    return rows


def samples_to_reach(worker, trace, target) -> int | None:
    for samples, rec in trace:
        if held_out(worker, rec) >= target - 1e-12:
            return samples
    return None


def best_within(worker, trace, samples) -> float | None:
    """Held-out score of the best-so-far candidate after at most `samples` evaluated samples."""
    within = [rec for s, rec in trace if s <= samples]
    return held_out(worker, within[-1]) if within else None


def part_b(seeds, budget_full, budget_mf, mode="successive_halving"):
    fid = {"rungs": [1 / 9, 1 / 3, 1.0], "eta": 3, "mode": mode}
    print(f"\n## B. Full fidelity vs {mode} (rungs 1/9, 1/3, 1; eta 3), CMA-ES, seeds {seeds}\n")
    print(f"Full: popsize 12, {budget_full} evaluations. MF: popsize 18 (18 -> 6 -> 2 per generation), "
          f"{budget_mf} evaluations of any fidelity. Samples = evaluated (task x image) items.\n")
    print("| seed | full: held-out of final best (target) | full: samples to reach it | full: total samples "
          "| MF: samples to reach target | MF / full | MF held-out within 1/3 of full's total samples "
          "| MF held-out at its budget (samples) |")
    print("|---|---|---|---|---|---|---|---|")
    ratios, third = [], []
    for seed in tqdm(seeds, desc="fidelity", file=sys.stderr):
        _, pool, space, worker, evs = load_digits(seed)
        n_fit = evs[0].size("fitness")
        obj = [Objective("acc/mean", "max")]
        _, full = search(space, worker, obj, "cmaes", 12, budget_full, seed, n_fitness=n_fit)
        target = held_out(worker, full.best)
        s_full = samples_to_reach(worker, full.trace, target)
        _, mf = search(space, worker, obj, "cmaes", 18, budget_mf, seed, fidelity=fid, n_fitness=n_fit)
        s_mf = samples_to_reach(worker, mf.trace, target)
        ratio = None if s_mf is None else s_mf / s_full
        ratios.append(ratio)
        t3 = best_within(worker, mf.trace, full.samples / 3)
        third.append(t3)
        print(f"| {seed} | {target:.4f} | {s_full} | {full.samples} | "
              f"{s_mf if s_mf is not None else 'not reached'} | {'-' if ratio is None else f'{ratio:.2f}'} | "
              f"{'-' if t3 is None else f'{t3:.4f}'} | {held_out(worker, mf.best):.4f} ({mf.samples}) |")
    reached = [r for r in ratios if r is not None]
    med = statistics.median([r if r is not None else float("inf") for r in ratios])
    print(f"\nmedian MF/full samples ratio: {med:.2f} (goal <= 0.33); MF reached the full run's held-out score in "
          f"{len(reached)}/{len(ratios)} seeds")
    return ratios


def part_c(seed, budget):
    print(f"\n## C. Multi-objective (acc/rot90, acc/mirror, acc/invert), NSGA-II popsize 12, {budget} evaluations, "
          f"seed {seed}\n")
    _, pool, space, worker, evs = load_digits(seed)
    objs = [Objective(f"acc/{t}", "max") for t in ("rot90", "mirror", "invert")]
    res, _ = search(space, worker, objs, "nsga2", 12, budget, seed, n_fitness=evs[0].size("fitness"))
    print(f"Pareto front: {len(res.front)} members; reference point (acc) "
          f"{[round(-v, 4) for v in res.ref_point]}")
    print("hypervolume per generation: " + ", ".join(f"{h['hypervolume']:.4f}" for h in res.hypervolume))
    return res


def part_d(seeds, budget, k_anchors=40, only=None):
    obj = [Objective(metric(), "max")]
    methods = {  # name -> (optimizer kind, popsize, options, evaluations, fidelity, anchors)
        "random": ("random", 12, {}, budget, None, None),
        "TPE (optuna)": ("optuna", 12, {"sampler": "tpe", "n_startup_trials": 12}, budget, None, None),
        "GP (optuna)": ("optuna", 4, {"sampler": "gp", "n_startup_trials": 12}, budget, None, None),
        f"CMA-ES + anchors (k={k_anchors}, pirt)": ("cmaes", 12, {}, 3 * budget, None,
                                                    {"k": k_anchors, "estimator": "pirt"}),
        f"CMA-ES + anchors (k={k_anchors}, mean)": ("cmaes", 12, {}, 3 * budget, None,
                                                    {"k": k_anchors, "estimator": "mean"}),
        "CMA-ES + successive halving": ("cmaes", 18, {}, 5 * budget, {"rungs": [1 / 9, 1 / 3, 1.0], "eta": 3},
                                        None),
        "CMA-ES + successive halving (z=1)": ("cmaes", 18, {}, 5 * budget,
                                              {"rungs": [1 / 9, 1 / 3, 1.0], "eta": 3, "z": 1.0}, None),
    }
    if only:
        unknown = sorted(set(only) - set(methods))
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; expected some of {list(methods)}")
        methods = {m: v for m, v in methods.items() if m in only}
    print(f"\n## D ({STUDY}, objective {metric()}). Samples to reach the reference's held-out score (reference: CMA-ES popsize 12, {budget} "
          f"evaluations at full fidelity), seeds {seeds}\n")
    ratios = {m: [] for m in ["CMA-ES (reference)", *methods]}
    at_ref = {m: [] for m in methods}
    walls = {m: [] for m in methods}
    ref_rows = []
    for seed in tqdm(seeds, desc="D", file=sys.stderr):
        _, pool, space, worker, evs = load_digits(seed)
        n_fit = evs[0].size("fitness")
        t0 = time.perf_counter()
        _, ref = search(space, worker, obj, "cmaes", 12, budget, seed, n_fitness=n_fit)
        ref_wall = time.perf_counter() - t0
        per_eval = ref.trace[0][1]["n_samples"]  # samples of one full-fidelity fitness evaluation
        target = held_out(worker, ref.best)
        s_ref = samples_to_reach(worker, ref.trace, target)
        ref_rows.append((seed, target, s_ref, ref.samples, ref_wall))
        ratios["CMA-ES (reference)"].append(s_ref / ref.samples)
        for name, (kind, pop, opts, evals, fid, anchors) in methods.items():
            _, p2, sp2, w2, ev2 = (None, pool, space, worker, evs) if anchors is None else load_digits(seed, anchors)
            t0 = time.perf_counter()
            _, lg = search(sp2, w2, obj, kind, pop, evals, seed, fidelity=fid, n_fitness=n_fit, options=opts)
            walls[name].append((time.perf_counter() - t0) / ref_wall)
            calib = 0
            if anchors is not None:  # calibration: every pool model and the average on the whole fitness split
                calib = (len(p2.all_names) + 1) * per_eval
                lg.trace = [(s + calib, r) for s, r in lg.trace]
            s = samples_to_reach(worker, lg.trace, target)
            ratios[name].append(None if s is None else s / ref.samples)
            at_ref[name].append(best_within(worker, lg.trace, ref.samples))
    print("| seed | reference held-out (target) | reference: samples to reach it | reference total samples |")
    print("|---|---|---|---|")
    for seed, target, s_ref, total, _ in ref_rows:
        print(f"| {seed} | {target:.4f} | {s_ref} | {total} |")
    print("\n| method | samples to reach target / reference's total (median) | per seed | reached | held-out within "
          "the reference's samples (median) | wall time / reference's (median) |")
    print("|---|---|---|---|---|---|")
    at_ref["CMA-ES (reference)"] = [t for _, t, *_ in ref_rows]
    walls["CMA-ES (reference)"] = [1.0] * len(ref_rows)
    for name in ratios:
        rs = ratios[name]
        med = statistics.median([r if r is not None else float("inf") for r in rs])
        held = [h for h in at_ref[name] if h is not None]
        print(f"| {name} | {med:.2f} | {', '.join('-' if r is None else f'{r:.2f}' for r in rs)} | "
              f"{sum(r is not None for r in rs)}/{len(rs)} | {statistics.median(held) if held else float('nan'):.4f}"
              f" | {statistics.median(walls[name]):.2f} |")
    ref_med = statistics.median([t for _, t, *_ in ref_rows])
    print(f"\nreference held-out (median) {ref_med:.4f}; goal: a method with median ratio <= 0.33")
    return ratios


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=120, help="evaluations per run in part A and full fidelity in B")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="ABC", help="which parts to run, e.g. B or D")
    ap.add_argument("--mode", default="successive_halving", choices=["successive_halving", "hyperband"])
    ap.add_argument("--fitness-samples", type=int, default=None, help="fitness split size per task (default 200)")
    ap.add_argument("--methods", default=None, help="part D: a comma-separated subset of its methods (names as in "
                    "its table); the reference always runs")
    ap.add_argument("--study", default="digits", choices=sorted(STUDIES), help="the experiment part D searches")
    args = ap.parse_args()
    global STUDY
    STUDY = args.study
    if STUDY != "digits" and set(args.parts) - {"D"}:
        ap.error(f"--study {STUDY}: only part D is written for other studies (parts A-C are digits' own)")
    torch.set_num_threads(1)
    if args.fitness_samples:
        FITNESS_SAMPLES.append(f"evaluator.{STUDIES[STUDY][2]}.fitness_samples={args.fitness_samples}")
    seeds = list(range(1 if args.quick else args.seeds))
    budget = 36 if args.quick else args.budget
    t0 = time.time()
    if "A" in args.parts:
        part_a(seeds, budget)
    if "B" in args.parts:  # MF gets ~the same total samples as full fidelity (5x the evaluations, mostly cheap)
        part_b(seeds, budget, 5 * budget, args.mode)
    if "C" in args.parts:
        part_c(0, budget)
    if "D" in args.parts:
        part_d(seeds, budget, only=args.methods.split(",") if args.methods else None)
    print(f"\n(total {time.time() - t0:.0f} s; command: python experiments/bench/search_bench.py"
          f"{' --quick' if args.quick else ''}{'' if args.parts == 'ABC' else ' --parts ' + args.parts}"
          f"{f' --seeds {args.seeds}' if args.seeds != 3 else ''}"
          f"{f' --fitness-samples {args.fitness_samples}' if args.fitness_samples else ''}"
          f"{'' if args.mode == 'successive_halving' else ' --mode ' + args.mode}"
          f"{'' if args.study == 'digits' else ' --study ' + args.study}"
          f"{f' --methods {chr(34)}{args.methods}{chr(34)}' if args.methods else ''})")


if __name__ == "__main__":
    main()
