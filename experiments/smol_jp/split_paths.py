"""Score hand-made DFS layer paths on the validation split: math's layers 0..k-1, then ja's k..28, then math's last
layer (the DFS anchor's fixed end), for each split k given. A probe of the DFS space, not a result: it says whether
a path that a search could reach does both halves of the target. Never scores the test split.

    python experiments/smol_jp/split_paths.py --splits 24,18 models=smol_jp_worked
"""

from __future__ import annotations

import argparse
import time

from table import compose  # experiments/smol_jp/table.py, beside this file

from evomerge.offline import set_offline_env

KEYS = ("jp_math/acc_ja", "jp_math/acc", "jp_math/ja_rate")


def main(argv=None) -> int:
    set_offline_env()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--splits", default="24,18", help="comma-separated k: math 0..k-1, ja k..L-2, math L-1")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. models=smol_jp_worked")
    args = ap.parse_args(argv)
    import torch

    from evomerge import models as models_pkg
    from evomerge.executor import make_worker
    from evomerge.recipe import Recipe

    cfg = compose(args.overrides, "smol_jp_dfs")
    torch.set_num_threads(int(cfg.get("threads") or 2))
    pool = models_pkg.build(cfg["models"], cfg["paths"]["zoo"])
    worker = make_worker(cfg["evaluator"], 0, False, pool, "cpu")
    math, ja = cfg["space"]["models"]
    last = pool.num_layers - 1
    print(f"validation split; target / right number / Japanese answer, %; layers 0..{last}")
    for k in (int(s) for s in args.splits.split(",")):
        path = [[math, i, 1.0] for i in range(k)] + [[ja, i, 1.0] for i in range(k, last)] + [[math, last, 1.0]]
        t = time.perf_counter()
        out = worker.evaluate(Recipe.from_dict({"models": [math, ja], "base": None, "path": path}), "validation")
        if out.error:
            raise RuntimeError(f"split {k}: {out.error}")
        print(f"{math} 0-{k - 1}, {ja} {k}-{last - 1}, {math} {last}: "
              + " / ".join(f"{100 * out.metrics[key]:.1f}" for key in KEYS) + f"  ({time.perf_counter() - t:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
