"""Compatibility checks on source models before any merge: same tensor names and shapes (vocabulary rows may
differ when truncation or a tokenizer union handles them), compatible configs, finite weights."""

from __future__ import annotations

import logging
from typing import Any

import torch

from evomerge.models.arch import ArchMap, arch_for
from evomerge.models.lazy import LazyCheckpoint, read_config, resolve_path

log = logging.getLogger(__name__)


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
