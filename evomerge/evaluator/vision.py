"""Image classification: accuracy and loss per task on any torch classifier and any (image, label) dataset.

Datasets come from a loader registered in `evomerge.registry.DATASETS` (`register_dataset`): `loader(task, split, **dataset_kwargs)
-> (images, labels)`, with split one of train/validation/test. Built in: `digits` (the digits zoo) and `npz`
(user data without code: `<root>/<task>/<split>.npz` holding `images` and `labels` arrays). The fitness split is
a fixed, seeded subsample of the validation split; `validation` is the whole validation split; `test` is test.

The model is any `nn.Module` mapping a batch of images to logits (or to an object with `.logits`, as Hugging Face
image classifiers return), evaluated batched under `torch.inference_mode` on `device`. A model with a
`set_task(task)` method is told the task before its images (per-task heads, e.g. CLIP zero-shot class embeddings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from evomerge.evaluator.base import EvalResult, check_split
from evomerge.registry import DATASETS


def load_npz(task: str, split: str, root: str | None = None):
    """User data without code: `<root>/<task>/<split>.npz` with arrays `images` (N, ...) and `labels` (N,)."""
    if root is None:
        raise ValueError("evaluator.dataset_kwargs.root: the npz dataset needs a root folder")
    path = Path(root).expanduser() / task / f"{split}.npz"
    if not path.exists():
        raise FileNotFoundError(f"evaluator: dataset file {path} does not exist (expected <root>/<task>/<split>.npz)")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("images", "labels") if k not in z]
        if missing:
            raise ValueError(f"evaluator: {path} lacks array(s) {missing}; it has {list(z.keys())}")
        images, labels = torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]).long()
    if images.is_floating_point():
        images = images.float()
    if len(images) != len(labels):
        raise ValueError(f"evaluator: {path} has {len(images)} images but {len(labels)} labels")
    return images, labels


Loader = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def register_dataset(name: str, loader: Loader) -> None:
    """Make `loader(task, split, **dataset_kwargs) -> (images, labels)` available as `dataset: <name>`."""
    DATASETS.register(name, loader)


class VisionEvaluator:
    def __init__(self, tasks: list[str], dataset: str = "digits", fitness_samples: int = 200, seed: int = 0,
                 batch_size: int = 512, device: str = "cpu", name: str = "vision",
                 dataset_kwargs: dict | None = None):
        load = DATASETS.get(dataset, "evaluator.dataset")
        if not tasks:
            raise ValueError("evaluator.tasks: empty; expected at least one task")
        self.name, self.tasks, self.batch_size, self.device = name, list(tasks), batch_size, device
        self.data: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {"fitness": {}, "validation": {}, "test": {}}
        for task in tasks:
            val = load(task, "validation", **(dataset_kwargs or {}))
            if fitness_samples <= 0 or fitness_samples > len(val[1]):
                raise ValueError(
                    f"evaluator.fitness_samples: {fitness_samples} for task {task!r}, whose validation split has "
                    f"{len(val[1])} items; expected 1..{len(val[1])}"
                )
            pick = np.sort(np.random.default_rng(seed).choice(len(val[1]), fitness_samples, replace=False))
            self.data["fitness"][task] = (val[0][pick], val[1][pick])
            self.data["validation"][task] = val
            self.data["test"][task] = load(task, "test", **(dataset_kwargs or {}))

    def item_scores(self, records: list[dict]) -> dict[str, np.ndarray]:
        """Per-item correctness for each task's accuracy and their mean, in item order (evaluator/anchors.py)."""
        per_task = {t: np.array([float(r["correct"]) for r in records if r["task"] == t]) for t in self.tasks}
        return {**{f"acc/{t}": v for t, v in per_task.items()}, "acc/mean": np.mean(list(per_task.values()), 0)}

    def metric_names(self) -> list[str]:
        return [f"{k}/{t}" for k in ("acc", "loss") for t in self.tasks] + ["acc/mean", "loss/mean"]

    def higher_is_better(self) -> dict[str, bool]:
        return {m: m.startswith("acc") for m in self.metric_names()}

    def size(self, split: str) -> int:
        check_split(split, self.name)
        return min(len(y) for _, y in self.data[split].values())

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, split: str = "fitness", indices: Sequence[int] | None = None) -> EvalResult:
        check_split(split, self.name)
        model.eval()
        metrics, records, n = {}, [], 0
        set_task = getattr(model, "set_task", None)
        for task, (x, y) in self.data[split].items():
            if set_task is not None:
                set_task(task)
            if indices is not None:
                x, y = x[list(indices)], y[list(indices)]
            logits = torch.cat([_logits(model(x[i:i + self.batch_size].to(self.device))).float().cpu()
                                for i in range(0, len(y), self.batch_size)])
            if not torch.isfinite(logits).all():
                raise FloatingPointError(f"{self.name}: non-finite logits on task {task}")
            pred = logits.argmax(-1)
            metrics[f"acc/{task}"] = (pred == y).float().mean().item()
            metrics[f"loss/{task}"] = F.cross_entropy(logits, y).item()
            records += [{"task": task, "target": int(t), "output": int(p), "correct": bool(t == p)}
                        for t, p in zip(y.tolist(), pred.tolist(), strict=True)]
            n += len(y)
        metrics["acc/mean"] = float(np.mean([metrics[f"acc/{t}"] for t in self.tasks]))
        metrics["loss/mean"] = float(np.mean([metrics[f"loss/{t}"] for t in self.tasks]))
        return EvalResult(metrics, records, n)


def _logits(out) -> torch.Tensor:
    return out if torch.is_tensor(out) else out.logits
