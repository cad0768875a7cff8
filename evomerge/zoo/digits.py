"""The digits zoo: a small CNN base trained on sklearn's bundled 8x8 digits, and experts fine-tuned from it on
tasks made from the same images (rotated, mirrored, colour-inverted).

Everything is deterministic from the seed and cached: `build(root)` does the work once and later calls return.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from evomerge.zoo import is_built, mark_built

log = logging.getLogger(__name__)
VERSION = 1  # bump when the data or the training change: a zoo built by older code is rebuilt

TASKS = {
    "original": lambda x: x,
    "rot90": lambda x: np.rot90(x, k=1, axes=(1, 2)),
    "mirror": lambda x: x[:, :, ::-1],
    "invert": lambda x: 1.0 - x,
    "flipud": lambda x: x[:, ::-1, :],
}
DEFAULT_EXPERTS = ("rot90", "mirror", "invert")
SPLITS = {"train": 0.6, "validation": 0.2, "test": 0.2}


class DigitsCNN(nn.Module):
    """conv(1->c1) -> conv(c1->c2) -> fc(->hidden) -> fc(->10); `blocks.i` is layer i for the merger."""

    def __init__(self, c1: int = 16, c2: int = 32, hidden: int = 64, num_classes: int = 10):
        super().__init__()
        self.config = {"architectures": ["DigitsCNN"], "c1": c1, "c2": c2, "hidden": hidden,
                       "num_classes": num_classes, "num_layers": 4}
        self.blocks = nn.ModuleList([
            nn.Conv2d(1, c1, 3, padding=1),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.Linear(c2 * 4 * 4, hidden),
            nn.Linear(hidden, num_classes),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.blocks[0](x))
        x = F.max_pool2d(F.relu(self.blocks[1](x)), 2)
        x = F.relu(self.blocks[2](x.flatten(1)))
        return self.blocks[3](x)

    def save_pretrained(self, path: str | Path) -> None:
        from evomerge.store import atomic_write_json

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))
        atomic_write_json(path / "config.json", self.config)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> DigitsCNN:
        path = Path(path)
        try:
            cfg = json.loads((path / "config.json").read_text())
            model = cls(**{k: cfg[k] for k in ("c1", "c2", "hidden", "num_classes")})
            model.load_state_dict(load_file(str(path / "model.safetensors")))
        except Exception as e:  # corrupt or truncated files: say which folder, and how to fix it
            raise ValueError(
                f"corrupt digits model in {path}: {type(e).__name__}: {e}. Delete the folder to rebuild the zoo."
            ) from e
        return model.eval()


def load_task(task: str, split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N,1,8,8) in [0,1] and labels for one task and split; the split is a fixed seeded permutation."""
    if task not in TASKS:
        raise ValueError(f"unknown digits task {task!r}; expected one of {sorted(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(images))
    n_train = int(SPLITS["train"] * len(order))
    n_val = int(SPLITS["validation"] * len(order))
    idx = {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
           "test": order[n_train + n_val:]}[split]
    x = np.ascontiguousarray(TASKS[task](images[idx]))
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(data.target[idx]).long()


def _train(model: DigitsCNN, tasks: list[str], steps: int, lr: float, seed: int, desc: str) -> None:
    g = torch.Generator().manual_seed(seed)
    xs, ys = zip(*(load_task(t, "train") for t in tasks), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in tqdm(range(steps), desc=desc, leave=False):
        batch = torch.randint(len(x), (128,), generator=g)
        loss = F.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def accuracy(model: nn.Module, task: str, split: str) -> float:
    x, y = load_task(task, split)
    with torch.inference_mode():
        return (model(x).argmax(-1) == y).float().mean().item()


def planned_layers(**options) -> int:
    """The depth of this zoo's models before it is built (dry runs): the DigitsCNN's four layers."""
    return 4


def build(root: str | Path, experts: tuple[str, ...] = DEFAULT_EXPERTS, seed: int = 0,
          base_steps: int = 300, expert_steps: int = 150) -> Path:
    """Build (once) base + experts under `root`; returns the zoo folder. Safe to call every run."""
    root = Path(root).expanduser()
    spec = {"seed": seed, "experts": list(experts), "base_steps": base_steps, "expert_steps": expert_steps}
    if is_built(root, "digits", spec, VERSION):
        return root
    torch.manual_seed(seed)
    base = DigitsCNN()
    _train(base, ["original"], base_steps, 3e-3, seed, "digits zoo: base")
    base.save_pretrained(root / "base")
    for i, task in enumerate(tqdm(experts, desc="digits zoo: experts")):
        expert = DigitsCNN.from_pretrained(root / "base")
        _train(expert, [task], expert_steps, 1e-3, seed + 1 + i, f"digits zoo: {task}")
        expert.save_pretrained(root / task)
    mark_built(root, spec, VERSION)
    log.info("digits zoo built at %s", root)
    return root
