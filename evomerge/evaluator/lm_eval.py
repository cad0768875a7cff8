"""Any lm-eval task on the in-memory merged model (generate_until, loglikelihood, multiple choice).

Built once per worker: the tasks are loaded once (a `TaskManager` over the user's `include_path`; lm-eval's
built-in index, which takes ~10 s and whose data live on the hub, is read only when a requested name is not found
in `include_path`), and the model is wrapped once in lm-eval's `HFLM`. Per candidate, `lm_eval.evaluator.evaluate`
runs on the selected documents (`samples=`), with `bootstrap_iters=0` and without the request cache; the whole-run
entry point `simple_evaluate` is never used in the loop (it collects environment information and reseeds the
global RNGs on every call). The few-shot sampler is reseeded before every call so that every candidate sees the
same prompts.

Metric names are `<task>/<metric>,<filter>` (lm-eval's own result keys, e.g. `arith/exact_match,strict-match`),
with the direction from the task's `higher_is_better`.

Splits: `fitness` is a seeded subsample of `fitness_samples` documents of each task (all when null);
`validation` is the documents not drawn for fitness; `test` is `test_tasks` (same order and metrics as `tasks`,
reported under the fitness task names, e.g. MGSM for a GSM8K fitness) when given, otherwise the validation docs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from evomerge.evaluator.base import EvalResult, check_split, finite_logits, seeded_subsample, select

log = logging.getLogger(__name__)


def _task_manager(names: list[str], include_path: Any, where: str):
    from lm_eval.tasks import TaskManager

    paths = include_path if isinstance(include_path, (list, tuple)) else ([include_path] if include_path else [])
    paths = [os.path.expanduser(str(p)) for p in paths]  # `~/...` (the default paths.zoo) is not expanded by lm-eval
    absent = [p for p in paths if not os.path.exists(p)]
    if absent:
        raise FileNotFoundError(f"{where}.include_path: {absent} do not exist; expected folders (or YAML files) of "
                                "lm-eval task definitions")
    tm = TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=False)
    missing = [n for n in names if n not in tm.all_tasks]
    if missing:
        log.info("%s: %s not in include_path; indexing lm-eval's built-in tasks", where, missing)
        tm = TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=True)
        missing = [n for n in names if n not in tm.all_tasks]
    if missing:
        raise ValueError(f"{where}.tasks: {missing} are neither in include_path {paths or None} nor lm-eval's "
                         f"built-in tasks; check the `task:` names in your task YAMLs")
    return tm


def _load_tasks(tm, names: list[str], where: str) -> dict:
    try:
        return tm.load(list(names))
    except Exception as e:  # noqa: BLE001 - dataset loading failures come in many types
        raise RuntimeError(
            f"{where}: cannot load lm-eval task(s) {names}: {type(e).__name__}: {str(e)[:300]}. Built-in tasks read "
            f"their data from the Hugging Face hub; offline, write a task YAML over local files (dataset_path: json "
            f"with absolute data_files) and pass its folder as include_path."
        ) from e


def _task_metrics(task) -> dict[str, bool]:
    """`<metric>,<filter>` -> higher_is_better, known before any evaluation."""
    hib = task.higher_is_better() or {}
    filters = [f.name for f in task._filters]
    return {f"{m},{f}": bool(hib.get(m, True)) for f in filters for m in hib}


def _hflm_class():
    """HFLM whose generation stops each row at its own stop string (transformers' `stop_strings`).

    lm-eval 0.4.x builds one stopping criterion per stop string, each "done" only when every row of the batch has
    produced that string; a batch whose rows end differently (one at "\n", another at EOS) decodes to the full
    token budget. The outputs are the same either way (lm-eval cuts them at the stop strings afterwards); this only
    removes the wasted decoding steps.
    """
    from lm_eval.models.huggingface import HFLM

    class StopPerRowHFLM(HFLM):
        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            if generation_kwargs.get("do_sample") or generation_kwargs.get("temperature", 0.0) != 0.0:
                return super()._model_generate(context, max_length, stop, **generation_kwargs)
            generation_kwargs.pop("temperature", None)
            generation_kwargs["do_sample"] = False
            return self.model.generate(input_ids=context, max_length=max_length, stop_strings=list(stop) or None,
                                       tokenizer=self.tokenizer, pad_token_id=self.tokenizer.pad_token_id,
                                       use_cache=True, **generation_kwargs)

    return StopPerRowHFLM


class LMEvalEvaluator:
    def __init__(self, tokenizer, tasks: Sequence[str], include_path: Any = None, test_tasks: Sequence[str] | None = None,
                 fitness_samples: int | None = None, num_fewshot: int | dict | None = None, fewshot_seed: int = 1234,
                 batch_size: int = 16, max_length: int | None = None, apply_chat_template: bool | str = False,
                 system_instruction: str | None = None, fewshot_as_multiturn: bool = False,
                 gen_kwargs: dict | None = None, metrics: Sequence[str] | None = None, log_samples: bool = True,
                 seed: int = 0, device: str = "cpu", name: str = "lm_eval"):
        where = f"evaluator.{name}"
        if tokenizer is None:
            raise ValueError(f"{where}: lm_eval needs a tokenizer, but the model pool has none")
        if not tasks:
            raise ValueError(f"{where}.tasks: empty; expected at least one lm-eval task name")
        try:
            import lm_eval  # noqa: F401 - fail here, not per candidate, when it is missing
        except ImportError:
            raise ImportError(f"{where}: kind lm_eval needs lm-evaluation-harness: pip install 'evomerge[eval]'") \
                from None

        self.name, self.where, self.tokenizer = name, where, tokenizer
        self.batch_size, self.max_length, self.device = batch_size, max_length, device
        self.fewshot_seed, self.log_samples = fewshot_seed, log_samples
        self.run_kwargs = {"apply_chat_template": apply_chat_template, "system_instruction": system_instruction,
                           "fewshot_as_multiturn": fewshot_as_multiturn}
        if apply_chat_template and getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"{where}.apply_chat_template: the tokenizer has no chat template")
        wanted = list(tasks) + list(test_tasks or [])
        tm = _task_manager(wanted, include_path, where)
        fit = _load_tasks(tm, list(tasks), where)
        self.task_dicts = {"fitness": fit}
        if test_tasks:
            self.task_dicts["test"] = _load_tasks(tm, list(test_tasks), where)
        for td in self.task_dicts.values():
            for tname, task in td["tasks"].items():
                self._configure(task, tname, num_fewshot, gen_kwargs)
        fit_tasks = fit["tasks"]
        for tname, task in fit_tasks.items():
            if task.has_test_docs():  # lm-eval evaluates a task on its test split whenever it has one
                log.warning(
                    "%s.tasks: task %r draws its documents from its test split (%r), so the fitness subsample and "
                    "the held-out documents are both test documents: the search is tuned on the benchmark's test "
                    "set. For a clean test, fit on a disjoint split: a task YAML over the train/validation "
                    "documents (`validation_split:` set, no `test_split:`), and give the real test task as "
                    "`test_tasks`.", where, tname, task.config.test_split)
        # metric names and directions, known before any evaluation
        self._hib = {f"{t}/{k}": v for t, task in fit_tasks.items() for k, v in _task_metrics(task).items()}
        if metrics:
            unknown = [m for m in metrics if m not in self._hib]
            if unknown:
                raise ValueError(f"{where}.metrics: {unknown} not produced by the tasks; available: {sorted(self._hib)}")
            self._hib = {m: self._hib[m] for m in metrics}
        # document ids per split and task
        self.ids: dict[str, dict[str, list[int]]] = {"fitness": {}, "validation": {}, "test": {}}
        for tname, task in fit_tasks.items():
            n = len(task.eval_docs)
            if fitness_samples is not None and not 0 < int(fitness_samples) <= n:
                raise ValueError(f"{where}.fitness_samples: {fitness_samples}, but task {tname!r} has {n} documents; "
                                 f"expected 1..{n} or null for all")
            pick, rest = seeded_subsample(n, fitness_samples, seed)
            self.ids["fitness"][tname], self.ids["validation"][tname] = pick, rest
        # the split -> (task name as run by lm-eval -> task name used in metric names)
        self.alias = {"fitness": {t: t for t in fit_tasks}, "validation": {t: t for t in fit_tasks}}
        if test_tasks:
            test = list(self.task_dicts["test"]["tasks"])
            if len(test) != len(fit_tasks):
                raise ValueError(f"{where}.test_tasks: {test} must pair one-to-one with tasks {list(fit_tasks)}")
            self.alias["test"] = dict(zip(test, fit_tasks, strict=True))
            for t_test, t_fit in self.alias["test"].items():
                has = set(_task_metrics(self.task_dicts["test"]["tasks"][t_test]))
                needed = {m.split("/", 1)[1] for m in self._hib if m.startswith(f"{t_fit}/")}
                if not needed <= has:
                    raise ValueError(f"{where}.test_tasks: {t_test!r} produces {sorted(has)}, but {t_fit!r} is "
                                     f"scored on {sorted(needed)}")
                self.ids["test"][t_test] = list(range(len(self.task_dicts["test"]["tasks"][t_test].eval_docs)))
        else:
            self.task_dicts["test"], self.alias["test"] = fit, self.alias["validation"]
            self.ids["test"] = self.ids["validation"]
        self.task_dicts["validation"] = fit
        self._lm = None

    def _configure(self, task, tname: str, num_fewshot, gen_kwargs) -> None:
        n = num_fewshot.get(tname) if isinstance(num_fewshot, dict) else num_fewshot
        if n is not None:
            task.set_config(key="num_fewshot", value=int(n))
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        if gen_kwargs and task.get_config("output_type") == "generate_until":
            task.set_config(key="generation_kwargs", value=dict(gen_kwargs), update=True)

    def metric_names(self) -> list[str]:
        return list(self._hib)

    def higher_is_better(self) -> dict[str, bool]:
        return dict(self._hib)

    def size(self, split: str) -> int:
        check_split(split, self.name)
        return min(len(v) for v in self.ids[split].values())

    def lm(self, model: nn.Module):
        """The HFLM wrapper, built once; rebound (not rebuilt) if the worker ever hands over another object."""
        if self._lm is None:
            logging.getLogger("lm_eval").setLevel(logging.ERROR)
            self._lm = _hflm_class()(pretrained=model, tokenizer=self.tokenizer, device=self.device,
                                      batch_size=self.batch_size, max_length=self.max_length)
        elif self._lm._model is not model:
            self._lm._model = model
        return self._lm

    def evaluate(self, model: nn.Module, split: str = "fitness", indices: Sequence[int] | None = None) -> EvalResult:
        import lm_eval.evaluator

        check_split(split, self.name)
        if indices is not None and len(indices) == 0:
            raise ValueError(f"{self.where}: empty sample selection")
        samples = {}
        for tname, ids in self.ids[split].items():
            if not ids:
                raise ValueError(f"{self.where}: the {split!r} split of task {tname!r} has no documents (all were "
                                 f"drawn for fitness; lower fitness_samples or set test_tasks)")
            samples[tname] = sorted(select(ids, indices, self.where))  # lm-eval maps results back in sorted order
        task_dict = self.task_dicts[split]
        for task in task_dict["tasks"].values():
            task.set_fewshot_seed(self.fewshot_seed)  # same few-shot examples for every candidate
        lm = self.lm(model)
        model.eval()
        with finite_logits(model, self.where):
            res = lm_eval.evaluator.evaluate(lm=lm, task_dict=task_dict, samples=samples, bootstrap_iters=0,
                                             cache_requests=False, log_samples=self.log_samples,
                                             verbosity="ERROR", **self.run_kwargs)
        alias = self.alias[split]
        metrics: dict[str, float] = {}
        for tname, out in res["results"].items():
            if tname not in alias:
                continue  # a group row
            for key, value in out.items():
                name = f"{alias[tname]}/{key}"
                if name in self._hib:
                    metrics[name] = float(value)
        missing = [m for m in self._hib if m not in metrics]
        if missing:
            raise RuntimeError(f"{self.where}: lm-eval returned no value for {missing}")
        records = [self._record(alias[t], s) for t, rows in (res.get("samples") or {}).items() if t in alias
                   for s in rows]
        return EvalResult(metrics, records, sum(len(v) for v in samples.values()))

    @staticmethod
    def _record(task: str, s: dict) -> dict:
        def plain(x):
            if isinstance(x, (list, tuple)):
                return [plain(v) for v in x]
            return x if isinstance(x, (str, int, float, bool)) or x is None else str(x)

        args = s.get("arguments") or [[""]]
        return {"task": task, "id": s.get("doc_id"), "filter": s.get("filter"), "input": plain(args[0][0]),
                "output": plain(s.get("filtered_resps")), "target": plain(s.get("target")),
                **{m: plain(s[m]) for m in s.get("metrics", []) if m in s}}
