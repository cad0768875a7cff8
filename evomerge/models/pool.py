"""The source-model pool: every model of a search loaded once, checked for compatibility before any work.

A model folder holds `config.json` plus weights. `config.json`'s `architectures[0]` picks the loader: evomerge's own
small models (the zoos) by class name from `evomerge.registry.ARCHITECTURES`, anything else through `transformers`.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evomerge.models.arch import ArchMap, arch_for
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


def check_compatible(state: dict[str, dict[str, Any]], vocab_tensors: tuple[str, ...] = (),
                     truncate_vocab: bool = False, only_common: bool = False) -> None:
    """Refuse models whose tensor names or shapes differ, naming the tensors and shapes.

    `state` maps model name -> {tensor name: tensor or shape}. With `truncate_vocab`, the `vocab_tensors`
    (embeddings, head) may differ in their first dimension only. `only_common` compares the shared names only (for
    checkpoint headers, where a tied head may be stored in one model and not in another).
    """
    names = list(state)
    ref_name, ref = names[0], state[names[0]]

    def shape(v):
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    for other in names[1:]:
        sd = state[other]
        missing, extra = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
        if (missing or extra) and not only_common:
            raise ValueError(
                f"models '{ref_name}' and '{other}' have different tensors: only in '{ref_name}': {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}; only in '{other}': {extra[:5]}{'...' if len(extra) > 5 else ''}"
            )
        bad = [(k, shape(ref[k]), shape(sd[k])) for k in ref if k in sd and shape(ref[k]) != shape(sd[k])]
        vocab_only = [b for b in bad if b[0] in vocab_tensors and b[1][1:] == b[2][1:]]
        if truncate_vocab:
            bad = [b for b in bad if b not in vocab_only]
        if bad:
            lines = "; ".join(f"{k}: {a} vs {b}" for k, a, b in bad[:5])
            hint = ""
            if len(vocab_only) == len(bad):
                hint = (" Only the vocabulary size differs: set truncate_vocab=true (models.truncate_vocab, or "
                        "--truncate-vocab for evomerge-merge) to merge over the common vocabulary; tokens above it "
                        "are dropped.")
            raise ValueError(
                f"models '{ref_name}' and '{other}' have different tensor shapes ({len(bad)} tensors): {lines}.{hint}"
            )


def vocab_tensor_names(arch: ArchMap) -> tuple[str, ...]:
    return tuple(arch.embed) + tuple(arch.head)


def truncate_to_common_vocab(state: dict[str, dict[str, torch.Tensor]], arch: ArchMap) -> int | None:
    """Cut embedding/head rows of every model to the smallest vocabulary; returns that size (None if all equal)."""
    names = [n for n in vocab_tensor_names(arch) if all(n in sd for sd in state.values())]
    if not names:
        return None
    sizes = {m: sd[names[0]].shape[0] for m, sd in state.items()}
    common = min(sizes.values())
    if len(set(sizes.values())) == 1:
        return None
    log.warning("Vocabulary sizes differ %s: truncating embeddings/head to the common %d tokens", sizes, common)
    for sd in state.values():
        for n in names:
            sd[n] = sd[n][:common].contiguous()
    return common


# ---- checkpoints on disk, read lazily (shapes from headers, tensors from memory-mapped shards) -----------------


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


def check_configs_compatible(paths: dict[str, str]) -> None:
    """Same architecture and depth (config.json of local folders), before any tensor is read."""
    cfgs = {}
    for name, p in paths.items():
        f = resolve_path(p) / "config.json"
        if f.exists():
            cfgs[name] = read_config(f, name)
    if len(cfgs) < 2:
        return
    (ref, rc), *others = cfgs.items()
    arch = (rc.get("architectures") or [None])[0]
    try:
        key = arch_for(arch).num_layers_key if arch else None
    except ValueError:
        key = None
    for other, oc in others:
        where = f"config.json of {paths[ref]} and {paths[other]}"
        oarch = (oc.get("architectures") or [None])[0]
        if oarch != arch:
            raise ValueError(f"models '{ref}' and '{other}' have different architectures: {arch} vs {oarch} ({where}, "
                             f"'architectures'); expected one architecture for all models of a merge")
        if key and rc.get(key) != oc.get(key):
            raise ValueError(f"models '{ref}' and '{other}' have different layer counts: {key} {rc.get(key)} vs "
                             f"{oc.get(key)} ({where}); expected the same depth for all models of a merge")


def check_files_compatible(paths: dict[str, str], vocab_tensors: tuple[str, ...] = (),
                           truncate_vocab: bool = False) -> None:
    """Architecture, depth and shape checks from config.json and safetensors headers / .bin metadata only, before
    any weights are loaded.

    Models that are not local folders (hub ids) are skipped here and checked after loading.
    """
    check_configs_compatible(paths)
    shapes = {}
    for name, p in paths.items():
        if resolve_path(p).is_dir():
            shapes[name] = LazyCheckpoint(p).shapes()
    if len(shapes) > 1:
        check_compatible(shapes, vocab_tensors, truncate_vocab, only_common=True)


def check_finite(name: str, path: str, tensors: dict) -> None:
    """A NaN or Inf in a source model would fail every candidate that uses it, reported candidate by candidate as a
    merge failure: name the model and the tensor once, at load."""
    from evomerge.merge.kernels import all_finite

    bad = [k for k, v in tensors.items() if v.is_floating_point() and not all_finite(v)]
    if bad:
        raise ValueError(f"model '{name}' ({path}) holds NaN or Inf values in {len(bad)} tensor(s), e.g. {bad[:3]}; "
                         "a merge with it cannot be finite. Check that checkpoint (a failed conversion or download)")


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
