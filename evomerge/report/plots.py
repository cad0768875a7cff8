"""The report's figures: each plot draws on axes it is given (the notebook reuses them); `write_*` make the files."""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import numpy as np

from evomerge.report import analysis
from evomerge.report.runs import FRONT_COLOR, MODEL_COLORS, Run, heldout_rows


def plot_pareto(ax, run: Run, i: int = 0, j: int = 1, show_references: bool = True):
    """Fitness-split candidates in the plane of objectives i and j. Returns the generation scatter (for a colorbar).

    Dominated points are faded and coloured by generation; Pareto-optimal ones (over all objectives) are red; when
    there are exactly two objectives the front is joined as a staircase.
    """
    a, b = run.objectives[i], run.objectives[j]
    pts = run.scored
    on_front = {r["id"] for r in run.front}
    V = analysis.values(pts, run.objectives) if pts else np.zeros((0, len(run.objectives)))
    gens = np.array([r.get("generation", 0) for r in pts])
    mask = np.array([r["id"] in on_front for r in pts], bool)
    sc = ax.scatter(V[~mask, i], V[~mask, j], c=gens[~mask], cmap="viridis", s=18, alpha=0.35, linewidths=0,
                    label="dominated candidate", vmin=gens.min() if len(gens) else 0,
                    vmax=max(gens.max(), 1) if len(gens) else 1)
    F = V[mask]
    if len(run.objectives) == 2 and len(F):
        order = np.argsort(F[:, i] * (-1 if a.direction == "max" else 1))
        ax.step(F[order, i], F[order, j], where="post" if (a.direction == "max") == (b.direction == "max") else "pre",
                color=FRONT_COLOR, lw=1.2, alpha=0.7)
    ax.scatter(F[:, i], F[:, j], s=46, color=FRONT_COLOR, edgecolors="black", linewidths=0.6, zorder=3,
               label="Pareto front")
    best_id = (run.final.get("best") or {}).get("id")
    best = next((r for r in pts if r["id"] == best_id), None)
    if best is not None:
        ax.scatter([analysis.value(best, i, a)], [analysis.value(best, j, b)], marker="o", s=190, facecolors="none",
                   edgecolors="black", linewidths=1.4, zorder=4, label="selected best")
    if show_references:
        for name, rec in analysis.references(run.records).items():
            _reference_marker(ax, run, name, analysis.value(rec, i, a), analysis.value(rec, j, b))
    ax.set_xlabel(analysis.label(a))
    ax.set_ylabel(analysis.label(b))
    ax.grid(alpha=0.25)
    return sc


def _reference_marker(ax, run: Run, name: str, x: float, y: float, suffix: str = " (seed)") -> None:
    if name.startswith("source:"):
        model = name.split(":", 1)[1]
        ax.scatter([x], [y], marker="s", s=80, color=run.color(model), edgecolors="black", linewidths=0.8, zorder=5,
                   label=f"source {model}{suffix}")
    elif name == "average":
        ax.scatter([x], [y], marker="D", s=70, color="orange", edgecolors="black", linewidths=0.8, zorder=5,
                   label=f"plain average{suffix}")
    elif name == "base":
        ax.scatter([x], [y], marker="X", s=90, color="0.4", edgecolors="black", linewidths=0.6, zorder=5,
                   label=f"base{suffix}")
    elif name == "evolved":
        ax.scatter([x], [y], marker="*", s=260, color=FRONT_COLOR, edgecolors="black", linewidths=0.8, zorder=6,
                   label=f"evolved (best){suffix}")
    else:
        ax.scatter([x], [y], marker="P", s=80, color="0.2", zorder=5, label=f"{name}{suffix}")


def plot_heldout(ax, run: Run, i: int = 0, j: int = 1) -> None:
    """The held-out table in the plane of objectives i and j (every point scored once on the held-out split)."""
    split = run.final.get("final_split", "test")
    a, b = run.objectives[i], run.objectives[j]
    members = [p.get(split) or {} for p in run.final.get("pareto") or [] if not p.get("error")]
    members = [m for m in members if a.metric in m and b.metric in m]
    if members:  # every fitness-split Pareto member, scored once on the held-out split
        ax.scatter([m[a.metric] for m in members], [m[b.metric] for m in members], s=30, color=FRONT_COLOR,
                   alpha=0.45, linewidths=0, label=f"fitness Pareto members ({len(members)})")
    for name, metrics in heldout_rows(run):
        if a.metric in metrics and b.metric in metrics:
            _reference_marker(ax, run, name, metrics[a.metric], metrics[b.metric], suffix="")
    ax.set_xlabel(analysis.label(a, split))
    ax.set_ylabel(analysis.label(b, split))
    ax.grid(alpha=0.25)


def plot_best_curve(ax, run: Run, k: int, ref_lines: bool = True, label: str | None = None, color=None) -> None:
    """Every evaluation (faint) and the best value so far of objective k, with the seeded references as lines."""
    o = run.objectives[k]
    pts = run.scored
    idx = {r["id"]: n for n, r in enumerate(run.records, 1)}
    if label is None:
        ax.scatter([idx[r["id"]] for r in pts], [analysis.value(r, k, o) for r in pts], s=8, alpha=0.3,
                   color="0.4", linewidths=0, label="evaluation")
    x, y = analysis.best_curve(run.records, k, o, counted={r["id"] for r in pts})
    ax.step(x, y, where="post", lw=1.8, color=color or FRONT_COLOR, label=label or "best so far")
    if ref_lines:
        for name, rec in analysis.references(run.records).items():
            col = run.color(name.split(":", 1)[1]) if name.startswith("source:") else "orange"
            ax.axhline(analysis.value(rec, k, o), ls="--", lw=1, color=col, alpha=0.8,
                       label=f"{analysis.pretty_reference(name)} (seed)")
    ax.set_xlabel("evaluations")
    ax.set_ylabel(analysis.label(o))
    ax.grid(alpha=0.25)


def plot_hv_curve(ax, run: Run, ref=None, label: str | None = None, color=None) -> None:
    """Hypervolume over evaluations: the loop's own history, or recomputed against `ref` (to compare runs)."""
    hist = run.archive.get("hypervolume") or []
    if ref is None and hist:
        ref = run.ref
        x, y = np.array([h["evaluations"] for h in hist]), np.array([h["hypervolume"] for h in hist])
    else:
        ref = ref if ref is not None else run.ref
        x, y = analysis.hv_curve(run.records, ref)
    ax.plot(x, y, marker="o", ms=3, lw=1.6, color=color or "#1f77b4", label=label or "hypervolume")
    ax.set_xlabel("evaluations")
    ref_txt = ", ".join(f"{o.metric} {o.to_min(float(v)):.3g}" for o, v in zip(run.objectives, ref, strict=True)) \
        if ref is not None else "n/a"
    ax.set_ylabel("hypervolume of all evaluated (higher is better)")
    ax.set_title(f"reference point: {ref_txt}", fontsize=8)
    ax.grid(alpha=0.25)


def ps_table(recipe: dict) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """Per-model parameters of a recipe as matrices: (row labels, column labels, {param: rows x columns}).

    Columns are layers (plus 'other' for tensors outside layers: embeddings, norms, head); rows are models, split
    by tensor group when groups have different rules.
    """
    models = list(recipe.get("models") or [])
    layers = {int(k): v for k, v in (recipe.get("layers") or {}).items()}
    default = recipe.get("default")
    groups = sorted({g for gs in layers.values() for g in gs}, key=lambda g: (g != "*", g))
    cols = (["other"] if default else []) + [str(i) for i in sorted(layers)]
    rows = [m if g == "*" and len(groups) == 1 else f"{g} · {m}" for g in groups for m in models] or list(models)
    params = list(dict.fromkeys(k for rule in [default, *[r for gs in layers.values() for r in gs.values()]]
                                if rule for k, v in rule.items() if k not in ("method", "params")
                                and isinstance(v, list)))
    out = {}
    for p in params:
        M = np.full((len(rows), len(cols)), np.nan)
        for c, col in enumerate(cols):
            for gi, g in enumerate(groups or ["*"]):
                rule = default if col == "other" else (layers[int(col)].get(g) or layers[int(col)].get("*"))
                vals = (rule or {}).get(p)
                if vals is not None:
                    M[gi * len(models):(gi + 1) * len(models), c] = vals
        out[p] = M
    return rows, cols, out


def _methods_per_column(recipe: dict, cols: list[str]) -> list[str]:
    layers = {str(k): v for k, v in (recipe.get("layers") or {}).items()}
    out = []
    for c in cols:
        rules = [recipe.get("default") or {}] if c == "other" else list(layers[c].values())
        out.append("/".join(sorted({r.get("method", "?") for r in rules})))
    return out


def plot_ps_heatmap(fig, recipe: dict, title: str = "best recipe") -> bool:
    rows, cols, mats = ps_table(recipe)
    if not mats or not cols:
        return False
    axes = fig.subplots(len(mats), 1, squeeze=False)[:, 0]
    methods = _methods_per_column(recipe, cols)
    method = methods[0] if len(set(methods)) == 1 else "method per layer under its index"
    ticks = cols if len(set(methods)) == 1 else [f"{c}\n{m}" for c, m in zip(cols, methods, strict=True)]
    for ax, (p, M) in zip(axes, mats.items(), strict=True):
        finite = M[np.isfinite(M)]
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        lo, hi = (min(lo, 0.0), max(hi, 1.0)) if lo >= 0 else (lo, hi)
        im = ax.imshow(M, aspect="auto", cmap="viridis", vmin=lo, vmax=hi)
        ax.set_xticks(range(len(cols)), ticks, fontsize=8 if len(cols) <= 32 else 6,
                      rotation=90 if ticks is not cols and len(cols) > 10 else 0)
        ax.set_yticks(range(len(rows)), rows, fontsize=9)
        ax.set_xlabel("layer ('other' = embeddings, norms, head)")
        ax.set_title(f"{p} per model and layer ({method}, {title})", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label=p)
        if M.size <= 160:
            for (r, c), v in np.ndenumerate(M):
                if np.isfinite(v):
                    light = (v - lo) / (hi - lo + 1e-12) > 0.6
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if light else "white")
    return True


def plot_path(fig, recipe: dict, title: str = "best recipe") -> bool:
    """The data-flow path: layer index per hop coloured by source model, and the scale applied at each hop."""
    path = recipe.get("path")
    if not path:
        return False
    models = list(dict.fromkeys([*(recipe.get("models") or []), *[h[0] for h in path]]))
    color = {m: MODEL_COLORS[i % len(MODEL_COLORS)] for i, m in enumerate(models)}
    ax, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    hops = np.arange(len(path))
    layers = [int(h[1]) for h in path]
    scales = [float(h[2]) if len(h) > 2 else 1.0 for h in path]
    ax.plot(hops, layers, color="0.6", lw=1, zorder=1)
    for m in models:
        idx = [k for k, h in enumerate(path) if h[0] == m]
        if idx:
            ax.scatter(idx, [layers[k] for k in idx], color=color[m], s=55, edgecolors="black", linewidths=0.5,
                       zorder=2, label=f"{m} ({len(idx)} hops)")
            ax2.bar(idx, [scales[k] for k in idx], color=color[m], width=0.8)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("layer index in its source model")
    ax.set_title(f"layer path of the {title}: {len(path)} hops", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=True)
    ax.grid(alpha=0.25)
    ax2.axhline(1.0, color="0.3", lw=0.8, ls="--")
    ax2.set_ylabel("input scale")
    ax2.set_xlabel("hop (position in the merged model)")
    ax2.grid(alpha=0.25)
    return True


# ---- the figure files -------------------------------------------------------------------------------------------
def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def legend_below(fig, axes, ncol: int = 3) -> None:
    """One legend for all panels, under them (never over the data)."""
    handles, labels = {}, []
    for ax in np.atleast_1d(axes).ravel():
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center",
               ncol=max(1, min(ncol, len(labels), int(fig.get_figwidth() / 2.1))), fontsize=8, frameon=False)


def _counted(run: Run) -> str:
    n, m = len(run.scored), len(run.records)
    return f"{n} evaluations" if n == m else f"{n} full-fidelity successful evaluations of {m}"


def _pairs(run: Run) -> list[tuple[int, int]]:
    return list(combinations(range(len(run.objectives)), 2))


def write_pareto(run: Run, path: Path) -> Path | None:
    pairs = _pairs(run)
    if not pairs:
        return None
    fig = _figure(5.2 * len(pairs) + 0.8, 5.4)
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    sc = None
    for ax, (i, j) in zip(axes, pairs, strict=True):
        sc = plot_pareto(ax, run, i, j)
    from matplotlib.ticker import MaxNLocator

    cb = fig.colorbar(sc, ax=list(axes), label="generation (dominated candidates)", fraction=0.03, pad=0.01)
    cb.locator = MaxNLocator(integer=True)
    cb.update_ticks()
    best_id = (run.final.get("best") or {}).get("id")
    fig.suptitle(f"Pareto front on the fitness split: {len(run.front)} members"
                 + (f", selected best = evaluation {best_id}" if best_id is not None else "")
                 + f"\n{run.name}: {run.optimizer}, {_counted(run)}", fontsize=10)
    legend_below(fig, axes, ncol=3 * len(pairs))
    fig.savefig(path)
    return path


def write_heldout(run: Run, path: Path) -> Path | None:
    rows = heldout_rows(run)
    if not rows:
        return None
    split = run.final.get("final_split", "test")
    pairs = _pairs(run)
    if pairs:
        fig = _figure(5.0 * len(pairs) + 0.4, 5.2)
        axes = fig.subplots(1, len(pairs), squeeze=False)[0]
        for ax, (i, j) in zip(axes, pairs, strict=True):
            plot_heldout(ax, run, i, j)
    else:  # one objective: a bar per model
        o = run.objectives[0]
        fig = _figure(7, 0.45 * len(rows) + 1.6)
        ax = fig.subplots()
        names = [analysis.pretty_reference(n) if n not in ("base", "evolved") else n for n, _ in rows]
        vals = [m.get(o.metric, math.nan) for _, m in rows]
        colors = [FRONT_COLOR if n == "evolved" else run.color(n.split(":", 1)[1]) if n.startswith("source:")
                  else "orange" if n == "average" else "0.5" for n, _ in rows]
        ax.barh(range(len(rows)), vals, color=colors)
        ax.set_yticks(range(len(rows)), names)
        ax.invert_yaxis()
        ax.set_xlabel(analysis.label(o, split))
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.4f}", va="center", fontsize=8)
        axes = [ax]
    fig.suptitle(f"Held-out `{split}` split, each model scored once\n{run.name}", fontsize=10)
    if pairs:
        legend_below(fig, axes, ncol=3 * len(pairs))
    fig.savefig(path)
    return path


def write_convergence(run: Run, path: Path) -> Path:
    n = len(run.objectives) + (1 if len(run.objectives) > 1 else 0)
    cols = min(n, 3)
    nrows = math.ceil(n / cols)
    fig = _figure(4.8 * cols + 0.4, 4.0 * nrows + 0.8)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for k in range(len(run.objectives)):
        plot_best_curve(axes[k], run, k)
    if len(run.objectives) > 1:
        plot_hv_curve(axes[len(run.objectives)], run)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(f"Convergence on the fitness split\n{run.name}: {run.optimizer}, {len(run.records)} evaluations",
                 fontsize=10)
    legend_below(fig, axes[:n], ncol=4)
    fig.savefig(path)
    return path


def write_ps_heatmap(run: Run, path: Path) -> Path | None:
    if not run.best_recipe:
        return None
    if not run.best_recipe.get("layers"):
        return None  # no per-layer genes (e.g. a pure layer-path recipe): nothing to map
    rows, cols, mats = ps_table(run.best_recipe)
    if not mats:
        return None
    fig = _figure(max(6.0, 0.42 * len(cols) + 3.0), (0.32 * len(rows) + 1.5) * len(mats) + 0.3)
    plot_ps_heatmap(fig, run.best_recipe)
    fig.savefig(path)
    return path


def write_path(run: Run, path: Path) -> Path | None:
    if not run.best_recipe or not run.best_recipe.get("path"):
        return None
    n = len(run.best_recipe["path"])
    fig = _figure(max(6.0, 0.25 * n + 2.0), 5.2)
    plot_path(fig, run.best_recipe)
    fig.savefig(path)
    return path


