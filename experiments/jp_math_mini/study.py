"""The jp_math_mini study, part 1: preconditions and the global task-arithmetic grid (no search).

Builds (or reuses) the jp_mini zoo, then reports for base, each expert and task-arithmetic merges on a grid of
(lambda_ja, lambda_math):
- target (Japanese math): right number in any format, Japanese answer format, both (= the score), per operation;
- Japanese general task (the JA expert's held-out tasks), English math (the math expert's own task).
Preconditions (shared/reference/minijp_lessons.md): math expert right number on >= 60% of the Japanese problems;
JA expert answers them in Japanese format ~100% of the time.

    python experiments/jp_math_mini/study.py --zoo ~/.cache/evomerge/zoo/jp_mini --split validation
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from evomerge.offline import set_offline_env


def evaluators(root: Path, tok) -> dict:
    """The experiment's own evaluators (conf/experiment/jp_math_mini.yaml settings): scored exactly as a run."""
    from evomerge.evaluator.jp_math import JPMathEvaluator

    common = dict(prompt_template="Q : {question} A :", extraction="robust", max_new_tokens=14, stop=[],
                  batch_size=256)
    d = root / "data"
    return {"target": JPMathEvaluator(tok, fitness=d / "ja_math/fitness.jsonl", validation=d / "ja_math/validation.jsonl",
                                      test=d / "ja_math/test.jsonl", name="jp_math", **common),
            "ja_general": JPMathEvaluator(tok, fitness=d / "ja_general/fitness.jsonl",
                                          validation=d / "ja_general/validation.jsonl",
                                          test=d / "ja_general/test.jsonl", name="ja_general", **common),
            "en_math": JPMathEvaluator(tok, fitness=d / "en_math/test.jsonl", test=d / "en_math/test.jsonl",
                                       name="en_math", **common)}


def score_model(model, evs: dict, split: str, ops: list[str]) -> dict[str, float]:
    """target = right number AND Japanese (acc_ja); its number and format parts; per operation; the other tasks."""
    res = evs["target"].evaluate(model, split)
    out = {"target": res.metrics["jp_math/acc_ja"], "target_number": res.metrics["jp_math/acc"],
           "target_ja_format": res.metrics["jp_math/ja_rate"]}
    for op in ("add", "sub"):
        sel = [r["correct"] for r in res.records if ops[r["id"]] == op]
        out[f"target_{op}"] = sum(sel) / max(1, len(sel))
    out["ja_general"] = evs["ja_general"].evaluate(model, split).metrics["ja_general/acc_ja"]
    out["en_math"] = evs["en_math"].evaluate(model, "test").metrics["en_math/acc"]
    out["sample"] = res.records[0]["output"]
    return out


@torch.no_grad()
def ta_merge(target, models: dict, lambdas: dict[str, float]) -> None:
    """theta = theta_base + sum_e lambda_e (theta_e - theta_base), written into `target`."""
    base = models["base"].state_dict()
    experts = {e: models[e].state_dict() for e in lambdas}
    for k, t in target.state_dict().items():
        t.copy_(base[k] + sum(lam * (experts[e][k] - base[k]) for e, lam in lambdas.items()))


def main(argv=None) -> int:
    set_offline_env()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", default="~/.cache/evomerge/zoo/jp_mini")
    ap.add_argument("--split", default="validation", choices=["fitness", "validation", "test"])
    ap.add_argument("--grid", default="0.5,0.75,1.0,1.25,1.5", help="lambda values for each expert")
    ap.add_argument("--out", default=None, help="write the table (Markdown) here")
    ap.add_argument("--no-build", action="store_true", help="use the folder as it is (zoo variants)")
    ap.add_argument("--set", default="", help="zoo overrides, e.g. base_steps=800,hidden=64")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from evomerge.zoo import jp_mini
    overrides = {k: int(v) for k, v in (kv.split("=") for kv in args.set.split(",") if kv)}
    t0 = time.perf_counter()
    root = Path(args.zoo).expanduser()
    if not args.no_build:
        root = jp_mini.build(root, **overrides)
    t_build = time.perf_counter() - t0
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(root / "base")  # the zoo's own tokenizer
    models = {n: LlamaForCausalLM.from_pretrained(root / n).eval() for n in ("base", "ja", "math")}
    from evomerge.evaluator.data import load_rows

    evs = evaluators(root, tok)
    ops = [r["op"] for r in load_rows(str(root / "data" / "ja_math" / f"{args.split}.jsonl"), "study")]
    rows = [(n, score_model(m, evs, args.split, ops)) for n, m in models.items()]
    grid = [float(v) for v in args.grid.split(",")]
    merged = LlamaForCausalLM.from_pretrained(root / "base").eval()
    for lj in grid:
        for lm in grid:
            ta_merge(merged, models, {"ja": lj, "math": lm})
            rows.append((f"TA ja={lj:g} math={lm:g}", score_model(merged, evs, args.split, ops)))
    cols = ["target", "target_number", "target_ja_format", "target_add", "target_sub", "ja_general", "en_math"]
    lines = [f"jp_mini zoo {root} (built/checked in {t_build:.0f} s), split `{args.split}`", "",
             "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {n} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |" for n, r in rows]
    lines += ["", "first target output per model: " + "; ".join(f"{n}: {r['sample']!r}" for n, r in rows[:3])]
    sc = dict(rows)
    lines += ["", f"precondition math expert right number on Japanese problems >= 0.60: "
              f"{sc['math']['target_number']:.3f} -> {'OK' if sc['math']['target_number'] >= 0.6 else 'FAILED'}",
              f"precondition JA expert Japanese format on Japanese problems ~1.0: "
              f"{sc['ja']['target_ja_format']:.3f} -> {'OK' if sc['ja']['target_ja_format'] >= 0.95 else 'FAILED'}",
              f"time {time.perf_counter() - t0:.0f} s",
              "command: python experiments/jp_math_mini/study.py " + " ".join(argv if argv is not None else sys.argv[1:])]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(dict(rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
