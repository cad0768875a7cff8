"""Vision evaluator on user data (npz files and a registered loader) and any nn.Module classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from evomerge.evaluator import build
from evomerge.evaluator.vision import DATASETS, VisionEvaluator, register_dataset


class HFStyle(nn.Module):
    """A classifier that returns an object with `.logits`, like Hugging Face image classifiers."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return type("Out", (), {"logits": self.inner(x)})()


@pytest.fixture(scope="module")
def npz_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("npz")
    rng = np.random.default_rng(0)
    for task in ("left", "right"):
        (root / task).mkdir()
        for split, n in (("validation", 60), ("test", 40)):
            images = rng.normal(size=(n, 1, 4, 4)).astype(np.float32)
            labels = (images[:, 0, 0, 0 if task == "left" else 3] > 0).astype(np.int64)
            np.savez(root / task / f"{split}.npz", images=images, labels=labels)
    return root


def corner_classifier(col: int) -> nn.Module:
    """Predicts class 1 when pixel (0, col) is positive: exact on its own task, chance on the other."""
    lin = nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.zero_(), lin.bias.zero_()
        lin.weight[1, col] = 10.0
    return nn.Sequential(nn.Flatten(), lin)


def test_accuracy_loss_and_in_place_weights(npz_root):
    ev = build({"v": {"kind": "vision", "dataset": "npz", "dataset_kwargs": {"root": str(npz_root)},
                      "tasks": ["left", "right"], "fitness_samples": 30, "batch_size": 7}})[0]
    model = corner_classifier(0)
    res = ev.evaluate(model, "test")
    assert res.metrics["acc/left"] == 1.0 and res.metrics["acc/right"] < 0.8 and res.n_samples == 80
    with torch.no_grad():  # rewrite the weights in place: the other task is now the solved one
        model[1].weight.zero_()
        model[1].weight[1, 3] = 10.0
    res = ev.evaluate(model, "test")
    assert res.metrics["acc/right"] == 1.0 and res.metrics["acc/left"] < 0.8
    assert res.metrics["acc/mean"] == pytest.approx((res.metrics["acc/left"] + res.metrics["acc/right"]) / 2)
    assert ev.higher_is_better()["loss/left"] is False and ev.size("fitness") == 30


def test_hf_style_output_batching_and_selection(npz_root):
    ev = VisionEvaluator(["left"], dataset="npz", dataset_kwargs={"root": str(npz_root)}, fitness_samples=20,
                         batch_size=3)
    big = VisionEvaluator(["left"], dataset="npz", dataset_kwargs={"root": str(npz_root)}, fitness_samples=20,
                          batch_size=512)
    model = HFStyle(corner_classifier(3))
    a, b = ev.evaluate(model), big.evaluate(model)
    assert a.metrics == pytest.approx(b.metrics)
    sub = ev.evaluate(model, "fitness", [0, 5])
    assert sub.n_samples == 2 and [r["target"] for r in sub.records] == [r["target"] for r in
                                                                          (a.records[0], a.records[5])]


def test_registered_loader_and_nan_logits():
    x = torch.randn(30, 5)
    register_dataset("toy", lambda task, split, scale=1.0: (x * scale, (x[:, 0] > 0).long()))
    try:
        ev = VisionEvaluator(["t"], dataset="toy", dataset_kwargs={"scale": 2.0}, fitness_samples=10)
        lin = nn.Linear(5, 2)
        with torch.no_grad():
            lin.weight.fill_(float("nan"))
        with pytest.raises(FloatingPointError, match="non-finite"):
            ev.evaluate(lin)
    finally:
        DATASETS.unregister("toy")


def test_bad_input(npz_root):
    with pytest.raises(ValueError, match="unknown dataset"):
        VisionEvaluator(["left"], dataset="nope")
    with pytest.raises(FileNotFoundError, match="missing/validation.npz"):
        VisionEvaluator(["missing"], dataset="npz", dataset_kwargs={"root": str(npz_root)})
    with pytest.raises(ValueError, match="fitness_samples"):
        VisionEvaluator(["left"], dataset="npz", dataset_kwargs={"root": str(npz_root)}, fitness_samples=61)


class TwoHeads(nn.Module):
    """A shared trunk with one head per task, chosen by set_task (as a CLIP zero-shot head would be)."""

    def __init__(self):
        super().__init__()
        self.flat = nn.Flatten()
        self.heads = nn.ModuleDict({"left": corner_classifier(0)[1], "right": corner_classifier(3)[1]})
        self.task = None

    def set_task(self, task):
        self.task = task

    def forward(self, x):
        return self.heads[self.task](self.flat(x))


def test_per_task_heads_via_set_task(npz_root):
    ev = VisionEvaluator(["left", "right"], dataset="npz", dataset_kwargs={"root": str(npz_root)}, fitness_samples=20)
    res = ev.evaluate(TwoHeads(), "test")
    assert res.metrics["acc/left"] == 1.0 and res.metrics["acc/right"] == 1.0
