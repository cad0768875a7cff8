"""Merge-engine benchmark: every method in memory and via `evomerge-merge`, as ratios to a naive pass.

Builds random Llama checkpoints (base + 2 "experts" = base + noise; default ~374M parameters: hidden 1024,
intermediate 2816, 24 layers, vocab 32000, bf16) and measures in one run, each in a fresh subprocess:
- naive: tensor by tensor from the memory-mapped safetensors, out = 0.5*a + 0.5*b (no write) - the baseline;
- inmem: `Merger.apply(recipe)` on an already loaded pool (base + 2 experts), warm: after one apply, timed apart as
  "first apply", which compiles the fused kernels and fills the per-search memo (sorted |delta|, DARE draws);
- export: `evomerge-merge recipe.yaml OUT --shard-size 500MB` (reads base + 2 experts, writes the checkpoint; at
  this size `--compile auto` merges eagerly: compiling would cost more than it saves).
Time is the median over --repeats; memory is the peak RSS (ru_maxrss, includes the memory-mapped input pages) and
the peak anonymous RSS (sampled /proc/self/status RssAnon: memory beyond the mapped inputs).

    python experiments/bench/merge_bench.py            # full size (heavy: ~2.2 GB of checkpoints, run it alone)
    python experiments/bench/merge_bench.py --small    # ~20M parameters, a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

METHODS = {
    "linear": {"method": "linear", "weight": [0.5, 0.5]},
    "task_arithmetic": {"method": "task_arithmetic", "weight": [0.5, 0.5]},
    "ties": {"method": "ties", "weight": [0.5, 0.5], "density": [0.5, 0.5]},
    "dare_ties": {"method": "dare_ties", "weight": [0.5, 0.5], "density": [0.5, 0.5]},
    "dare_linear": {"method": "dare_linear", "weight": [0.5, 0.5], "density": [0.5, 0.5]},
    "breadcrumbs": {"method": "breadcrumbs", "weight": [0.5, 0.5], "density": [0.5, 0.5]},
    "breadcrumbs_ties": {"method": "breadcrumbs_ties", "weight": [0.5, 0.5], "density": [0.5, 0.5]},
    "della": {"method": "della", "weight": [0.5, 0.5], "density": [0.5, 0.5], "epsilon": [0.1, 0.1]},
    "della_linear": {"method": "della_linear", "weight": [0.5, 0.5], "density": [0.5, 0.5], "epsilon": [0.1, 0.1]},
    "slerp": {"method": "slerp", "params": {"t": 0.5}},
    "nuslerp": {"method": "nuslerp", "weight": [0.5, 0.5]},
    "multislerp": {"method": "multislerp", "weight": [0.5, 0.5]},
    "model_stock": {"method": "model_stock"},
    "passthrough": {"method": "passthrough"},
    "sce": {"method": "sce", "params": {"select_topk": 0.5}},
    "karcher": {"method": "karcher"},
    "nearswap": {"method": "nearswap", "params": {"t": 0.001}},
    "arcee_fusion": {"method": "arcee_fusion"},
    "ram": {"method": "ram"},
    "ramplus_tl": {"method": "ramplus_tl"},
}
ONE_MODEL = {"slerp", "passthrough", "nearswap", "arcee_fusion"}
FULL = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
            num_key_value_heads=16, vocab_size=32000)
SMALL = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=6, num_attention_heads=4,
             num_key_value_heads=4, vocab_size=32000)


# ---- checkpoints ------------------------------------------------------------------------------------------------


def build(root: Path, dims: dict) -> int:
    """Write base/a/b as bf16 safetensors (random, written tensor by tensor; no model is initialised)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from evomerge.testing import char_tokenizer

    cfg = LlamaConfig(max_position_embeddings=2048, tie_word_embeddings=False, dtype="bfloat16", **dims)
    cfg.architectures = ["LlamaForCausalLM"]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    n_params = sum(s.numel() for s in shapes.values())
    if all((root / m / "model.safetensors").exists() for m in ("base", "a", "b")):
        return n_params
    g = torch.Generator().manual_seed(0)
    base = {k: (torch.randn(s, generator=g) * 0.02).bfloat16() for k, s in shapes.items()}
    tok = char_tokenizer()
    for name, state in (("base", base), ("a", None), ("b", None)):
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        if state is None:
            state = {k: (v.float() + torch.randn(v.shape, generator=g) * 0.002).bfloat16() for k, v in base.items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        cfg.save_pretrained(out)
        tok.save_pretrained(out)
        del state
    return n_params


def recipe_dict(method: str, root: Path) -> dict:
    rule = dict(METHODS[method])
    models = ["a"] if method in ONE_MODEL else ["a", "b"]
    return {"models": models, "base": "base", "seed": 0, "default": rule,
            "paths": {m: str(root / m) for m in ("base", "a", "b")}}


# ---- workers (run in a fresh process each) ------------------------------------------------------------------------


class AnonPeak:
    """Samples RssAnon (resident memory not backed by files) every 20 ms."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _read(self) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read())
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return max(self.peak, self._read())


def worker(kind: str, method: str, root: Path, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from evomerge.offline import set_offline_env

    set_offline_env()
    times = []
    if kind == "naive":
        from safetensors import safe_open

        for _ in range(repeats):
            anon = AnonPeak()
            t0 = time.perf_counter()
            with safe_open(str(root / "a" / "model.safetensors"), "pt") as fa, \
                    safe_open(str(root / "b" / "model.safetensors"), "pt") as fb:
                for k in fa.keys():
                    out = 0.5 * fa.get_tensor(k) + 0.5 * fb.get_tensor(k)
                    del out
            times.append(time.perf_counter() - t0)
            peak_anon = anon.stop()
    elif kind == "inmem":
        from evomerge.merge.merger import Merger
        from evomerge.models.pool import ModelSpec, load_pool
        from evomerge.recipe import Recipe

        rd = recipe_dict(method, root)
        recipe = Recipe.from_dict({k: v for k, v in rd.items() if k != "paths"})
        pool = load_pool([ModelSpec(m, str(root / m)) for m in recipe.models], ModelSpec("base", str(root / "base")))
        merger = Merger(pool)
        anon = AnonPeak()
        t0 = time.perf_counter()
        merger.apply(recipe)  # warm-up: first touch of the output pages, compiling, the memo (sorts, draws)
        first = time.perf_counter() - t0
        for _ in range(repeats):
            t0 = time.perf_counter()
            merger.apply(recipe)
            times.append(time.perf_counter() - t0)
        peak_anon = anon.stop()
    elif kind == "export":
        import shutil

        import yaml

        from evomerge.merge.export import main

        cfg = root / f"recipe_{method}.yaml"
        cfg.write_text(yaml.safe_dump(recipe_dict(method, root)))
        out = root / f"out_{method}"
        for _ in range(repeats):
            shutil.rmtree(out, ignore_errors=True)
            anon = AnonPeak()
            t0 = time.perf_counter()
            rc = main([str(cfg), str(out), "--shard-size", "500MB", "--no-progress"])
            times.append(time.perf_counter() - t0)
            peak_anon = anon.stop()
            if rc != 0:
                raise SystemExit(f"export of {method} failed")
        shutil.rmtree(out, ignore_errors=True)
    else:
        raise ValueError(kind)
    return {"times": times, "time": statistics.median(times), "first": first if kind == "inmem" else None,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_anon": peak_anon}


def run(kind: str, method: str, root: Path, repeats: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, method, str(root), str(repeats), str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{kind} {method} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, kind, method, root, repeats, threads = sys.argv
        print(json.dumps(worker(kind, method, Path(root), int(repeats), int(threads))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="~20M parameters instead of ~374M")
    ap.add_argument("--root", default=None, help="where checkpoints are built (default /tmp/evomerge-bench[-small])")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (1 is fastest on a busy machine)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    ap.add_argument("--kinds", default="inmem,export")
    args = ap.parse_args()
    root = Path(args.root or ("/tmp/evomerge-bench-small" if args.small else "/tmp/evomerge-bench"))
    n = build(root, SMALL if args.small else FULL)
    gb = 1024**3
    print(f"checkpoints: {root} ({n / 1e6:.0f}M parameters, bf16, {n * 2 / gb:.2f} GiB per model); "
          f"threads={args.threads}, repeats={args.repeats}, cpus={os.cpu_count()}")
    naive = run("naive", "-", root, args.repeats, args.threads)
    print(f"naive 0.5a+0.5b pass: {naive['time']:.2f} s (median of {naive['times']}), "
          f"peak RSS {naive['peak_rss'] / gb:.2f} GiB")
    print("| method | in-memory apply s | ratio | s per 100M params | first apply s | export s | ratio "
          "| export peak RSS GiB | export peak anon GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    kinds = args.kinds.split(",")
    for method in args.methods.split(","):
        row = [method]
        if "inmem" in kinds:
            r = run("inmem", method, root, args.repeats, args.threads)
            row += [f"{r['time']:.2f}", f"{r['time'] / naive['time']:.2f}x", f"{r['time'] / (n / 1e8):.2f}",
                    f"{r['first']:.1f}"]
        else:
            row += ["-"] * 4
        if "export" in kinds:
            r = run("export", method, root, args.repeats, args.threads)
            row += [f"{r['time']:.2f}", f"{r['time'] / naive['time']:.2f}x", f"{r['peak_rss'] / gb:.2f}",
                    f"{r['peak_anon'] / gb:.2f}"]
        else:
            row += ["-"] * 4
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
