"""One lazy registry for every pluggable kind (lm-eval's pattern): per kind, a table `name -> "module:object"`.

Nothing is imported until a run asks for the name, so the tables can name optional extras (Ray, Optuna, W&B) and
the demo zoos without the core importing them. Adding an implementation is one class or function and one line
here, or `REGISTRY.register(name, target)` from a plugin or a test. The merge methods have their own typed
registry (evomerge/merge/registry.py): a method is declared with its parameters, not only named.
"""

from __future__ import annotations

import importlib
from typing import Any


class Registry:
    """Names of one kind (`noun`, used in errors) mapped to `"module:object"` strings or objects."""

    def __init__(self, noun: str, entries: dict[str, Any]):
        self.noun = noun
        self._entries: dict[str, Any] = dict(entries)

    def register(self, name: str, target: Any) -> None:
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check(self, name: Any, where: str, hint: str = "") -> None:
        """Refuse an unknown name: `{where}: unknown {noun} {name!r}; expected one of [...]{hint}`."""
        if name not in self._entries:
            raise ValueError(f"{where}: unknown {self.noun} {name!r}; expected one of {self.names()}{hint}")

    def get(self, name: Any, where: str, hint: str = "") -> Any:
        """The object registered as `name`, imported on first use."""
        self.check(name, where, hint)
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = importlib.import_module(module)
            for part in filter(None, attr.split(".")):
                target = getattr(target, part)
            self._entries[name] = target
        return target


EVALUATORS = Registry("evaluator", {
    "vision": "evomerge.evaluator.vision:VisionEvaluator",
    "lm_eval": "evomerge.evaluator.lm_eval:LMEvalEvaluator",
    "jp_math": "evomerge.evaluator.jp_math:JPMathEvaluator",
    "perplexity": "evomerge.evaluator.perplexity:PerplexityEvaluator",
})
OPTIMIZERS = Registry("optimiser", {
    "cmaes": "evomerge.optimizer.cmaes:CMAES",
    "random": "evomerge.optimizer.random_search:RandomSearch",
    **{kind: "evomerge.optimizer.pymoo_adapter:PymooOptimizer" for kind in ("nsga2", "nsga3", "ga", "de", "pso")},
    "optuna": "evomerge.optimizer.optuna_adapter:OptunaOptimizer",
})
SPACES = Registry("space", {
    "ps": "evomerge.space.ps:PSSpace",
    "dfs": "evomerge.space.dfs:DFSSpace",
    "dfs_depth": "evomerge.space.dfs:DepthSpace",
})
EXECUTORS = Registry("executor", {
    "serial": "evomerge.executor.serial:SerialExecutor",
    "ray": "evomerge.executor.ray:RayExecutor",
})
LOGGERS = Registry("logger", {
    "local": "evomerge.logger.local:LocalLogger",
    "wandb": "evomerge.logger.wandb:WandbLogger",
})
# The demo zoos live at the edge: the core reaches them only through these names.
ZOOS = Registry("zoo", {  # module with `build(root, seed=..., **options)` and `planned_layers(**options)`
    "digits": "evomerge.zoo.digits",
    "jp_mini": "evomerge.zoo.jp_mini",
    "smollm2": "evomerge.zoo.smollm2",
    "smol_jp": "evomerge.zoo.smol_jp",
})
ARCHITECTURES = Registry("local architecture", {  # config.json `architectures[0]` -> nn.Module class
    "DigitsCNN": "evomerge.zoo.digits:DigitsCNN",
})
DATASETS = Registry("dataset", {  # vision datasets: loader(task, split, **dataset_kwargs) -> (images, labels)
    "digits": "evomerge.zoo.digits:load_task",
    "npz": "evomerge.evaluator.vision:load_npz",
})
