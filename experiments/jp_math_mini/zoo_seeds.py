"""Table 1 across zoo seeds: does the miniature's conclusion survive a different zoo (data and training seed)?

Reads the numbers files `table1.py` wrote for each zoo seed and prints one row per zoo: the preconditions, the
sources' and the evolved stages' target scores, and whether each stage beats both experts and the plain average
(paired bootstrap over search seeds and test items, as in each table).

    python experiments/jp_math_mini/zoo_seeds.py experiments/jp_math_mini/table1.json \\
        experiments/jp_math_mini/table1_zoo1.json experiments/jp_math_mini/table1_zoo2.json \\
        --out experiments/jp_math_mini/table1_zoos.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGET = "jp_math/acc_ja"
STAGES = ["evolved PS", "evolved DFS", "evolved PS+DFS"]


def row(data: dict) -> str:
    n = data["numbers"]
    pre = "; ".join(f"{p['model']} {p['metric'].split('/')[-1]} {100 * p['value']:.0f}% "
                    f"({'holds' if p['ok'] else 'FAILS'})" for p in data.get("preconditions", []))
    cells = [str(data.get("zoo_seed")), pre or "not measured"]
    cells += [f"{100 * n[f'{m}/{TARGET}']['value']:.1f}" for m in ("ja", "math", "plain average")]
    for s in STAGES:
        x = n[f"{s}/{TARGET}"]
        v = data.get("verdicts", {}).get(s, {})
        tag = (f"beats both experts: {'yes' if v.get('beats_both_experts') else 'no'}, the plain average: "
               f"{'yes' if v.get('beats_plain_average') else 'no'}")
        cells.append(f"{100 * x['value']:.1f} [{100 * x['lo']:.1f}, {100 * x['hi']:.1f}] ({tag})")
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="+", help="numbers files written by table1.py, one per zoo seed")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    tables = [json.loads(Path(t).read_text()) for t in args.tables]
    lines = ["# jp_math_mini: Table 1 across zoo seeds", "",
             "Target: right number AND Japanese answer, % of the 300 test problems. Evolved: mean [95% bootstrap "
             "interval over 3 search seeds]; 'beats' = every paired-bootstrap interval (seeds and items) above 0. "
             "Preconditions on the validation split: math expert right numbers >= 60%, JA expert Japanese answers "
             ">= 95%.", "",
             "| zoo seed | preconditions | ja | math | plain average | " + " | ".join(STAGES) + " |",
             "|---|---|---|---|---|" + "---|" * len(STAGES)]
    lines += [row(t) for t in tables]
    lines += ["", "Made from: " + ", ".join(f"`{t}`" for t in args.tables) + " (each names its command and "
              "environment)."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
