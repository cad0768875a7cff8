"""One experiment, in a straight line: config -> pool -> space -> search -> best recipe -> held-out table.

`run(cfg, run_dir)` takes a plain resolved config (a dict) so it can be called from the CLI, tests or notebooks.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from evomerge import evaluator as evaluators_pkg
from evomerge import executor as executor_pkg
from evomerge import logger as logger_pkg
from evomerge import models as models_pkg
from evomerge import optimizer as optimizer_pkg
from evomerge import preconditions as preconditions_pkg
from evomerge import report
from evomerge import space as space_pkg
from evomerge.environment import fingerprint
from evomerge.executor.worker import Worker
from evomerge.recipe import Recipe, Rule
from evomerge.search import objectives as objectives_pkg
from evomerge.search.loop import SearchSettings, check_run_dir, run_search
from evomerge.store import RunLock, atomic_write_json, atomic_write_text, check_writable

log = logging.getLogger("evomerge")


def validate(cfg: dict) -> SearchSettings:
    """Checks that need no model, so that bad input fails in seconds, before any loading or training."""
    search = cfg.get("search") or {}
    opt = cfg.get("optimizer") or {}
    pop, least = opt.get("popsize"), 1 if opt.get("kind") == "random" else 2  # CMA-ES and pymoo need 2
    if pop is not None and (isinstance(pop, bool) or not isinstance(pop, int) or pop < least):
        raise ValueError(f"optimizer.popsize: expected a positive integer, at least {least} for optimizer.kind="
                         f"{opt.get('kind')}; found {pop!r}")
    check_device(cfg.get("device", "cpu"))
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, found {seed!r}")
    if not search.get("objectives"):
        raise ValueError("search.objectives: empty; expected at least one {metric, direction}")
    for i, o in enumerate(search["objectives"]):
        direction = o.get("direction") if isinstance(o, dict) else None
        if direction not in (None, "max", "min"):
            raise ValueError(f"search.objectives[{i}].direction: expected max or min, found {direction!r}")
    settings = SearchSettings.parse(search, len(search["objectives"]))  # budget, minibatch, fidelity, ...
    resume = cfg.get("resume", False)
    if not isinstance(resume, bool | str):
        raise ValueError(f"resume: expected true/false or the path of a run directory, found {resume!r}")
    threads = cfg.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: expected a positive integer (torch CPU threads) or null, found {threads!r}")
    split = cfg.get("final_split", "test")
    if split not in ("fitness", "validation", "test"):
        raise ValueError(f"final_split: expected fitness, validation or test (the split of the held-out table), "
                         f"found {split!r}")
    shown = cfg.get("report_metrics")
    if shown is not None and (not isinstance(shown, list) or not all(isinstance(m, str) for m in shown)):
        raise ValueError(f"report_metrics: expected a list of metric names or null, found {shown!r}")
    models_pkg.specs(cfg["models"])
    executor_pkg.check(cfg.get("executor"))
    preconditions_pkg.parse(cfg.get("preconditions"))
    return settings


def check_device(device) -> None:
    """`device=cuda` without CUDA fails here, not with an AssertionError after the models load."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: expected cpu, cuda or cuda:N, found {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device}: CUDA is not available on this machine; use device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device}: this machine has {torch.cuda.device_count()} CUDA device(s); expected "
                         f"cuda:0..cuda:{torch.cuda.device_count() - 1}")


def average_recipe(pool) -> Recipe:
    """The plain average of the source models (a uniform linear merge), whatever method the search uses."""
    n = len(pool.names)
    return Recipe(models=list(pool.names), base=None, default=Rule("linear", {"weight": [1.0 / n] * n}),
                  meta={"reference": "average"})


def held_out_table(worker: Worker, pool, best: Recipe | None, split: str) -> list[dict]:
    """Score base, each source, the plain average and the evolved recipe the same way on `split`."""
    rows = []
    for name in pool.all_names:
        out = worker.evaluate_model(name, split)
        rows.append({"model": name if name != pool.base_name else f"{name} (base)", "metrics": out.metrics})
    for label, recipe in (("plain average", average_recipe(pool)), ("evolved (best)", best)):
        if recipe is None:
            continue
        out = worker.evaluate(recipe, split)
        if out.error:
            raise RuntimeError(f"held-out evaluation of {label} failed: {out.error}")
        rows.append({"model": label, "metrics": out.metrics})
    return rows


def format_table(rows: list[dict], columns: list[str], split: str, n: int) -> str:
    header = f"| model | {' | '.join(columns)} |"
    sep = "|---|" + "---|" * len(columns)
    lines = [f"Held-out `{split}` split ({n} items per task):", "", header, sep]
    for r in rows:
        vals = " | ".join(f"{r['metrics'][c]:.4f}" for c in columns)
        lines.append(f"| {r['model']} | {vals} |")
    return "\n".join(lines)


def run(cfg: dict[str, Any], run_dir: str | Path, record=None) -> dict:
    """Validate, then hold the run directory's lock for the whole run (a second process is refused).

    `resume: true` continues the search in `run_dir`; `resume: PATH` continues the run directory PATH.
    `record(run_dir)` is called once the run is accepted (lock held, directory checked): the CLI writes the run's
    config record there, so a refused run leaves the directory as it was.
    """
    settings = validate(cfg)
    if cfg.get("dry_run"):  # the plan only: no weights, no zoo building, no run directory content
        from evomerge.plan import describe

        text = describe(cfg)
        print(text)
        from evomerge.plan import preflight

        preflight(cfg)  # a plan with missing inputs is a failed dry run (exit status 2), not a success
        return {"dry_run": True, "plan": text}
    from evomerge.plan import check_space, preflight

    preflight(cfg)  # missing models and datasets fail here, in seconds, before anything is loaded
    check_space(cfg)  # space settings (a method without its base, a DFS cap below the fixed layers), no weights
    executor_pkg.connect(cfg.get("executor"))  # executor=ray: a wrong cluster address fails here too
    if isinstance(cfg.get("resume"), str):
        run_dir = Path(cfg["resume"]).expanduser()
        if not (run_dir / "evaluations.jsonl").exists():
            raise ValueError(f"resume: {run_dir} is not an evomerge run directory (no evaluations.jsonl)")
    run_dir = Path(run_dir)
    check_writable(run_dir)
    with RunLock(run_dir):
        check_run_dir(run_dir, bool(cfg.get("resume")), resume_key(cfg))  # before any model is loaded
        if record is not None:
            record(run_dir)
        return _run(cfg, run_dir, settings)


def check_minibatch(search: dict, evaluators: list) -> None:
    n = min(ev.size("fitness") for ev in evaluators)
    if search.get("minibatch") and search["minibatch"] > n:
        raise ValueError(f"search.minibatch: {search['minibatch']} samples per generation, but the fitness split has "
                         f"only {n}; expected at most {n} (or null for all of it)")


def resume_key(cfg: dict) -> dict:
    """The settings a resumed run must share with the original (the budget may grow)."""
    key = {k: cfg.get(k) for k in ("models", "merge", "space", "optimizer", "evaluator", "seed")}
    from evomerge.search.loop import RESUME_FREE

    key["search"] = {k: v for k, v in (cfg.get("search") or {}).items() if k not in RESUME_FREE}
    return key


def _run(cfg: dict[str, Any], run_dir: Path, settings: SearchSettings) -> dict:
    seed = int(cfg.get("seed", 0))
    device = cfg.get("device", "cpu")
    search = cfg["search"]
    t0 = time.perf_counter()
    if cfg.get("threads"):  # tiny models: intra-op threads only add overhead, and thrash on a busy machine
        import torch

        torch.set_num_threads(int(cfg["threads"]))

    # Evaluators (tasks, data files, subsample sizes) and objectives first, with the tokenizer only: a bad task,
    # dataset or metric name fails before any model weights are loaded.
    evaluators = evaluators_pkg.build(cfg["evaluator"], models_pkg.tokenizer_only(cfg["models"], cfg["paths"]["zoo"]),
                                      seed=seed, device=device)
    available = {m: hib for ev in evaluators for m, hib in ev.higher_is_better().items()}
    objectives = objectives_pkg.parse(search["objectives"], available)
    unknown = [m for m in cfg.get("report_metrics") or [] if m not in available]
    if unknown:
        raise ValueError(f"report_metrics: {unknown} produced by no evaluator; available: {sorted(available)}")
    check_minibatch(search, evaluators)
    preconds = preconditions_pkg.parse(cfg.get("preconditions"))
    sources, base = models_pkg.specs(cfg["models"])
    preconditions_pkg.check(preconds, [s.name for s in [*sources, *([base] if base else [])]], available)
    log.info("loading source models ...")
    pool = models_pkg.build(cfg["models"], cfg["paths"]["zoo"], device=device,
                            progress=lambda name: log.info("  model %s", name))
    space = space_pkg.build(cfg["space"], cfg["merge"], pool, seed=seed)
    seeds = space.seeds() if search.get("seed_population", True) else {}
    initial = np.array(list(seeds.values())) if seeds else None
    optimizer = optimizer_pkg.build(optimizer_config(cfg), space.xl, space.xu, len(objectives), seed, initial,
                                    space.var_types, n_constr=int(getattr(space, "n_constraints",
                                                                          hasattr(space, "constraint"))))
    log.info("space %s: %d genes; optimiser %s; budget %d evaluations; seeded with %s", cfg["space"]["kind"],
             space.dim, cfg["optimizer"]["kind"], search["budget"], list(seeds) or "nothing")

    worker = Worker(pool, evaluators)
    preconditions = preconditions_pkg.measure(worker, preconds)
    if preconditions:
        (log.info if all(p["ok"] for p in preconditions) else log.warning)(
            "%s", preconditions_pkg.format_results(preconditions))
    logger = logger_pkg.build(cfg["logger"], run_dir, cfg)
    executor = executor_pkg.build(cfg, worker, pool)  # serial, or Ray actors with their own Worker each
    try:
        result = run_search(space, optimizer, executor, objectives, settings, run_dir, logger,
                            n_fitness=min(ev.size("fitness") for ev in evaluators), seed=seed,
                            resume=bool(cfg.get("resume")), config=resume_key(cfg))
    finally:
        executor.close()
    if result.best is None:
        raise RuntimeError(f"every evaluation failed; see {run_dir / 'evaluations.jsonl'}")

    chosen, selection = result.best, None
    if settings.select_on == "validation":
        chosen, selection = select_on_validation(worker, result.records, objectives, settings)
    best = Recipe.from_dict(chosen["recipe"])
    best.meta.update({"genome": list(map(float, chosen["genome"])), "fitness": chosen["metrics"],
                      "evaluation_id": chosen["id"]})
    if selection is not None:
        best.meta["validation"] = next(s["validation"] for s in selection if s["id"] == chosen["id"])
    best.save(run_dir / "best_recipe.yaml")
    from evomerge.merge.mergekit import save_mergekit

    save_mergekit(best, pool, run_dir / "best_recipe.mergekit.yaml")  # when expressible in mergekit's format
    best_model = worker.merger.apply(best)
    best_model.save_pretrained(run_dir / "best_model")
    if pool.tokenizer is not None:
        pool.tokenizer.save_pretrained(run_dir / "best_model")
    from evomerge import card

    card.write(run_dir / "best_model", best, pool.paths,
               f"an evomerge search (space `{cfg['space']['kind']}`, optimiser `{cfg['optimizer']['kind']}`, "
               f"{search['budget']} evaluations, seed {seed})",
               {"Fitness": f"{', '.join(o.metric for o in objectives)} on the fitness split: "
                           + ", ".join(f"{k} = {v:.4f}" for k, v in chosen['metrics'].items())})

    split = cfg.get("final_split", "test")
    rows = held_out_table(worker, pool, best, split)
    columns = cfg.get("report_metrics") or [o.metric for o in objectives]
    n_items = evaluators[0].size(split)
    columns = _table_columns(rows, columns)
    table = format_table(rows, columns, split, n_items)
    if preconditions:
        table += "\n\n" + preconditions_pkg.format_results(preconditions)
    atomic_write_text(run_dir / "final_table.md", table + "\n")
    summary = {"best": chosen, "final_split": split, "final": rows, "evaluations": len(result.records),
               "evaluated_samples": result.n_samples, "hypervolume": result.hypervolume,
               "wall_time": time.perf_counter() - t0, "environment": fingerprint(device)}
    if preconditions:
        summary["preconditions"] = preconditions
    if selection is not None:
        summary["selection"] = {"split": "validation", "candidates": selection, "best_by_fitness": result.best["id"]}
    pareto = search.get("final_pareto")  # None: with several objectives; true / false: always / never
    if (len(objectives) > 1 and pareto is not False) or pareto:
        summary["pareto"] = pareto_held_out(worker, result.front, split)
        atomic_write_json(run_dir / "pareto_final.json", summary["pareto"])
        log.info("Pareto front: %d member(s), each evaluated once on the %s split (pareto_final.json)",
                 len(summary["pareto"]), split)
    atomic_write_json(run_dir / "final.json", summary)
    report.write_safely(run_dir, cfg)
    logger.finish(summary)
    print("\n" + table + "\n")
    print(f"run directory: {run_dir}")
    return summary


def optimizer_config(cfg: dict) -> dict:
    """The optimiser's config, with `search.weights` as the weighting a single-objective optimiser scalarises with
    (one weighting for the search and its 'best'; a different `optimizer.weights` beside it is refused)."""
    opt, w = dict(cfg["optimizer"]), (cfg.get("search") or {}).get("weights")
    if w is not None:
        if opt.get("weights") is not None and [float(v) for v in opt["weights"]] != [float(v) for v in w]:
            raise ValueError(f"optimizer.weights {list(opt['weights'])} and search.weights {list(w)} differ; set "
                             "the weighting once, in search.weights")
        opt["weights"] = list(w)
    return opt


def select_on_validation(worker: Worker, records: list[dict], objectives, settings: SearchSettings):
    """Re-score each generation's best once on the validation split; the lowest weighted objective there wins."""
    from evomerge.search.loop import scalar, selection_candidates

    weights = None if settings.weights is None else np.asarray(settings.weights, float)
    rows = []
    for rec in selection_candidates(records, weights, settings.select_top):
        out = worker.evaluate(Recipe.from_dict(rec["recipe"]), "validation")
        if out.error:
            log.warning("selection: candidate %d failed on the validation split: %s", rec["id"], out.error)
            continue
        rows.append({"id": rec["id"], "generation": rec["generation"], "fitness": rec["metrics"],
                     "validation": out.metrics,
                     "score": scalar(objectives_pkg.to_min(objectives, out.metrics), weights)})
    if not rows:
        raise RuntimeError("search.select_on=validation: every candidate failed on the validation split")
    win = min(rows, key=lambda r: (r["score"], r["id"]))
    log.info("selection: %d candidates re-scored on the validation split; chose evaluation %d", len(rows), win["id"])
    return next(r for r in records if r["id"] == win["id"]), rows


def pareto_held_out(worker: Worker, front: list[dict], split: str) -> list[dict]:
    """Every Pareto member (found on the fitness split) evaluated once on the held-out split."""
    rows = []
    for rec in front:
        out = worker.evaluate(Recipe.from_dict(rec["recipe"]), split)
        rows.append({"id": rec["id"], "genome": rec["genome"], "fitness": rec["metrics"], split: out.metrics,
                     "error": out.error})
    return rows


def _table_columns(rows: list[dict], objective_metrics: list[str]) -> list[str]:
    """Per-task accuracies first (when present), then the objective metrics."""
    keys = list(rows[0]["metrics"])
    per_task = [k for k in keys if k.startswith("acc/") and k != "acc/mean"]
    return per_task + [m for m in objective_metrics if m not in per_task]
