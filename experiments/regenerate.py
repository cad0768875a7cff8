"""Regenerate the README's tables and compare them, number by number, with the committed ones.

Each table's script is re-run in a fresh work folder (a fresh zoo too, unless `--zoo` names a cached one) and
writes its numbers to a JSON file; every committed number is then printed with its regenerated value and a
verdict: `same` (equal to the printed precision), `inside` (within the committed 95% interval over seeds),
`OUTSIDE` or `missing`. Exit status 1 when any number is OUTSIDE or missing. The environment each table was made
in is compared with this one, so a moved number comes with the likely reason.

    python experiments/regenerate.py                 # the fast tables: default run, digits (about 5 min)
    python experiments/regenerate.py --all           # also Table 1 (jp_math_mini, about 15 min more)
    python experiments/regenerate.py digits --zoo ~/.cache/evomerge/zoo
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evomerge.environment import differences, fingerprint  # noqa: E402
from evomerge.results import compare, format_verdicts, load  # noqa: E402


@dataclass(frozen=True)
class Table:
    committed: str  # the committed numbers, relative to the repository root
    argv: tuple[str, ...]  # the script and its arguments; {work} and {out} are filled in
    heavy: bool = False


TABLES = {
    "default": Table("experiments/jp_math_mini/default_run.json",
                     ("experiments/jp_math_mini/default_run.py", "--run-dir", "{work}/run", "--out", "{out}")),
    "digits": Table("experiments/digits_table.json",
                    ("experiments/digits_table.py", "--seeds", "0", "1", "2", "--budget", "150",
                     "--workdir", "{work}", "--out", "{out}")),
    "table1": Table("experiments/jp_math_mini/table1.json",
                    ("experiments/jp_math_mini/table1.py", "--seeds", "0,1,2", "--runs", "{work}/runs",
                     "--out", "{out}"), heavy=True),
}


def committed_file(table: Table) -> Path:
    """The committed numbers for this machine's class: torch picks its CPU kernels by vector unit (AVX512, AVX2),
    and the numbers depend on them, so a table may be committed once per class (`NAME.avx2.json` beside
    `NAME.json`, made here with ATEN_CPU_CAPABILITY=avx2). The file whose recorded capability is this machine's."""
    import torch

    main = ROOT / table.committed
    here = torch.backends.cpu.get_cpu_capability()
    for path in [main, *sorted(main.parent.glob(main.stem + ".*.json"))]:
        if (load(path).get("environment") or {}).get("cpu_capability") == here:
            return path
    return main


def regenerate(name: str, work: Path, zoo: Path | None, digits: int = 4, slack: float = 0.0, quiet: bool = False):
    """Re-run one table into `work`; returns (verdicts, the committed file's environment differences)."""
    table = TABLES[name]
    committed = load(committed_file(table))
    out = work / "table.md"
    argv = [sys.executable, *(a.format(work=work, out=out) for a in table.argv)]
    env = os.environ | {"EVOMERGE_ZOO": str(zoo or work / "zoo"), "PYTHONPATH": str(ROOT)}
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "log.txt", "w") as log:
        done = subprocess.run(argv, cwd=ROOT, env=env, stdout=None if not quiet else log, stderr=subprocess.STDOUT
                              if quiet else None)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: {' '.join(argv)} failed with exit status {done.returncode}"
                           + (f" (log: {work / 'log.txt'})" if quiet else ""))
    fresh = load(out.with_suffix(".json"))  # the environment the regenerated numbers were made in (its threads too)
    return (compare(committed["numbers"], fresh["numbers"], digits=digits, slack=slack),
            differences(committed.get("environment") or {}, fresh.get("environment") or fingerprint()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tables", nargs="*", help=f"which tables (default: the fast ones); any of {list(TABLES)}")
    ap.add_argument("--all", action="store_true", help="also the heavy tables")
    ap.add_argument("--work", default=None, help="work folder (default: a new temporary folder)")
    ap.add_argument("--zoo", default=None, help="a cached zoo folder to reuse for the jp_mini tables (default: build "
                    "a fresh one; the digits table always builds its own under the work folder)")
    args = ap.parse_args(argv)
    names = args.tables or [n for n, t in TABLES.items() if args.all or not t.heavy]
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        ap.error(f"unknown table(s) {unknown}; expected some of {list(TABLES)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="evomerge_regenerate_"))
    bad = 0
    for name in names:
        t0 = time.perf_counter()
        verdicts, moved = regenerate(name, work / name, Path(args.zoo).expanduser() if args.zoo else None)
        bad += sum(not v.ok for v in verdicts)
        print(f"\n## {name} ({committed_file(TABLES[name]).relative_to(ROOT)}; regenerated in "
              f"{time.perf_counter() - t0:.0f} s)\n")
        print(format_verdicts(verdicts))
        print("\nenvironment: " + ("the same as the committed table's" if not moved else
                                   "differs from the committed table's: " + "; ".join(moved)))
    print(f"\n{bad} number(s) outside their committed interval or missing" if bad else
          "\nevery committed number regenerated (same, or inside its interval)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
