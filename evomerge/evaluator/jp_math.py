"""Japanese math (Sakana's jp_math fitness): zero-shot CoT generation, last number = answer, Japanese-only credit.

Protocol (reference notes, anchors.md section 4): the question is put into a Japanese Alpaca-style chain-of-thought
prompt, decoded greedily (batched, KV cache) until a stop string, the answer is the last number in the output and
is compared by float equality with the answer column; `acc_ja` counts it only when the output is Japanese.

Metrics (prefixed with the evaluator's name): `acc` (right number, any language), `ja_rate` (output judged
Japanese: the format part), `acc_ja` (both: the number Sakana reports), `answer_rate` (a number was found).

The small pure functions `extract_answer`, `is_japanese` and `score_output` are public so that other evaluators
(e.g. the miniature jp_math zoo) score exactly the same way.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from evomerge.evaluator.base import EvalResult, check_split, finite_logits, seeded_subsample, select
from evomerge.evaluator.data import load_rows, require_columns
from evomerge.evaluator.generation import greedy_generate

# The prompt Sakana's evaluation wraps every question in (their "ja-alpaca-cot" template), with {question}.
SAKANA_COT_TEMPLATE = (
    "以下に、あるタスクを説明する指示があります。リクエストを適切に完了するための回答を日本語で記述してください。"
    "一歩一歩考えましょう。\n\n### 指示:\n{question}\n\n### 応答:"
)
SAKANA_STOP = ["Instruction:", "Instruction", "Response:", "Response"]

# --- answer extraction -------------------------------------------------------------------------------------------

# Sakana's rule: the last match of \d*\.?\d+ . It cannot see a comma or a minus sign, so "1,000" reads as 0.0 and
# "-5" as 5.0 (kept on purpose: this mode reproduces their numbers). Python's \d also matches full-width digits.
_SAKANA = re.compile(r"\d*\.?\d+")
# Robust: an optional minus (not when it joins two ASCII words/numbers, as in "5-3"), thousands groups, decimals.
_ROBUST = re.compile(r"(?:(?<![0-9A-Za-z])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<!\d)\.\d+")
_MINUS_SIGNS = "\u2212\u2012\u2013\ufe63\uff0d"  # minus sign, figure dash, en dash, small and full-width hyphen-minus
EXTRACTION_MODES = ("sakana", "robust")


def normalise_number_text(text: str) -> str:
    """Full-width digits and punctuation to ASCII (NFKC) and every minus-like sign to '-'."""
    text = unicodedata.normalize("NFKC", text)
    return text.translate({ord(c): "-" for c in _MINUS_SIGNS})


def extract_answer(text: str, mode: str = "sakana") -> float | None:
    """The last number in `text` as a float, or None when there is none."""
    if mode == "sakana":
        matches = _SAKANA.findall(text)
        return float(matches[-1]) if matches else None
    if mode == "robust":
        matches = _ROBUST.findall(normalise_number_text(text))
        return float(matches[-1].replace(",", "")) if matches else None
    raise ValueError(f"extraction mode {mode!r}: expected one of {EXTRACTION_MODES}")


def parse_target(value: Any) -> float:
    """The reference answer as a float ("1,000", "１２" and numbers are all accepted)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = normalise_number_text(str(value)).strip().replace(",", "")
    return float(text)


# --- language check ----------------------------------------------------------------------------------------------

def _is_kana(c: str) -> bool:
    o = ord(c)
    return 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0xFF66 <= o <= 0xFF9F


def _is_kanji(c: str) -> bool:
    o = ord(c)
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FA1F
            or c in "々〆ヶ")


def japanese_share(text: str) -> tuple[float, int, int]:
    """(share of kana/kanji among letters, number of letters, number of kana)."""
    letters = [c for c in text if unicodedata.category(c).startswith("L")]
    kana = sum(_is_kana(c) for c in letters)
    ja = kana + sum(_is_kanji(c) for c in letters)
    return (ja / len(letters) if letters else 0.0), len(letters), kana


def is_japanese(text: str, threshold: float = 0.5, require_kana: bool = True) -> bool:
    """Script-based check: at least `threshold` of the letters are kana/kanji (and, by default, some are kana,
    so that Chinese is not taken for Japanese). Digits, punctuation and spaces do not count; no letters -> False."""
    share, n_letters, kana = japanese_share(text)
    return n_letters > 0 and share >= threshold and (kana > 0 or not require_kana)


class FastTextDetector:
    """fastText language id (lid.176.bin/.ftz, supplied by the user): Japanese when P(__label__ja) > threshold,
    on the text with newlines removed, as in Sakana's evaluation."""

    def __init__(self, model_path: str, threshold: float = 0.5):
        path = Path(model_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"language.model_path: fastText model file {path} does not exist (download "
                                    f"lid.176.ftz or lid.176.bin from the fastText site and point to it)")
        try:
            import fasttext
        except ImportError as e:
            raise ImportError("language.detector=fasttext needs the optional `fasttext` package "
                              "(pip install fasttext-numpy2, or fasttext); or use detector=script") from e
        self.model, self.threshold = fasttext.load_model(str(path)), threshold

    def __call__(self, text: str) -> bool:
        labels, probs = self.model.predict(text.replace("\n", ""), k=-1)
        return float(dict(zip(labels, probs, strict=True)).get("__label__ja", 0.0)) > self.threshold


def build_detector(detector: str = "script", threshold: float = 0.5, model_path: str | None = None,
                   require_kana: bool = True) -> Callable[[str], bool]:
    if detector == "script":
        return lambda text: is_japanese(text, threshold, require_kana)
    if detector == "fasttext":
        if not model_path:
            raise ValueError("language.model_path: detector=fasttext needs the path of a lid.176 model file")
        return FastTextDetector(model_path, threshold)
    raise ValueError(f"language.detector: {detector!r}; expected 'script' or 'fasttext'")


def score_output(output: str, target: float, mode: str, detector: Callable[[str], bool]) -> dict:
    pred = extract_answer(output, mode)
    number = pred is not None and pred == target
    japanese = bool(detector(output))
    return {"prediction": pred, "number_correct": number, "japanese": japanese, "correct": number and japanese}


# --- the evaluator -----------------------------------------------------------------------------------------------

class JPMathEvaluator:
    def __init__(self, tokenizer, fitness: Any, test: Any = None, validation: Any = None,
                 question_column: str = "question", answer_column: str = "answer_number",
                 fitness_samples: int | None = None, prompt_template: str = SAKANA_COT_TEMPLATE,
                 extraction: str = "sakana", language: dict | None = None, max_new_tokens: int = 1024,
                 stop: Sequence[str] | None = tuple(SAKANA_STOP), batch_size: int = 8, add_special_tokens: bool = True,
                 seed: int = 0, device: str = "cpu", name: str = "jp_math", progress: bool = False):
        where = f"evaluator.{name}"
        if tokenizer is None:
            raise ValueError(f"{where}: jp_math needs a tokenizer, but the model pool has none")
        if "{question}" not in prompt_template:
            raise ValueError(f"{where}.prompt_template: must contain the placeholder {{question}}; found "
                             f"{prompt_template[:80]!r}")
        if extraction not in EXTRACTION_MODES:
            raise ValueError(f"{where}.extraction: {extraction!r}; expected one of {EXTRACTION_MODES}")
        if int(max_new_tokens) <= 0 or int(batch_size) <= 0:
            raise ValueError(f"{where}: max_new_tokens and batch_size must be positive, found {max_new_tokens}, "
                             f"{batch_size}")
        self.name, self.tokenizer, self.template, self.extraction = name, tokenizer, prompt_template, extraction
        self.max_new_tokens, self.batch_size, self.stop = int(max_new_tokens), int(batch_size), list(stop or [])
        self.add_special_tokens, self.progress = add_special_tokens, progress
        self.detector = build_detector(**(language or {}))
        cols = [question_column, answer_column]

        def items(src, split):
            rows = load_rows(src, f"{where}.{split}")
            require_columns(rows, cols, f"{where}.{split}")
            out = []
            for i, r in enumerate(rows):
                try:
                    out.append((str(r[question_column]), parse_target(r[answer_column])))
                except ValueError as e:
                    raise ValueError(f"{where}.{split}: row {i} column {answer_column!r} is not a number: "
                                     f"{r[answer_column]!r}") from e
            return out

        fit = items(fitness, "fitness")
        if fitness_samples is not None and not 0 < int(fitness_samples) <= len(fit):
            raise ValueError(f"{where}.fitness_samples: {fitness_samples}, but the fitness data has {len(fit)} rows; "
                             f"expected 1..{len(fit)} or null for all")
        pick, rest = seeded_subsample(len(fit), fitness_samples, seed)
        self.data = {"fitness": [fit[i] for i in pick],
                     "validation": items(validation, "validation") if validation is not None else [fit[i] for i in rest],
                     "test": items(test, "test") if test is not None else []}

    def item_scores(self, records: list[dict]) -> dict[str, np.ndarray]:
        """Per-item scores behind the rate metrics, in item order (anchor estimates: evaluator/anchors.py)."""
        return {f"{self.name}/{m}": np.array([float(r[key]) for r in records])
                for m, key in (("acc", "number_correct"), ("acc_ja", "correct"), ("ja_rate", "japanese"))}

    def metric_names(self) -> list[str]:
        return [f"{self.name}/{m}" for m in ("acc", "acc_ja", "ja_rate", "answer_rate")]

    def higher_is_better(self) -> dict[str, bool]:
        return {m: True for m in self.metric_names()}

    def size(self, split: str) -> int:
        check_split(split, self.name)
        return len(self.data[split])

    def prompts(self, split: str, indices: Sequence[int] | None = None) -> list[str]:
        items = [self.data[split][i] for i in select(range(len(self.data[split])), indices, self.name)]
        return [self.template.format(question=q) for q, _ in items]

    def evaluate(self, model: nn.Module, split: str = "fitness", indices: Sequence[int] | None = None) -> EvalResult:
        check_split(split, self.name)
        if not self.data[split]:
            raise ValueError(f"evaluator.{self.name}: the {split!r} split has no items (configure `{split}` data)")
        ids = select(range(len(self.data[split])), indices, self.name)
        items = [self.data[split][i] for i in ids]
        prompts = [self.template.format(question=q) for q, _ in items]
        with finite_logits(model, f"evaluator.{self.name}"):
            outputs = greedy_generate(model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size,
                                      self.stop, self.add_special_tokens, self.progress)
        records = []
        for i, (q, target), out in zip(ids, items, outputs, strict=True):
            s = score_output(out, target, self.extraction, self.detector)
            records.append({"id": i, "input": q, "output": out, "target": target, **s})
        mean = lambda key: float(np.mean([r[key] for r in records]))  # noqa: E731
        metrics = {f"{self.name}/acc": mean("number_correct"), f"{self.name}/acc_ja": mean("correct"),
                   f"{self.name}/ja_rate": mean("japanese"),
                   f"{self.name}/answer_rate": float(np.mean([r["prediction"] is not None for r in records]))}
        return EvalResult(metrics, records, len(records))
