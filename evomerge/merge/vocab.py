"""mergekit's output vocabulary (`tokenizer_source: union` and the `tokenizer:` block), for `evomerge-merge`.

The output tokenizer is the base model's (`base`), another model's, or the union: the base's tokenizer plus every
token another model has and the base lacks, added as added tokens (special-token settings kept). Each model's
embedding and head rows are then laid out in the output vocabulary before merging, and a model that lacks a token
gets, as mergekit does: the one model that has it (its donor), else the base model's row when the base has it, else
the mean of the rows of the models that have it, else zeros (with a warning). `tokens:` overrides this per token
(`source: MODEL` or `source: {kind: zero}`; `force: true` applies the override to the models that have the token
too). `pad_to_multiple_of` pads the vocabulary with rows equal to the mean of the real rows.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


class VocabConfigError(ValueError):
    """A `tokenizer:` block evomerge cannot run (the message names the field)."""


@dataclass
class TokenizerSpec:
    """The parsed `tokenizer:` block (or `tokenizer_source: union`)."""

    source: str = "union"  # union | base | a model name
    tokens: dict[str, dict] = field(default_factory=dict)  # token -> {source: model | "zero", force: bool}
    pad_to_multiple_of: int | None = None

    @classmethod
    def parse(cls, block, where: str) -> TokenizerSpec:
        if not isinstance(block, dict):
            raise VocabConfigError(f"{where}: expected {{source, tokens, pad_to_multiple_of}}, found {block!r}")
        bad = set(block) - {"source", "tokens", "pad_to_multiple_of"}
        if bad:
            raise VocabConfigError(f"{where}: unknown key(s) {sorted(bad)}; expected source, tokens, "
                                   "pad_to_multiple_of")
        tokens = {}
        for tok, cfg in (block.get("tokens") or {}).items():
            w = f"{where}.tokens[{tok!r}]"
            if not isinstance(cfg, dict) or set(cfg) - {"source", "force"}:
                raise VocabConfigError(f"{w}: expected {{source, force}}, found {cfg!r}")
            src = cfg.get("source")
            if isinstance(src, dict):
                if src.get("kind") != "zero":
                    raise VocabConfigError(f"{w}.source: {src!r}; evomerge supports a model name or {{kind: zero}} "
                                           "(mergekit's model_token sources are not supported)")
                src = "zero"
            elif not isinstance(src, str):
                raise VocabConfigError(f"{w}.source: expected a model name or {{kind: zero}}, found {src!r}")
            tokens[str(tok)] = {"source": src, "force": bool(cfg.get("force", False))}
        pad = block.get("pad_to_multiple_of")
        if pad is not None and (not isinstance(pad, int) or pad < 1):
            raise VocabConfigError(f"{where}.pad_to_multiple_of: expected a positive integer, found {pad!r}")
        return cls(str(block.get("source", "union")), tokens, pad)


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def union_tokenizer(base_tok, others: list):
    """The base tokenizer plus every token of `others` it lacks (added tokens keep their settings)."""
    with tempfile.TemporaryDirectory() as d:  # a copy: never mutate a loaded tokenizer
        base_tok.save_pretrained(d)
        out = _load_tokenizer(Path(d))
    have = set(out.get_vocab())
    for tok in others:
        added = {info.content: info for info in tok.added_tokens_decoder.values()}
        for t in tok.get_vocab():
            if t in have:
                continue
            out.add_tokens(added.get(t, t))
            have.add(t)
    return out


@dataclass
class VocabPlan:
    """The output tokenizer, and for each model the source row of each output token (-1: the model lacks it)."""

    tokenizer: object
    rows: dict[str, np.ndarray]
    size: int  # output rows (the vocabulary, padded)
    base: str | None
    tokens: dict[str, dict]
    token_ids: dict[str, int]

    @classmethod
    def build(cls, spec: TokenizerSpec, folders: dict[str, Path], vocab_rows: dict[str, int], base: str | None,
              where: str = "tokenizer") -> VocabPlan:
        """`folders`: model name -> folder (with its tokenizer); `vocab_rows`: model name -> its embedding rows."""
        names = list(folders)
        ref = base or names[0]
        toks = {m: _load_tokenizer(folders[m]) for m in names}
        if spec.source == "union":
            out = union_tokenizer(toks[ref], [toks[m] for m in names if m != ref])
        elif spec.source == "base":
            out = toks[ref]
        elif spec.source in toks:
            out = toks[spec.source]
        else:
            raise VocabConfigError(f"{where}.source: {spec.source!r} is not union, base or a model of the config "
                                   f"({names})")
        for tok, cfg in spec.tokens.items():
            if cfg["source"] not in ("zero", *names):
                raise VocabConfigError(f"{where}.tokens[{tok!r}].source: {cfg['source']!r} is not a model of the "
                                       f"config ({names})")
        vocab = out.get_vocab()
        n = max(vocab.values()) + 1
        size = n if not spec.pad_to_multiple_of else -(-n // spec.pad_to_multiple_of) * spec.pad_to_multiple_of
        rows = {}
        for m in names:
            mv = toks[m].get_vocab()
            r = np.full(n, -1, dtype=np.int64)
            for t, i in vocab.items():
                j = mv.get(t, -1)
                r[i] = j if j < vocab_rows[m] else -1  # ids past the embedding rows (padding) do not count
            rows[m] = r
        return cls(out, rows, size, base, spec.tokens, vocab)

    def align(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each model's vocabulary tensor (rows = tokens) laid out in the output vocabulary."""
        names = list(tensors)
        first = next(iter(tensors.values()))
        shape, dtype = first.shape[1:], first.dtype
        present = np.stack([self.rows[m] >= 0 for m in names])  # models x tokens
        forced = np.zeros(present.shape[1], dtype=bool)  # tokens whose override applies to every model
        forced[[self.token_ids[t] for t, c in self.tokens.items() if c["force"] and t in self.token_ids]] = True
        default: dict[int, torch.Tensor] = {}
        by_id = {i: t for t, i in self.token_ids.items()}
        for i in np.flatnonzero(~present.all(0) | forced):
            tok = by_id.get(int(i))
            cfg = self.tokens.get(tok) if tok is not None else None
            have = [m for m, p in zip(names, present[:, i], strict=True) if p]
            if cfg is not None:
                src = cfg["source"]
                if src == "zero":
                    default[i] = torch.zeros(shape, dtype=dtype)
                elif self.rows[src][i] >= 0:
                    default[i] = tensors[src][self.rows[src][i]]
                else:
                    raise VocabConfigError(f"tokenizer.tokens[{tok!r}].source: model {src!r} has no such token")
            elif len(have) == 1:
                default[i] = tensors[have[0]][self.rows[have[0]][i]]
            elif self.base in have:
                default[i] = tensors[self.base][self.rows[self.base][i]]
            elif have:
                default[i] = (sum(tensors[m][self.rows[m][i]].float() for m in have) / len(have)).to(dtype)
            else:
                log.warning("token %r is in no model: its embedding rows are zero", tok)
                default[i] = torch.zeros(shape, dtype=dtype)
        out = {}
        for m in names:
            r = self.rows[m]
            n = len(r)
            new = torch.zeros((self.size, *shape), dtype=dtype)
            keep = np.flatnonzero((r >= 0) & ~forced)
            new[torch.as_tensor(keep)] = tensors[m][torch.as_tensor(r[keep])]
            for i, row in default.items():
                if r[i] < 0 or forced[i]:
                    new[i] = row
            if self.size > n:  # padding rows: the mean of the real ones
                new[n:] = new[:n].float().mean(0).to(dtype)
            out[m] = new
        return out
