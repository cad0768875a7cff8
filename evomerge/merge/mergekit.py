"""mergekit YAML <-> evomerge Recipe (format: shared/reference/anchors.md section 1.3).

`from_mergekit` reads the `models:` form and the `slices:` form (identity-mapped slices for any method, stacked
slices for passthrough) into a Recipe plus the model paths and output options. Parameter values may be scalars,
gradient lists (interpolated over a slice's layers at t = idx / (n - 1); non-layer tensors take t = 0) or filtered
lists (`[{filter: substring, value: ...}, {value: ...}]`, first match wins). Filters that do not line up with
evomerge's tensor groups become "filter:<tensor suffix>" layer keys of the Recipe (see evomerge/recipe.py).

`recipe_to_mergekit` writes a Recipe back as a mergekit config whenever one merge method covers every tensor (or
the recipe is a path of unscaled hops), and raises `NotExpressible` with the reason otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from evomerge.dtypes import DTYPES
from evomerge.merge.registry import get_method
from evomerge.models.arch import ArchMap
from evomerge.recipe import FILTER, GROUPS, Hop, Recipe, Rule

log = logging.getLogger(__name__)

TOP_KEYS = {"merge_method", "models", "slices", "base_model", "parameters", "dtype", "out_dtype", "tokenizer_source",
            "chat_template", "tokenizer"}
KNOWN_UNSUPPORTED = {
}
IGNORED_PARAMS = {"int8_mask"}  # changes only how mergekit stores masks, never the merged values


class MergekitConfigError(ValueError):
    """A mergekit config that evomerge cannot run (the message names the key and what was expected)."""


class NotExpressible(ValueError):
    """A recipe that has no mergekit equivalent (the message says why)."""


@dataclass
class MergeJob:
    """What an export needs: the recipe, where each named model lives, and output options."""

    recipe: Recipe
    paths: dict[str, str] = field(default_factory=dict)  # model name -> folder or hub id
    dtype: str | None = None  # compute dtype the inputs are cast to (mergekit `dtype`)
    out_dtype: str | None = None
    tokenizer_source: str | None = None  # a model name/path; None = the base (or first) model
    chat_template: str | None = None  # a name, Jinja text or "auto" (evomerge/merge/chat_template.py)
    tokenizer: Any = None  # a vocab.TokenizerSpec: the output vocabulary is built and every model aligned to it


# ---- parameter values ---------------------------------------------------------------------------------------------


def _interp(values: list, t: float) -> float:
    if len(values) == 1:
        return float(values[0])
    pos = t * (len(values) - 1)
    i = min(int(pos), len(values) - 2)
    frac = pos - i
    return float(values[i]) * (1 - frac) + float(values[i + 1]) * frac


def param_value(spec: Any, t: float, name: str, where: str) -> Any:
    """A mergekit parameter's value for tensor `name` at relative depth `t` (None when no filter matches)."""
    if isinstance(spec, bool | int | float):
        return spec
    if isinstance(spec, list) and spec and all(isinstance(v, dict) for v in spec):
        for entry in spec:
            bad = set(entry) - {"filter", "value"}
            if bad or "value" not in entry:
                raise MergekitConfigError(f"{where}: filtered list entries are {{filter, value}}, found {entry!r}")
            f = entry.get("filter")
            if f in (None, "*") or str(f) in name:
                return param_value(entry["value"], t, name, where)
        return None
    if isinstance(spec, list) and spec and all(isinstance(v, int | float) and not isinstance(v, bool) for v in spec):
        return _interp(spec, t)
    raise MergekitConfigError(
        f"{where}: expected a number, a gradient list of numbers or a list of {{filter, value}}, found {spec!r}"
    )


# ---- mergekit -> Recipe -------------------------------------------------------------------------------------------


def _model_entries(entries: Any, where: str) -> list[tuple[str, dict]]:
    if not isinstance(entries, list) or not entries:
        raise MergekitConfigError(f"{where}: expected a non-empty list of {{model, parameters}}")
    out = []
    for i, e in enumerate(entries):
        if isinstance(e, str):
            e = {"model": e}
        if not isinstance(e, dict) or "model" not in e:
            raise MergekitConfigError(f"{where}[{i}]: expected {{model: <path>, parameters: {{...}}}}, found {e!r}")
        bad = set(e) - {"model", "parameters", "layer_range"}
        if bad:
            raise MergekitConfigError(f"{where}[{i}]: unsupported key(s) {sorted(bad)}")
        out.append((str(e["model"]), dict(e.get("parameters") or {})))
    return out


def _single_module(cfg: dict, where: str) -> dict:
    """mergekit's `modules: {default: {models|slices, parameters}}` (what it builds itself for a single-module
    architecture) as the plain top-level form; several modules (vision + text towers) are refused."""
    mods = cfg["modules"]
    if not isinstance(mods, dict) or not mods:
        raise MergekitConfigError(f"{where}.modules: expected a mapping of module name -> {{models|slices}}")
    if list(mods) != ["default"]:
        raise MergekitConfigError(f"{where}.modules: {sorted(mods)}: multi-module architectures are not supported; "
                                  "the architectures evomerge merges have one module, 'default'")
    mod = mods["default"]
    if not isinstance(mod, dict) or set(mod) - {"models", "slices", "parameters"}:
        raise MergekitConfigError(f"{where}.modules.default: expected {{models|slices, parameters}}, found {mod!r}")
    if ("models" in cfg or "slices" in cfg) and ("models" in mod or "slices" in mod):
        raise MergekitConfigError(f"{where}: give the models or slices either at the top or in modules.default")
    out = {k: v for k, v in cfg.items() if k != "modules"}
    out.update({k: mod[k] for k in ("models", "slices") if k in mod})
    if mod.get("parameters"):
        out["parameters"] = {**(cfg.get("parameters") or {}), **mod["parameters"]}
    return out


def _check_top(cfg: dict, where: str) -> None:
    if not isinstance(cfg, dict):
        raise MergekitConfigError(f"{where}: expected a mapping, found {type(cfg).__name__}")
    for k in cfg:
        if k in KNOWN_UNSUPPORTED:
            raise MergekitConfigError(f"{where}: key '{k}': {KNOWN_UNSUPPORTED[k]}")
        if k not in TOP_KEYS:
            raise MergekitConfigError(f"{where}: unsupported key '{k}'; evomerge reads {sorted(TOP_KEYS)}")
    if "merge_method" not in cfg:
        raise MergekitConfigError(f"{where}: missing 'merge_method'")
    if ("models" in cfg) == ("slices" in cfg):
        raise MergekitConfigError(f"{where}: give exactly one of 'models' or 'slices'")
    for k in ("dtype", "out_dtype"):
        if cfg.get(k) is not None and cfg[k] not in DTYPES:
            raise MergekitConfigError(f"{where}.{k}: expected one of {tuple(DTYPES)}, found {cfg[k]!r}")


def from_mergekit(cfg: dict, arch: ArchMap, num_layers: int, layer_suffixes: list[str], non_layer: list[str],
                  where: str = "config") -> MergeJob:
    """Turn a parsed mergekit config into a MergeJob.

    `arch`, `num_layers`, `layer_suffixes` (tensor names inside one layer, after the layer prefix) and `non_layer`
    (embeddings, final norm, head) describe the checkpoint, so gradients and filters can be evaluated per tensor.
    """
    if isinstance(cfg, dict) and "modules" in cfg:
        cfg = _single_module(cfg, where)
    _check_top(cfg, where)
    method_name = str(cfg["merge_method"])
    try:
        method = get_method(method_name)
    except ValueError as e:
        raise MergekitConfigError(f"{where}.merge_method: {e}") from None
    base = str(cfg["base_model"]) if cfg.get("base_model") is not None else None
    global_params = dict(cfg.get("parameters") or {})
    job = MergeJob(Recipe(models=[]), dtype=cfg.get("dtype"), out_dtype=cfg.get("out_dtype"))
    tok = cfg.get("tokenizer_source")
    if tok is not None and cfg.get("tokenizer") is not None:
        raise MergekitConfigError(f"{where}: give tokenizer_source or the tokenizer: block, not both")
    if cfg.get("tokenizer") is not None or tok == "union":
        from evomerge.merge.vocab import TokenizerSpec, VocabConfigError

        try:
            job.tokenizer = TokenizerSpec.parse(cfg.get("tokenizer") or {"source": "union"}, f"{where}.tokenizer")
        except VocabConfigError as e:
            raise MergekitConfigError(str(e)) from None
    elif tok is not None and tok != "base":
        job.tokenizer_source = str(tok)
    if cfg.get("chat_template") is not None:
        from evomerge.merge import chat_template

        try:
            job.chat_template = chat_template.check(cfg["chat_template"], f"{where}.chat_template")
        except ValueError as e:
            raise MergekitConfigError(str(e)) from None

    if "slices" in cfg:
        slices = _read_slices(cfg["slices"], where)
        if method_name == "passthrough":
            return _passthrough_slices(job, slices, base, global_params, num_layers, where, arch, layer_suffixes)
        models, ranges = _identity_slices(slices, num_layers, where)
    else:
        models = _model_entries(cfg["models"], f"{where}.models")
        ranges = [(0, num_layers, None, None)]  # (start, end, slice parameters, per-source parameters)

    uses_base = method.needs_base or method_name in ("nuslerp", "multislerp")
    names = [m for m, _ in models]
    if uses_base and base is not None:
        sources = [(m, p) for m, p in models if m != base]
        if method_name == "slerp" and base not in names:
            raise MergekitConfigError(f"{where}: slerp needs base_model {base!r} to be one of the two models")
    else:
        sources = list(models)
        if base is not None and base not in names and method_name != "passthrough":
            sources.append((base, {}))  # mergekit adds a missing base_model to the inputs
    if method.needs_base and base is None:
        raise MergekitConfigError(f"{where}: merge_method {method_name} needs base_model")
    recipe = job.recipe
    recipe.models = [m for m, _ in sources]
    recipe.base = base if uses_base else None
    job.paths = {m: m for m in recipe.models + ([base] if base else [])}

    def rule_at(t: float, name: str, slice_params: dict | None, source_params: dict | None) -> Rule:
        for m, p in sources:
            bad = set(p) - set(method.per_model) - IGNORED_PARAMS
            if bad:
                raise MergekitConfigError(
                    f"{where}: model {m} parameter(s) {sorted(bad)} are not per-model parameters of {method_name} "
                    f"(per-model: {sorted(method.per_model)}; put global ones under top-level 'parameters')")
        per_model: dict[str, list[float]] = {}
        for key in method.per_model:
            vals = []
            for m, p in sources:
                spec = next((d[key] for d in ((source_params or {}).get(m, {}), p, slice_params or {},
                                              global_params) if key in d), None)
                vals.append(None if spec is None else param_value(spec, t, name, f"{where} {m} '{key}'"))
            if all(v is None for v in vals):
                continue
            missing = [m for (m, _), v in zip(sources, vals, strict=True) if v is None]
            if missing:
                raise MergekitConfigError(f"{where}: per-model parameter '{key}' of {method_name} is not set for "
                                          f"{missing} (tensor {name})")
            per_model[key] = [float(v) for v in vals]
        params: dict[str, Any] = {}
        for key, spec in {**global_params, **(slice_params or {})}.items():
            if key in method.per_model or key in IGNORED_PARAMS:
                continue
            if key not in method.params:
                raise MergekitConfigError(
                    f"{where}.parameters.{key}: not a parameter of {method_name} (global: {sorted(method.params)}, "
                    f"per-model: {sorted(method.per_model)})")
            v = param_value(spec, t, name, f"{where}.parameters.{key}")
            if v is not None:
                params[key] = v
        return Rule(method_name, per_model, params)

    # non-layer tensors: t = 0 (a gradient's first value), one rule for all of them
    first = ranges[0]
    default_rules = {n: rule_at(0.0, n, first[2], first[3]) for n in non_layer}
    distinct = {repr(r.to_dict()) for r in default_rules.values()}
    if len(distinct) > 1:
        raise MergekitConfigError(
            f"{where}: filters give the non-layer tensors {non_layer} different parameters; evomerge has one "
            f"rule for all non-layer tensors")
    recipe.default = next(iter(default_rules.values())) if default_rules else None
    for start, end, slice_params, source_params in ranges:
        for i in range(start, end):
            t = (i - start) / (end - start - 1) if end - start > 1 else 0.0
            prefix = arch.layer_key(i)
            rules = {s: rule_at(t, prefix + s, slice_params, source_params) for s in layer_suffixes}
            layer = _group_rules(rules, arch, prefix)
            if not (len(layer) == 1 and "*" in layer and recipe.default is not None
                    and layer["*"].to_dict() == recipe.default.to_dict()):
                recipe.layers[i] = layer
    recipe.check(where)
    return job


def _group_rules(rules: dict[str, Rule], arch: ArchMap, prefix: str) -> dict[str, Rule]:
    """Per-tensor rules of one layer -> '*' if all equal, else one per group, else filter keys where needed."""
    def key(r):
        return repr(r.to_dict())

    if len({key(r) for r in rules.values()}) == 1:
        return {"*": next(iter(rules.values()))}
    out: dict[str, Rule] = {}
    by_group: dict[str, list[str]] = {}
    for s in rules:
        by_group.setdefault(arch.group_of(prefix + s), []).append(s)
    filters: dict[str, Rule] = {}
    for g, suffixes in by_group.items():
        if len({key(rules[s]) for s in suffixes}) == 1:
            out[g] = rules[suffixes[0]]
        else:
            for s in suffixes:
                filters[FILTER + prefix + s] = rules[s]
    return {**filters, **out}


def _read_slices(slices: Any, where: str) -> list[dict]:
    if not isinstance(slices, list) or not slices:
        raise MergekitConfigError(f"{where}.slices: expected a non-empty list")
    out = []
    for k, sl in enumerate(slices):
        w = f"{where}.slices[{k}]"
        if not isinstance(sl, dict) or "sources" not in sl:
            raise MergekitConfigError(f"{w}: expected {{sources: [...], parameters?}}")
        bad = set(sl) - {"sources", "parameters", "base_model"}
        if bad:
            raise MergekitConfigError(f"{w}: unsupported key(s) {sorted(bad)}")
        srcs = []
        for j, src in enumerate(sl["sources"]):
            if not isinstance(src, dict) or "model" not in src or "layer_range" not in src:
                raise MergekitConfigError(f"{w}.sources[{j}]: expected {{model, layer_range: [start, end]}}")
            bad = set(src) - {"model", "layer_range", "parameters"}
            if bad:
                raise MergekitConfigError(f"{w}.sources[{j}]: unsupported key(s) {sorted(bad)}")
            a, b = (int(x) for x in src["layer_range"])
            if b <= a:
                raise MergekitConfigError(f"{w}.sources[{j}].layer_range: empty range {[a, b]}")
            srcs.append({"model": str(src["model"]), "range": (a, b), "parameters": dict(src.get("parameters") or {})})
        out.append({"sources": srcs, "parameters": dict(sl.get("parameters") or {}), "base": sl.get("base_model")})
    return out


def _passthrough_slices(job: MergeJob, slices: list[dict], base: str | None, global_params: dict, num_layers: int,
                        where: str, arch: ArchMap, layer_suffixes: list[str]) -> MergeJob:
    """Stacked slices ("frankenmerge") -> a Recipe.path of unscaled hops. mergekit's passthrough `scale` (on a
    source, a slice or globally, in that precedence; a number, a gradient over the slice's layers or a filter list)
    becomes each hop's per-tensor `weight_scale`."""
    for key, params in [("parameters", global_params)] + [(f"slices[{k}]", {**sl["parameters"], **s["parameters"]})
                                                          for k, sl in enumerate(slices) for s in sl["sources"]]:
        bad = set(params) - {"scale"}
        if bad:
            raise MergekitConfigError(f"{where}.{key}: passthrough takes only `scale`, found {sorted(bad)}")
    path, models = [], []
    for k, sl in enumerate(slices):
        if len(sl["sources"]) != 1:
            raise MergekitConfigError(f"{where}.slices[{k}]: passthrough takes exactly one source per slice, found "
                                      f"{len(sl['sources'])}")
        src = sl["sources"][0]
        a, b = src["range"]
        if b > num_layers:
            raise MergekitConfigError(f"{where}.slices[{k}].layer_range [{a}, {b}]: the model has {num_layers} layers")
        spec = src["parameters"].get("scale", sl["parameters"].get("scale", global_params.get("scale")))
        for i in range(a, b):
            ws = {}
            if spec is not None:
                t = (i - a) / (b - a - 1) if b - a > 1 else 0.0
                for suffix in layer_suffixes:
                    v = param_value(spec, t, arch.layer_key(i) + suffix, f"{where}.slices[{k}] scale")
                    if v is not None and float(v) != 1.0:
                        ws[suffix] = float(v)
            path.append(Hop(src["model"], i, 1.0, ws))
        models.append(src["model"])
    # mergekit: embeddings from the first slice's model, final norm and head from the last slice's
    first = models[0]  # base_model plays no part in passthrough
    order = list(dict.fromkeys(models))
    job.recipe = Recipe(models=order, base=None, path=path, head_from=None if models[-1] == first else models[-1])
    job.paths = {m: m for m in order}
    return job


def _identity_slices(slices: list[dict], num_layers: int, where: str):
    """Slices that merge layer i of every model into output layer i (the usual slerp/ties slices config)."""
    models: dict[str, dict] = {}
    ranges, expect = [], 0
    for k, sl in enumerate(slices):
        rs = {s["range"] for s in sl["sources"]}
        if len(rs) != 1:
            raise MergekitConfigError(f"{where}.slices[{k}]: sources with different layer ranges {sorted(rs)} cannot "
                                      f"be merged layer by layer")
        a, b = rs.pop()
        if a != expect:
            raise MergekitConfigError(
                f"{where}.slices[{k}]: layer_range [{a}, {b}] does not continue from layer {expect}; only slices that "
                f"keep every layer in place are supported for merge methods other than passthrough")
        expect = b
        srcs = {s["model"]: s["parameters"] for s in sl["sources"]}
        if models and set(srcs) != set(models):
            raise MergekitConfigError(f"{where}.slices[{k}]: slices must use the same models ({sorted(models)})")
        for m in srcs:
            models.setdefault(m, {})
        ranges.append((a, b, sl["parameters"], srcs))
    if expect != num_layers:
        raise MergekitConfigError(f"{where}.slices: cover layers 0..{expect - 1}, the model has {num_layers} layers")
    return list(models.items()), ranges


# ---- Recipe -> mergekit -------------------------------------------------------------------------------------------


def recipe_to_mergekit(recipe: Recipe, arch: ArchMap, num_layers: int, paths: dict[str, str] | None = None) -> dict:
    """A mergekit config equivalent to `recipe`, or NotExpressible with the reason."""
    def ref(m):
        return (paths or {}).get(m, m)

    if recipe.path is not None:
        return _path_to_slices(recipe, ref)
    rules = ([recipe.default] if recipe.default else []) + [r for g in recipe.layers.values() for r in g.values()]
    if not rules:
        raise NotExpressible("the recipe has no rules")
    methods = {r.method for r in rules}
    if len(methods) > 1:
        raise NotExpressible(f"mergekit uses one merge_method per config; the recipe mixes {sorted(methods)}")
    method = rules[0].method
    if recipe.default is None:
        raise NotExpressible("the recipe has no default rule, so non-layer tensors (embeddings, final norm, head) are "
                             "copied from the base; mergekit merges every tensor with the one method")
    # one rule per (layer or None, selector); selectors: filter keys first, then groups, then the layer catch-all
    needles = {g: arch.groups.get(g, ()) for g in GROUPS}
    layer_head = arch.layer_prefix.split("{i}")[0]
    selectors: list[str] = []
    for groups in recipe.layers.values():
        for k in groups:
            if k.startswith(FILTER) and k not in selectors:
                selectors.append(k)
    selectors += ["attention", "mlp", "other"]

    def rule(i: int, sel: str) -> Rule | None:
        groups = recipe.layers.get(i)
        if groups is None:
            return recipe.default
        if sel.startswith(FILTER):
            return groups.get(sel) or groups.get(_group_for_filter(sel, arch)) or groups.get("*") or recipe.default
        return groups.get(sel) or groups.get("*") or recipe.default

    def values(get) -> Any:
        """A filtered list over the selectors (collapsed when possible), each a gradient over the layers."""
        entries = []
        for sel in selectors:
            vals = [get(rule(i, sel)) for i in range(num_layers)]
            if any(v is None for v in vals):
                raise NotExpressible(f"a parameter is set in some layers and not in others ({sel})")
            if any(isinstance(v, bool) for v in vals) and len(set(vals)) > 1:
                raise NotExpressible(f"a true/false parameter varies across layers ({sel})")
            value = vals[0] if len(set(vals)) == 1 else [_num(v) for v in vals]
            if sel.startswith(FILTER):
                filt = sel[len(FILTER):]
            elif sel == "other":
                filt = layer_head
            else:
                if not needles[sel]:
                    continue
                if len(needles[sel]) > 1:
                    raise NotExpressible(f"group {sel} matches several name patterns {needles[sel]}")
                filt = needles[sel][0]
            entries.append({"filter": filt, "value": value, "sel": sel})
        d = get(recipe.default) if recipe.default else None
        return _compact(entries, d, arch)

    m = get_method(method)
    models = []
    for j, name in enumerate(recipe.models):
        params = {}
        for key in sorted({k for r in rules for k in r.per_model}):
            params[key] = values(lambda r, key=key, j=j: r.per_model[key][j] if r and key in r.per_model else None)
        models.append({"model": ref(name), "parameters": params} if params else {"model": ref(name)})
    out: dict[str, Any] = {"merge_method": method}
    if recipe.base:
        if m.needs_base or method in ("nuslerp", "multislerp"):
            out["base_model"] = ref(recipe.base)
            if method == "slerp":
                models.insert(0, {"model": ref(recipe.base)})
    out["models"] = models
    gkeys = sorted({k for r in rules for k in r.params})
    if gkeys:
        out["parameters"] = {k: values(lambda r, k=k: r.params.get(k, m.params.get(k)) if r else None)
                             for k in gkeys}
    return out


def _compact(entries: list[dict], default: Any, arch: ArchMap) -> Any:
    """Drop filter entries whose tensors the next matching entry gives the same value; collapse to one value when
    the layer gradient's first value (what mergekit uses for non-layer tensors) equals the default."""
    by_sel = {e["sel"]: e for e in entries}
    other = by_sel["other"]["value"]
    kept = []
    for e in entries:
        sel = e["sel"]
        if sel.startswith(FILTER):
            g = _group_for_filter(sel, arch)
            catcher = by_sel[g]["value"] if g in by_sel and by_sel[g]["value"] != other else other
            if e["value"] == catcher:
                continue
        elif sel != "other" and e["value"] == other:
            continue
        kept.append({"filter": e["filter"], "value": e["value"]})
    at_zero = other[0] if isinstance(other, list) else other
    if len(kept) > 1 and not isinstance(other, list) and other == _num(default):
        kept = [e for e in kept if e["value"] is not other or e["filter"] != kept[-1]["filter"]]
    if len(kept) == 1 and _num(default) == at_zero:
        return other
    return kept + [{"value": _num(default)}]


def _group_for_filter(sel: str, arch: ArchMap) -> str:
    return arch.group_of(sel[len(FILTER):])


def _path_to_slices(recipe: Recipe, ref) -> dict:
    if any(h.weight_scale for h in recipe.path):
        raise NotExpressible("the path has per-tensor slice scales; writing them back as mergekit `scale` is not "
                             "implemented")
    if any(float(h.scale) != 1.0 for h in recipe.path):
        raise NotExpressible("the path scales hidden states between hops (scale != 1); mergekit has no equivalent")
    if recipe.layers:
        raise NotExpressible("the recipe combines a layer path with per-layer merge rules")
    if recipe.default is not None:
        w = recipe.default.per_model.get("weight", [])
        one_hot = recipe.default.method == "linear" and sorted(w) == [0.0] * (len(w) - 1) + [1.0]
        if not (one_hot and recipe.models[w.index(1.0)] == recipe.models[0]):
            raise NotExpressible("non-layer tensors are merged; mergekit passthrough takes them from one model")
    slices, run = [], None
    for h in recipe.path:
        if run and run["model"] == h.model and run["layer_range"][1] == h.layer:
            run["layer_range"][1] += 1
        else:
            run = {"model": h.model, "layer_range": [h.layer, h.layer + 1]}
            slices.append(run)
    if slices[0]["model"] != recipe.models[0]:
        raise NotExpressible(f"embeddings come from {recipe.models[0]}, but the first slice is "
                             f"{slices[0]['model']} (mergekit takes them from the first slice's model)")
    head = recipe.head_from or recipe.models[0]
    if slices[-1]["model"] != head:
        raise NotExpressible(f"final norm and head come from {head}, but the last slice is {slices[-1]['model']} "
                             f"(mergekit takes them from the last slice's model)")
    return {"merge_method": "passthrough",
            "slices": [{"sources": [{"model": ref(s["model"]), "layer_range": s["layer_range"]}]} for s in slices]}


def _num(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v


def save_mergekit(recipe: Recipe, pool, path) -> str | None:
    """Write `recipe` as a mergekit YAML next to a search's best recipe; returns the reason when it cannot be."""
    import yaml

    from evomerge.store import atomic_write_text

    try:
        cfg = recipe_to_mergekit(recipe, pool.arch, pool.num_layers, pool.paths)
    except NotExpressible as e:
        log.info("best recipe has no mergekit equivalent: %s", e)
        return str(e)
    header = "# mergekit config equivalent to best_recipe.yaml (written by evomerge; run with evomerge-merge)\n"
    atomic_write_text(path, header + yaml.safe_dump(cfg, sort_keys=False))
    return None
