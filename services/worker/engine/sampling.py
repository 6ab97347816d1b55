"""Choosing each row's next token: greedy for the whole batch at once, sampling row by row.

A sampled row draws from its own ``torch.Generator`` seeded from the request, so a
seeded request gives the same text whether it runs alone or batched with others.
"""

from __future__ import annotations

import random

import torch

from services.worker.runtimes.base import MIN_TEMPERATURE, GenerationParams


def make_generator(params: GenerationParams) -> torch.Generator | None:
    """A private RNG for a sampled request; None for greedy."""
    if params.temperature < MIN_TEMPERATURE:
        return None
    gen = torch.Generator(device="cpu")
    gen.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))
    return gen


def _filtered(logits: torch.Tensor, params: GenerationParams) -> torch.Tensor:
    """1-D logits after temperature, top-k and top-p (nucleus) filtering."""
    scores = logits.float() / params.temperature
    if params.top_k and params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p (the first always stays)
        drop = (cumulative - torch.softmax(ordered, dim=-1)) >= params.top_p
        scores = scores.scatter(0, order, ordered.masked_fill(drop, float("-inf")))
    return scores


def next_tokens(
    logits: torch.Tensor, params: list[GenerationParams], generators: list[torch.Generator | None]
) -> list[int]:
    """One token per row of ``logits`` ([rows, vocab])."""
    chosen = logits.argmax(dim=-1).tolist()
    for row, gen in enumerate(generators):
        if gen is None:
            continue
        probs = torch.softmax(_filtered(logits[row], params[row]), dim=-1).cpu()
        if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
            continue  # logits that overflowed (fp16, extreme values): the greedy choice stands
        chosen[row] = int(torch.multinomial(probs, 1, generator=gen).item())
    return [int(t) for t in chosen]
