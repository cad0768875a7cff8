"""`evomerge-merge CONFIG OUT_DIR`: merge to disk, streaming tensor by tensor from memory-mapped shards.

CONFIG is an evomerge recipe (what a search writes: models/base/default/layers/path, plus an optional `paths:`
mapping from model names to folders) or a mergekit YAML (evomerge/merge/mergekit.py). Only the current output
shard and one tensor's inputs are in memory at a time. The output is a stock checkpoint: sharded safetensors with
an index, config.json (layer count patched for stacked layers), generation config, the tokenizer files of the base
(or `tokenizer_source`), the recipe, and a model card.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import shutil
import sys
from pathlib import Path

import torch
import yaml

from evomerge.dtypes import DTYPES
from evomerge.merge import kernels
from evomerge.merge.dataflow import fold_factors
from evomerge.merge.mergekit import MergeJob, NotExpressible, from_mergekit, recipe_to_mergekit
from evomerge.merge.tensor_plan import MergeError, merged_value, path_plan, plan_tensor
from evomerge.models.arch import ArchMap, arch_for
from evomerge.models.checks import check_compatible, vocab_tensor_names
from evomerge.models.lazy import LazyCheckpoint
from evomerge.models.pool import resolve_model
from evomerge.recipe import Recipe
from evomerge.store import RunDirError, check_creatable

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja")


class ExportError(ValueError):
    """A config or set of models that cannot be exported (the message names the file/field and what was found)."""


# what a checkpoint folder consists of: the files --overwrite removes from OUT_DIR before writing (nothing else)
CHECKPOINT_GLOBS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", ".shard-*.tmp",
                    "config.json", "generation_config.json", "README.md", "evomerge_recipe.yaml", *TOKENIZER_FILES)


def check_out_dir(out_dir: Path, inputs: dict[str, Path], overwrite: bool) -> None:
    """Refuse an OUT_DIR that is, is inside, or contains an input folder (its weights would be lost), a file, or a
    non-empty folder without --overwrite (old shards next to new weights: readers would pick the wrong ones)."""
    out = out_dir.expanduser().resolve()
    for name, folder in inputs.items():
        src = folder.expanduser().resolve()
        rel = ("is" if out == src else "is inside" if src in out.parents else "contains" if out in src.parents
               else None)
        if rel:
            raise ExportError(f"OUT_DIR {out_dir} {rel} the folder of input {name!r} ({src}); writing there would "
                              f"overwrite or mix with that model's files. Choose an OUT_DIR outside every input")
    if out.exists() and not out.is_dir():
        raise ExportError(f"OUT_DIR {out_dir} exists and is not a folder; expected a new or empty folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        raise ExportError(f"OUT_DIR {out_dir} is not empty ({len(entries)} entries, e.g. {entries[:3]}); choose an "
                          f"empty folder, or pass --overwrite to replace the checkpoint files in it (weights, "
                          f"index, config.json, tokenizer files, README.md; other files are kept)")
    try:  # a read-only or full location fails here, before any model is read; nothing is created yet
        check_creatable(out, "OUT_DIR")
    except RunDirError as e:
        raise ExportError(str(e).replace(str(out), str(out_dir), 1)) from None


def clear_checkpoint_files(out_dir: Path) -> None:
    """--overwrite: remove an earlier checkpoint's files, so no stale shard or index survives next to the new one."""
    for pattern in CHECKPOINT_GLOBS:
        for f in out_dir.glob(pattern):
            if f.is_file() or f.is_symlink():
                f.unlink()


# ---- reading CONFIG -----------------------------------------------------------------------------------------------


def _parse_size(text: str) -> int:
    t = str(text).strip().upper().removesuffix("B")
    mult = {"K": 1e3, "M": 1e6, "G": 1e9}.get(t[-1:], 1)
    try:
        size = int(float(t[:-1] if t[-1:] in "KMG" else t) * mult)
    except ValueError:
        raise ExportError(f"--shard-size: expected a size like 2GB or 500MB, found {text!r}") from None
    if size <= 0:
        raise ExportError(f"--shard-size: expected a positive size like 2GB or 500MB, found {text!r}")
    return size


def _open(ref: str, where: str) -> LazyCheckpoint:
    try:
        p = resolve_model(ref, where)
    except FileNotFoundError as e:
        raise ExportError(str(e)) from None
    if not p.is_dir():
        name = where.split("'")[1] if "'" in where else ref
        raise ExportError(f"{where}: model {ref!r} is not a local folder (hub downloads are off: HF_HUB_OFFLINE=1); "
                          f"point it at a folder with config.json and *.safetensors: in an evomerge recipe with "
                          f"`paths: {{{name}: /path/to/{name}}}`, or on the command line with --model {name}=PATH")
    try:
        return LazyCheckpoint(p)
    except (FileNotFoundError, OSError, ValueError) as e:
        raise ExportError(f"{where}: cannot read model {ref!r}: {e}") from None


def _describe(ckpt: LazyCheckpoint, where: str) -> tuple[ArchMap, int]:
    archs = ckpt.config.get("architectures") or []
    if not archs:
        raise ExportError(f"{where}: {ckpt.path}/config.json has no 'architectures' entry")
    arch = arch_for(archs[0], ckpt.names)
    n = ckpt.config.get(arch.num_layers_key)
    if n is None:
        n = len({arch.layer_of(x) for x in ckpt.names} - {None})
    return arch, int(n)


def load_job(config: str | Path, model_paths: dict[str, str] | None = None) -> MergeJob:
    """Read CONFIG (evomerge recipe or mergekit YAML) into a MergeJob with every model's folder."""
    config = Path(config)
    try:
        data = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ExportError(f"{config}: cannot read: {e}") from None
    if not isinstance(data, dict):
        raise ExportError(f"{config}: expected a mapping (an evomerge recipe or a mergekit config), "
                          f"found {type(data).__name__}")
    if "merge_method" in data:
        refs = [m["model"] if isinstance(m, dict) else m for m in data.get("models") or []]
        refs += [s["model"] for sl in data.get("slices") or [] for s in (sl.get("sources") or [])
                 if isinstance(s, dict) and "model" in s]
        first = data.get("base_model") or (refs[0] if refs else None)
        if first is None:
            raise ExportError(f"{config}: no models found (expected 'models' or 'slices' with model entries)")
        ckpt = _open(str(first), f"{config}")
        arch, n = _describe(ckpt, str(config))
        prefix = {i: arch.layer_key(i) for i in range(n)}
        suffixes = sorted({x[len(prefix[0]):] for x in ckpt.names if arch.layer_of(x) == 0})
        non_layer = [x for x in ckpt.names if arch.layer_of(x) is None]
        try:
            job = from_mergekit(data, arch, n, suffixes, non_layer, where=str(config))
        except ValueError as e:
            raise ExportError(str(e)) from None
    else:
        extra = set(data) - {"models", "base", "default", "layers", "path", "scale_at", "seed", "meta", "paths"}
        if extra:
            raise ExportError(f"{config}: unsupported key(s) {sorted(extra)} in an evomerge recipe")
        recipe = Recipe.from_dict(data, where=str(config))
        paths = {str(k): str(v) for k, v in (data.get("paths") or {}).items()}
        job = MergeJob(recipe, paths)
        for m in recipe.models + ([recipe.base] if recipe.base else []):
            if m not in job.paths:
                local = config.parent / m
                job.paths[m] = str(local) if local.is_dir() else m
    job.paths.update(model_paths or {})
    return job


# ---- writing ------------------------------------------------------------------------------------------------------


class ShardWriter:
    """Collects output tensors and writes a safetensors shard whenever `max_bytes` is reached."""

    def __init__(self, out_dir: Path, max_bytes: int):
        self.out_dir, self.max_bytes = out_dir, max_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.size = 0
        self.files: list[tuple[Path, list[str]]] = []
        self.total = 0
        self.float_dtype: torch.dtype | None = None  # of the first floating-point tensor (for config.json)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self.float_dtype is None and tensor.is_floating_point():
            self.float_dtype = tensor.dtype
        nbytes = tensor.numel() * tensor.element_size()
        if self.buffer and self.size + nbytes > self.max_bytes:
            self.flush()
        self.buffer[name] = tensor
        self.size += nbytes
        self.total += nbytes

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.buffer:
            return
        tmp = self.out_dir / f".shard-{len(self.files):05d}.tmp"
        try:
            save_file(self.buffer, str(tmp), metadata={"format": "pt"})
        except Exception as e:  # safetensors reports a full disk as SafetensorError("... No space left ...")
            tmp.unlink(missing_ok=True)
            raise OSError(getattr(e, "errno", None) or errno.EIO, f"cannot write a shard ({e})", str(tmp)) from None
        self.files.append((tmp, list(self.buffer)))
        self.buffer, self.size = {}, 0

    def close(self) -> list[str]:
        self.flush()
        n = len(self.files)
        if n == 1:
            self.files[0][0].rename(self.out_dir / "model.safetensors")
            return ["model.safetensors"]
        weight_map, names = {}, []
        for k, (tmp, keys) in enumerate(self.files):
            final = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            tmp.rename(self.out_dir / final)
            weight_map.update({key: final for key in keys})
            names.append(final)
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return names


def export(job: MergeJob, out_dir: str | Path, device: str = "cpu", seed: int | None = None,
           shard_size: int = 2_000_000_000, truncate_vocab: bool = False, trust_remote_code: bool = False,
           progress: bool = True, compile: str = "auto", overwrite: bool = False) -> Path:
    """Merge `job` to `out_dir` tensor by tensor. All checks run before the first tensor is merged.
    `compile`: on, off, or auto (on from about a billion parameters). `overwrite`: a non-empty `out_dir` is
    accepted and its checkpoint files are removed first (never an input's folder)."""
    recipe = job.recipe
    if seed is not None:
        recipe.seed = int(seed)
    out_dir = Path(out_dir)
    names = list(dict.fromkeys(recipe.models + ([recipe.base] if recipe.base else [])))
    ckpts = {m: _open(job.paths.get(m, m), f"model {m!r}") for m in names}
    inputs = {m: c.path for m, c in ckpts.items()}
    if job.tokenizer_source and job.tokenizer_source not in ckpts:
        inputs[f"tokenizer_source {job.tokenizer_source}"] = resolve_model(job.paths.get(job.tokenizer_source,
                                                                                         job.tokenizer_source))
    check_out_dir(out_dir, inputs, overwrite)
    ref_name = recipe.base or recipe.models[0]
    ref = ckpts[ref_name]
    arch, num_layers = _describe(ref, f"model {ref_name!r}")
    vocab = vocab_tensor_names(arch)
    try:  # an output vocabulary (tokenizer: / union) lays every model out in it: vocab sizes may differ then
        check_compatible({m: c.shapes() for m, c in ckpts.items()}, vocab, truncate_vocab or job.tokenizer is not None,
                         only_common=True)
    except ValueError as e:
        raise ExportError(str(e)) from None
    vocab_plan = None
    if job.tokenizer is not None:
        from evomerge.merge.vocab import VocabConfigError, VocabPlan

        if recipe.path is not None:
            raise ExportError("tokenizer: an output vocabulary with stacked slices (a layer path) is not supported; "
                              "use tokenizer_source: base or a model")
        embed = next((v for v in arch.embed if v in ref.where), None)
        try:
            vocab_plan = VocabPlan.build(job.tokenizer, {m: c.path for m, c in ckpts.items()},
                                         {m: c.shape(embed)[0] for m, c in ckpts.items()}, recipe.base)
        except (VocabConfigError, OSError) as e:
            raise ExportError(f"tokenizer: {e}") from None
    for key in ("dtype", "out_dtype"):
        if getattr(job, key) is not None and getattr(job, key) not in DTYPES:
            raise ExportError(f"{key}: expected one of {list(DTYPES)}, found {getattr(job, key)!r}")
    compute_dtype = DTYPES.get(job.dtype) if job.dtype else None
    common_vocab = None
    if truncate_vocab:
        sizes = [c.shape(v)[0] for c in ckpts.values() for v in vocab if v in c.where]
        common_vocab = min(sizes) if sizes else None

    untie = False
    if recipe.path is not None:
        folds = fold_factors(arch, recipe)
        if folds is None:  # `stream` scales do not fold into stock weights
            return _export_scaled_path(job, out_dir, device, trust_remote_code, overwrite)
        for k, h in enumerate(recipe.path):
            if h.model not in ckpts:
                raise ExportError(f"recipe.path[{k}]: model {h.model!r} is not among the recipe's models {names}")
            if not 0 <= h.layer < num_layers:
                raise ExportError(f"recipe.path[{k}]: layer {h.layer} out of range 0..{num_layers - 1}")
        if recipe.default is not None:
            raise ExportError("streaming export of a path recipe takes non-layer tensors from models[0]; a default "
                              "merge rule on a path is handled by evomerge.merge.dataflow (use the in-memory export)")
        plan = path_plan(recipe, arch, lambda m: ckpts[m].names, folds)
        untie = folds[0] != 1.0 and bool(ref.config.get("tie_word_embeddings"))
    else:
        for m in names:
            missing = sorted(set(ref.names) - set(ckpts[m].names))
            if missing and m in recipe.models:
                raise ExportError(f"model {m!r} lacks tensor(s) {missing[:5]} that {ref_name!r} has")
        outside = sorted(i for i in recipe.layers if not 0 <= i < num_layers)
        if outside:
            raise ExportError(f"recipe.layers.{outside[0]}: layer index out of range; the models have {num_layers} "
                              f"layers (expected 0..{num_layers - 1})")
        for n in ref.names:  # every rule resolved (methods, parameters and their ranges) before any tensor is merged
            try:
                plan_tensor(recipe, arch, n)
            except ValueError as e:
                raise ExportError(str(e)) from None
        plan = [(n, n, None, 1.0) for n in ref.names]  # (output, input, single source model or None, factor)

    if overwrite and out_dir.is_dir():
        clear_checkpoint_files(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out_dir, shard_size)
    from tqdm import tqdm

    if compile == "auto":  # compiling the fused kernels (~10-40 s once) pays back from about a billion parameters
        compile = "on" if sum(math.prod(s) for s in ref.shapes().values()) >= 1e9 else "off"
    with kernels.compiling(compile == "on"):
        for out_name, in_name, single, factor in tqdm(plan, desc="evomerge-merge", unit="tensor",
                                                      disable=not progress):
            _export_tensor(job, recipe, arch, ckpts, writer, out_name, in_name, single, factor, compute_dtype, device,
                           common_vocab if in_name in vocab else None, vocab_plan if in_name in vocab else None)
    out_dtype = writer.float_dtype
    writer.close()
    _write_config(ref, out_dir, arch, recipe, out_dtype, vocab_plan.size if vocab_plan else common_vocab, untie)
    _copy_tokenizer(job, ref, ckpts, out_dir, vocab_plan)
    _write_card(job, arch, num_layers, out_dir)
    recipe.save(out_dir / "evomerge_recipe.yaml")
    return out_dir


def _export_tensor(job, recipe, arch, ckpts, writer, out_name, in_name, single, factor, compute_dtype, device,
                   rows: int | None, vocab_plan=None) -> None:
    """Merge (or copy, for a single source, times `factor`: a folded hop scale) one tensor for the shard writer."""
    if single is not None:
        t = ckpts[single].get(in_name)
        out = t.to(compute_dtype) if compute_dtype else t
        if factor != 1.0:
            out = out * factor
    else:
        out = _merge_one(recipe, arch, ckpts, in_name, compute_dtype, device, rows, vocab_plan)
    if rows is not None:
        out = out[:rows]
    if job.out_dtype:
        out = out.to(DTYPES[job.out_dtype])
    writer.add(out_name, out.detach().to("cpu").contiguous().clone())


def _merge_one(recipe, arch, ckpts, name, compute_dtype, device, rows: int | None = None,
               vocab_plan=None) -> torch.Tensor:
    """One output tensor from the memory-mapped inputs (`rows`: keep only the first rows, for vocab truncation;
    `vocab_plan`: lay each model's rows out in the output vocabulary first)."""
    aligned = vocab_plan.align({m: c.get(name) for m, c in ckpts.items()}) if vocab_plan is not None else None

    def fetch(m):
        t = aligned[m] if aligned is not None else ckpts[m].get(name)
        if not t.is_floating_point():
            return t
        t = (t[:rows] if rows is not None else t).to(device)
        return t.to(compute_dtype) if compute_dtype else t

    return merged_value(recipe, arch, name, fetch)


def _export_scaled_path(job: MergeJob, out_dir: Path, device: str, trust_remote_code: bool,
                        overwrite: bool = False) -> Path:
    """`stream` hop scales cannot be written as stock weights: the data-flow module owns that export."""
    from evomerge.merge.dataflow import export_path_recipe
    from evomerge.models.pool import ModelSpec, load_pool

    recipe = job.recipe
    specs = [ModelSpec(m, job.paths.get(m, m)) for m in recipe.models]
    pool = load_pool(specs, None, device=device, trust_remote_code=trust_remote_code,
                     tokenizer_source=job.paths.get(job.tokenizer_source, job.tokenizer_source)
                     if job.tokenizer_source else None)
    if overwrite and out_dir.is_dir():
        clear_checkpoint_files(out_dir)
    return export_path_recipe(pool, recipe, out_dir)


def _write_config(ref: LazyCheckpoint, out_dir: Path, arch: ArchMap, recipe: Recipe, dtype, vocab,
                  untie: bool = False) -> None:
    cfg = dict(ref.config)
    if untie:
        cfg["tie_word_embeddings"] = False
    if recipe.path is not None:
        cfg[arch.num_layers_key] = len(recipe.path)
        if isinstance(cfg.get("layer_types"), list):
            cfg["layer_types"] = [cfg["layer_types"][h.layer] for h in recipe.path]
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        for key in ("torch_dtype", "dtype"):
            if key in cfg or key == "dtype":
                cfg[key] = name
    if vocab is not None:
        cfg["vocab_size"] = vocab
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    gen = ref.path / "generation_config.json"
    if gen.exists():
        shutil.copy(gen, out_dir / "generation_config.json")


def _copy_tokenizer(job: MergeJob, ref: LazyCheckpoint, ckpts, out_dir: Path, vocab_plan=None) -> None:
    src = ref.path
    if vocab_plan is not None:  # the output vocabulary's own tokenizer (union, base or a model's)
        vocab_plan.tokenizer.save_pretrained(out_dir)
        if job.chat_template:
            _set_chat_template(job, ckpts, out_dir)
        return
    if job.tokenizer_source:
        t = job.tokenizer_source
        src = ckpts[t].path if t in ckpts else resolve_model(job.paths.get(t, t))
        if not src.is_dir():
            raise ExportError(f"tokenizer_source: {job.tokenizer_source!r} is not a model of the config or a folder")
    copied = [f for f in TOKENIZER_FILES if (src / f).exists()]
    for f in copied:
        shutil.copy(src / f, out_dir / f)
    if not copied:
        log.warning("no tokenizer files in %s; the merged model has no tokenizer", src)
    if job.chat_template:
        if not copied:
            log.warning("chat_template given but the merged model has no tokenizer; not written")
        else:
            _set_chat_template(job, ckpts, out_dir)


def _set_chat_template(job: MergeJob, ckpts, out_dir: Path) -> None:
    from evomerge.merge import chat_template

    template = chat_template.resolve(job.chat_template, [c.path for c in ckpts.values()])
    if template is None:
        log.warning("chat_template: auto, but no input model has a chat template; none written")
    else:
        chat_template.write(out_dir, template)


def _write_card(job: MergeJob, arch: ArchMap, num_layers: int, out_dir: Path) -> None:
    from evomerge import card

    try:
        mk = yaml.safe_dump(recipe_to_mergekit(job.recipe, arch, num_layers, job.paths), sort_keys=False)
        mk_text = f"```yaml\n{mk}```"
    except NotExpressible as e:
        mk_text = f"No mergekit equivalent: {e}."
    card.write(out_dir, job.recipe, job.paths, "`evomerge-merge`", {
        "Equivalent mergekit config": mk_text,
        "Randomness": f"Randomised methods (DARE, DELLA) use evomerge's per-tensor seeds (recipe seed "
                      f"{job.recipe.seed}); mergekit's random masks differ."})


# ---- CLI ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from evomerge.offline import set_offline_env

    set_offline_env()
    ap = argparse.ArgumentParser(prog="evomerge-merge", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="evomerge recipe YAML or mergekit YAML")
    ap.add_argument("out_dir")
    ap.add_argument("--device", default="cpu", help="where tensors are merged (cpu, cuda, cuda:1)")
    ap.add_argument("--seed", type=int, default=None, help="seed for DARE/DELLA (default: the recipe's)")
    ap.add_argument("--shard-size", default="2GB", help="max output shard size (e.g. 2GB, 500MB)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                    help="folder of a model named in the recipe (repeatable)")
    ap.add_argument("--truncate-vocab", action="store_true",
                    help="merge models with different vocabulary sizes over the common vocabulary")
    ap.add_argument("--trust-remote-code", action="store_true", help="only used for scaled layer paths")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="torch.compile the fused merge kernels (auto: for models of a billion parameters or more)")
    ap.add_argument("--overwrite", action="store_true",
                    help="write into a non-empty OUT_DIR, removing its checkpoint files first (never an input's)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        paths = {}
        for item in args.model:
            if "=" not in item:
                raise ExportError(f"--model: expected NAME=PATH, found {item!r}")
            k, v = item.split("=", 1)
            paths[k] = v
        job = load_job(args.config, paths)
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ExportError(f"--device {args.device}: CUDA is not available on this machine")
        out = export(job, args.out_dir, device=args.device, seed=args.seed, shard_size=_parse_size(args.shard_size),
                     truncate_vocab=args.truncate_vocab, trust_remote_code=args.trust_remote_code,
                     progress=not args.no_progress, compile=args.compile, overwrite=args.overwrite)
    except (ExportError, MergeError, ValueError, FileNotFoundError) as e:
        print(f"evomerge-merge: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk filled, or the folder vanished, while reading or writing
        where = e.filename or args.out_dir
        writing = Path(where).expanduser().resolve().is_relative_to(Path(args.out_dir).expanduser().resolve())
        print(f"evomerge-merge: error: {where}: {e.strerror or e}" + (
            "; the inputs are untouched and the output is incomplete. Free disk space (or choose another OUT_DIR) "
            "and run the same command with --overwrite" if writing else ""), file=sys.stderr)
        return 2
    print(f"evomerge-merge: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
