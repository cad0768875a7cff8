"""The default run (`python -m evomerge`: experiment=jp_math_mini, seed 0) as a committed table.

Runs exactly the search `python -m evomerge` runs (the same composed config), then writes its held-out table, the
zoo's preconditions and the environment to `--out` (Markdown) and its numbers beside it (`.json`, for
`experiments/regenerate.py`).

    python experiments/jp_math_mini/default_run.py --out experiments/jp_math_mini/default_run.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from evomerge.offline import set_offline_env
from evomerge.results import provenance, save


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("evomerge.conf", version_base="1.3"):
        return OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)


def main(argv: list[str] | None = None) -> int:
    set_offline_env()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="experiments/jp_math_mini/default_run.md")
    ap.add_argument("--run-dir", default=None, help="run directory (default: a new temporary folder)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m evomerge")
    args = ap.parse_args(argv)
    from evomerge.run import run

    cfg = compose(args.overrides)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="evomerge_default_run_"))
    t0 = time.perf_counter()
    summary = run(cfg, run_dir)
    wall = time.perf_counter() - t0
    command = "python -m evomerge " + " ".join(args.overrides)
    header, facts = provenance(command.strip(), Path(cfg["paths"]["zoo"]).expanduser() / "jp_mini")
    table = (run_dir / "final_table.md").read_text().strip()
    best = summary["best"]["metrics"]
    lines = ["# The default run", "", *header,
             f"Wall time: {wall:.0f} s (zoo build included when the zoo was not cached); run directory {run_dir}", "",
             f"One run of the experiment as configured (seed {cfg['seed']}, {cfg['space']['kind']}, "
             f"{summary['evaluations']} evaluations). Best fitness on the fitness split: "
             + ", ".join(f"{k} = {v:.4f}" for k, v in best.items() if k in {o["metric"] for o in
                                                                           cfg["search"]["objectives"]}) + ".", "",
             table]
    numbers = {f"{r['model']}/{k}": v for r in summary["final"] for k, v in r["metrics"].items()
               if k in (cfg.get("report_metrics") or r["metrics"])}
    numbers |= {f"precondition {p['model']} {p['metric']} ({p['split']})": p["value"]
                for p in summary.get("preconditions", [])}
    text = "\n".join(lines)
    print(text)
    save(args.out, text, numbers, facts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
