"""The local report: written from a run directory alone, with the right points, tables and files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from evomerge import report
from evomerge.report import analysis
from evomerge.search.pareto import hypervolume, pareto_mask
from evomerge.store import append_jsonl, atomic_write_json

MODELS = ["rot90", "mirror", "invert"]
N_LAYERS = 4


def ps_recipe(weights: np.ndarray, density: float = 1.0) -> dict:
    """A PS recipe as the space writes it: one rule per layer (weights[layer]) plus a default rule."""
    def rule(w):
        return {"method": "ties", "weight": [float(v) for v in w], "density": [density] * len(MODELS),
                "params": {"lambda": 1.0}}
    return {"models": MODELS, "base": "base", "seed": 0, "default": rule(weights[0]),
            "layers": {i: {"*": rule(weights[i])} for i in range(N_LAYERS)}, "meta": {"space": "ps"}}


def make_run(path, n_gen: int = 4, pop: int = 6, objectives=("acc/rot90", "acc/mirror"), low_fidelity: int = 0,
             seed: int = 0) -> list[dict]:
    """A run directory as a search writes it: seeds first, then candidates; a failure; final.json; best recipe."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    records = []

    def add(gen, W, top=True, error=None):
        # accuracy on a task grows with the mean weight given to its expert
        acc = {f"acc/{m}": float(np.clip(0.1 + 0.8 * W[:, k].mean() + rng.normal(0, 0.03), 0, 1))
               for k, m in enumerate(MODELS)}
        metrics = None if error else {**acc, "acc/mean": float(np.mean(list(acc.values())))}
        rec = {"id": len(records), "generation": gen, "genome": W.reshape(-1).tolist(), "recipe": ps_recipe(W),
               "metrics": metrics, "objectives": [-metrics[o] for o in objectives] if metrics else
               [1e6] * len(objectives), "error": error, "wall_time": 0.01, "n_samples": 30 if top else 10,
               "split": "fitness", "fidelity": 1.0 if top else 1 / 3, "rung": 1 if top else 0,
               "top_fidelity": top}
        records.append(rec)
        append_jsonl(path / "evaluations.jsonl", rec)

    for k in range(len(MODELS)):
        add(0, np.tile(np.eye(len(MODELS))[k], (N_LAYERS, 1)))
    add(0, np.full((N_LAYERS, len(MODELS)), 1 / len(MODELS)))
    for g in range(n_gen):
        for _ in range(pop if g else pop - 4):
            add(g, rng.uniform(0, 1, (N_LAYERS, len(MODELS))))
        for _ in range(low_fidelity):
            add(g, np.tile([1.2, 1.2, 1.2], (N_LAYERS, 1)), top=False)  # a perfect score seen on 1/3 of the data
    add(n_gen - 1, rng.uniform(0, 1, (N_LAYERS, len(MODELS))), error="decode: boom")
    ok = analysis.scored(records)
    best = min(ok, key=lambda r: float(np.mean(r["objectives"])))
    rows = [{"model": "base (base)", "metrics": {f"acc/{m}": 0.1 for m in MODELS}}]
    rows += [{"model": m, "metrics": {f"acc/{n}": 0.9 if n == m else 0.1 for n in MODELS}} for m in MODELS]
    rows += [{"model": "plain average", "metrics": {f"acc/{m}": 0.4 for m in MODELS}},
             {"model": "evolved (best)", "metrics": {f"acc/{m}": 0.6 for m in MODELS}}]
    for r in rows:
        r["metrics"]["acc/mean"] = float(np.mean(list(r["metrics"].values())))
    atomic_write_json(path / "final.json", {"best": best, "final_split": "test", "final": rows,
                                            "evaluations": len(records), "wall_time": 12.0})
    (path / "best_recipe.yaml").write_text(yaml.safe_dump(best["recipe"], sort_keys=False))
    return records


def config(objectives=("acc/rot90", "acc/mirror")) -> dict:
    return {"optimizer": {"kind": "nsga2"}, "space": {"kind": "ps"},
            "search": {"budget": 30, "objectives": [{"metric": o, "direction": "max"} for o in objectives]}}


def is_png(p) -> bool:
    from PIL import Image

    with Image.open(p) as im:
        return im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


def test_report_files_from_a_run_directory(tmp_path):
    records = make_run(tmp_path)
    files = report.write(tmp_path, config())
    for name in ("pareto", "heldout", "convergence", "ps_heatmap"):
        assert files[name] == tmp_path / "report" / f"{name}.png" and is_png(files[name]), name
    assert "dfs_path" not in files  # no layer path in these recipes
    md = files["summary"].read_text()
    front = analysis.front(analysis.scored(records))
    assert f"({len(front)} members)" in md
    for row in ("| base (base) |", "| plain average |", "| evolved (best) |", "| invert |"):
        assert row in md
    for f in ("pareto.png", "heldout.png", "convergence.png", "ps_heatmap.png"):
        assert f"]({f})" in md


def test_front_references_and_hypervolume_match_the_records(tmp_path):
    records = make_run(tmp_path, low_fidelity=1)
    run = report.load_run(tmp_path, config())
    scored = [r for r in records if r["metrics"] and r["top_fidelity"]]
    assert [r["id"] for r in run.scored] == [r["id"] for r in scored]  # low fidelity and failures left out
    F = np.array([r["objectives"] for r in scored])
    assert {r["id"] for r in run.front} == {r["id"] for r, m in zip(scored, pareto_mask(F), strict=True) if m}
    refs = analysis.references(records)
    assert set(refs) == {"source:rot90", "source:mirror", "source:invert", "average"}
    assert refs["source:mirror"]["id"] == 1 and refs["average"]["id"] == 3
    low = {**records[0], "id": -1, "top_fidelity": False, "metrics": {**records[0]["metrics"], "acc/rot90": 0.99}}
    assert analysis.references([low, *records])["source:rot90"]["id"] == 0  # not the low-fidelity score
    x, hv = analysis.hv_curve(records, run.ref)
    assert np.all(np.diff(hv) >= -1e-12) and x[-1] == len(records)
    assert hv[-1] == pytest.approx(hypervolume(F, run.ref))
    # the best-so-far curve never takes the (inflated) low-fidelity score
    _, best = analysis.best_curve(records, 0, run.objectives[0])
    assert np.nanmax(best) == pytest.approx(max(r["metrics"]["acc/rot90"] for r in scored))


def test_loop_archive_sets_objectives_and_reference_point(tmp_path):
    make_run(tmp_path)
    atomic_write_json(tmp_path / "archive.json", {
        "objectives": [{"metric": "acc/rot90", "direction": "max"}, {"metric": "acc/mirror", "direction": "max"}],
        "reference_point": [0.05, 0.02], "hypervolume": [{"generation": 0, "hypervolume": 0.5, "evaluations": 6}]})
    run = report.load_run(tmp_path)  # no config at all: the archive says it
    assert [o.metric for o in run.objectives] == ["acc/rot90", "acc/mirror"]
    assert list(run.ref) == [-0.05, -0.02]  # metric units -> minimisation units


def test_ps_heatmap_table_is_the_recipe(tmp_path):
    W = np.arange(N_LAYERS * 3).reshape(N_LAYERS, 3) / 20
    rows, cols, mats = report.ps_table(ps_recipe(W, density=0.7))
    assert rows == MODELS and cols == ["other", "0", "1", "2", "3"]
    assert set(mats) == {"weight", "density"}
    np.testing.assert_allclose(mats["weight"][:, 1:], W.T)
    np.testing.assert_allclose(mats["density"], 0.7)
    grouped = ps_recipe(W)
    grouped["layers"][2] = {"attention": grouped["layers"][2]["*"], "mlp": {**grouped["layers"][2]["*"],
                                                                           "weight": [1.0, 0.0, 0.0]}}
    rows, _, mats = report.ps_table(grouped)
    assert rows[:3] == [f"* · {m}" for m in MODELS] and "mlp · rot90" in rows
    assert mats["weight"][rows.index("mlp · rot90"), 3] == 1.0
    mixed = ps_recipe(W)
    mixed["layers"][1]["*"]["method"] = "dare_ties"
    assert report.plots._methods_per_column(mixed, ["other", "0", "1", "2", "3"]) == ["ties", "ties", "dare_ties", "ties",
                                                                                "ties"]


def test_dfs_path_diagram(tmp_path):
    make_run(tmp_path)
    path = [["rot90", 0, 1.0], ["mirror", 1, 0.8], ["mirror", 2, 1.2], ["rot90", 2, 1.0], ["rot90", 3, 1.0]]
    recipe = {"models": MODELS, "base": None, "seed": 0, "default": {"method": "linear", "weight": [1.0, 0, 0]},
              "path": path}
    (tmp_path / "best_recipe.yaml").write_text(yaml.safe_dump(recipe))
    files = report.write(tmp_path, config())
    assert is_png(files["dfs_path"])
    assert "ps_heatmap" not in files  # a pure path recipe has no per-layer genes
    assert analysis.describe_recipe(recipe).endswith("path of 5 hops (rot90: 3, mirror: 2)")
    assert analysis.reference_name({"recipe": recipe}) is None  # its one-hot anchor rule is not a source
    own = {**recipe, "path": [["mirror", i, 1.0] for i in range(N_LAYERS)]}
    assert analysis.reference_name({"recipe": own}) == "source:mirror"  # a DFS seed: one source's own layers


def test_single_objective_run(tmp_path):
    make_run(tmp_path, objectives=("acc/mean",))
    files = report.write(tmp_path, config(("acc/mean",)))
    assert "pareto" not in files and is_png(files["heldout"]) and is_png(files["convergence"])
    assert "Pareto front" not in files["summary"].read_text()


def test_cli_on_a_missing_directory_says_so(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "nope: not a directory; expected an evomerge run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "no evaluations.jsonl" in capsys.readouterr().err


def test_cli_writes_the_report(tmp_path, capsys):
    make_run(tmp_path)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config()))
    assert report.main([str(tmp_path)]) == 0
    assert "summary" in capsys.readouterr().out
    assert json.loads((tmp_path / "final.json").read_text())["final_split"] == "test"
    assert is_png(tmp_path / "report" / "pareto.png")


def test_the_evomerge_report_console_script_writes_the_report(tmp_path):
    """The installed entry point (pyproject [project.scripts]), next to the interpreter running the tests."""
    import subprocess
    import sys
    from pathlib import Path

    make_run(tmp_path)
    script = Path(sys.executable).parent / "evomerge-report"
    proc = subprocess.run([str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert is_png(tmp_path / "report" / "pareto.png") and (tmp_path / "report" / "summary.md").exists()
    missing = subprocess.run([str(script), str(tmp_path / "nope")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "not a directory" in missing.stderr
