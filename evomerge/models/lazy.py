"""Model folders on disk: a folder's config.json, and a checkpoint read lazily, tensor by tensor (safetensors shards, or `.bin` with weights_only=True), for
the streaming export and LoRA folding: nothing is loaded until a tensor is asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def read_config(path: Path, model: str | None = None) -> dict:
    """A model's config.json, or an error naming the file (an empty or truncated file is common after a failed copy)."""
    what = f" of model {model!r}" if model else ""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}{what}: not a readable config.json ({e}); expected the JSON object a Hugging Face "
                         "checkpoint folder holds (re-copy or re-download the model)") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}{what}: config.json holds a {type(cfg).__name__}, expected a JSON object")
    return cfg

def resolve_path(path: str) -> Path:
    return Path(path).expanduser()


class LazyCheckpoint:
    """A model folder's tensors without loading them: safetensors shards opened memory-mapped (`safe_open`),
    or a .bin checkpoint loaded with `weights_only=True, mmap=True`."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        self.path = resolve_path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: not a model folder")
        cfg = self.path / "config.json"
        self.config = read_config(cfg) if cfg.exists() else {}
        self._files: dict[str, Any] = {}
        self.where: dict[str, str] = {}  # tensor name -> file
        index = self.path / "model.safetensors.index.json"
        shards = sorted(self.path.glob("*.safetensors"))
        if index.exists():
            self.where = dict(json.loads(index.read_text())["weight_map"])
        elif shards:
            for f in shards:
                try:
                    with safe_open(str(f), framework="pt") as h:
                        self.where.update({k: f.name for k in h.keys()})
                except Exception as e:  # truncated or corrupt file: name it, and say how to recover
                    raise ValueError(f"corrupt or truncated weights file {f}: {e}. Re-download it, or delete "
                                     f"the folder of a locally built zoo model to rebuild it.") from e
        else:
            bins = sorted(self.path.glob("pytorch_model*.bin")) or sorted(self.path.glob("*.bin"))
            if not bins:
                raise FileNotFoundError(f"{self.path}: no *.safetensors or pytorch_model*.bin weights")
            for f in bins:
                sd = _load_bin(f)
                self._files[f.name] = sd
                self.where.update({k: f.name for k in sd})
        self._safe_open = safe_open

    @property
    def names(self) -> list[str]:
        return list(self.where)

    def _handle(self, name: str):
        f = self.where[name]
        if f not in self._files:
            self._files[f] = self._safe_open(str(self.path / f), framework="pt", device="cpu")
        return self._files[f]

    def shape(self, name: str) -> tuple[int, ...]:
        h = self._handle(name)
        return tuple(h[name].shape) if isinstance(h, dict) else tuple(h.get_slice(name).get_shape())

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: self.shape(n) for n in self.where}

    def get(self, name: str) -> torch.Tensor:
        h = self._handle(name)
        return h[name] if isinstance(h, dict) else h.get_tensor(name)


def _load_bin(f: Path) -> dict:
    """A .bin/.pt state dict with `weights_only=True` (tensors only: a pickle cannot run code), memory-mapped."""
    import pickle

    try:
        try:
            return torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # the legacy (pre-zip) format cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{f}: cannot load as a plain tensor checkpoint with weights_only=True "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). evomerge does not unpickle arbitrary "
                         f"objects; convert the checkpoint to safetensors.") from None
