"""Weights & Biases tracking on top of the local progress line. It never makes a run fail.

Offline by default (no account needed; `wandb sync <dir>` later), online once a project or entity is configured
(offline, with a warning, when no API key is found), `disabled` when WANDB_MODE says so (the tests). If W&B cannot start or a call fails, one warning is logged and the
run carries on with local logging only.

What is logged: the resolved config; per generation the best so far and this generation's best/mean/min/max of each
objective, the hypervolume and the front size; a Pareto scatter plot per pair of objectives (the current front);
at the end a table with one row per evaluated candidate, the held-out table, the best recipe (and optionally the
best model) as artifacts, and the report's PNGs.
"""

from __future__ import annotations

import json
import logging
import os
from itertools import combinations
from pathlib import Path

from evomerge.logger.local import LocalLogger
from evomerge.report import analysis
from evomerge.store import read_jsonl

log = logging.getLogger("evomerge")


def resolve_mode(cfg: dict) -> str | None:
    """Explicit `mode` wins; then a WANDB_MODE the user set; then online if a project/entity is set; else offline.
    (The WANDB_MODE=offline that evomerge's offline defaults set does not count as the user's.)"""
    from evomerge.offline import WANDB_MODE_IS_DEFAULT

    if cfg.get("mode"):
        return str(cfg["mode"])
    mode = os.environ.get("WANDB_MODE")
    if mode and mode != os.environ.get(WANDB_MODE_IS_DEFAULT):
        return mode
    return "online" if (cfg.get("project") or cfg.get("entity")) else "offline"


def has_credentials() -> bool:
    """Whether online W&B can log in without asking: WANDB_API_KEY, an identity token, or a netrc entry for the
    W&B host (what `wandb login` writes). Checked before `wandb.init`, which would otherwise prompt in a terminal."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import netrc
    from urllib.parse import urlsplit

    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(LocalLogger):
    def __init__(self, cfg: dict | None, run_dir, run_config: dict | None = None):
        super().__init__(cfg, run_dir, run_config)
        self.cfg = dict(cfg or {})
        self.mode = resolve_mode(self.cfg)
        if self.mode == "online" and not has_credentials():
            log.warning("W&B online logging needs an API key (`wandb login` or WANDB_API_KEY) and none was found: "
                        "logging offline instead; upload later with `wandb sync %s/wandb/offline-run-*`",
                        self.cfg.get("dir") or self.run_dir)
            self.mode = "offline"
        self.run = None
        self.wandb = None
        self._warned = False
        self._safe(self._start)

    # ---- failure policy: warn once, then local only --------------------------------------------------------
    def _safe(self, fn, *args, **kwargs):
        if self.run is None and fn.__name__ != "_start":
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never end a search
            if not self._warned:
                log.warning("W&B logging disabled for the rest of this run (%s: %s); local logging continues",
                            type(e).__name__, e)
                self._warned = True
            run, self.run = self.run, None
            if run is not None:
                try:
                    run.finish(exit_code=1)
                except Exception:  # noqa: BLE001
                    pass
            return None

    def _start(self) -> None:
        try:
            import wandb
        except ImportError:
            raise ImportError("logger=wandb needs the wandb package: pip install 'evomerge[wandb]'") from None

        self.wandb = wandb
        wb_dir = Path(self.cfg.get("dir") or self.run_dir)
        wb_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.run_dir / "wandb_run_id"  # a resumed search continues the same W&B run
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        if not run_id:
            import secrets
            import string

            from evomerge.store import atomic_write_text

            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            atomic_write_text(id_file, run_id + "\n")
        self.run = wandb.init(
            id=run_id, resume="allow",
            project=self.cfg.get("project") or "evomerge", entity=self.cfg.get("entity"),
            name=self.cfg.get("name") or self.run_dir.name, group=self.cfg.get("group"),
            tags=list(self.cfg.get("tags") or []), mode=self.mode, dir=str(wb_dir), config=self.run_config,
            reinit="finish_previous",
            settings=wandb.Settings(init_timeout=float(self.cfg.get("init_timeout", 60)), disable_git=True,
                                    console="off"),
        )
        if self.mode != "disabled":
            log.info("W&B %s run: %s", self.mode, getattr(self.run, "dir", wb_dir))

    # ---- hooks ---------------------------------------------------------------------------------------------
    def generation(self, gen: int, result, evals: int, budget: int, elapsed: float, **info) -> dict:
        stats = super().generation(gen, result, evals, budget, elapsed, **info)
        self._safe(self._log_generation, gen, stats)
        return stats

    def _log_generation(self, gen: int, stats: dict) -> None:
        wandb = self.wandb
        row = {k: v for k, v in stats.items() if isinstance(v, (int, float))}
        pts = analysis.scored(self.all_records)
        front = analysis.front(pts)
        for (i, a), (j, b) in combinations(enumerate(self.objectives), 2):
            cols = [a.metric, b.metric, "id", "generation"]
            data = [[analysis.value(r, i, a), analysis.value(r, j, b), r["id"], r.get("generation")] for r in front]
            table = wandb.Table(columns=cols, data=data)
            key = f"pareto/{_key(a.metric)}_vs_{_key(b.metric)}"
            row[key] = wandb.plot.scatter(table, a.metric, b.metric,
                                          title=f"Pareto front after generation {gen}: {a.metric} vs {b.metric}")
        self.run.log(row)

    def finish(self, summary: dict) -> None:
        self._safe(self._log_final, summary)
        self._safe(self._close_run)
        super().finish(summary)

    def _log_final(self, summary: dict) -> None:
        wandb = self.wandb
        log_path = self.run_dir / "evaluations.jsonl"  # the whole run, also after a resume
        records = read_jsonl(log_path) if log_path.exists() else list(self.all_records or self.records)
        cols, rows = candidate_rows(records, self.objectives or [])
        out = {"candidates": wandb.Table(columns=cols, data=rows)}
        final = summary.get("final") or []
        if final:
            metrics = list(dict.fromkeys(m for r in final for m in r["metrics"]))
            out["final_table"] = wandb.Table(
                columns=["model", *metrics], data=[[r["model"], *[r["metrics"].get(m) for m in metrics]]
                                                   for r in final])
            split = summary.get("final_split", "test")
            for r in final:
                if r["model"].startswith("evolved"):
                    for m, v in r["metrics"].items():
                        self.run.summary[f"{split}/{m}"] = v
        pareto = [p for p in summary.get("pareto") or [] if not p.get("error")]
        if pareto:
            split = summary.get("final_split", "test")
            metrics = list(dict.fromkeys(m for p in pareto for m in (p.get(split) or {})))
            out["pareto_heldout"] = wandb.Table(
                columns=["id", *[f"fitness {m}" for m in metrics], *[f"{split} {m}" for m in metrics]],
                data=[[p["id"], *[(p.get("fitness") or {}).get(m) for m in metrics],
                       *[(p.get(split) or {}).get(m) for m in metrics]] for p in pareto])
        for png in sorted((self.run_dir / "report").glob("*.png")):
            out[f"report/{png.stem}"] = wandb.Image(str(png))
        self.run.log(out)
        self.run.summary["evaluations"] = len(records)
        recipe = self.run_dir / "best_recipe.yaml"
        if recipe.exists():
            art = wandb.Artifact("best-recipe", type="recipe",
                                 metadata={"evaluation_id": (summary.get("best") or {}).get("id")})
            art.add_file(str(recipe))
            self.run.log_artifact(art)
        model = self.run_dir / "best_model"
        if self.cfg.get("log_model") and model.is_dir():
            art = wandb.Artifact("best-model", type="model")
            art.add_dir(str(model))
            self.run.log_artifact(art)

    def _close_run(self) -> None:
        self.run.finish()
        self.run = None

    def close(self) -> None:
        if self.run is not None:
            self._safe(self._close_run)
        super().close()


def _key(metric: str) -> str:
    return metric.replace("/", "_")


def candidate_rows(records: list[dict], objectives) -> tuple[list[str], list[list]]:
    """One row per evaluated candidate: where it came from, what it is (genome and recipe), how it scored."""
    metrics = list(dict.fromkeys(m for r in records for m in (r.get("metrics") or {})))
    cols = ["id", "generation", "split", "fidelity", "n_samples", "wall_time", "error", "reference", "genome",
            "recipe_summary", "recipe", *metrics]
    rows = []
    for r in records:
        rows.append([
            r.get("id"), r.get("generation"), r.get("split"), analysis.fidelity(r), r.get("n_samples"),
            r.get("wall_time"), r.get("error"), analysis.reference_name(r), genome_summary(r.get("genome")),
            analysis.describe_recipe(r.get("recipe")), json.dumps(_strip_meta(r.get("recipe")), separators=(",", ":")),
            *[(r.get("metrics") or {}).get(m) for m in metrics],
        ])
    return cols, rows


def genome_summary(genome) -> str:
    g = [float(v) for v in (genome if genome is not None else [])]
    if not g:
        return ""
    head = " ".join(f"{v:.3f}" for v in g[:8])
    return f"{len(g)} genes [{head}{' ...' if len(g) > 8 else ''}] mean {sum(g) / len(g):.3f}"




def _strip_meta(recipe: dict | None) -> dict | None:
    if not recipe:
        return recipe
    return {k: v for k, v in recipe.items() if k != "meta"}
