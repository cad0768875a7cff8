"""evomerge's merge methods against mergekit 0.1.5's own, on the same tensors.

mergekit is not a dependency; fetch its wheel once and point PYTHONPATH at it (its merge methods import with
evomerge's own dependencies):

    pip download mergekit==0.1.5 --no-deps -d /tmp/mk && unzip -q -o /tmp/mk/mergekit-0.1.5-*.whl -d /tmp/mk/src
    PYTHONPATH=/tmp/mk/src python experiments/parity/mergekit_parity.py [--out experiments/parity/parity.md]

For each of the 20 methods, each input dtype (float32, bfloat16) and a few parameter settings, it prints the largest
absolute difference between the two outputs, in units of the largest |task vector| entry. Randomised methods
(DARE, DELLA) draw from different generators, so they are compared with density 1 (no drop) only.
"""

from __future__ import annotations

import argparse
import sys

import torch

from evomerge.environment import describe, fingerprint
from evomerge.merge.registry import get_method

# method -> [(global params, per-model params (one value per non-base input), models, needs a base)]
CASES = {
    "linear": [({}, {"weight": [0.3, 0.7]}, 2, False)],
    "task_arithmetic": [({"lambda": 0.8}, {"weight": [0.5, 1.0]}, 2, True)],
    "ties": [({}, {"weight": [1.0, 0.5, 0.7], "density": [0.4, 0.6, 0.5]}, 3, True)],
    "dare_linear": [({}, {"weight": [0.6, 0.4], "density": [1.0, 1.0]}, 2, True)],
    "dare_ties": [({}, {"weight": [0.6, 0.4, 0.5], "density": [1.0, 1.0, 1.0]}, 3, True)],
    "breadcrumbs": [({}, {"weight": [1.0, 0.5], "density": [0.8, 0.7], "gamma": [0.05, 0.02]}, 2, True)],
    "breadcrumbs_ties": [({}, {"weight": [1.0, 0.5, 0.3], "density": [0.8, 0.7, 0.9], "gamma": [0.05, 0.02, 0.1]},
                          3, True)],
    "della": [({}, {"weight": [0.6, 0.4], "density": [1.0, 1.0], "epsilon": [0.0, 0.0]}, 2, True)],
    "della_linear": [({}, {"weight": [0.6, 0.4], "density": [1.0, 1.0], "epsilon": [0.0, 0.0]}, 2, True)],
    "slerp": [({"t": 0.3}, {}, 1, True)],
    "nuslerp": [({}, {"weight": [0.3, 0.7]}, 2, False), ({}, {"weight": [0.3, 0.7]}, 2, True)],
    "multislerp": [({}, {"weight": [0.2, 0.3, 0.5]}, 3, False), ({}, {"weight": [0.5, 0.5]}, 2, True)],
    "model_stock": [({}, {}, 3, True), ({"filter_wise": True}, {}, 3, True)],
    "passthrough": [({}, {}, 1, False)],
    "sce": [({}, {}, 3, True), ({"select_topk": 0.5}, {}, 3, True), ({"select_topk": 0.3}, {}, 1, True)],
    "karcher": [({}, {}, 3, False), ({"max_iter": 20}, {}, 2, True)],
    "nearswap": [({"t": 0.01}, {}, 1, True), ({"t": 0.1}, {}, 1, True)],
    "arcee_fusion": [({}, {}, 1, True)],
    "ram": [({}, {}, 3, True), ({"epsilon": 0.01}, {}, 2, True)],
    "ramplus_tl": [({}, {}, 3, True), ({"r": 0.5, "alpha": 0.5}, {}, 2, True)],
}


def tensors(dtype: torch.dtype, n: int, seed: int = 0):
    """A base and n sparse-ish fine-tunes of it (some entries untouched, as in real task vectors)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(64, 96, generator=g)
    ts = [b + 0.02 * torch.randn(64, 96, generator=g) * (torch.rand(64, 96, generator=g) < 0.7) for _ in range(n)]
    return b.to(dtype), [t.to(dtype) for t in ts]


def compare(name: str, params: dict, per_model: dict, n: int, with_base: bool, dtype: torch.dtype) -> str:
    from mergekit.merge_methods.api import merge_tensors

    base, ts = tensors(dtype, n)
    inputs = ([base] if with_base else []) + ts
    mk_params = dict(params)
    mk_params.update({key: list(vals) for key, vals in per_model.items()})  # per non-base input, in order
    theirs = merge_tensors(inputs, name, parameters=mk_params, base_index=0 if with_base else None)
    spec = get_method(name)
    ours = spec.fn(base if with_base else None, ts, generator=torch.Generator().manual_seed(0),
                   **spec.resolve(per_model, params, n, name))
    diff = (theirs.float() - ours.float()).abs()
    if dtype == torch.float32:  # relative to the largest task-vector entry
        return f"{float(diff.max()) / max(float((t - base).abs().max()) for t in ts):.1e}"
    # bf16: in units in the last place of the output, and the share of entries that differ at all
    ulp = torch.exp2(torch.floor(torch.log2(ours.float().abs().clamp_min(1e-30))) - 7)
    return f"{float((diff / ulp).max()):.0f} ulp, {100 * float((diff > 0).float().mean()):.1f}%"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="also write the table (markdown) here")
    args = ap.parse_args(argv)
    try:
        import mergekit  # noqa: F401
    except ImportError:
        sys.exit("mergekit is not importable: see this script's docstring for the two commands that fetch 0.1.5")
    rows = ["| method | case | float32: max diff / max task-vector entry | bfloat16: max diff, entries differing |",
            "|---|---|---|---|"]
    for name, cases in CASES.items():
        for params, per_model, n, with_base in cases:
            cells = [compare(name, params, per_model, n, with_base, dt) for dt in (torch.float32, torch.bfloat16)]
            case = ", ".join(f"{k}={v}" for k, v in {**params, **per_model}.items()) or "defaults"
            rows.append(f"| {name} | {n} models{' + base' if with_base else ''}; {case} | {cells[0]} | {cells[1]} |")
            print(rows[-1], flush=True)
    env = fingerprint()
    text = "\n".join([
        "# evomerge's merge methods vs mergekit 0.1.5's on the same tensors", "",
        "float32 inputs: the largest |difference| over the largest |task vector entry|. bfloat16 inputs: the largest "
        "difference in units in the last place of the output, and the share of entries that differ: mergekit "
        "computes in bfloat16, evomerge in float32 (and rounds once), so bfloat16 results differ by rounding, and "
        "where rounding moves an entry across a threshold (TIES' top-k, sign election, arcee_fusion's cut) by that "
        "entry's whole change.", "",
        "Command: `PYTHONPATH=/tmp/mk/src python experiments/parity/mergekit_parity.py --out "
        "experiments/parity/parity.md` (seeded tensors 64x96, seed 0)", f"Environment: {describe(env)}", "",
        *rows, ""])
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
