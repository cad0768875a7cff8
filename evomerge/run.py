"""The composition root: one experiment in a straight line, config -> pool -> space -> search -> final steps.

`run(cfg, run_dir)` takes a plain resolved config (a dict) so it can be called from the CLI, tests or notebooks;
evomerge/config.py parses it once into a typed `RunConfig`, whose parts the steps receive. The steps after the
search live in evomerge/final.py.
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
from evomerge.search.settings import check_minibatch
from evomerge.store import RunLock, atomic_write_json, atomic_write_text, check_writable

log = logging.getLogger("evomerge")


def run(cfg: dict[str, Any], run_dir: str | Path, record=None) -> dict:
    """Validate, then hold the run directory's lock for the whole run (a second process is refused).

    `resume: true` continues the search in `run_dir`; `resume: PATH` continues the run directory PATH.
    `record(run_dir)` is called once the run is accepted (lock held, directory checked): the CLI writes the run's
    config record there, so a refused run leaves the directory as it was.
    """
    rc = config.parse(cfg)  # the dict stops here: below, the steps get typed parts of `rc`
    from evomerge.plan import check_space, describe, preflight

    if rc.dry_run:  # the plan only: no weights, no zoo building, no run directory content
        text = describe(rc)
        print(text)
        preflight(rc)  # a plan with missing inputs is a failed dry run (exit status 2), not a success
        return {"dry_run": True, "plan": text}
    preflight(rc)  # missing models and datasets fail here, in seconds, before anything is loaded
    check_space(rc)  # space settings (a method without its base, a DFS cap below the fixed layers), no weights
    executor_pkg.connect(rc.executor)  # executor=ray: a wrong cluster address fails here too
    if isinstance(rc.resume, str):
        run_dir = Path(rc.resume).expanduser()
        if not (run_dir / "evaluations.jsonl").exists():
            raise ValueError(f"resume: {run_dir} is not an evomerge run directory (no evaluations.jsonl)")
    run_dir = Path(run_dir)
    check_writable(run_dir)
    with RunLock(run_dir):
        check_run_dir(run_dir, bool(rc.resume), rc.resume_key)  # before any model is loaded
        if record is not None:
            record(run_dir)
        return _run(rc, run_dir)


def _run(rc: config.RunConfig, run_dir: Path) -> dict:
    t0 = time.perf_counter()
    if rc.threads:  # tiny models: intra-op threads only add overhead, and thrash on a busy machine
        import torch

        torch.set_num_threads(rc.threads)

    # Evaluators (tasks, data files, subsample sizes) and objectives first, with the tokenizer only: a bad task,
    # dataset or metric name fails before any model weights are loaded.
    evaluators = evaluators_pkg.build(rc.evaluator, models_pkg.tokenizer_only(rc.models), seed=rc.seed,
                                      device=rc.device)
    available = {m: hib for ev in evaluators for m, hib in ev.higher_is_better().items()}
    objectives = objectives_pkg.parse(rc.search.objectives, available)
    unknown = [m for m in rc.report_metrics or [] if m not in available]
    if unknown:
        raise ValueError(f"report_metrics: {unknown} produced by no evaluator; available: {sorted(available)}")
    n_fitness = min(ev.size("fitness") for ev in evaluators)
    check_minibatch(rc.search.minibatch, n_fitness)
    preconditions_pkg.check(rc.preconditions, rc.models.names, available)
    log.info("loading source models ...")
    pool = models_pkg.build(rc.models, device=rc.device, progress=lambda name: log.info("  model %s", name))
    space = space_pkg.build(rc.space, rc.merge, pool, seed=rc.seed)
    seeds = space.seeds() if rc.search.seed_population else {}
    initial = np.array(list(seeds.values())) if seeds else None
    optimizer = optimizer_pkg.build(rc.optimizer, space.xl, space.xu, len(objectives), rc.seed, initial,
                                    space.var_types, n_constr=space.n_constraints)
    log.info("space %s: %d genes; optimiser %s; budget %d evaluations; seeded with %s", rc.space["kind"],
             space.dim, rc.optimizer["kind"], rc.search.budget, list(seeds) or "nothing")

    worker = Worker(pool, evaluators)
    preconditions = preconditions_pkg.measure(worker, rc.preconditions)
    if preconditions:
        (log.info if all(p["ok"] for p in preconditions) else log.warning)(
            "%s", preconditions_pkg.format_results(preconditions))
    logger = logger_pkg.build(rc.logger, run_dir, rc.raw)
    executor = executor_pkg.build(rc.executor, worker, pool, rc.evaluator, rc.seed, rc.device)
    try:
        result = run_search(space, optimizer, executor, objectives, rc.search, run_dir, logger,
                            n_fitness=n_fitness, seed=rc.seed, resume=bool(rc.resume), config=rc.resume_key)
    finally:
        executor.close()
    if result.best is None:
        raise RuntimeError(f"every evaluation failed; see {run_dir / 'evaluations.jsonl'}")

    chosen, selection = result.best, None
    if rc.search.select_on == "validation":
        chosen, selection = final.select_on_validation(worker, result.records, objectives, rc.search)
    best = final.save_best(
        run_dir, chosen, selection, worker, pool, f"an evomerge search ({rc.describe_search()})",
        f"{', '.join(o.metric for o in objectives)} on the fitness split: "
        + ", ".join(f"{k} = {v:.4f}" for k, v in chosen['metrics'].items()))

    split = rc.final_split
    rows = final.held_out_table(worker, pool, best, split)
    columns = final.table_columns(rows, rc.report_metrics or [o.metric for o in objectives])
    table = final.format_table(rows, columns, split, evaluators[0].size(split))
    if preconditions:
        table += "\n\n" + preconditions_pkg.format_results(preconditions)
    atomic_write_text(run_dir / "final_table.md", table + "\n")
    summary = {"best": chosen, "final_split": split, "final": rows, "evaluations": len(result.records),
               "evaluated_samples": result.n_samples, "hypervolume": result.hypervolume,
               "wall_time": time.perf_counter() - t0, "environment": fingerprint(rc.device)}
    if preconditions:
        summary["preconditions"] = preconditions
    if selection is not None:
        summary["selection"] = {"split": "validation", "candidates": selection, "best_by_fitness": result.best["id"]}
    pareto = rc.search.final_pareto  # None: with several objectives; true / false: always / never
    if (len(objectives) > 1 and pareto is not False) or pareto:
        summary["pareto"] = final.pareto_held_out(worker, result.front, split)
        atomic_write_json(run_dir / "pareto_final.json", summary["pareto"])
        log.info("Pareto front: %d member(s), each evaluated once on the %s split (pareto_final.json)",
                 len(summary["pareto"]), split)
    atomic_write_json(run_dir / "final.json", summary)
    report.write_safely(run_dir, rc.raw)
    logger.finish(summary)
    print("\n" + table + "\n")
    print(f"run directory: {run_dir}")
    return summary
