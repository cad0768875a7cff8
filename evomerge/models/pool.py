"""The source-model pool: every model of a search loaded once, checked for compatibility before any work.

A model folder holds `config.json` plus weights. `config.json`'s `architectures[0]` picks the loader: evomerge's own
small models (the zoos) by class name from `evomerge.registry.ARCHITECTURES`, anything else through `transformers`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evomerge.models.arch import ArchMap, arch_for
from evomerge.models.checks import (
    check_compatible,
    check_files_compatible,
    check_finite,
    truncate_to_common_vocab,
    vocab_tensor_names,
)
from evomerge.models.lazy import read_config, resolve_path
from evomerge.offline import hub_offline
from evomerge.registry import ARCHITECTURES

log = logging.getLogger(__name__)



@dataclass
class ModelSpec:
    name: str
    path: str
    lora: str | None = None  # a PEFT LoRA adapter folded on top of `path` (evomerge/models/lora.py)


@dataclass
class ModelPool:
    """Source models as state dicts (CPU or `device`), plus a factory for the one persistent output model."""

    names: list[str]  # the merged sources, in recipe order
    base_name: str | None
    state: dict[str, dict[str, torch.Tensor]]  # model name -> state dict (includes the base)
    arch: ArchMap
    num_layers: int
    template: nn.Module  # a loaded model whose structure every candidate reuses
    tokenizer: Any = None
    paths: dict[str, str] = field(default_factory=dict)

    @property
    def all_names(self) -> list[str]:
        return ([self.base_name] if self.base_name else []) + self.names

    def new_model(self) -> nn.Module:
        """A fresh model object with the template's structure (weights will be overwritten by the merger)."""
        return copy.deepcopy(self.template)

    def layer_names(self) -> dict[int, list[str]]:
        """Tensor names per layer index, from the arch map."""
        out: dict[int, list[str]] = {}
        for name in next(iter(self.state.values())):
            i = self.arch.layer_of(name)
            if i is not None:
                out.setdefault(i, []).append(name)
        return out


def is_hub_id(ref: str) -> bool:
    """`org/name` or `org/name@revision`, and not a local path."""
    name = ref.split("@", 1)[0]
    return name.count("/") == 1 and not ref.startswith((".", "/", "~")) and not Path(ref).expanduser().exists()


CHECKPOINT_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken", "*.py"]


def resolve_model(ref: str, where: str = "model") -> Path:
    """A local folder as is; a hub id (`org/name[@revision]`) through huggingface_hub's cache and downloads
    (`snapshot_download`, weights as safetensors only). Offline (HF_HUB_OFFLINE=1, evomerge's default) a cached
    snapshot is used and a missing one fails at once, naming the id. mergekit's `BASE+ADAPTER` (a LoRA adapter on
    a base, each a folder or hub id) resolves to the folded checkpoint (evomerge/models/lora.py)."""
    from evomerge.models import lora

    parts = lora.split_ref(ref)
    if parts is not None:
        return lora.materialize(resolve_model(parts[0], where), resolve_model(parts[1], f"{where} (adapter)"), where)
    if not is_hub_id(ref):
        return resolve_path(ref)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo, _, revision = ref.partition("@")
    try:
        return Path(snapshot_download(repo, revision=revision or None, allow_patterns=CHECKPOINT_FILES))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"{where}: {ref!r} is not in the local Hugging Face cache and the hub is offline "
                                "(HF_HUB_OFFLINE=1, evomerge's default); download it where you have network access "
                                "(huggingface-cli download), or set EVOMERGE_ONLINE=1 to let evomerge download it") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise FileNotFoundError(f"{where}: cannot get {ref!r} from the Hugging Face hub: {e}") from None


def check_exists(spec: ModelSpec, where: str) -> None:
    """Fail fast, before loading anything, on a missing model folder or a hub id that cannot be fetched (and, for
    a LoRA input, a missing or unfoldable adapter)."""
    from evomerge.models import lora

    parts = lora.split_ref(spec.path)
    if parts is not None or spec.lora:
        base, adapter = parts if parts is not None else (spec.path, spec.lora)
        check_exists(ModelSpec(spec.name, base), where)
        if not is_hub_id(adapter):
            lora.check_adapter(resolve_path(adapter), f"{where}.lora")
        return
    p = resolve_path(spec.path)
    if p.exists():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{where}: model folder {p} has no config.json (model '{spec.name}')")
        return
    if is_hub_id(spec.path):
        from huggingface_hub import try_to_load_from_cache

        if try_to_load_from_cache(spec.path, "config.json") not in (None,) and hub_offline():
            return  # in the local HF cache
        if hub_offline():
            raise FileNotFoundError(
                f"{where}: model '{spec.name}' is the hub id {spec.path!r}, which is not in the local Hugging Face "
                f"cache and the hub is offline (HF_HUB_OFFLINE=1). Download it where you have network access, or "
                f"point {where}.path at a local copy (a folder with config.json and *.safetensors)."
            )
        return
    raise FileNotFoundError(f"{where}: model '{spec.name}' path {p} does not exist")


def load_model(path: str, dtype: torch.dtype | None = None, trust_remote_code: bool = False) -> nn.Module:
    p = resolve_path(path)
    cfg_file = p / "config.json"
    arch = None
    if cfg_file.exists():
        arch = (read_config(cfg_file).get("architectures") or [None])[0]
    if arch in ARCHITECTURES:
        return ARCHITECTURES.get(arch, f"{cfg_file}: architectures").from_pretrained(p)
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return AutoModelForCausalLM.from_pretrained(str(p) if p.exists() else path, **kwargs)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    p = resolve_path(path)
    if p.exists() and not ((p / "tokenizer.json").exists() or (p / "tokenizer_config.json").exists()):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(p) if p.exists() else path, trust_remote_code=trust_remote_code)


def load_pool(
    sources: list[ModelSpec],
    base: ModelSpec | None,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    tokenizer_source: str | None = None,
    trust_remote_code: bool = False,
    progress: Callable[[str], None] | None = None,
    truncate_vocab: bool = False,
) -> ModelPool:
    specs = ([base] if base else []) + list(sources)
    for i, s in enumerate(specs):
        check_exists(s, "models.base" if (base and i == 0) else f"models.sources[{i - (1 if base else 0)}]")
    header_arch = _arch_from_config(specs[0].path)
    check_files_compatible({s.name: s.path for s in specs},
                           vocab_tensor_names(header_arch) if header_arch else (), truncate_vocab)
    state, template, paths = {}, None, {}
    for spec in specs:
        if progress:
            progress(spec.name)
        try:
            model = load_model(spec.path, dtype=dtype, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, RuntimeError) as e:
            raise RuntimeError(f"cannot load model '{spec.name}' from {spec.path}: {e}") from e
        model.eval()
        state[spec.name] = {k: v.detach().to(device) for k, v in model.state_dict().items()}
        check_finite(spec.name, spec.path, state[spec.name])
        paths[spec.name] = spec.path
        if template is None:
            template = model.to(device)
        else:
            del model
    config = getattr(template, "config", None)
    arch_name = type(template).__name__
    arch = arch_for(arch_name, list(state[specs[0].name]))
    check_compatible(state, vocab_tensor_names(arch), truncate_vocab)
    if truncate_vocab:
        common = truncate_to_common_vocab(state, arch)
        if common is not None and hasattr(template, "resize_token_embeddings"):
            template.resize_token_embeddings(common)
    num_layers = _num_layers(template, arch)
    tok_path = tokenizer_source or specs[0].path
    tokenizer = load_tokenizer(tok_path, trust_remote_code) if config is not None else None
    return ModelPool(
        names=[s.name for s in sources],
        base_name=base.name if base else None,
        state=state,
        arch=arch,
        num_layers=num_layers,
        template=template,
        tokenizer=tokenizer,
        paths=paths,
    )


def _arch_from_config(path: str) -> ArchMap | None:
    """The arch map named by a local folder's config.json (None when there is no local config or no map)."""
    cfg = resolve_path(path) / "config.json"
    if not cfg.exists():
        return None
    archs = read_config(cfg).get("architectures") or []
    try:
        return arch_for(archs[0]) if archs else None
    except ValueError:
        return None


def _num_layers(model: nn.Module, arch: ArchMap) -> int:
    config = getattr(model, "config", None)
    if config is not None:
        cfg = config if isinstance(config, dict) else config.to_dict()
        if arch.num_layers_key in cfg:
            return int(cfg[arch.num_layers_key])
    layers = {arch.layer_of(n) for n in model.state_dict()} - {None}
    return max(layers) + 1 if layers else 0
