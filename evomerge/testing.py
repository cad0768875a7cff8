"""Tiny models for tests, examples and benchmarks (built locally, no hub)."""

from __future__ import annotations

from pathlib import Path

import torch


def char_tokenizer(extra_chars: str = ""):
    """A character-level tokenizer over printable ASCII (plus `extra_chars`), with <pad>, <s>, </s>, <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"] + [c for c in dict.fromkeys(extra_chars) if ord(c) >= 127]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def tiny_causal_lm(out_dir: str | Path, arch: str = "llama", seed: int = 0, layers: int = 4, hidden: int = 64,
                   tokenizer=None, perturb_from: str | Path | None = None, noise: float = 0.02,
                   **config: object) -> Path:
    """Save a random tiny causal LM (llama | mistral | qwen2 | gpt2) with a char tokenizer to `out_dir`.

    With `perturb_from`, start from that checkpoint and add Gaussian noise: a cheap "fine-tuned expert" that shares
    the base's structure, for merge tests. Extra keyword arguments go to the config (e.g. `tie_word_embeddings=True`,
    `attention_dropout=0.3`, Qwen2's `use_sliding_window=True, max_window_layers=2`, Mistral's `sliding_window=16`).
    """
    from transformers import (
        AutoModelForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    out_dir = Path(out_dir)
    tok = tokenizer or char_tokenizer()
    torch.manual_seed(seed)
    if perturb_from is not None:
        model = AutoModelForCausalLM.from_pretrained(perturb_from)
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * noise)
    else:
        common = dict(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=0)
        llama_like = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          **common)
        llama_like.update({"tie_word_embeddings": False, **config})
        if arch == "llama":
            model = LlamaForCausalLM(LlamaConfig(**llama_like))
        elif arch == "mistral":
            model = MistralForCausalLM(MistralConfig(**{"sliding_window": None, **llama_like}))
        elif arch == "qwen2":
            model = Qwen2ForCausalLM(Qwen2Config(**llama_like))
        elif arch == "gpt2":
            model = GPT2LMHeadModel(GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=256, **common,
                                               **config))
        else:
            raise ValueError(f"unknown tiny architecture {arch!r}")
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
