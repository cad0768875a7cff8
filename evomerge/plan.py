"""What a run will do, before it does it: `describe(rc)` for `dry_run=true`, `preflight(rc)` before any loading
(`rc`: the parsed RunConfig).

Both read only config files and small metadata (config.json, file existence, the local Hugging Face caches): no
weights are loaded, so a paper-scale experiment can be inspected on a laptop, and a missing model or dataset is
reported in seconds rather than after minutes of loading the other models.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.models.lazy import read_config
from evomerge.models.pool import is_hub_id
from evomerge.offline import hub_offline

if TYPE_CHECKING:
    from evomerge.config import RunConfig
    from evomerge.models import ModelsConfig

DATA_KEYS = ("fitness", "validation", "test")


def model_config(path: str) -> tuple[str, dict | None]:
    """(where the model is: local | hub cache | hub | missing, its config.json if readable without the network)."""
    p = Path(path).expanduser()
    if p.exists():
        cfg = p / "config.json"
        return "local", (read_config(cfg) if cfg.exists() else None)
    if not is_hub_id(path):
        return "missing", None
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(path, "config.json")
    if isinstance(hit, str):
        return "hub cache", read_config(Path(hit), path)
    return ("missing (hub offline)" if hub_offline() else "hub"), None


def dataset_status(src: Any) -> str:
    """local | hub cache | hub | missing ..., for an evaluator data source (a path or {path, name, split})."""
    path = str(src.get("path") if isinstance(src, dict) else src)
    if Path(path).expanduser().exists():
        return "local"
    if not is_hub_id(path):
        return "missing (no such file)"
    from huggingface_hub import constants

    owner, name = path.split("/")
    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{owner}--{name}"
    processed = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets")) / f"{owner}___{name}"
    if hub.exists() or processed.exists():
        return "hub cache"
    return "missing (hub offline)" if hub_offline() else "hub"


def _specs(mc: ModelsConfig) -> list[tuple[str, str, str]]:
    """(where, name, path) of each model; a LoRA source's path is mergekit's BASE+ADAPTER."""
    out = [("models.base", mc.base.name, mc.base.path)] if mc.base else []
    for i, s in enumerate(mc.sources):
        out.append((f"models.sources[{i}]", s.name, f"{s.path}+{s.lora}" if s.lora else s.path))
    return out


def _data_sources(evaluators: dict) -> list[tuple[str, Any]]:
    out = []
    for name, ev in evaluators.items():
        for key in DATA_KEYS:
            if isinstance(ev, dict) and ev.get(key) is not None:
                out.append((f"evaluator.{name}.{key}", ev[key]))
    return out


def preflight(rc: RunConfig) -> None:
    """Fail fast with one message naming every missing model and dataset, before anything is loaded.

    Zoo experiments are skipped: their models and data files are written when the zoo is built.
    """
    if rc.models.zoo:
        return
    from evomerge.models.pool import ModelSpec, check_exists

    problems = []
    for where, name, path in _specs(rc.models):
        try:
            check_exists(ModelSpec(name, path), where)
        except FileNotFoundError as e:
            problems.append(str(e))
    for where, src in _data_sources(rc.evaluator):
        status = dataset_status(src)
        if status.startswith("missing"):
            path = src.get("path") if isinstance(src, dict) else src
            why = ("is a hub dataset id that is not in the local Hugging Face cache, and the hub is offline "
                   "(HF_HUB_OFFLINE=1); download it where you have network access, save it as .jsonl (columns as "
                   "configured, e.g. question and answer_number) and point" if "offline" in status
                   else "does not exist; point")
            problems.append(f"{where}: dataset {path!r} {why} {where} at the local file "
                            f"({where}=/path/to/file.jsonl; .jsonl/.json/.csv/.parquet).")
    if problems:
        raise FileNotFoundError(f"{len(problems)} input(s) missing, nothing was loaded:\n  - " + "\n  - ".join(problems))


def _genome(rc: RunConfig, num_layers: int) -> int:
    from evomerge import space as space_pkg

    names, base = [s.name for s in rc.models.sources], rc.models.base.name if rc.models.base else None
    recipe_models = list(rc.space.get("recipe_models") or {})
    pool = space_pkg.PoolShape(names, base, num_layers, {n: {} for n in rc.models.names + recipe_models})
    return space_pkg.build(rc.space, rc.merge, pool, seed=rc.seed).dim


def _layers(mcfg: dict | None) -> int | None:
    n = (mcfg or {}).get("num_hidden_layers") or (mcfg or {}).get("n_layer")
    return int(n) if n else None


def planned_depth(mc: ModelsConfig, layers: set[int] | None = None) -> int | None:
    """The models' layer count from config.json files (`layers`, when the caller has read them) or the zoo's plan,
    None when unknown without loading."""
    if layers is None:
        layers = {n for _, _, path in _specs(mc) if (n := _layers(model_config(path)[1]))}
    num_layers = next(iter(layers)) if len(layers) == 1 else mc.num_layers
    if num_layers is None and mc.zoo:
        from evomerge.zoo import planned_layers

        num_layers = planned_layers(mc.zoo, **mc.zoo_options)
    return None if num_layers is None else int(num_layers)


def check_space(rc: RunConfig) -> None:
    """Build the search space on a stand-in pool (names and depth only): a method that needs a missing base, a DFS
    cap below the fixed layers or bad bounds fail here, before any weights are loaded."""
    num_layers = planned_depth(rc.models)
    if num_layers is not None:
        _genome(rc, num_layers)


def describe(rc: RunConfig) -> str:
    """The resolved plan as text: models (and where they are), genome size, optimiser, budget, data."""
    mc = rc.models
    lines = ["Plan (dry run: no weights loaded)", "", "models:"]
    layers = set()
    for where, name, path in _specs(mc):
        status, mcfg = model_config(path)
        n = _layers(mcfg)
        if n:
            layers.add(n)
        lines.append(f"  {where:<16} {name:<12} {path}  [{status}{f', {n} layers' if n else ''}]")
    if mc.zoo:
        folder = Path(mc.zoo_root) / (mc.zoo_dir or mc.zoo)
        lines.append(f"  (zoo '{mc.zoo}' is built under {folder} on first use)")
    num_layers = planned_depth(mc, layers)
    space = rc.space
    if num_layers is not None:
        dim, depth = _genome(rc, int(num_layers)), f"{num_layers} layers"
    else:  # the genome may not depend on depth (one gene group for the whole model)
        d1, d2 = _genome(rc, 2), _genome(rc, 4)
        dim, depth = (d1, "independent of depth") if d1 == d2 else (None, "unknown: no config.json available")
    method = space.get("method") or rc.merge["method"]
    lines += ["", f"space:      {space['kind']} ({method if space['kind'] == 'ps' else 'layer path'}), genome "
                  f"{dim if dim is not None else '?'} genes ({depth})"]
    opt = rc.optimizer
    pop = opt.get("popsize")
    if pop is None and opt["kind"] == "cmaes" and dim:
        pop = 4 + int(3 * math.log(dim))
    budget = rc.search.budget
    gens = math.ceil(budget / pop) if pop else None
    lines.append(f"optimizer:  {opt['kind']} popsize {pop if pop else '?'}"
                 + (f", x0 {opt.get('x0')}, sigma0 {opt.get('sigma0')}" if opt["kind"] == "cmaes" else ""))
    objectives = ", ".join(f"{o['direction']} {o['metric']}" for o in rc.search.objectives)
    lines.append(f"budget:     {budget} evaluations (~{gens if gens else '?'} generations); objectives: {objectives}")
    per_eval = rc.search.minibatch
    if not per_eval:
        per_eval = next((ev.get("fitness_samples") for ev in rc.evaluator.values()
                         if isinstance(ev, dict) and ev.get("fitness_samples")), None)
    lines.append(f"estimate:   {budget} merges; {f'{budget * per_eval:,} fitness items' if per_eval else 'budget x all fitness items'}"
                 f" (per evaluator), plus the held-out `{rc.final_split}` table "
                 f"({len(mc.names) + 2} models)")
    lines += ["", "data:"]
    for where, src in _data_sources(rc.evaluator):
        path = src.get("path") if isinstance(src, dict) else src
        status = "written with the zoo" if mc.zoo else dataset_status(src)
        lines.append(f"  {where:<28} {path}  [{status}]")
    missing = [line for line in lines if "missing" in line]
    lines += ["", f"{len(missing)} model(s)/dataset(s) missing: point their paths at local copies (see above)."
              if missing else "everything the run needs is available."]
    return "\n".join(lines)
