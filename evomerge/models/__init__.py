"""The source-model pool (config group `models`)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from evomerge.dtypes import DTYPES
from evomerge.models.lazy import resolve_path
from evomerge.models.pool import (
    ModelPool,
    ModelSpec,
    load_pool,
    load_tokenizer,
)
from evomerge.registry import ARCHITECTURES


def specs(cfg: Any) -> tuple[list[ModelSpec], ModelSpec | None]:
    """Model specs from `cfg.models`, with clear errors for malformed entries. A source may be a LoRA adapter,
    `{name, lora: ADAPTER}`, on top of its `path` or, without one, of the base model."""
    def spec(d, where, default_path=None):
        if not d or "name" not in d or ("path" not in d and not (d.get("lora") and default_path)):
            raise ValueError(f"{where}: expected {{name, path}} (or {{name, lora}} on top of models.base), "
                             f"found {d!r}")
        bad = set(d) - {"name", "path", "lora"}
        if bad:
            raise ValueError(f"{where}: unknown key(s) {sorted(bad)}; a model is {{name, path, lora (optional)}}")
        return ModelSpec(str(d["name"]), str(d.get("path") or default_path),
                         str(d["lora"]) if d.get("lora") else None)

    if not cfg.get("sources"):
        raise ValueError("models.sources: empty; expected at least one {name, path}")
    base = spec(cfg["base"], "models.base") if cfg.get("base") else None
    if base is not None and base.lora:
        raise ValueError("models.base.lora: the base model cannot be an adapter; fold it first or make it a source")
    sources = [spec(d, f"models.sources[{i}]", base.path if base else None) for i, d in enumerate(cfg["sources"])]
    names = [s.name for s in sources] + ([base.name] if base else [])
    if len(set(names)) != len(names):
        raise ValueError(f"models: model names must be unique, found {names}")
    return sources, base


def _ensure_zoo(cfg: Any, zoo_root: str) -> None:
    if cfg.get("zoo"):
        from evomerge.zoo import ensure

        ensure(cfg["zoo"], zoo_root, seed=cfg.get("zoo_seed", 0), folder=cfg.get("zoo_dir"),
               **dict(cfg.get("zoo_options") or {}))


def _folded(spec: ModelSpec, where: str) -> ModelSpec:
    """A LoRA source as the folder of its folded checkpoint (built once, cached); other sources as they are."""
    if not spec.lora:
        return spec
    from evomerge.models.pool import resolve_model

    return ModelSpec(spec.name, str(resolve_model(f"{spec.path}+{spec.lora}", where)))


def tokenizer_only(cfg: Any, zoo_root: str) -> SimpleNamespace:
    """A stand-in pool holding just the tokenizer (no weights), so evaluators can be built and checked first."""
    _ensure_zoo(cfg, zoo_root)
    sources, base = specs(cfg)
    path = cfg.get("tokenizer_source") or (base or sources[0]).path
    cfg_file = resolve_path((base or sources[0]).path) / "config.json"
    if cfg_file.exists() and (json.loads(cfg_file.read_text()).get("architectures") or [None])[0] in \
            ARCHITECTURES:
        return SimpleNamespace(tokenizer=None)  # evomerge's own non-text models
    return SimpleNamespace(tokenizer=load_tokenizer(path, bool(cfg.get("trust_remote_code", False))))


def build(cfg: Any, zoo_root: str, device: str = "cpu", seed: int = 0, progress=None) -> ModelPool:
    _ensure_zoo(cfg, zoo_root)
    sources, base = specs(cfg)
    dtype = cfg.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"models.dtype: expected null (as saved) or one of {list(DTYPES)}, found {dtype!r}")
    sources = [_folded(s, f"models.sources[{i}]") for i, s in enumerate(sources)]
    return load_pool(sources, base, dtype=DTYPES.get(dtype), device=device,
                     tokenizer_source=cfg.get("tokenizer_source"),
                     trust_remote_code=bool(cfg.get("trust_remote_code", False)), progress=progress,
                     truncate_vocab=bool(cfg.get("truncate_vocab", False)))
