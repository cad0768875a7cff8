"""The composition root: one experiment in a straight line, config -> pool -> space -> search -> final steps.

`run(cfg, run_dir)` takes a plain resolved config (a dict) so it can be called from the CLI, tests or notebooks.
Checks on the config live in evomerge/config.py, the steps after the search in evomerge/final.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from evomerge import config, final, report
from evomerge import evaluator as evaluators_pkg
from evomerge import executor as executor_pkg
from evomerge import logger as logger_pkg
from evomerge import models as models_pkg
from evomerge import optimizer as optimizer_pkg
from evomerge import preconditions as preconditions_pkg
from evomerge import space as space_pkg
from evomerge.environment import fingerprint
from evomerge.executor.worker import Worker
from evomerge.search import objectives as objectives_pkg
from evomerge.search.checkpoint import check_run_dir
from evomerge.search.loop import run_search
from evomerge.search.settings import SearchSettings
from evomerge.store import RunLock, atomic_write_json, atomic_write_text, check_writable

log = logging.getLogger("evomerge")


def run(cfg: dict[str, Any], run_dir: str | Path, record=None) -> dict:
    """Validate, then hold the run directory's lock for the whole run (a second process is refused).

    `resume: true` continues the search in `run_dir`; `resume: PATH` continues the run directory PATH.
    `record(run_dir)` is called once the run is accepted (lock held, directory checked): the CLI writes the run's
    config record there, so a refused run leaves the directory as it was.
    """
    settings = config.validate(cfg)
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
        check_run_dir(run_dir, bool(cfg.get("resume")), config.resume_key(cfg))  # before any model is loaded
        if record is not None:
            record(run_dir)
        return _run(cfg, run_dir, settings)


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
    config.check_minibatch(search, evaluators)
    preconds = preconditions_pkg.parse(cfg.get("preconditions"))
    sources, base = models_pkg.specs(cfg["models"])
    preconditions_pkg.check(preconds, [s.name for s in [*sources, *([base] if base else [])]], available)
    log.info("loading source models ...")
    pool = models_pkg.build(cfg["models"], cfg["paths"]["zoo"], device=device,
                            progress=lambda name: log.info("  model %s", name))
    space = space_pkg.build(cfg["space"], cfg["merge"], pool, seed=seed)
    seeds = space.seeds() if search.get("seed_population", True) else {}
    initial = np.array(list(seeds.values())) if seeds else None
    optimizer = optimizer_pkg.build(config.optimizer_config(cfg), space.xl, space.xu, len(objectives), seed, initial,
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
                            resume=bool(cfg.get("resume")), config=config.resume_key(cfg))
    finally:
        executor.close()
    if result.best is None:
        raise RuntimeError(f"every evaluation failed; see {run_dir / 'evaluations.jsonl'}")

    chosen, selection = result.best, None
    if settings.select_on == "validation":
        chosen, selection = final.select_on_validation(worker, result.records, objectives, settings)
    best = final.save_best(
        run_dir, chosen, selection, worker, pool,
        f"an evomerge search (space `{cfg['space']['kind']}`, optimiser `{cfg['optimizer']['kind']}`, "
        f"{search['budget']} evaluations, seed {seed})",
        f"{', '.join(o.metric for o in objectives)} on the fitness split: "
        + ", ".join(f"{k} = {v:.4f}" for k, v in chosen['metrics'].items()))

    split = cfg.get("final_split", "test")
    rows = final.held_out_table(worker, pool, best, split)
    columns = final.table_columns(rows, cfg.get("report_metrics") or [o.metric for o in objectives])
    table = final.format_table(rows, columns, split, evaluators[0].size(split))
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
        summary["pareto"] = final.pareto_held_out(worker, result.front, split)
        atomic_write_json(run_dir / "pareto_final.json", summary["pareto"])
        log.info("Pareto front: %d member(s), each evaluated once on the %s split (pareto_final.json)",
                 len(summary["pareto"]), split)
    atomic_write_json(run_dir / "final.json", summary)
    report.write_safely(run_dir, cfg)
    logger.finish(summary)
    print("\n" + table + "\n")
    print(f"run directory: {run_dir}")
    return summary


