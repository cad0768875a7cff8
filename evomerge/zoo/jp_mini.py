"""The jp_mini zoo: Sakana's jp_math study in miniature (see experiments/jp_math_mini/README.md).

A small Llama base is pretrained on a synthetic bilingual corpus (English and Japanese sentences made from
templates), then two experts are fine-tuned from it:
- `ja`: answers Japanese questions on non-math tasks in Japanese ("答え は X です 。"), as shisa-gamma;
- `math`: solves English arithmetic word problems ("The answer is N ."), as WizardMath / Abel.
The target is arithmetic word problems posed in Japanese and answered in Japanese with the right number.

Design choices (shared/reference/minijp_lessons.md): names, objects and digits are the same tokens in both
languages, so the math content is shared by construction; the base sees word-level code-switched sentences
(English verbs in Japanese sentences and the reverse) so the operation words of both languages share contexts; the
JA expert's numeric answers are never copies of a number in the question and its tasks never use the target's
question template; target answers are never a number of the question (b >= 1 and a != 2b), so copying earns
nothing. Everything is deterministic from the seed, cached, and built once; `zoo.json` is written last.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from evomerge.zoo import is_built, mark_built

log = logging.getLogger(__name__)

# ---- the synthetic world (a fixed vocabulary: the tokenizer is a word list) ---------------------------------------
NAMES = ["Ken", "Aya", "Yuki", "Taro", "Mika", "Sora", "Hana", "Ryo"]
OBJECTS = ["apples", "pens", "books", "cards", "eggs", "coins"]
MAX_N = 18
NUM_EN = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
          "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]
NUM_JA = ["〇", "一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "十一", "十二", "十三", "十四", "十五",
          "十六", "十七", "十八"]
COLORS = {"red": "赤", "blue": "青", "green": "緑", "white": "白", "black": "黒", "yellow": "黄色"}
ADD = {"gets": "もらいました", "buys": "買いました", "finds": "見つけました"}
SUB = {"loses": "なくしました", "eats": "食べました", "sells": "売りました"}
FUNCTION_WORDS = (
    "Q A : . ? has have does how many now the answer is The How plus minus likes who Who and there are people "
    "は を の 個 持って います 今 何 か 。 ？ 答え です たす ひく が 好き 色 だれ と 人 数字 で 番号 Now What color like ( ) + - ="
).split()
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def vocabulary() -> list[str]:
    words = (FUNCTION_WORDS + NAMES + OBJECTS + [str(i) for i in range(MAX_N + 1)] + NUM_EN + NUM_JA
             + list(COLORS) + list(COLORS.values()) + list(ADD) + list(ADD.values()) + list(SUB)
             + list(SUB.values()))
    return SPECIALS + list(dict.fromkeys(words))


def tokenizer():
    """A word-level tokenizer over `vocabulary()`; text is space-separated words in both scripts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


# ---- sentences ---------------------------------------------------------------------------------------------------
def has(lang: str, n: str, a: int, obj: str) -> str:
    return f"{n} has {a} {obj} ." if lang == "en" else f"{n} は {a} 個 の {obj} を 持って います 。"


def event(lang: str, n: str, verb: str, b: int, obj: str) -> str:
    """`verb` is given in English; `lang` picks the sentence frame, `vlang` (via the verb itself) its word."""
    return f"{n} {verb} {b} {obj} ." if lang == "en" else f"{n} は {b} 個 の {obj} を {verb} 。"


def question(lang: str, n: str, obj: str) -> str:
    return f"How many {obj} does {n} have now ?" if lang == "en" else f"{n} は 今 {obj} を 何 個 持って います か ？"


def fact(lang: str, a: int, op: str, b: int, c: int, oplang: str | None = None) -> str:
    oplang = oplang or lang
    word = {("en", "+"): "plus", ("en", "-"): "minus", ("ja", "+"): "たす", ("ja", "-"): "ひく"}[(oplang, op)]
    return f"{a} {word} {b} is {c} ." if lang == "en" else f"{a} {word} {b} は {c} です 。"


def core(a: int, op: str, b: int) -> str:
    """The arithmetic of a problem in notation shared by both languages (GSM8K solutions write equations too)."""
    return f"( {a} {op} {b} )"


def answer(lang: str, x) -> str:
    return f"The answer is {x} ." if lang == "en" else f"答え は {x} です 。"


def prompt(q: str) -> str:
    """The instruction template every model is trained and scored with (Sakana uses one template for all)."""
    return f"Q : {q} A :"


def _verb(rng: random.Random, op: str, lang: str) -> str:
    en = rng.choice(list(ADD if op == "+" else SUB))
    return en if lang == "en" else (ADD | SUB)[en]


def _operands(rng: random.Random, op: str) -> tuple[int, int, int]:
    """a, b and the result, with the result never equal to a number in the question (b >= 1, a != 2b)."""
    while True:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        if op == "+":
            return a, b, a + b
        a = rng.randint(2, MAX_N)
        if b < a and a != 2 * b:
            return a, b, a - b


# ---- the base corpus -------------------------------------------------------------------------------------------
def base_sentence(rng: random.Random, lang: str, switch: bool) -> str:
    """One sentence; with `switch`, the content words (verbs, operation words) come from the other language."""
    other = "ja" if lang == "en" else "en"
    wlang = other if switch else lang
    kind = rng.choice(["has", "event", "event", "fact", "fact", "notation", "notation", "color", "number"])
    n, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    if kind == "has":
        return has(lang, n, rng.randint(0, MAX_N), obj)
    if kind == "event":
        op = rng.choice("+-")
        return event(lang, n, _verb(rng, op, wlang), rng.randint(1, 9), obj)
    if kind == "fact":
        op = rng.choice("+-")
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        if op == "-" and b > a:
            a, b = b, a
        return fact(lang, a, op, b, a + b if op == "+" else a - b, oplang=wlang)
    if kind == "notation":  # the same in both languages; covers every problem's arithmetic (a - b with a <= 18)
        op = rng.choice("+-")
        b = rng.randint(0, 9)
        a = rng.randint(0, 9) if op == "+" else rng.randint(b, MAX_N)
        return f"{core(a, op, b)} = {a + b if op == '+' else a - b} ."
    if kind == "color":
        en = rng.choice(list(COLORS))
        word = en if wlang == "en" else COLORS[en]
        return f"{n} likes {word} ." if lang == "en" else f"{n} は {word} が 好き です 。"
    k = rng.randint(0, MAX_N)
    word = NUM_EN[k] if wlang == "en" else NUM_JA[k]
    return f"{word} is {k} ." if lang == "en" else f"{word} は {k} です 。"


def now(lang: str, n: str, c: int, obj: str) -> str:
    return f"Now {n} has {c} {obj} ." if lang == "en" else f"今 {n} は {c} 個 の {obj} を 持って います 。"


def story(rng: random.Random, lang: str, switch: bool) -> str:
    """A narrative with its arithmetic in shared notation, but no outcome and no question: the base never practises
    answering how-many questions (that is the math expert's skill); it knows the notation's facts separately."""
    wlang = ("ja" if lang == "en" else "en") if switch else lang
    op = rng.choice("+-")
    a, b, c = _operands(rng, op)
    n, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    return f"{has(lang, n, a, obj)} {event(lang, n, _verb(rng, op, wlang), b, obj)} {core(a, op, b)}"


def qa_color(rng: random.Random, lang: str) -> str:
    """Bare question answering on a non-math task in either language (the base's generic instruction ability)."""
    n1, n2 = rng.sample(NAMES, 2)
    c1, c2 = rng.sample(list(COLORS), 2)
    if lang == "en":
        return f"{n1} likes {c1} . {n2} likes {c2} . Q : What color does {n1} like ? A : {c1} ."
    return (f"{n1} は {COLORS[c1]} が 好き です 。 {n2} は {COLORS[c2]} が 好き です 。 "
            f"Q : {n1} は 何 色 が 好き です か ？ A : {COLORS[c1]} 。")


def base_document(rng: random.Random) -> str:
    """A short document: English, Japanese, code-switched, or sentence-parallel (English then Japanese), or a
    story with its outcome, or a bare non-math question and answer."""
    style = rng.choices(["en", "ja", "switch", "parallel", "story", "qa"], weights=[3, 3, 2, 2, 4, 1])[0]
    if style == "story":
        lang = rng.choice(["en", "ja"])
        return story(rng, lang, rng.random() < 0.3)
    if style == "qa":
        return qa_color(rng, rng.choice(["en", "ja"]))
    sents = []
    for _ in range(rng.randint(2, 4)):
        lang = rng.choice(["en", "ja"]) if style in ("switch", "parallel") else style
        if style == "parallel":
            state = rng.getstate()
            sents.append(base_sentence(rng, "en", False))
            rng.setstate(state)  # the same draws give the same content in Japanese
            sents.append(base_sentence(rng, "ja", False))
        else:
            sents.append(base_sentence(rng, lang, style == "switch" and rng.random() < 0.6))
    return " ".join(sents)


# ---- tasks ---------------------------------------------------------------------------------------------------------
def filler(rng: random.Random, lang: str, avoid: str) -> str:
    """A distracting sentence about someone else (its number is never the answer's source)."""
    n = rng.choice([x for x in NAMES if x != avoid])
    if rng.random() < 0.5:
        return has(lang, n, rng.randint(1, 9), rng.choice(OBJECTS))
    en = rng.choice(list(COLORS))
    return f"{n} likes {en} ." if lang == "en" else f"{n} は {COLORS[en]} が 好き です 。"


def word_problem(rng: random.Random, lang: str, fillers: bool = False) -> dict:
    """A one-step word problem; the answer is never a number that appears in the question. With `fillers` (the
    math expert's training data), 0-2 distracting sentences are inserted, so the answer must come from the content
    (the arithmetic) rather than from positions."""
    op = rng.choice("+-")
    a, b, c = _operands(rng, op)
    n, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    parts = [has(lang, n, a, obj), event(lang, n, _verb(rng, op, lang), b, obj), core(a, op, b)]
    for _ in range(rng.randint(0, 2) if fillers else 0):
        parts.insert(rng.randint(0, len(parts)), filler(rng, lang, n))
    q = " ".join(parts + [question(lang, n, obj)])
    return {"question": q, "answer": f"{core(a, op, b)} = {c} . {answer(lang, c)}", "answer_number": c,
            "op": "add" if op == "+" else "sub", "lang": lang}


def ja_task(rng: random.Random, worked: bool = False) -> dict:
    """A Japanese non-math question with a Japanese answer (never the target's question template). `worked`
    answers first name what the answer was read from, in the notation the math expert writes its equation in
    ("( 十七 ) = 17 . 答え は 17 です 。"), as a Japanese model that reasons before it answers; it draws nothing
    more from `rng`, so the questions are the same either way."""
    kind = rng.choice(["number", "color", "who", "count"])
    if kind == "number":  # reading a number word: the numeric answer is not a copy
        k, n, o = rng.randint(0, MAX_N), rng.choice(NAMES), rng.choice(OBJECTS)
        q, x = f"{n} の {o} の 番号 は {NUM_JA[k]} です 。 {n} の {o} の 番号 は 数字 で 何 です か ？", k
        source = NUM_JA[k]
    elif kind == "color":
        n1, n2 = rng.sample(NAMES, 2)
        c1, c2 = rng.sample(list(COLORS.values()), 2)
        q, x = f"{n1} は {c1} が 好き です 。 {n2} は {c2} が 好き です 。 {n1} は 何 色 が 好き です か ？", c1
        source = n1
    elif kind == "who":
        n1, n2 = rng.sample(NAMES, 2)
        o1, o2 = rng.sample(OBJECTS, 2)
        q = (f"{has('ja', n1, rng.randint(1, 9), o1)} {has('ja', n2, rng.randint(1, 9), o2)} "
             f"だれ が {o2} を 持って います か ？")
        x, source = n2, o2
    else:  # counting people: a numeric answer that is not in the question
        k = rng.randint(2, 4)
        people = rng.sample(NAMES, k)
        q, x = " と ".join(people) + " が います 。 何 人 います か ？", k
        source = " と ".join(people)
    text = f"( {source} ) = {x} . {answer('ja', x)}" if worked else answer("ja", x)
    return {"question": q, "answer": text, "answer_text": str(x), "kind": kind, "lang": "ja"}


def _numeric_ja_task(rng: random.Random) -> dict:
    """A JA-expert task with a numeric answer (number reading or counting), with `answer_number` for scoring."""
    while True:
        item = ja_task(rng)
        if item["kind"] in ("number", "count"):
            return item | {"answer_number": int(item["answer_text"])}


def _unique(rng: random.Random, make, n: int, exclude: set[str]) -> list[dict]:
    """`n` items with distinct questions, none in `exclude` (which grows: splits never overlap)."""
    out, tries = [], 0
    while len(out) < n:
        item = make(rng)
        tries += 1
        if item["question"] not in exclude:
            exclude.add(item["question"])
            out.append(item)
        elif tries > 200 * n:
            raise ValueError(f"cannot draw {n} distinct items; lower the split sizes")
    return out


def datasets(seed: int, n_fitness: int, n_validation: int, n_test: int, n_train_expert: int,
             ja_worked: bool = False) -> dict[str, list]:
    """Every JSONL file of the zoo: the experts' training data and the evaluation splits, pairwise disjoint.
    `ja_worked` changes only the JA expert's answers (`ja_task`); every split and the questions stay the same."""
    rng = random.Random(seed * 7919 + 13)
    seen: set[str] = set()
    sizes = {"fitness": n_fitness, "validation": n_validation, "test": n_test}
    out = {f"ja_math/{s}": _unique(rng, lambda r: word_problem(r, "ja"), k, seen) for s, k in sizes.items()}
    numeric = lambda r: _numeric_ja_task(r)  # noqa: E731  (scored by number + Japanese, like the target)
    out |= {f"ja_general/{s}": _unique(rng, numeric, max(1, k // 2), seen) for s, k in sizes.items()}
    out["en_math/test"] = _unique(rng, lambda r: word_problem(r, "en"), n_test, seen)
    out["train/math"] = _unique(rng, lambda r: word_problem(r, "en", fillers=True), n_train_expert, seen)
    out["train/ja"] = _unique(rng, lambda r: ja_task(r, ja_worked), n_train_expert, seen)
    return out


# ---- building --------------------------------------------------------------------------------------------------------
VERSION = 4  # bump when the corpus, the tasks or the training change: a zoo built by older code is rebuilt
DEFAULTS = dict(seed=0, hidden=96, layers=4, heads=4, ffn=256, base_docs=20000, base_steps=1000,
                expert_steps=200, batch_size=32, n_fitness=200, n_validation=100, n_test=300, n_train_expert=2000)


def _model(spec: dict, vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=spec["hidden"], intermediate_size=spec["ffn"],
                      num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
                      num_key_value_heads=spec["heads"], max_position_embeddings=128, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def _encode(tok, texts: list[str]) -> list[list[int]]:
    return [ids + [tok.eos_token_id] for ids in tok(texts)["input_ids"]]


def _sft(tok, items: list[dict]) -> tuple[list[list[int]], list[int]]:
    """Prompt + answer sequences; the loss starts at the answer."""
    p = tok([prompt(it["question"]) for it in items])["input_ids"]
    full = _encode(tok, [f"{prompt(it['question'])} {it['answer']}" for it in items])
    return full, [len(x) for x in p]


def planned_layers(**options) -> int:
    """The depth of this zoo's models before it is built (dry runs): `layers`, 4 by default."""
    return int((DEFAULTS | options)["layers"])


def build(root: str | Path, threads: int = 1, **overrides) -> Path:
    """Build (once) base + `ja` + `math` experts and the data files under `root`; returns `root`.

    `threads`: torch threads while training (1 by default: on a shared 2-core machine, 2 threads contend badly).
    """
    from tqdm.auto import tqdm

    from evomerge.store import write_jsonl
    from evomerge.zoo.lm_train import train_lm

    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"jp_mini zoo: unknown setting(s) {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
    spec = DEFAULTS | overrides
    root = Path(root).expanduser()
    if is_built(root, "jp_mini", spec, VERSION):
        return root

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(2, int(threads))))
    try:
        tok = tokenizer()
        data = datasets(spec["seed"], spec["n_fitness"], spec["n_validation"], spec["n_test"],
                        spec["n_train_expert"])
        for name, rows in data.items():
            write_jsonl(root / "data" / f"{name}.jsonl", rows)
        rng = random.Random(spec["seed"])
        corpus = _encode(tok, [base_document(rng) for _ in range(spec["base_docs"])])
        torch.manual_seed(spec["seed"])
        base = _model(spec, len(tok))
        steps = tqdm(total=3, desc="jp_mini zoo (base, ja, math)")
        losses = {"base": train_lm(base, corpus, None, steps=spec["base_steps"], lr=2e-3,
                                   batch_size=spec["batch_size"], seed=spec["seed"], pad_id=tok.pad_token_id,
                                   desc="jp_mini: pretrain base")}
        base.save_pretrained(root / "base")
        tok.save_pretrained(root / "base")
        steps.update()
        for i, expert in enumerate(["ja", "math"]):
            from transformers import LlamaForCausalLM

            model = LlamaForCausalLM.from_pretrained(root / "base")
            seqs, starts = _sft(tok, data[f"train/{expert}"])
            losses[expert] = train_lm(model, seqs, starts, steps=spec["expert_steps"], lr=1e-3,
                                      batch_size=spec["batch_size"], seed=spec["seed"] + 1 + i,
                                      pad_id=tok.pad_token_id, desc=f"jp_mini: fine-tune {expert}", warmup=20)
            model.save_pretrained(root / expert)
            tok.save_pretrained(root / expert)
            steps.update()
        steps.close()
    finally:
        torch.set_num_threads(saved_threads)
    final = {k: round(sum(v[-50:]) / len(v[-50:]), 4) for k, v in losses.items()}
    mark_built(root, spec, VERSION, final_train_loss=final)
    log.info("jp_mini zoo built at %s (final training losses %s)", root, final)
    return root
