"""Reading a run's evaluation records the way people think about them: named objectives in their own direction.

Records store a minimisation vector (`objectives`); this module maps it back to metric names and directions, picks
the records that count (successful, at the highest fidelity seen), a fixed hypervolume reference point, and the
per-generation numbers shown while a run is going. Loggers, the report and the notebook all read runs through it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml

from evomerge.search.objectives import Objective
from evomerge.search.pareto import hypervolume, pareto_mask, reference_point
from evomerge.store import read_jsonl


# ---- which objectives a run optimised ------------------------------------------------------------------------
def objectives_of(records: list[dict], config: dict | None = None) -> list[Objective]:
    """Objectives from the run's config when available, otherwise recovered from the records themselves.

    A record's `objectives[k]` is `-metrics[m]` for a maximised metric `m` and `metrics[m]` for a minimised one,
    so the metric and its direction can be found by matching values across all successful records.
    """
    ok = [r for r in records if is_ok(r)]
    listed = ((config or {}).get("search") or {}).get("objectives") or []
    listed = [{"metric": o} if isinstance(o, str) else dict(o) for o in listed]
    n = len(ok[0]["objectives"]) if ok else len(listed)
    if listed and len(listed) == n:
        out = []
        for k, o in enumerate(listed):
            direction = o.get("direction") or _infer_direction(ok, k, o["metric"]) or "max"
            out.append(Objective(o["metric"], direction))
        return out
    return [_infer(ok, k) for k in range(n)]


def _infer_direction(ok: list[dict], k: int, metric: str) -> str | None:
    for direction, sign in (("max", -1.0), ("min", 1.0)):
        if ok and all(metric in (r["metrics"] or {}) and
                      math.isclose(r["objectives"][k], sign * r["metrics"][metric], rel_tol=1e-9, abs_tol=1e-12)
                      for r in ok):
            return direction
    return None


def _infer(ok: list[dict], k: int) -> Objective:
    for metric in (ok[0]["metrics"] or {}) if ok else ():
        direction = _infer_direction(ok, k, metric)
        if direction:
            return Objective(metric, direction)
    return Objective(f"objective_{k}", "min")  # unmatched: show the raw minimisation value


def value(record: dict, k: int, obj: Objective) -> float:
    """The objective's value in its natural units (e.g. accuracy, not negated accuracy)."""
    metrics = record.get("metrics") or {}
    if obj.metric in metrics:
        return float(metrics[obj.metric])
    return float(record["objectives"][k])


def values(records: list[dict], objectives: list[Objective]) -> np.ndarray:
    """(n_records, n_objectives) in natural units."""
    return np.array([[value(r, k, o) for k, o in enumerate(objectives)] for r in records],
                    float).reshape(len(records), len(objectives))


def label(obj: Objective, split: str | None = "fitness") -> str:
    """Axis label: metric, split and direction, e.g. 'acc/rot90 on fitness (higher is better)'."""
    where = f" on {split}" if split else ""
    return f"{obj.metric}{where} ({'higher' if obj.direction == 'max' else 'lower'} is better)"


def better(obj: Objective, a: float, b: float) -> bool:
    return a > b if obj.direction == "max" else a < b


# ---- which records count -------------------------------------------------------------------------------------
def is_ok(record: dict) -> bool:
    return not record.get("error") and record.get("metrics") is not None and record.get("objectives") is not None


def fidelity(record: dict) -> float | None:
    f = record.get("fidelity")
    return None if f is None else float(f)


def scored(records: list[dict]) -> list[dict]:
    """Successful records at the top fidelity: low-fidelity scores are not comparable with full ones.

    The loop marks them (`top_fidelity`); older logs without the flag fall back to the highest `fidelity` seen."""
    ok = [r for r in records if is_ok(r)]
    if any("top_fidelity" in r for r in ok):
        return [r for r in ok if r.get("top_fidelity", True)]
    fids = [f for f in map(fidelity, ok) if f is not None]
    if not fids:
        return ok
    top = max(fids)
    return [r for r in ok if fidelity(r) is None or fidelity(r) >= top]


def min_matrix(records: list[dict]) -> np.ndarray:
    if not records:
        return np.zeros((0, 0))
    return np.array([r["objectives"] for r in records], float)


def front(records: list[dict]) -> list[dict]:
    """The Pareto-optimal records (minimisation vectors, search/pareto.py)."""
    if not records:
        return []
    return [r for r, keep in zip(records, pareto_mask(min_matrix(records)), strict=True) if keep]


def hv_reference(records: list[dict], config: dict | None = None, archive: dict | None = None,
                 objectives: list[Objective] | None = None) -> np.ndarray | None:
    """The hypervolume reference point in minimisation units, fixed for the whole run.

    The one the search loop used (archive.json's `reference_point`, metric units) when known; else the config's
    `search.hv_ref` (metric units); else the loop's rule (evomerge.search.pareto.reference_point) on the
    first generation with a successful top-fidelity evaluation, all its rungs included.
    """
    objectives = objectives or objectives_of(records, config)
    given = (archive or {}).get("reference_point")
    if given is None:
        given = ((config or {}).get("search") or {}).get("hv_ref")
    return reference_point(scored(records), [r for r in records if is_ok(r)], objectives,
                           given if given is not None and len(given) == len(objectives) else None)


def hv(records: list[dict], ref: np.ndarray | None) -> float:
    pts = scored(records)
    if ref is None or not pts:
        return 0.0
    return hypervolume(min_matrix(pts), ref)


def hv_curve(records: list[dict], ref: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Hypervolume of everything evaluated so far, after each generation: (evaluations, hypervolume)."""
    xs, ys, seen = [], [], []
    for gen in sorted({r.get("generation", 0) for r in records}):
        seen += [r for r in records if r.get("generation", 0) == gen]
        xs.append(len(seen))
        ys.append(hv(seen, ref))
    return np.array(xs), np.array(ys)


def best_curve(records: list[dict], k: int, obj: Objective, counted: set | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Best value so far of objective k after each evaluation (NaN before the first success).

    `counted`: ids of the records that may set the best (default: `scored`, i.e. successful, top fidelity)."""
    counted = counted if counted is not None else {r["id"] for r in scored(records)}
    best, ys = math.nan, []
    for r in records:
        if r.get("id") in counted:
            v = value(r, k, obj)
            if math.isnan(best) or better(obj, v, best):
                best = v
        ys.append(best)
    return np.arange(1, len(records) + 1), np.array(ys)


# ---- reference points on the fitness split -------------------------------------------------------------------
def reference_name(record: dict, tol: float = 0.05) -> str | None:
    """'source:<model>' or 'average' when a candidate is a seeded reference, else None.

    An explicit tag wins (`reference` on the record or in the recipe's meta). Otherwise a parameter-space recipe
    whose every rule gives weight ~1 to one model and ~0 to the others (within `tol`: optimisers may nudge seeds
    off the box boundary) is that source, and one with equal weights everywhere is the plain average.
    """
    recipe = record.get("recipe") or {}
    meta = recipe.get("meta") or {}
    tag = record.get("reference") or meta.get("reference") or meta.get("seed_name")
    if tag:
        return str(tag)
    if recipe.get("path") is not None:  # a source's own layers, in order, unscaled
        path = recipe["path"]
        if path and len({h[0] for h in path}) == 1 and [int(h[1]) for h in path] == list(range(len(path))) \
                and all(abs(float(h[2] if len(h) > 2 else 1.0) - 1.0) <= tol for h in path):
            return f"source:{path[0][0]}"
        return None
    models = recipe.get("models") or []
    rules = ([recipe["default"]] if recipe.get("default") else []) + [
        r for groups in (recipe.get("layers") or {}).values() for r in groups.values()]
    weights = [r.get("weight") for r in rules]
    if not models or not weights or any(w is None or len(w) != len(models) for w in weights):
        return None
    W = np.array(weights, float)
    n = len(models)
    for i, m in enumerate(models):
        if np.allclose(W, np.eye(n)[i], atol=tol):
            return f"source:{m}"
    if n > 1 and np.allclose(W, 1.0 / n, atol=tol):
        return "average"
    return None


def references(records: list[dict]) -> dict[str, dict]:
    """The first successful top-fidelity record for each reference name, in evaluation order (a seed scored only on
    a low-fidelity rung is left out: its score is not comparable)."""
    out: dict[str, dict] = {}
    for r in scored(records):
        if (name := reference_name(r)) and name not in out:
            out[name] = r
    return out


def describe_recipe(recipe: dict | None) -> str:
    """One line: per-model parameters averaged over layers, and the layer path's length and mix."""
    if not recipe:
        return ""
    models = list(recipe.get("models") or [])
    rules = ([recipe["default"]] if recipe.get("default") else []) + [
        r for groups in (recipe.get("layers") or {}).values() for r in groups.values()]
    methods = sorted({r.get("method", "?") for r in rules})
    parts = []
    if rules:
        params = list(dict.fromkeys(k for r in rules for k, v in r.items() if isinstance(v, list)))
        per = []
        for p in params:
            vals = np.array([r[p] for r in rules if isinstance(r.get(p), list) and len(r[p]) == len(models)], float)
            if len(vals):
                per.append(f"{p} " + " ".join(f"{m}={v:.2f}" for m, v in zip(models, vals.mean(axis=0), strict=True)))
        parts.append(f"{'/'.join(methods)}: " + "; ".join(per) + (" (mean over layers)" if len(rules) > 1 else ""))
    if recipe.get("path") is not None:
        path = recipe["path"]
        counts = {}
        for hop in path:
            counts[hop[0]] = counts.get(hop[0], 0) + 1
        parts.append(f"path of {len(path)} hops (" + ", ".join(f"{m}: {c}" for m, c in counts.items()) + ")")
    return " + ".join(parts)


def pretty_reference(name: str) -> str:
    if name.startswith("source:"):
        return f"source {name.split(':', 1)[1]}"
    return "plain average" if name == "average" else name


# ---- the numbers of one generation ---------------------------------------------------------------------------
def generation_stats(records: list[dict], gen: int, objectives: list[Objective], ref) -> dict:
    """Best so far, and this generation's best/mean/min/max per objective, plus hypervolume so far."""
    stats: dict[str, float] = {"generation": gen, "evaluations": len(records),
                               "failed": sum(not is_ok(r) for r in records)}
    pts = scored(records)
    this_gen = [r for r in pts if r.get("generation") == gen]
    for k, o in enumerate(objectives):
        if pts:
            vals = np.array([value(r, k, o) for r in pts])
            stats[f"{o.metric}/best"] = float(vals.max() if o.direction == "max" else vals.min())
        if this_gen:
            g = np.array([value(r, k, o) for r in this_gen])
            stats[f"{o.metric}/gen_best"] = float(g.max() if o.direction == "max" else g.min())
            stats[f"{o.metric}/gen_mean"] = float(g.mean())
            stats[f"{o.metric}/gen_min"] = float(g.min())
            stats[f"{o.metric}/gen_max"] = float(g.max())
    if len(objectives) > 1:
        stats["hypervolume"] = hv(records, ref)
        stats["front_size"] = len(front(pts))
    return stats


# ---- reading a run directory ---------------------------------------------------------------------------------
def load_config(run_dir: str | Path) -> dict:
    """The run's resolved config if it was saved (config.yaml), else Hydra's copy (interpolations unresolved)."""
    run_dir = Path(run_dir)
    for p in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if p.exists():
            try:
                return yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError:
                continue
    return {}


def load_archive(run_dir: str | Path) -> dict:
    """archive.json written by the search loop (objectives, reference point, front, hypervolume per generation)."""
    import json

    path = Path(run_dir) / "archive.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {}


def load_records(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "evaluations.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no evaluations.jsonl; expected the directory of an evomerge run")
    return read_jsonl(path)
