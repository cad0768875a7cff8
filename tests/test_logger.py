"""Loggers: the per-generation progress line, W&B modes and failure policy, and a real offline W&B run."""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from evomerge.logger import build
from evomerge.logger.local import LocalLogger
from evomerge.logger.wandb import WandbLogger, resolve_mode
from evomerge.report import analysis
from evomerge.store import read_jsonl


def fake_records(n_gen: int = 2, pop: int = 4, seed: int = 0) -> list[dict]:
    """Records as the search loop writes them: acc/a maximised, loss/b minimised."""
    rng = np.random.default_rng(seed)
    out = []
    for g in range(n_gen):
        for _ in range(pop):
            a, b = float(rng.uniform(0.2, 0.9)), float(rng.uniform(0.1, 2.0))
            out.append({"id": len(out), "generation": g, "genome": rng.uniform(0, 1, 6).tolist(),
                        "recipe": {"models": ["x", "y"], "base": None, "default": {"method": "linear",
                                                                                   "weight": [0.3, 0.7]}},
                        "metrics": {"acc/a": a, "loss/b": b, "acc/c": 0.5}, "objectives": [-a, b], "error": None,
                        "wall_time": 0.1, "n_samples": 10, "split": "fitness"})
    out.append({**out[-1], "id": len(out), "metrics": None, "objectives": [1e6, 1e6], "error": "boom"})
    return out


CONFIG = {"search": {"budget": 10, "objectives": [{"metric": "acc/a", "direction": "max"},
                                                   {"metric": "loss/b", "direction": "min"}]}}


def test_objectives_recovered_from_records_alone():
    objs = analysis.objectives_of(fake_records())
    assert [(o.metric, o.direction) for o in objs] == [("acc/a", "max"), ("loss/b", "min")]


def test_progress_line_has_budget_bests_hypervolume_and_eta(tmp_path, caplog):
    recs = fake_records()
    logger = LocalLogger({"progress_bar": False}, tmp_path, CONFIG)
    for r in recs:
        logger.evaluation(r)
    with caplog.at_level(logging.INFO, logger="evomerge"):
        stats = logger.generation(1, SimpleNamespace(records=recs), len(recs), 10, 2.0)
    line = caplog.records[-1].getMessage()
    ok = [r for r in recs if r["metrics"]]
    best_a = max(r["metrics"]["acc/a"] for r in ok)
    best_b = min(r["metrics"]["loss/b"] for r in ok)
    assert f"evals {len(recs)}/10" in line
    assert f"acc/a={best_a:.4f} (max)" in line and f"loss/b={best_b:.4f} (min)" in line
    assert "HV " in line and "s/eval" in line and "ETA" in line and "1 failed" in line
    ref = analysis.hv_reference(recs, CONFIG)
    from evomerge.search.pareto import hypervolume

    F = np.array([r["objectives"] for r in ok])
    assert stats["hypervolume"] == pytest.approx(hypervolume(F, ref)) and stats["hypervolume"] > 0
    gen1 = [r["metrics"]["acc/a"] for r in ok if r["generation"] == 1]
    assert stats["acc/a/gen_mean"] == pytest.approx(np.mean(gen1))
    assert stats["acc/a/gen_min"] == pytest.approx(min(gen1))


def test_progress_bar_counts_evaluations(tmp_path):
    recs = fake_records()
    logger = LocalLogger({"progress_bar": True}, tmp_path, CONFIG)
    for r in recs:
        logger.evaluation(r)
    bar = logger.bar
    assert bar.total == 10 and bar.n == len(recs)
    logger.generation(1, SimpleNamespace(records=recs), len(recs), 10, 1.0)
    assert "HV=" in bar.postfix and "acc/a=" in bar.postfix
    logger.finish({})
    assert logger.bar is None


def test_loop_hypervolume_and_reference_point_win(tmp_path):
    """When the loop passes its own Pareto archive numbers, the logger shows those, not its own estimate."""
    recs = fake_records()
    logger = LocalLogger({"progress_bar": False}, tmp_path, CONFIG)
    result = SimpleNamespace(records=recs, ref_point=[0.0, 5.0],
                             hypervolume=[{"generation": 1, "hypervolume": 0.123, "front_size": 3}])
    stats = logger.generation(1, result, len(recs), 10, 1.0)
    assert stats["hypervolume"] == 0.123 and stats["front_size"] == 3
    assert list(logger.ref) == [0.0, 5.0]


def test_build_rejects_unknown_logger(tmp_path):
    with pytest.raises(ValueError, match=r"logger.kind: unknown logger 'tensorboardx'.*\['local', 'wandb'\]"):
        build({"kind": "tensorboardx"}, tmp_path)


def test_wandb_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode({}) == "offline"
    assert resolve_mode({"project": "p"}) == "online"
    assert resolve_mode({"entity": "team"}) == "online"
    assert resolve_mode({"mode": "disabled", "project": "p"}) == "disabled"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode({"project": "p"}) == "disabled"
    assert resolve_mode({"mode": "offline"}) == "offline"


def test_online_without_credentials_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    """No key: wandb.init would prompt in a terminal (or fail); log offline instead and say so, once."""
    import wandb

    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    seen = {}
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.update(kw) or SimpleNamespace(dir=str(tmp_path)))
    with caplog.at_level(logging.INFO, logger="evomerge"):
        logger = WandbLogger({"kind": "wandb", "project": "team-project", "progress_bar": False}, tmp_path, CONFIG)
    assert logger.mode == "offline" and seen["mode"] == "offline" and seen["project"] == "team-project"
    assert any("needs an API key" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password " + "x" * 40 + "\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert WandbLogger({"kind": "wandb", "project": "p", "progress_bar": False}, tmp_path, CONFIG).mode == "online"


def test_wandb_that_cannot_start_warns_once_and_logging_continues(tmp_path, monkeypatch, caplog):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("no network, no key")

    monkeypatch.setattr(wandb, "init", broken)
    recs = fake_records()
    with caplog.at_level(logging.INFO, logger="evomerge"):
        logger = WandbLogger({"kind": "wandb", "progress_bar": False}, tmp_path, CONFIG)
        for r in recs:
            logger.evaluation(r)
        logger.generation(0, SimpleNamespace(records=recs), len(recs), 10, 1.0)
        logger.generation(1, SimpleNamespace(records=recs), len(recs), 10, 1.0)
        logger.finish({"final": []})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no network, no key" in warnings[0].getMessage()
    assert sum("evals " in r.getMessage() for r in caplog.records) == 2  # the local lines still come


def test_wandb_disabled_mode_writes_nothing(tmp_path):
    recs = fake_records()
    logger = build({"kind": "wandb", "progress_bar": False}, tmp_path, CONFIG)  # WANDB_MODE=disabled (conftest)
    for r in recs:
        logger.evaluation(r)
    logger.generation(1, SimpleNamespace(records=recs), len(recs), 10, 1.0)
    logger.finish({"final": []})
    assert not (tmp_path / "wandb").exists()


# ---- end to end: a digits NSGA-II run logged offline --------------------------------------------------------------
def compose(zoo_root: Path, *overrides: str) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=["experiment=digits", f"paths.zoo={zoo_root}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


TWO_TASKS = "search.objectives=[{metric: acc/rot90, direction: max},{metric: acc/mirror, direction: max}]"


@pytest.mark.slow
def test_offline_wandb_run_has_candidate_table_pareto_scatter_and_report(tmp_path, digits_zoo, monkeypatch):
    from evomerge.run import run

    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):  # artifact staging etc. stay in tmp
        monkeypatch.setenv(var, str(tmp_path / var.lower()))

    cfg = compose(digits_zoo.parent, "optimizer=nsga2", "optimizer.popsize=6", "search.budget=12", TWO_TASKS,
                  "logger=wandb", "logger.mode=offline", "logger.progress_bar=false")
    run(cfg, tmp_path / "run")
    records = read_jsonl(tmp_path / "run" / "evaluations.jsonl")
    assert len(records) == 12

    runs = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*"))
    assert len(runs) == 1, runs
    wb = Path(runs[0])
    tables = list((wb / "files" / "media" / "table").glob("candidates_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert len(table["data"]) == len(records)  # one row per evaluation
    cols = table["columns"]
    for c in ("generation", "genome", "recipe", "fidelity", "wall_time", "acc/rot90", "acc/mirror", "acc/invert"):
        assert c in cols, c
    rows = {row[cols.index("id")]: row for row in table["data"]}
    for r in records:
        assert rows[r["id"]][cols.index("acc/rot90")] == pytest.approx(r["metrics"]["acc/rot90"])
        assert json.loads(rows[r["id"]][cols.index("recipe")])["models"] == r["recipe"]["models"]

    scatter = sorted((wb / "files" / "media" / "table" / "pareto").glob("acc_rot90_vs_acc_mirror_table_*.json"))
    n_gen = len({r["generation"] for r in records})
    assert len(scatter) == n_gen  # the front, re-logged after every generation
    last = json.loads(scatter[-1].read_text())
    assert last["columns"][:2] == ["acc/rot90", "acc/mirror"]
    front_ids = {r["id"] for r in analysis.front(analysis.scored(records))}
    assert {row[2] for row in last["data"]} == front_ids
    run_file = next(wb.glob("run-*.wandb")).read_bytes()
    assert b"wandb/scatter/v0" in run_file  # logged as a W&B scatter plot, not only as a table
    assert str(digits_zoo.parent).encode() in run_file  # the resolved config (paths.zoo is only there)
    assert b"best-recipe" in run_file and b"best_recipe.yaml" in run_file  # the artifact's manifest
    final = list((wb / "files" / "media" / "table").glob("final_table_*.table.json"))
    assert len(final) == 1 and len(json.loads(final[0].read_text())["data"]) == 6  # base, 3 sources, avg, evolved

    report = tmp_path / "run" / "report"
    for name in ("pareto.png", "heldout.png", "convergence.png", "ps_heatmap.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert list((wb / "files" / "media" / "images").glob("report/pareto_*.png"))  # the PNGs went to W&B too
    summary = (report / "summary.md").read_text()
    assert "| evolved (best) |" in summary and "| plain average |" in summary and "![" in summary


def test_logger_project_switches_online_despite_evomerges_offline_default(monkeypatch):
    """The CLI's offline defaults set WANDB_MODE=offline; that is evomerge's default, not the user's, so a project
    still means online. A WANDB_MODE the user exported still wins."""
    from evomerge.offline import WANDB_MODE_IS_DEFAULT, set_offline_env

    for var in ("WANDB_MODE", WANDB_MODE_IS_DEFAULT, "EVOMERGE_ONLINE"):
        monkeypatch.delenv(var, raising=False)
    set_offline_env()
    assert os.environ["WANDB_MODE"] == "offline"
    assert resolve_mode({"project": "p"}) == "online" and resolve_mode({}) == "offline"
    monkeypatch.delenv(WANDB_MODE_IS_DEFAULT)
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's own choice
    set_offline_env()
    assert WANDB_MODE_IS_DEFAULT not in os.environ and resolve_mode({"project": "p"}) == "offline"
    monkeypatch.setenv(WANDB_MODE_IS_DEFAULT, "offline")
    monkeypatch.setenv("WANDB_MODE", "disabled")  # changed by the user after the defaults: theirs
    assert resolve_mode({"project": "p"}) == "disabled"


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    import wandb

    seen = []
    monkeypatch.setattr(wandb, "init", lambda **kw: seen.append(kw) or SimpleNamespace(dir=str(tmp_path)))
    for _ in range(2):
        WandbLogger({"kind": "wandb", "mode": "offline", "progress_bar": False}, tmp_path, CONFIG)
    assert seen[0]["id"] == seen[1]["id"] == (tmp_path / "wandb_run_id").read_text().strip()
    assert seen[1]["resume"] == "allow"
