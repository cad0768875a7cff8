"""PEFT LoRA adapters as merge inputs: base + adapter, materialised once into a full checkpoint folder.

mergekit writes such an input as `model: BASE+ADAPTER`; evomerge configs as `models.sources[i].lora: ADAPTER` (on
top of `path`, or of `models.base` without one). The adapter is folded in here, by its own definition rather than
through peft: W' = W + s * B @ A for every `lora_A`/`lora_B` pair (s = lora_alpha / r, or / sqrt(r) with rsLoRA;
`rank_pattern`/`alpha_pattern` per module; transposed for fan_in_fan_out layers such as GPT-2's Conv1D), embedding
adapters as W' = W + s * (B @ A)^T, and tensors the adapter saves whole (`modules_to_save`, biases) replace the
base's. The result is cached under $EVOMERGE_CACHE/lora (default ~/.cache/evomerge/lora), keyed by the base's
weights files and the adapter's content, so a search and an export of the same input fold it once; from there on
it is an ordinary model (the in-memory merger and the export see the same tensors). DoRA and non-LoRA adapters are
refused by name.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."


def split_ref(ref: str) -> tuple[str, str] | None:
    """mergekit's `BASE+ADAPTER` -> (base, adapter); None for a plain model reference (or a path holding '+')."""
    if "+" not in ref or Path(ref).expanduser().exists():
        return None
    base, _, adapter = ref.rpartition("+")
    return base, adapter


def check_adapter(adapter: Path, where: str) -> dict:
    """The adapter's config, after checking what can be folded; errors name the file and the field."""
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{where}: LoRA adapter {adapter} has no adapter_config.json (expected a PEFT "
                                "adapter folder, as `save_pretrained` of a PeftModel writes)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_file}: not readable JSON ({e})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cfg_file}: peft_type {cfg.get('peft_type')!r}; only LoRA adapters can be merged")
    if cfg.get("use_dora"):
        raise ValueError(f"{cfg_file}: use_dora is true; DoRA's magnitude vectors are not folded by evomerge")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), int | float) or cfg[key] <= 0:
            raise ValueError(f"{cfg_file}: field {key!r} should be a positive number, found {cfg.get(key)!r}")
    if not any((adapter / f).is_file() for f in ADAPTER_WEIGHTS):
        raise FileNotFoundError(f"{where}: LoRA adapter {adapter} has no {' or '.join(ADAPTER_WEIGHTS)}")
    return cfg


def _read_adapter(adapter: Path) -> dict[str, torch.Tensor]:
    f = adapter / ADAPTER_WEIGHTS[0]
    if f.is_file():
        from safetensors.torch import load_file

        return load_file(str(f))
    return torch.load(adapter / ADAPTER_WEIGHTS[1], map_location="cpu", weights_only=True)


def _pattern(patterns: dict, module: str, default: float) -> float:
    """peft's rank/alpha patterns: a key matches a module named by it or ending in `.key` (keys may be regexes)."""
    for key, value in (patterns or {}).items():
        if module == key or re.fullmatch(rf"(.*\.)?{key}", module):
            return float(value)
    return float(default)


def fold(base_state: dict[str, torch.Tensor], adapter_state: dict[str, torch.Tensor], cfg: dict,
         where: str = "adapter") -> dict[str, torch.Tensor]:
    """The base's tensors with the adapter folded in (float32 arithmetic, the base's dtype out)."""
    out = dict(base_state)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in adapter_state.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        m = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight|(.+)\.(lora_embedding_A|lora_embedding_B)"
                         r"(?:\.[^.]+)?", name)
        if m:
            module, part = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            pairs.setdefault(module, {})[part] = t
            continue
        name = re.sub(r"\.(modules_to_save\.default|original_module|base_layer)\.", ".", name)
        if name not in out:
            raise ValueError(f"{where}: tensor {key!r} names {name!r}, which the base model does not have")
        out[name] = t.to(out[name].dtype)
    r0, alpha0 = float(cfg["r"]), float(cfg["lora_alpha"])
    for module, parts in pairs.items():
        target = f"{module}.weight"
        if target not in out:
            raise ValueError(f"{where}: the adapter targets {module!r}, but the base model has no {target!r}")
        r = _pattern(cfg.get("rank_pattern"), module, r0)
        alpha = _pattern(cfg.get("alpha_pattern"), module, alpha0)
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        w = out[target]
        if "lora_A" in parts and "lora_B" in parts:
            delta = parts["lora_B"].float() @ parts["lora_A"].float()
            if cfg.get("fan_in_fan_out"):
                delta = delta.T
        elif "lora_embedding_A" in parts and "lora_embedding_B" in parts:
            delta = (parts["lora_embedding_B"].float() @ parts["lora_embedding_A"].float()).T
        else:
            raise ValueError(f"{where}: module {module!r} has {sorted(parts)}; expected both A and B matrices")
        if delta.shape != w.shape:
            raise ValueError(f"{where}: the adapter's update for {target!r} has shape {tuple(delta.shape)}, the "
                             f"base's tensor {tuple(w.shape)} (an adapter for another model?)")
        out[target] = (w.float() + scale * delta).to(w.dtype)
    return out


def _cache_root() -> Path:
    return Path(os.environ.get("EVOMERGE_CACHE", "~/.cache/evomerge")).expanduser() / "lora"


def _key(base: Path, adapter: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(base.glob("*.safetensors")) + sorted(base.glob("*.bin")) + [base / "config.json"]:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    for f in [adapter / "adapter_config.json", *(adapter / w for w in ADAPTER_WEIGHTS)]:
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()[:24]


def materialize(base: Path, adapter: Path, where: str = "model") -> Path:
    """The folder of base + adapter as a full checkpoint (built once, then found in the cache)."""
    from evomerge.models.lazy import LazyCheckpoint

    cfg = check_adapter(adapter, where)
    out = _cache_root() / _key(base, adapter)
    if (out / "config.json").is_file():
        return out
    ckpt = LazyCheckpoint(base)
    state = fold({n: ckpt.get(n) for n in ckpt.names}, _read_adapter(adapter), cfg, f"{where}: {adapter}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".partial-"))
    try:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        for f in base.iterdir():  # config, generation config, tokenizer: everything but the weights
            if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".safetensors.index.json", ".pt")):
                shutil.copy(f, tmp / f.name)
        (tmp / "evomerge_lora.json").write_text(json.dumps({"base": str(base), "adapter": str(adapter)}, indent=2))
        os.replace(tmp, out)  # atomic: a crash leaves only a .partial- folder, never a half-written cache entry
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").is_file():
            raise
    return out
