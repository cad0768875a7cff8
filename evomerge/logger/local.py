"""Progress while a run is going: a tqdm bar when interactive, and always one log line per generation.

The line says how much of the budget is used, the best value so far of every objective (in its own direction),
the hypervolume of everything evaluated so far (several objectives), the time per evaluation and the time left.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

from evomerge.report import analysis

log = logging.getLogger("evomerge")


class LocalLogger:
    def __init__(self, cfg: dict | None, run_dir, run_config: dict | None = None):
        cfg = dict(cfg or {})
        self.run_dir = Path(run_dir)
        self.run_config = run_config or {}
        self.budget = ((self.run_config.get("search") or {}).get("budget"))
        bar = cfg.get("progress_bar", "auto")
        self.use_bar = sys.stderr.isatty() if bar == "auto" else bool(bar)
        self.bar = None
        self.records: list[dict] = []  # evaluated in this process
        self.all_records: list[dict] = []  # the whole run so far (the loop's result.records)
        self.objectives = None
        self.ref = None
        self.t0 = time.perf_counter()
        self.last_stats: dict = {}

    # ---- hooks called by the search loop -------------------------------------------------------------------
    def evaluation(self, record: dict) -> None:
        self.records.append(record)
        if self.use_bar:
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=self.budget, desc="evaluations", unit="eval", dynamic_ncols=True)
            self.bar.update(1)

    def generation(self, gen: int, result, evals: int, budget: int, elapsed: float, **info) -> dict:
        records = list(getattr(result, "records", None) or self.records)  # on resume: the restored ones too
        self.all_records = records
        if self.objectives is None or len(self.objectives) == 0:
            self.objectives = analysis.objectives_of(records, self.run_config)
        if getattr(result, "ref_point", None) is not None:  # the loop's own reference point wins
            self.ref = np.asarray(result.ref_point, float)
        elif self.ref is None and len(self.objectives) > 1:
            self.ref = analysis.hv_reference(records, self.run_config, objectives=self.objectives)
        stats = analysis.generation_stats(records, gen, self.objectives, self.ref)
        hv_hist = getattr(result, "hypervolume", None)
        if len(self.objectives) > 1 and hv_hist:  # ... and so does its hypervolume history
            stats["hypervolume"] = float(hv_hist[-1]["hypervolume"])
            stats["front_size"] = int(hv_hist[-1].get("front_size", stats.get("front_size", 0)))
        if getattr(result, "n_samples", None):
            stats["samples_evaluated"] = int(result.n_samples)
        done_here = max(len(self.records), 1)
        per_eval = (time.perf_counter() - self.t0) / done_here if self.records else elapsed / max(evals, 1)
        stats.update({"evaluations": evals, "budget": budget, "seconds_per_eval": per_eval,
                      "eta_seconds": per_eval * max(budget - evals, 0), "elapsed": elapsed})
        self.last_stats = stats
        if self.bar is None:
            log.info("%s", self.line(stats))
        else:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm([logging.getLogger()]):  # the line goes above the bar, not through it
                log.info("%s", self.line(stats))
            self.bar.n = evals  # the loop's count (includes evaluations restored on resume)
            self.bar.set_postfix_str(self.short(stats), refresh=True)
        return stats

    def finish(self, summary: dict) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # ---- formatting ----------------------------------------------------------------------------------------
    def _bests(self, stats: dict) -> str:
        parts = []
        for o in self.objectives or []:
            v = stats.get(f"{o.metric}/best")
            arrow = "max" if o.direction == "max" else "min"
            parts.append(f"{o.metric}={v:.4f} ({arrow})" if v is not None else f"{o.metric}=n/a")
        return ", ".join(parts) or "none yet"

    def line(self, stats: dict) -> str:
        pct = 100.0 * stats["evaluations"] / max(stats["budget"], 1)
        out = [f"gen {stats['generation']}", f"evals {stats['evaluations']}/{stats['budget']} ({pct:.0f}%)",
               f"best {self._bests(stats)}"]
        if "hypervolume" in stats:
            out.append(f"HV {stats['hypervolume']:.4f} (front {stats.get('front_size', '?')})")
        if stats.get("samples_evaluated"):
            out.append(f"{stats['samples_evaluated']} samples")
        if stats.get("failed"):
            out.append(f"{stats['failed']} failed")
        out += [f"{stats['seconds_per_eval']:.2f} s/eval", f"ETA {_duration(stats['eta_seconds'])}"]
        return " | ".join(out)

    def short(self, stats: dict) -> str:
        hv = f" HV={stats['hypervolume']:.3f}" if "hypervolume" in stats else ""
        best = " ".join(f"{o.metric}={stats.get(f'{o.metric}/best', float('nan')):.3f}"
                        for o in self.objectives or [])
        return f"gen {stats['generation']} {best}{hv}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
