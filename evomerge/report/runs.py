"""A run as read from its directory (records, archive, config, final table), and comparisons across runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from evomerge.report import analysis
from evomerge.search.objectives import Objective

MODEL_COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
FRONT_COLOR = "#d62728"


@dataclass
class Run:
    dir: Path
    config: dict
    records: list[dict]
    objectives: list[Objective]
    final: dict = field(default_factory=dict)  # final.json: best record, held-out rows, split
    best_recipe: dict | None = None
    name: str = ""
    archive: dict = field(default_factory=dict)  # archive.json from the search loop (may be absent)

    @property
    def ref(self) -> np.ndarray | None:
        return analysis.hv_reference(self.records, self.config, self.archive, self.objectives)

    @property
    def scored(self) -> list[dict]:
        return analysis.scored(self.records)

    @property
    def front(self) -> list[dict]:
        return analysis.front(self.scored)

    @property
    def models(self) -> list[str]:
        for r in self.records:
            if (r.get("recipe") or {}).get("models"):
                return list(r["recipe"]["models"])
        return list((self.best_recipe or {}).get("models") or [])

    @property
    def optimizer(self) -> str:
        return str((self.config.get("optimizer") or {}).get("kind", "optimiser unknown"))

    def color(self, model: str) -> str:
        names = self.models
        i = names.index(model) if model in names else len(names)
        return MODEL_COLORS[i % len(MODEL_COLORS)]


def load_run(run_dir: str | Path, config: dict | None = None, name: str | None = None) -> Run:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: not a directory; expected an evomerge run directory")
    records = analysis.load_records(run_dir)
    if not records:
        raise ValueError(f"{run_dir / 'evaluations.jsonl'}: no evaluations recorded yet; nothing to report")
    config = config if config is not None else analysis.load_config(run_dir)
    final = {}
    if (run_dir / "final.json").exists():
        final = json.loads((run_dir / "final.json").read_text())
    best = None
    if (run_dir / "best_recipe.yaml").exists():
        best = yaml.safe_load((run_dir / "best_recipe.yaml").read_text())
    elif (final.get("best") or {}).get("recipe"):
        best = final["best"]["recipe"]
    archive = analysis.load_archive(run_dir)
    spec = {"search": {"objectives": archive["objectives"]}} if archive.get("objectives") else config
    return Run(run_dir, config, records, analysis.objectives_of(records, spec), final, best, name or run_dir.name,
               archive)


def common_reference(runs: list[Run]) -> np.ndarray | None:
    """One hypervolume reference point for several runs (the worst of their own), so curves are comparable;
    None when the runs optimised different objectives."""
    if len({tuple((o.metric, o.direction) for o in r.objectives) for r in runs}) != 1:
        return None  # different objectives: hypervolumes cannot be compared
    refs = [r.ref for r in runs]
    refs = [r for r in refs if r is not None]
    return np.max(refs, axis=0) if refs else None


def compare(runs: list[Run]) -> list[dict]:
    """One row per run for side-by-side comparison: budget used, hypervolume against a common reference point,
    best fitness per objective, and the evolved model's held-out scores."""
    ref = common_reference(runs) if all(len(r.objectives) > 1 for r in runs) else None  # same objectives only
    rows = []
    for run in runs:
        row = {"run": run.name, "optimizer": run.optimizer, "evaluations": len(run.records),
               "failed": sum(not analysis.is_ok(r) for r in run.records), "front size": len(run.front)}
        if ref is not None and len(ref) == len(run.objectives):
            row["hypervolume (common ref)"] = analysis.hv(run.records, ref)
        pts = run.scored
        for k, o in enumerate(run.objectives):
            vals = [analysis.value(r, k, o) for r in pts]
            if vals:
                row[f"best fitness {o.metric}"] = max(vals) if o.direction == "max" else min(vals)
        split = run.final.get("final_split", "test")
        for name, metrics in heldout_rows(run):
            if name == "evolved":
                for o in run.objectives:
                    if o.metric in metrics:
                        row[f"evolved {split} {o.metric}"] = metrics[o.metric]
        if run.final.get("wall_time"):
            row["wall time (s)"] = round(float(run.final["wall_time"]), 1)
        rows.append(row)
    return rows



def heldout_rows(run: Run) -> list[tuple[str, dict]]:
    """Held-out table rows as (reference name, metrics): 'base', 'source:<m>', 'average', 'evolved'."""
    out = []
    for row in run.final.get("final") or []:
        if row.get("role"):  # written since the table names each row's role (evomerge/final.py)
            out.append((row["role"], row["metrics"]))
            continue
        label = row["model"]  # older run directories: the role from the label
        if label.endswith("(base)"):
            name = "base"
        elif label == "plain average":
            name = "average"
        elif label.startswith("evolved"):
            name = "evolved"
        else:
            name = f"source:{label}"
        out.append((name, row["metrics"]))
    return out


