"""Preconditions of a study: what the source models must do before a merge can show anything.

Sakana's effect needs a skill expert that solves the target's problems in some form and a language expert that
answers in the target language; when a zoo (or a user's models) misses that, a search result says nothing about
merging. An experiment lists them (`preconditions:` in its config); the run measures each once on its split before
the search, warns when one fails, and prints them next to the final table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precondition:
    model: str
    metric: str
    at_least: float
    split: str = "validation"
    why: str = ""


def parse(items) -> list[Precondition]:
    out = []
    for i, item in enumerate(items or []):
        where = f"preconditions[{i}]"
        if not isinstance(item, dict) or not {"model", "metric", "at_least"} <= set(item):
            raise ValueError(f"{where}: expected {{model, metric, at_least[, split, why]}}, found {item!r}")
        unknown = set(item) - {"model", "metric", "at_least", "split", "why"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; expected model, metric, at_least, split, why")
        try:
            bound = float(item["at_least"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}.at_least: expected a number, found {item['at_least']!r}") from None
        if item.get("split", "validation") not in ("fitness", "validation", "test"):
            raise ValueError(f"{where}.split: expected fitness, validation or test, found {item['split']!r}")
        out.append(Precondition(str(item["model"]), str(item["metric"]), bound, item.get("split", "validation"),
                                str(item.get("why", ""))))
    return out


def check(preconds: list[Precondition], models: list[str], metrics) -> None:
    """Names that do not exist fail before any weights load."""
    for i, p in enumerate(preconds):
        if p.model not in models:
            raise ValueError(f"preconditions[{i}].model: {p.model!r} is not a model of the pool {models}")
        if p.metric not in metrics:
            raise ValueError(f"preconditions[{i}].metric: {p.metric!r} is not a metric of the evaluators "
                             f"{sorted(metrics)}")


def measure(worker, preconds: list[Precondition]) -> list[dict]:
    """Score each named model once per split (unchanged, as a reference row)."""
    scored: dict[tuple[str, str], dict] = {}
    out = []
    for p in preconds:
        if (p.model, p.split) not in scored:
            scored[p.model, p.split] = worker.evaluate_model(p.model, p.split).metrics
        value = float(scored[p.model, p.split][p.metric])
        out.append({"model": p.model, "metric": p.metric, "split": p.split, "value": value,
                    "at_least": p.at_least, "ok": value >= p.at_least, "why": p.why})
    return out


def format_results(results: list[dict]) -> str:
    lines = ["Preconditions (the source models, before any merge):"]
    for r in results:
        why = f" ({r['why']})" if r["why"] else ""
        lines.append(f"- {r['model']} {r['metric']} on {r['split']}: {r['value']:.3f} >= {r['at_least']:g}: "
                     f"{'holds' if r['ok'] else 'FAILS'}{why}")
    if not all(r["ok"] for r in results):
        lines.append("WARNING: a precondition fails, so this study cannot show what merging does here; the models "
                     "(or the zoo's build environment) differ from the ones the study was designed on.")
    return "\n".join(lines)
