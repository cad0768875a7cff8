"""The search loop: ask -> decode -> (cache) -> evaluate (executor) -> tell -> archive -> checkpoint -> log.

One loop for every optimiser (evomerge/optimizer/), space and executor. Per generation:
1. `optimizer.ask()` proposes X; the space decodes each row to a Recipe (a decode error is a failed candidate).
2. Candidates violating `space.constraint(x) > 0` (if the space has one) are not evaluated: they are recorded with
   the violation and told the penalty F = WORST + violation (and G = violation to pymoo, whose constraint
   domination then applies).
3. The rest are evaluated on the generation's fitness samples (evomerge/search/fidelity.py: fixed subsample,
   optional minibatch resampling, optional successive halving), through the cache (evomerge/search/cache.py).
4. `optimizer.tell(X, F, G)`; the Pareto archive (all top-fidelity successes) and its hypervolume are updated.
5. A checkpoint (the optimiser's calls as data, counters, hypervolume history, RNG states) is written atomically
   (evomerge/search/checkpoint.py: plain JSON, no code); then the logger.

Files in the run directory: `evaluations.jsonl` (one record per candidate evaluation, appended as it happens),
`cache.jsonl`, `checkpoint.json`, `archive.json` (Pareto front + hypervolume per generation).

Resume: the checkpoint is the truth. Records of the generation in flight (newer than the checkpoint) are cut from
`evaluations.jsonl`, the freshly built optimiser replays its recorded calls, the RNG states are restored, and that generation is run again; its finished
evaluations come back from the cache at no cost. Evaluation is deterministic, so a run killed at any moment and
resumed ends exactly as an uninterrupted one (tests/faults/test_resume.py).

For loggers: `logger.evaluation(record)` after each record, with the stable fields id, generation, genome, recipe,
metrics, objectives (minimisation vector), error, wall_time, n_samples, split, plus fidelity (fraction of the
fitness split used), rung, cached and feasible. `logger.generation(gen, result, evals, budget, elapsed)` after each
generation: `result` is the SearchResult below, whose `front` (Pareto records), `hypervolume` (one dict per
generation: generation, hypervolume, evaluations, n_samples, front_size) and `ref_point` are up to date.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from evomerge.search import checkpoint
from evomerge.search.archive import ParetoArchive
from evomerge.search.cache import EvalCache, metric_fingerprint, recipe_key, resolution_digits, selection_key
from evomerge.search.fidelity import generation_samples, promoted, told_values
from evomerge.search.objectives import WORST, Objective, scalar, to_min
from evomerge.search.settings import SearchSettings, check_minibatch
from evomerge.store import (
    RunDirError,
    append_jsonl,
    atomic_write_json,
    read_jsonl,
    write_jsonl,
)

log = logging.getLogger(__name__)

@dataclass
class SearchResult:
    records: list[dict] = field(default_factory=list)
    best: dict | None = None  # lowest weighted objective among successful top-fidelity evaluations
    front: list[dict] = field(default_factory=list)  # Pareto archive: non-dominated top-fidelity records
    hypervolume: list[dict] = field(default_factory=list)
    ref_point: list[float] | None = None  # in minimisation units (the objectives' to_min)
    n_samples: int = 0  # samples actually evaluated (cache hits cost nothing)


class TooManyFailures(RuntimeError):
    pass


@dataclass
class _State:
    """Everything besides the optimiser that a resumed run needs (JSON in the checkpoint)."""
    gen: int = 0
    evals: int = 0
    n_samples: int = 0
    failures_in_row: int = 0
    hypervolume: list = field(default_factory=list)
    ref_point: list | None = None


def run_search(space, optimizer, executor, objectives: list[Objective], settings: SearchSettings | int,
               run_dir: Path, logger=None, max_consecutive_failures: int = 10, *, n_fitness: int | None = None,
               seed: int = 0, resume: bool = False, config: dict | None = None) -> SearchResult:
    if isinstance(settings, int):  # the foundation's signature: run_search(..., budget, run_dir, ...)
        if settings <= 0:
            raise ValueError(f"search.budget: expected a positive number of evaluations, found {settings}")
        settings = SearchSettings(budget=settings, max_consecutive_failures=max_consecutive_failures)
    return _Loop(space, optimizer, executor, objectives, settings, Path(run_dir), logger, n_fitness, seed,
                 config).run(resume)


class _Loop:
    def __init__(self, space, optimizer, executor, objectives, settings, run_dir, logger, n_fitness, seed, config):
        self.space, self.optimizer, self.executor = space, optimizer, executor
        self.objectives, self.s, self.run_dir, self.logger = objectives, settings, run_dir, logger
        self.seed, self.config = int(seed), config
        self.n_obj = len(objectives)
        self.fid = settings.fidelity
        if (self.fid.multi or settings.minibatch) and n_fitness is None:
            raise ValueError("search.fidelity / search.minibatch need the size of the fitness split (n_fitness)")
        if settings.minibatch is not None:
            check_minibatch(settings.minibatch, n_fitness)
        self.n_fitness = n_fitness
        w = settings.weights or optimizer.weights
        self.weights = np.asarray(w, float) if w is not None else np.full(self.n_obj, 1.0 / self.n_obj)
        # promotion between rungs: the optimiser's own view (weighted sum or Pareto rank)
        scalar_view = self.n_obj == 1 or optimizer.scalarises
        self.promote_weights = self.weights if scalar_view else None
        # a space declares its constraints (n_constraints, constraint(x) -> violation) and cache grid (GeneBox)
        self.constraint = space.constraint if space.n_constraints else None
        res = settings.cache_resolution or space.resolution or 1e-6
        self.digits = resolution_digits(float(res))
        run_dir.mkdir(parents=True, exist_ok=True)
        self.paths = {k: run_dir / f for k, f in (("log", "evaluations.jsonl"), ("ckpt", checkpoint.NAME),
                                                  ("archive", "archive.json"), ("cache", "cache.jsonl"))}
        self.cache = EvalCache(self.paths["cache"], settings.cache)
        self.fingerprint = metric_fingerprint(config)
        self.state = _State()
        self.result = SearchResult()

    # ---- run-directory I/O: every write failure becomes one clear error ----------------------------------
    def _io(self, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except OSError as e:
            good = (f"the last good checkpoint ({self.paths['ckpt']}, {self.state.gen} generation(s) done) is "
                    f"intact" if self.paths["ckpt"].exists() else "no checkpoint had been written yet")
            raise RunDirError(f"cannot write {what} in {self.run_dir}: {e.strerror or e}. The search stopped; "
                              f"{good}. Free disk space or fix permissions, then rerun with resume=true.") from None

    def _checkpoint(self) -> None:
        self._io("the checkpoint", checkpoint.write, self.paths["ckpt"], self.config, asdict(self.state),
                 self.optimizer)

    def _restore(self) -> list[dict]:
        ckpt = self.paths["ckpt"]
        if not ckpt.exists():  # killed before the first generation finished: start over, keep the cache
            log.info("resume: no checkpoint in %s yet; starting the search from the beginning", self.run_dir)
            self._io("the evaluation log", write_jsonl, self.paths["log"], [])
            return []
        data = checkpoint.read(ckpt)  # JSON only: reading a checkpoint runs no code
        checkpoint.check_config(ckpt, data.get("config"), self.config, self.run_dir)
        try:
            self.state = _State(**data["state"])
        except TypeError as e:
            raise RunDirError(f"{ckpt}: malformed checkpoint, state: {e}") from None
        self.optimizer.replay(data["optimizer"]["calls"], ckpt)  # the fresh optimiser, told what it was told
        checkpoint.restore_rng(data, ckpt)
        records = [r for r in read_jsonl(self.paths["log"]) if r["generation"] < self.state.gen]
        self._io("the evaluation log", write_jsonl, self.paths["log"], records)
        log.info("resume: %d generation(s), %d evaluations restored from %s", self.state.gen, len(records), ckpt)
        return records

    # ---- the loop ------------------------------------------------------------------------------------------
    def run(self, resume: bool) -> SearchResult:
        self.resumed = resume
        self.optimizer = checkpoint.Replayable(self.optimizer)  # records its calls for the checkpoint
        checkpoint.check_run_dir(self.run_dir, resume, None)
        records = self._restore() if resume else []
        res = self.result
        res.hypervolume, res.ref_point, res.n_samples = list(self.state.hypervolume), self.state.ref_point, \
            self.state.n_samples
        self.pareto = ParetoArchive(self.objectives, self.s.hv_ref, self.state.ref_point,
                                    list(self.state.hypervolume))
        for r in records:
            self._account(r)
        if records:
            self._update_front(self.state.gen - 1)
            # a kill between the last checkpoint and its archive write leaves a stale archive: rewrite it now
            self._io("the Pareto archive", atomic_write_json, self.paths["archive"], self.archive())
        t_start = time.perf_counter()
        while self.state.evals < self.s.budget and not self.optimizer.stop():
            complete = self._generation()
            if self.logger is not None:
                self.logger.generation(self.state.gen - (1 if complete else 0), res, self.state.evals, self.s.budget,
                                       time.perf_counter() - t_start)
            if not complete:
                break
        return res

    def _generation(self) -> bool:
        st, fid = self.state, self.fid
        gen = st.gen
        X = np.atleast_2d(self.optimizer.ask())
        N = len(X)
        samples = generation_samples(self.n_fitness or 0, self.s.minibatch, self.s.resample, self.seed, gen,
                                     shuffle=fid.multi)
        n_gen = len(samples) if samples is not None else (self.n_fitness or 0)
        sizes = fid.sizes(n_gen) if (fid.multi or samples is not None) else [None]
        F = np.full((N, self.n_obj), WORST)
        G = np.zeros(N)
        rung = np.full(N, -1)
        ok = np.zeros(N, bool)
        recipes: list = [None] * N
        active = []
        complete = True
        for i, x in enumerate(X):  # decode and constraints: no evaluation for these failures
            err = None
            try:
                if self.constraint is not None:
                    G[i] = max(0.0, float(self.constraint(x)))
                recipes[i] = self.space.decode(x)
            except Exception as e:  # a genome the space cannot decode is a failed candidate, not a crash
                err = f"decode: {type(e).__name__}: {e}"
            if err is None and G[i] <= 0:
                active.append(i)
                continue
            if st.evals >= self.s.budget:
                complete = False
                break
            if err is None:
                F[i] = WORST + G[i]
                err = f"infeasible: constraint violation {G[i]:.4g} (not evaluated)"
            self._record(gen, x, recipes[i], None, err, 0.0, 0, 0, False, 0, feasible=G[i] <= 0)
        start = fid.first_rung(gen)  # 0 for successive halving; Hyperband cycles the starting rung
        for r, n_r in enumerate(sizes):
            if not complete:
                break
            if r < start:
                continue
            if r > start:
                keep = promoted(F[active], ok[active], self.promote_weights, fid.promote(len(active)),
                                sizes[r - 1] or self.n_fitness or 0, fid.z)
                active = [active[j] for j in keep]
            room = self.s.budget - st.evals
            if len(active) > room:
                active, complete = active[:room], False
            idx = None if samples is None else sorted(samples[:n_r])
            if idx is not None and len(idx) == self.n_fitness:
                idx = None  # the whole fitness split
            self._evaluate(gen, X, recipes, active, idx, r, F, ok, rung)
        if complete:
            told = told_values(F, rung, len(sizes), ok)
            self.optimizer.tell(X, told, G if self.constraint is not None else None)
            st.gen += 1
        self._update_front(gen)
        if complete:
            self._checkpoint()
        self._io("the Pareto archive", atomic_write_json, self.paths["archive"], self.archive())
        return complete

    def _evaluate(self, gen, X, recipes, batch, idx, r, F, ok, rung) -> None:
        sel = selection_key(idx)
        fraction = 1.0 if idx is None else len(idx) / self.n_fitness
        keys = [recipe_key(recipes[i].to_dict(), self.digits, f"{sel}|{self.fingerprint}") for i in batch]
        todo: dict[str, int] = {}
        for i, k in zip(batch, keys, strict=True):
            if self.cache.get(k) is None and k not in todo:
                todo[k] = i
        outcomes = dict(zip(todo, self.executor.map([recipes[i] for i in todo.values()], "fitness", idx),
                            strict=True)) if todo else {}
        fresh = set()
        for i, k in zip(batch, keys, strict=True):
            hit = self.cache.get(k)
            if hit is not None and self.resumed and hit.get("id") == self.state.evals:  # replay after a resume
                metrics, error, wall, n, cached = hit["metrics"], None, hit["wall_time"], hit["n_samples"], False
            elif hit is not None:
                metrics, error, wall, n, cached = hit["metrics"], None, 0.0, hit["n_samples"], True
            else:
                out = outcomes[k]
                metrics, error, wall, n, cached = out.metrics, out.error, out.wall_time, out.n_samples, False
                if k in fresh:  # a duplicate inside this batch was evaluated once
                    wall, cached = 0.0, True
                fresh.add(k)
                if metrics is not None:
                    bad = [o.metric for o in self.objectives if o.metric not in metrics
                           or not np.isfinite(metrics[o.metric])]
                    if bad:
                        metrics, error = None, f"objective metric(s) {bad} missing or not finite"
                if metrics is not None and not cached:
                    self._io("the evaluation cache", self.cache.put, k, metrics, n, self.state.evals,
                             round(float(wall), 4))
            if metrics is not None:
                F[i], ok[i] = to_min(self.objectives, metrics), True
            else:
                F[i], ok[i] = WORST, False
            rung[i] = r
            self._record(gen, X[i], recipes[i], metrics, error, wall, n, 0 if cached else n, cached, r,
                         fidelity=fraction, top=r == len(self.fid.rungs) - 1 or not self.fid.multi)

    def _record(self, gen, x, recipe, metrics, error, wall, n, cost, cached, r, fidelity=1.0, top=True,
                feasible=True) -> None:
        st = self.state
        record = {
            "id": st.evals, "generation": gen, "genome": np.asarray(x, float),
            "recipe": recipe.to_dict() if recipe is not None else None, "metrics": metrics,
            "objectives": to_min(self.objectives, metrics) if metrics is not None else
            np.full(self.n_obj, WORST), "error": error, "wall_time": round(float(wall), 4), "n_samples": int(n),
            "split": "fitness", "fidelity": round(float(fidelity), 6), "rung": int(r), "top_fidelity": bool(top),
            "cached": bool(cached), "feasible": bool(feasible),
        }
        self._io("the evaluation log", append_jsonl, self.paths["log"], record)
        record = {**record, "genome": record["genome"].tolist(), "objectives": list(map(float, record["objectives"]))}
        st.evals += 1
        st.n_samples += int(cost)
        self.result.n_samples = st.n_samples
        self._account(record)
        if self.logger is not None:
            self.logger.evaluation(record)
        if error and feasible:
            st.failures_in_row += 1
            log.warning("evaluation %d failed: %s", record["id"], error)
            if st.failures_in_row >= self.s.max_consecutive_failures:
                raise TooManyFailures(
                    f"{st.failures_in_row} failed evaluations in a row (search.max_consecutive_failures="
                    f"{self.s.max_consecutive_failures}); last error: {error}. See {self.paths['log']}; the last "
                    f"checkpoint is intact, so the run can be resumed with resume=true once the cause is fixed."
                )
        elif not error:
            st.failures_in_row = 0

    def _account(self, record: dict) -> None:
        """Add a record to the result; the best is the lowest weighted objective among top-fidelity successes."""
        res = self.result
        res.records.append(record)
        if record["metrics"] is None or not record.get("top_fidelity", True):
            return
        if res.best is None or scalar(record["objectives"], self.weights) < scalar(res.best["objectives"],
                                                                                   self.weights):
            res.best = record

    def _update_front(self, gen: int) -> None:
        st, res, arc = self.state, self.result, self.pareto
        arc.update(res.records, gen, st.evals, st.n_samples)
        st.ref_point, st.hypervolume = arc.ref_point, list(arc.hypervolume)  # the checkpoint's copy
        res.front, res.ref_point, res.hypervolume = arc.front, arc.ref_point, list(arc.hypervolume)

    def archive(self) -> dict:
        return self.pareto.to_json(self.result.best)
