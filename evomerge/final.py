"""After the search: the chosen recipe saved as files and a model, and scored beside the sources on held-out data.

Each step takes the search's records and the worker that scored them, so every number in the final table comes from
the same evaluators, seeds and subsamples as the search's fitness.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from evomerge.executor.worker import Worker
from evomerge.recipe import Recipe, Rule
from evomerge.search import objectives as objectives_pkg
from evomerge.search.objectives import scalar, selection_candidates
from evomerge.search.settings import SearchSettings

log = logging.getLogger("evomerge")


def average_recipe(pool) -> Recipe:
    """The plain average of the source models (a uniform linear merge), whatever method the search uses."""
    n = len(pool.names)
    return Recipe(models=list(pool.names), base=None, default=Rule("linear", {"weight": [1.0 / n] * n}),
                  meta={"reference": "average"})


def save_best(run_dir: Path, chosen: dict, selection: list[dict] | None, worker: Worker, pool, made_by: str,
              fitness: str) -> Recipe:
    """The chosen record as `best_recipe.yaml`, its mergekit YAML (when expressible), `best_model/` (weights,
    tokenizer, model card)."""
    from evomerge import card
    from evomerge.merge.mergekit import save_mergekit

    best = Recipe.from_dict(chosen["recipe"])
    best.meta.update({"genome": list(map(float, chosen["genome"])), "fitness": chosen["metrics"],
                      "evaluation_id": chosen["id"]})
    if selection is not None:
        best.meta["validation"] = next(s["validation"] for s in selection if s["id"] == chosen["id"])
    best.save(run_dir / "best_recipe.yaml")
    save_mergekit(best, pool, run_dir / "best_recipe.mergekit.yaml")
    best_model = worker.merger.apply(best)
    best_model.save_pretrained(run_dir / "best_model")
    if pool.tokenizer is not None:
        pool.tokenizer.save_pretrained(run_dir / "best_model")
    card.write(run_dir / "best_model", best, pool.paths, made_by, {"Fitness": fitness})
    return best


def held_out_table(worker: Worker, pool, best: Recipe | None, split: str) -> list[dict]:
    """Score base, each source, the plain average and the evolved recipe the same way on `split`. Each row names its
    `role` (base, source:<name>, average, evolved) for readers; `model` is the label the table shows."""
    rows = []
    for name in pool.all_names:
        out = worker.evaluate_model(name, split)
        role = "base" if name == pool.base_name else f"source:{name}"
        rows.append({"model": name if name != pool.base_name else f"{name} (base)", "role": role,
                     "metrics": out.metrics})
    for label, role, recipe in (("plain average", "average", average_recipe(pool)), ("evolved (best)", "evolved", best)):
        if recipe is None:
            continue
        out = worker.evaluate(recipe, split)
        if out.error:
            raise RuntimeError(f"held-out evaluation of {label} failed: {out.error}")
        rows.append({"model": label, "role": role, "metrics": out.metrics})
    return rows


def table_columns(rows: list[dict], objective_metrics: list[str]) -> list[str]:
    """Per-task accuracies first (when present), then the objective metrics."""
    keys = list(rows[0]["metrics"])
    per_task = [k for k in keys if k.startswith("acc/") and k != "acc/mean"]
    return per_task + [m for m in objective_metrics if m not in per_task]


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """The held-out table's rows (`model`, `metrics`) as markdown; a metric a row lacks is left blank."""
    lines = [f"| model | {' | '.join(columns)} |", "|---|" + "---|" * len(columns)]
    for r in rows:
        vals = " | ".join(f"{r['metrics'][c]:.4f}" if c in r["metrics"] else "" for c in columns)
        lines.append(f"| {r['model']} | {vals} |")
    return "\n".join(lines)


def format_table(rows: list[dict], columns: list[str], split: str, n: int) -> str:
    return "\n".join([f"Held-out `{split}` split ({n} items per task):", "", markdown_table(rows, columns)])


def select_on_validation(worker: Worker, records: list[dict], objectives, settings: SearchSettings):
    """Re-score each generation's best once on the validation split; the lowest weighted objective there wins."""
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
