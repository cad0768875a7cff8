"""The local report of a run: plots and a Markdown summary written into RUN_DIR/report/.

`python -m evomerge.report RUN_DIR [RUN_DIR ...]` (also run at the end of every search) writes
  pareto.png       fitness-split Pareto front per pair of objectives: every candidate (faded, by generation), the
                   front highlighted, the seeded source models and plain average marked as reference points
  heldout.png      the held-out table as points: base, sources, plain average, evolved
  convergence.png  best score so far per objective and hypervolume over evaluations
  ps_heatmap.png   per-layer merge parameters of the best recipe (weight, density, ... per model per layer)
  dfs_path.png     the best recipe's layer path (which model's layer at each hop, and the scales)
  summary.md       the run in one page: objectives, held-out table, Pareto members, best recipe, the plots
Plot functions take matplotlib axes so the notebook (notebooks/analyze_run.ipynb) reuses them.

The package: `analysis` (records -> objectives, fronts, hypervolume curves, references: also used by the loggers and
the notebook), `runs` (a run directory as a `Run`), `plots` (figures), `summary` (the report files and the CLI).
"""

from evomerge.report.plots import (  # noqa: F401  (the notebook's API)
    legend_below,
    plot_best_curve,
    plot_heldout,
    plot_hv_curve,
    plot_pareto,
    plot_path,
    plot_ps_heatmap,
    ps_table,
)
from evomerge.report.runs import Run, common_reference, compare, heldout_rows, load_run  # noqa: F401
from evomerge.report.summary import main, summary_markdown, write, write_safely  # noqa: F401
