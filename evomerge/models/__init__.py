"""The source-model pool (config group `models`): its config, parsed once into `ModelsConfig`, and the pool built
from it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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

KEYS = {"base", "sources", "zoo", "zoo_seed", "zoo_dir", "zoo_options", "dtype", "trust_remote_code", "truncate_vocab",
        "tokenizer_source", "num_layers"}


@dataclass(frozen=True)
class ModelsConfig:
    """The `models:` block, checked: the models (a source may be a LoRA adapter), the zoo that builds them (if
    any) and how they are loaded."""
    sources: list[ModelSpec]
    base: ModelSpec | None = None
    zoo: str | None = None           # a registered zoo builds the models on first use (evomerge.registry.ZOOS)
    zoo_root: str = "."              # paths.zoo: the zoo is built in <zoo_root>/<zoo_dir or zoo>
    zoo_seed: int = 0
    zoo_dir: str | None = None
    zoo_options: dict = field(default_factory=dict)
    dtype: str | None = None         # None: as saved
    trust_remote_code: bool = False
    truncate_vocab: bool = False
    tokenizer_source: str | None = None
    num_layers: int | None = None    # the depth, for dry runs of models that are not on this machine

    @classmethod
    def parse(cls, cfg: Any, zoo_root: str = ".") -> ModelsConfig:
        """Validate `cfg.models` (no model loaded), naming the field and what was expected."""
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - KEYS)
        if unknown:
            raise ValueError(f"models: unknown key(s) {unknown}; expected some of {sorted(KEYS)}")
        sources, base = specs(cfg)
        dtype = cfg.get("dtype")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"models.dtype: expected null (as saved) or one of {list(DTYPES)}, found {dtype!r}")
        options = cfg.get("zoo_options") or {}
        if not hasattr(options, "items"):
            raise ValueError(f"models.zoo_options: expected a mapping of the zoo's build settings, found {options!r}")
        return cls(sources, base, zoo=cfg.get("zoo"), zoo_root=str(zoo_root), zoo_seed=int(cfg.get("zoo_seed") or 0),
                   zoo_dir=cfg.get("zoo_dir"), zoo_options=dict(options), dtype=dtype,
                   trust_remote_code=bool(cfg.get("trust_remote_code", False)),
                   truncate_vocab=bool(cfg.get("truncate_vocab", False)),
                   tokenizer_source=cfg.get("tokenizer_source"), num_layers=cfg.get("num_layers"))

    @classmethod
    def of(cls, cfg: ModelsConfig | Any, zoo_root: str | None = None) -> ModelsConfig:
        """`cfg` as it is when already parsed; a `models:` mapping (scripts, tests) is parsed here."""
        return cfg if isinstance(cfg, ModelsConfig) else cls.parse(cfg, zoo_root or ".")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources] + ([self.base.name] if self.base else [])


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


def _ensure_zoo(mc: ModelsConfig) -> None:
    if mc.zoo:
        from evomerge.zoo import ensure

        ensure(mc.zoo, mc.zoo_root, seed=mc.zoo_seed, folder=mc.zoo_dir, **mc.zoo_options)


def _folded(spec: ModelSpec, where: str) -> ModelSpec:
    """A LoRA source as the folder of its folded checkpoint (built once, cached); other sources as they are."""
    if not spec.lora:
        return spec
    from evomerge.models.pool import resolve_model

    return ModelSpec(spec.name, str(resolve_model(f"{spec.path}+{spec.lora}", where)))


def tokenizer_only(cfg: ModelsConfig | Any, zoo_root: str | None = None):
    """The models' tokenizer without their weights (None for evomerge's own non-text models), so that evaluators
    can be built and checked before any model is loaded."""
    mc = ModelsConfig.of(cfg, zoo_root)
    _ensure_zoo(mc)
    first = mc.base or mc.sources[0]
    cfg_file = resolve_path(first.path) / "config.json"
    if cfg_file.exists() and (json.loads(cfg_file.read_text()).get("architectures") or [None])[0] in ARCHITECTURES:
        return None
    return load_tokenizer(mc.tokenizer_source or first.path, mc.trust_remote_code)


def build(cfg: ModelsConfig | Any, zoo_root: str | None = None, device: str = "cpu", seed: int = 0,
          progress=None) -> ModelPool:
    """The pool: the zoo built first if there is one, LoRA sources folded, every model loaded and checked."""
    mc = ModelsConfig.of(cfg, zoo_root)
    _ensure_zoo(mc)
    sources = [_folded(s, f"models.sources[{i}]") for i, s in enumerate(mc.sources)]
    return load_pool(sources, mc.base, dtype=DTYPES.get(mc.dtype), device=device,
                     tokenizer_source=mc.tokenizer_source, trust_remote_code=mc.trust_remote_code,
                     progress=progress, truncate_vocab=mc.truncate_vocab)
