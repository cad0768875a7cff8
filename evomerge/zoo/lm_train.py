"""Small causal-LM training and greedy decoding helpers for the locally built language-model zoos.

Sequences arrive as token-id lists with a `start` index: the loss covers tokens from `start` on (0 = everything,
as in pretraining; the answer start for supervised fine-tuning, so experts learn to answer, not to ask).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm


def _batch(seqs: list[list[int]], starts: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, st) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, max(st, 1): len(s)] = torch.tensor(s[max(st, 1):])
    return ids, labels


def train_lm(model, seqs: list[list[int]], starts: list[int] | None, *, steps: int, lr: float, batch_size: int,
             seed: int, pad_id: int, desc: str, warmup: int = 50, device: str = "cpu") -> list[float]:
    """AdamW with linear warmup and cosine decay; returns the loss every step (for the zoo's build log)."""
    starts = starts if starts is not None else [0] * len(seqs)
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapters only
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, leave=False)
    for _ in bar:
        idx = torch.randint(len(seqs), (batch_size,), generator=g).tolist()
        ids, labels = _batch([seqs[i] for i in idx], [starts[i] for i in idx], pad_id)
        ids, labels = ids.to(device), labels.to(device)
        logits = model(input_ids=ids, attention_mask=(ids != pad_id).long()).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                               ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
    model.eval()
    return losses


@torch.inference_mode()
def greedy(model, tokenizer, prompts: list[str], max_new_tokens: int = 8, batch_size: int = 256) -> list[str]:
    """Greedy continuations of `prompts` (left-padded batches); returns the decoded new text only."""
    tokenizer.padding_side = "left"
    outs = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i: i + batch_size], return_tensors="pt", padding=True)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        outs += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return outs
