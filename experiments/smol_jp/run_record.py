"""One finished run directory as a committed record: its held-out table, its Pareto front scored on test, and
where it came from (command, environment, wall time), written from final.json, final_table.md and
pareto_final.json. For results of a table run that stopped before all its seeds were done.

    python experiments/smol_jp/run_record.py RUN_DIR OUT.md --title "..." --command "python -m evomerge ..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evomerge.environment import describe

KEYS = ("jp_math/acc_ja", "jp_math/acc", "jp_math/ja_rate")  # the Pareto columns: target, right number, Japanese


def record(run: Path, title: str, command: str) -> str:
    final = json.loads((run / "final.json").read_text())
    lines = [f"# {title}", "", f"Command: `{command}`  ", f"Environment: {describe(final['environment'])}  ",
             f"Wall time: {final['wall_time'] / 60:.1f} min for {final['evaluations']} evaluations, the selection on "
             "validation and the held-out tables  ", "",
             "This file is written from the run directory's final.json, final_table.md and pareto_final.json "
             "(experiments/smol_jp/run_record.py).", "", (run / "final_table.md").read_text().strip()]
    front = run / "pareto_final.json"
    if front.exists():
        pareto = json.loads(front.read_text())
        lines += ["", f"Pareto front of the run ({len(pareto)} members; objectives on the fitness items -> held-out "
                  "test):", "", "| member | fitness: target / right number / Japanese | test: target / right number / "
                  "Japanese |", "|---|---|---|"]
        for m in pareto:
            f, t = m["fitness"], m["test"]
            lines.append(f"| {m['id']} | " + " / ".join(f"{100 * f[k]:.1f}" for k in KEYS) + " | "
                         + " / ".join(f"{100 * t[k]:.1f}" for k in KEYS) + " |")
    return "\n".join(lines) + "\n"



def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--title", required=True)
    ap.add_argument("--command", required=True, help="the command that makes this run directory")
    args = ap.parse_args(argv)
    args.out.write_text(record(args.run_dir, args.title, args.command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
