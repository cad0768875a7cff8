"""Evaluation cache: an identical decoded recipe is never evaluated twice on the same samples.

The key is a hash of the recipe (every number rounded to the space's resolution), of the sample selection (the
fidelity) and of the settings that decide what a recipe scores (`metric_fingerprint`: models, merge, evaluator and
seed sections of the run config), so a run with other evaluator settings never reuses another run's metrics. Entries are appended to `cache.jsonl` in the run directory, so the cache survives restarts; a line torn
by a crash is dropped on reading. Only successful evaluations are cached: a failure may be transient (out of
memory), so it is retried if proposed again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from evomerge.store import append_jsonl, read_jsonl


def _rounded(obj, digits: int):
    if isinstance(obj, float):
        v = round(obj, digits)
        return 0.0 if v == 0 else v  # -0.0 and 0.0 are the same recipe
    if isinstance(obj, dict):
        return {str(k): _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_rounded(v, digits) for v in obj]
    return obj


def resolution_digits(resolution: float) -> int:
    if not 0 < resolution <= 1:
        raise ValueError(f"search.cache_resolution: expected a number in (0, 1], found {resolution}")
    import math

    return max(0, round(-math.log10(resolution)))


def recipe_key(recipe_dict: dict, digits: int, selection: str) -> str:
    text = json.dumps(_rounded(recipe_dict, digits), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(f"{text}|{selection}".encode()).hexdigest()


def metric_fingerprint(config: dict | None) -> str:
    """A short hash of the config sections that decide a recipe's metrics ('' without a config)."""
    if not config:
        return ""
    part = {k: config.get(k) for k in ("models", "merge", "evaluator", "seed")}
    return hashlib.sha1(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:16]


def selection_key(indices) -> str:
    """'all' for the whole fitness split, otherwise a hash of the sample indices."""
    if indices is None:
        return "all"
    return "idx:" + hashlib.sha1(",".join(map(str, indices)).encode()).hexdigest()[:16]


class EvalCache:
    def __init__(self, path: str | Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self.entries = {r["key"]: r for r in read_jsonl(self.path)} if enabled else {}

    def get(self, key: str) -> dict | None:
        return self.entries.get(key) if self.enabled else None

    def put(self, key: str, metrics: dict, n_samples: int, record_id: int, wall_time: float) -> None:
        """`record_id` is the evaluation that produced the entry: a resumed run replaying that same evaluation
        recognises it and records it exactly as the first time (not as a free cache hit)."""
        if not self.enabled or key in self.entries:
            return
        entry = {"key": key, "metrics": metrics, "n_samples": n_samples, "id": record_id, "wall_time": wall_time}
        append_jsonl(self.path, entry)
        self.entries[key] = entry
