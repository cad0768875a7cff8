"""The `search:` config block, parsed and validated once (no model needed), and what a resume may change."""

from __future__ import annotations

from dataclasses import dataclass, field

from evomerge.search.cache import resolution_digits
from evomerge.search.fidelity import Fidelity

RESUME_FREE = ("budget", "final_pareto")  # search settings a resume may change (they decide nothing already run)

SEARCH_KEYS = {"budget", "objectives", "seed_population", "max_consecutive_failures", "minibatch", "resample",
               "fidelity", "hv_ref", "cache", "cache_resolution", "weights", "final_pareto", "select_on", "select_top"}


@dataclass
class SearchSettings:
    budget: int
    max_consecutive_failures: int = 10
    minibatch: int | None = None       # samples per generation from the fitness split (None: all of it)
    resample: bool = False             # redraw the minibatch / rung subsets every generation
    fidelity: Fidelity = field(default_factory=Fidelity)
    hv_ref: list[float] | None = None  # hypervolume reference point in metric units (None: from generation 0)
    cache: bool = True
    cache_resolution: float | None = None  # None: the space's `resolution`, else 1e-6
    weights: list[float] | None = None     # how 'best' is chosen among several objectives (None: equal weights)
    select_on: str = "fitness"  # fitness | validation: re-score each generation's best there once, keep the best
    select_top: int | None = None  # with select_on validation: only the select_top of those by fitness (None: all)
    objectives: list[dict] = field(default_factory=list)  # {metric, direction}: checked against the evaluators
    seed_population: bool = True   # start from the space's seeds (e.g. each source model)
    final_pareto: bool | None = None  # held-out pass over the front: None with several objectives, or always/never

    @classmethod
    def parse(cls, search: dict, n_obj: int | None = None) -> SearchSettings:
        """Validate the `search:` config block (no model needed), naming the field and what was expected."""
        search = dict(search or {})
        unknown = sorted(set(search) - SEARCH_KEYS)
        if unknown:
            raise ValueError(f"search: unknown key(s) {unknown}; expected some of {sorted(SEARCH_KEYS)}")
        budget = search.get("budget")
        if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0:
            raise ValueError(f"search.budget: expected a positive integer number of evaluations, found {budget!r}")
        mcf = search.get("max_consecutive_failures", 10)
        if not isinstance(mcf, int) or isinstance(mcf, bool) or mcf <= 0:
            raise ValueError(f"search.max_consecutive_failures: expected a positive integer, found {mcf!r}")
        mb = search.get("minibatch")
        if mb is not None and (not isinstance(mb, int) or isinstance(mb, bool) or mb <= 0):
            raise ValueError(f"search.minibatch: expected null (whole fitness split) or a positive integer, found "
                             f"{mb!r}")
        ref = _per_objective(search, "hv_ref", n_obj, "in metric units")
        weights = _per_objective(search, "weights", n_obj, "a scalarisation weight each")
        res = search.get("cache_resolution")
        if res is not None:
            resolution_digits(float(res))
        select_on = search.get("select_on") or "fitness"
        if select_on not in ("fitness", "validation"):
            raise ValueError(f"search.select_on: expected 'fitness' (the best fitness) or 'validation' (re-score each "
                             f"generation's best on the validation split), found {select_on!r}")
        top = search.get("select_top")
        if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top <= 0):
            raise ValueError(f"search.select_top: expected a positive integer or null, found {top!r}")
        return cls(budget=budget, max_consecutive_failures=mcf, minibatch=mb, resample=bool(search.get("resample")),
                   fidelity=Fidelity.parse(search.get("fidelity")), hv_ref=ref, cache=bool(search.get("cache", True)),
                   cache_resolution=None if res is None else float(res), weights=weights, select_on=select_on,
                   select_top=top, objectives=list(search.get("objectives") or []),
                   seed_population=bool(search.get("seed_population", True)), final_pareto=search.get("final_pareto"))


def _per_objective(search: dict, key: str, n_obj: int | None, unit: str) -> list[float] | None:
    """An optional list with one number per objective (`search.hv_ref`, `search.weights`)."""
    values = search.get(key)
    if values is None:
        return None
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"search.{key}: expected a list with one number per objective, {unit}; found {values!r}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"search.{key}[{i}]: expected a number ({unit}), found {v!r}")
    values = [float(v) for v in values]
    if n_obj is not None and len(values) != n_obj:
        raise ValueError(f"search.{key}: {len(values)} values for {n_obj} objectives; expected one per objective, "
                         f"{unit}")
    return values


def check_minibatch(minibatch: int | None, n_fitness: int) -> None:
    """A minibatch cannot be larger than the fitness split it is drawn from."""
    if minibatch is not None and minibatch > n_fitness:
        raise ValueError(f"search.minibatch: {minibatch} samples per generation, but the fitness split has "
                         f"{n_fitness}; expected 1..{n_fitness} (or null for all of it)")
