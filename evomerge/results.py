"""Committed numbers that regenerate: every table script writes `<name>.md` for readers and `<name>.json` beside it
for `experiments/regenerate.py`, which re-runs the script and compares number by number.

A number is a value with an optional interval (the committed 95% interval over seeds). A regenerated number
*matches* when it equals the committed value to the printed precision, and is *inside* when it falls in the
committed interval; a deterministic number (no interval) must match.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evomerge.environment import describe, differences, fingerprint
from evomerge.store import atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class Number:
    value: float
    lo: float | None = None
    hi: float | None = None


def _number(x) -> Number:
    if isinstance(x, Number):
        return x
    if isinstance(x, dict):
        return Number(float(x["value"]), x.get("lo"), x.get("hi"))
    if isinstance(x, (tuple, list)):
        return Number(*(float(v) for v in x))
    return Number(float(x))


def bootstrap_mean(values, n: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile) of the mean under resampling `values` with replacement (seeds of a study:
    with 3 seeds the interval is about [min, max], the seed spread, not a tight confidence interval)."""
    v = np.asarray(values, dtype=float)
    means = v[np.random.default_rng(seed).integers(0, len(v), (n, len(v)))].mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_bootstrap(evo, ref, n: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean difference (evolved - ref) of per-item 0/1 scores, `evo` (seeds x items) against `ref` (items), and its
    95% percentile interval when both the seeds and the test items are resampled (items paired between the rows)."""
    evo, ref = np.asarray(evo, float), np.asarray(ref, float)
    rng = np.random.default_rng(seed)
    S, N = evo.shape
    si = rng.integers(0, S, (n, S))
    ii = rng.integers(0, N, (n, N))
    d = evo[si[:, :, None], ii[:, None, :]].mean(axis=(1, 2)) - ref[ii].mean(axis=1)
    return float(evo.mean() - ref.mean()), float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))


def mcnemar(a, b) -> tuple[int, int, float]:
    """Exact McNemar test of two models' 0/1 scores on the same items: (items only `a` got right, items only `b`
    got right, two-sided p-value of the binomial test on those discordant items; scipy's binomtest)."""
    from scipy.stats import binomtest

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar: paired scores needed, got {a.shape} and {b.shape} items")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return only_a, only_b, p


def zoo_environment(zoo: Path | None) -> dict | None:
    try:
        return json.loads((Path(zoo) / "zoo.json").read_text()).get("environment") if zoo else None
    except (OSError, json.JSONDecodeError):
        return None


def provenance(command: str, zoo: Path | None = None, device: str = "cpu") -> tuple[list[str], dict]:
    """Markdown lines for a table's header (command, environment, the zoo's build environment when it differs)
    and the same facts as a dict for the JSON file."""
    env = fingerprint(device)
    lines = [f"Command: `{command}`  ", f"Environment: {describe(env)}  "]
    zoo_env = zoo_environment(zoo)
    if zoo_env is not None and differences(zoo_env, env):
        lines.append(f"Zoo built with: {describe(zoo_env)}  ")
    return lines, {"command": command, "environment": env, "zoo_environment": zoo_env}


def save(md_path: str | Path, text: str, numbers: dict, facts: dict) -> None:
    """Write the table (`md_path`) and its numbers (`md_path` with `.json`)."""
    md_path = Path(md_path)
    atomic_write_text(md_path, text.rstrip("\n") + "\n")
    atomic_write_json(md_path.with_suffix(".json"), {
        **facts, "numbers": {k: {"value": n.value, "lo": n.lo, "hi": n.hi}
                             for k, n in ((k, _number(v)) for k, v in numbers.items())}})


def load(json_path: str | Path) -> dict:
    path = Path(json_path)
    try:
        data = json.loads(path.read_text())
        data["numbers"] = {k: _number(v) for k, v in data["numbers"].items()}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a committed-numbers file (needs 'numbers': {{name: {{value, lo, hi}}}}): {e}") from e
    return data


@dataclass(frozen=True)
class Verdict:
    name: str
    committed: Number
    regenerated: float | None
    status: str  # "same", "inside", "OUTSIDE", "missing"

    @property
    def ok(self) -> bool:
        return self.status in ("same", "inside")


def compare(committed: dict[str, Number], regenerated: dict[str, Number], digits: int = 4,
            slack: float = 0.0) -> list[Verdict]:
    """One verdict per committed number. `digits`: the precision at which two values are the same; `slack`: how far
    outside the committed interval (or away from a deterministic value) a number may land and still count as inside,
    for a stack known to drift (say so where it is used)."""
    out = []
    for name, c in committed.items():
        r = regenerated.get(name)
        if r is None or not math.isfinite(r.value):
            out.append(Verdict(name, c, None, "missing"))
            continue
        v = r.value
        if round(v, digits) == round(c.value, digits):
            status = "same"
        else:
            lo = c.value if c.lo is None else c.lo
            hi = c.value if c.hi is None else c.hi
            status = "inside" if lo - slack <= v <= hi + slack else "OUTSIDE"
        out.append(Verdict(name, c, v, status))
    return out


def format_verdicts(verdicts: list[Verdict]) -> str:
    rows = ["| number | committed | interval | regenerated | verdict |", "|---|---|---|---|---|"]
    for v in verdicts:
        c = v.committed
        interval = f"[{c.lo:.4g}, {c.hi:.4g}]" if c.lo is not None and c.hi is not None else "exact"
        reg = "-" if v.regenerated is None else f"{v.regenerated:.4g}"
        rows.append(f"| {v.name} | {c.value:.4g} | {interval} | {reg} | {v.status} |")
    return "\n".join(rows)
