"""Prefix caching: the keys and values of a prompt prefix many requests share, computed once.

Chat templates put the same system prompt in front of every request (SmolLM2's default
one is ~20 tokens, about half of a short chat prompt), so a batch's prefill spends much
of its time recomputing identical rows. ``PrefixCache`` notices a prefix shared by the
rows of a prefill group, or by a new request and recent ones, computes its keys and
values once (one row), and lets ``DecodeBatch.prefill`` start every row from a copy of
them and run the model on the suffixes only.

Position ids count real tokens, so the prefix has the same positions in every row and
its cached states are exact for each of them; the batch's layout becomes
``[prefix | left padding | suffix]`` with the attention mask hiding the padding.
Entries are kept least-recently-used, at most ``max_entries``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence as Seq
from typing import Any

import torch

#: Shortest prefix worth caching (tokens).
MIN_PREFIX = 16
#: Longest prefix looked for (tokens): longer shared text is rarely a template.
MAX_PREFIX = 512


def common_prefix(a: Seq[int], b: Seq[int]) -> int:
    n = min(len(a), len(b), MAX_PREFIX)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixEntry:
    __slots__ = ("ids", "keys", "values")

    def __init__(self, ids: tuple[int, ...], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.ids = ids
        self.keys = keys  # per layer: [1, kv_heads, len(ids), head_dim]
        self.values = values

    def fits(self, rows: list[list[int]]) -> bool:
        """Is this a prefix of every row, leaving each at least one token to run?"""
        p = len(self.ids)
        return all(len(r) > p and tuple(r[:p]) == self.ids for r in rows)


class PrefixCache:
    def __init__(self, model: Any, *, max_entries: int = 8, recent: int = 8) -> None:
        self.model = model
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, ...], PrefixEntry] = OrderedDict()
        self._recent: deque[list[int]] = deque(maxlen=recent)
        self.hits = 0  # prefills that started from a cached prefix
        self.tokens_reused = 0  # prompt tokens those prefills did not run
        self.tokens_computed = 0  # prompt tokens run to fill the cache

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, rows: list[list[int]]) -> PrefixEntry | None:
        """The longest cached (or newly computed) prefix shared by all ``rows``; None if none is worth it."""
        best: PrefixEntry | None = None
        for entry in self._entries.values():
            if entry.fits(rows) and (best is None or len(entry.ids) > len(best.ids)):
                best = entry
        if best is None:
            best = self._learn(rows)
        for r in rows:
            self._recent.append(r[:MAX_PREFIX])
        if best is not None:
            self._entries.move_to_end(best.ids)
            self.hits += 1
            self.tokens_reused += len(best.ids) * len(rows)
        return best

    def _learn(self, rows: list[list[int]]) -> PrefixEntry | None:
        """A prefix the group shares (or the first row shares with a recent request), cached now."""
        first = rows[0]
        if len(rows) > 1:
            p = min(common_prefix(first, r) for r in rows[1:])
        else:
            p = max((common_prefix(first, r) for r in self._recent), default=0)
        p = min(p, min(len(r) for r in rows) - 1)
        if p < MIN_PREFIX:
            return None
        ids = tuple(first[:p])
        entry = self._compute(ids)
        self.tokens_computed += p
        self._entries[ids] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return entry

    def _compute(self, ids: tuple[int, ...]) -> PrefixEntry:
        from transformers import DynamicCache

        device = self.model.device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                position_ids=torch.arange(len(ids), device=device)[None, :],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        layers = out.past_key_values.layers
        return PrefixEntry(ids, [layer.keys for layer in layers], [layer.values for layer in layers])
