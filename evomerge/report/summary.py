"""The report of a run: every figure and summary.md written into RUN_DIR/report/, and the `evomerge-report` CLI."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from evomerge.environment import describe
from evomerge.report import analysis
from evomerge.report.plots import write_convergence, write_heldout, write_pareto, write_path, write_ps_heatmap
from evomerge.report.runs import Run, load_run
from evomerge.store import atomic_write_text

log = logging.getLogger("evomerge")

def summary_markdown(run: Run, files: dict[str, Path]) -> str:
    ok = [r for r in run.records if analysis.is_ok(r)]
    split = run.final.get("final_split", "test")
    objs = ", ".join(f"`{o.metric}` ({o.direction})" for o in run.objectives)
    wall = run.final.get("wall_time")
    lines = [f"# evomerge run `{run.name}`", "",
             f"- optimiser: `{run.optimizer}`; space: `{(run.config.get('space') or {}).get('kind', 'unknown')}`; "
             f"objectives: {objs}",
             f"- evaluations: {len(run.records)} ({len(run.records) - len(ok)} failed)"
             + (f"; budget {run.config['search']['budget']}" if (run.config.get("search") or {}).get("budget")
                else "") + (f"; wall time {wall:.0f} s" if wall else ""),
             ("- the search optimised the **fitness** split only; the held-out table below comes from the "
              f"**{split}** split, each row evaluated once" if run.final.get("final") else
              "- no held-out table yet (final.json missing: the run is still going or did not finish); every number "
              "here is on the **fitness** split")]
    if run.final.get("environment"):
        lines.append(f"- made with: {describe(run.final['environment'])}")
    lines.append("")
    if run.final.get("final"):
        lines += [f"## Held-out results (`{split}` split)", "", _final_table(run), ""]
    if len(run.objectives) > 1:
        ref = run.ref
        ref_txt = ", ".join(f"{o.metric} = {o.to_min(float(v)):.4g}" for o, v in zip(run.objectives, ref,
                                                                                    strict=True)) if ref is not None else "n/a"
        lines += [f"## Pareto front on the fitness split ({len(run.front)} members)", "",
                  f"Hypervolume {analysis.hv(run.records, ref):.4f} (reference point: {ref_txt}).", "",
                  "| id | generation | " + " | ".join(o.metric for o in run.objectives) + " | recipe |",
                  "|---|---|" + "---|" * len(run.objectives) + "---|"]
        for r in sorted(run.front, key=lambda r: analysis.value(r, 0, run.objectives[0]),
                        reverse=run.objectives[0].direction == "max")[:30]:
            vals = " | ".join(f"{analysis.value(r, k, o):.4f}" for k, o in enumerate(run.objectives))
            ref_name = analysis.reference_name(r)
            tag = f" ({analysis.pretty_reference(ref_name)})" if ref_name else ""
            lines.append(f"| {r['id']} | {r.get('generation')} | {vals} | {_recipe_summary(r)}{tag} |")
        lines.append("")
    best = run.final.get("best")
    if best:
        vals = ", ".join(f"{o.metric} = {analysis.value(best, k, o):.4f}" for k, o in enumerate(run.objectives))
        lines += ["## Selected best recipe", "",
                  f"Evaluation {best['id']} (generation {best.get('generation')}), the candidate the search "
                  f"selected: {vals} on the fitness split. Recipe `best_recipe.yaml` "
                  f"({_recipe_summary(best)}); model `best_model/`.", ""]
    titles = {"pareto": "Pareto front (fitness split)", "heldout": f"Held-out `{split}` split",
              "convergence": "Convergence", "ps_heatmap": "Per-layer merge parameters of the best recipe",
              "dfs_path": "Layer path of the best recipe"}
    for key, title in titles.items():
        if files.get(key):
            lines += [f"## {title}", "", f"![{title}]({files[key].name})", ""]
    return "\n".join(lines)


def _final_table(run: Run) -> str:
    from evomerge.final import markdown_table, table_columns

    rows = run.final["final"]
    return markdown_table(rows, table_columns(rows, [o.metric for o in run.objectives]))


def _recipe_summary(record: dict) -> str:
    return analysis.describe_recipe(record.get("recipe"))


def write(run_dir: str | Path, config: dict | None = None) -> dict[str, Path]:
    """Write every plot that applies to this run and report/summary.md; returns {name: path}."""
    run = load_run(run_dir, config)
    out = Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "pareto": write_pareto(run, out / "pareto.png"),
        "heldout": write_heldout(run, out / "heldout.png"),
        "convergence": write_convergence(run, out / "convergence.png"),
        "ps_heatmap": write_ps_heatmap(run, out / "ps_heatmap.png"),
        "dfs_path": write_path(run, out / "dfs_path.png"),
    }
    files = {k: v for k, v in files.items() if v is not None}
    files["summary"] = out / "summary.md"
    atomic_write_text(files["summary"], summary_markdown(run, files) + "\n")
    return files


def write_safely(run_dir: str | Path, config: dict | None = None) -> dict[str, Path]:
    """`write`, but a plotting problem only warns: a finished search is never lost to its report."""
    try:
        files = write(run_dir, config)
        log.info("report: %s", Path(run_dir) / "report" / "summary.md")
        return files
    except Exception as e:  # noqa: BLE001
        log.warning("could not write the report (%s: %s); retry with `python -m evomerge.report %s`",
                    type(e).__name__, e, run_dir)
        return {}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        import evomerge.report

        print(evomerge.report.__doc__)
        return 0 if argv else 2
    status = 0
    for d in argv:
        try:
            files = write(d)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
            continue
        for name, p in files.items():
            print(f"{name:12s} {p}")
    return status


