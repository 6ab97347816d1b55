"""A running batch of sequences sharing one KV cache, advanced one token per step.

Rows are left-padded to a common length; the attention mask hides the padding and each
row's position ids count only its real tokens, so a row's logits are those it would get
alone. New rows are prefilled as a group of their own and then merged in; finished rows
are removed, and positions that became padding for every row are cut away.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from . import kv
from .prefix import PrefixCache
from .sequence import Sequence


class DecodeBatch:
    def __init__(self, model: Any, prefixes: PrefixCache | None = None) -> None:
        self.model = model
        self.prefixes = prefixes
        self._clear()

    def _clear(self) -> None:
        self.rows: list[Sequence] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [rows, positions] 1 = real token
        self.last: torch.Tensor | None = None  # [rows] the token each row reads next
        self.pos: torch.Tensor | None = None  # [rows] that token's position id

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def mergeable(self) -> bool:
        return self.cache is None or kv.mergeable(self.cache)

    # ------------------------------------------------------------------ forward passes

    def prefill(self, seqs: list[Sequence], pad_id: int) -> torch.Tensor:
        """Become a batch of ``seqs`` (this batch must be empty); returns their next-token logits.

        With a prefix cache, rows that share a cached prefix start from a copy of its keys
        and values and only their suffixes run (layout ``[prefix | padding | suffix]``).
        """
        from transformers import DynamicCache

        assert not self.rows
        device = self.model.device
        ids = [s.context_ids() for s in seqs]
        cache = kv.growable(DynamicCache(config=self.model.config))
        prefix = self.prefixes.find(ids) if self.prefixes is not None and kv.all_growable(cache) else None
        p = 0
        if prefix is not None:
            p = len(prefix.ids)
            for i, (k, v) in enumerate(zip(prefix.keys, prefix.values, strict=True)):
                cache.update(k.expand(len(ids), -1, -1, -1), v.expand(len(ids), -1, -1, -1), i)
            ids = [row[p:] for row in ids]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), p + width), dtype=torch.long)
        mask[:, :p] = 1
        for i, row in enumerate(ids):
            input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, p + width - len(row) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, p:]
        with torch.inference_mode():
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.rows, self.cache, self.mask = list(seqs), out.past_key_values, mask
        self.pos = mask.sum(-1)
        return out.logits[:, -1, :]

    def step(self) -> torch.Tensor:
        """Feed every row its last token; returns next-token logits [rows, vocab]."""
        assert self.mask is not None and self.last is not None and self.pos is not None
        mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        with torch.inference_mode():
            out = self.model(
                input_ids=self.last[:, None],
                attention_mask=mask,
                position_ids=self.pos[:, None],
                past_key_values=self.cache,
                use_cache=True,
            )
        self.cache, self.mask = out.past_key_values, mask
        self.pos = self.pos + 1
        return out.logits[:, -1, :]

    # ------------------------------------------------------------------ membership

    def set_last(self, tokens: list[int]) -> None:
        self.last = torch.tensor(tokens, dtype=torch.long, device=self.model.device)

    def keep(self, flags: list[bool]) -> None:
        """Keep the rows whose flag is true; drop all-padding positions on the left."""
        if all(flags):
            return
        if not any(flags):
            self._clear()
            return
        assert self.mask is not None and self.last is not None and self.pos is not None
        idx = torch.tensor([i for i, f in enumerate(flags) if f], dtype=torch.long, device=self.mask.device)
        self.rows = [r for r, f in zip(self.rows, flags, strict=True) if f]
        kv.select(self.cache, idx)
        self.mask, self.last, self.pos = self.mask[idx], self.last[idx], self.pos[idx]
        if not kv.mergeable(self.cache):  # sliding-window / linear layers keep their own positions: no cut
            return
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0].item()) if used.numel() else 0
        if first > 0:
            kv.drop_left(self.cache, first)
            self.mask = self.mask[:, first:]

    def merge(self, other: DecodeBatch) -> None:
        """Append ``other``'s rows (both must be mergeable); ``other`` is left empty."""
        if not other.rows:
            return
        if not self.rows:
            self.rows, self.cache, self.mask = other.rows, other.cache, other.mask
            self.last, self.pos = other.last, other.pos
        else:
            assert self.mask is not None and other.mask is not None
            assert self.last is not None and other.last is not None
            assert self.pos is not None and other.pos is not None
            width = max(self.width, other.width)
            self.cache = kv.stack(self.cache, other.cache)
            self.mask = torch.cat(
                [F.pad(self.mask, (width - self.width, 0)), F.pad(other.mask, (width - other.width, 0))]
            )
            self.rows = self.rows + other.rows
            self.last = torch.cat([self.last, other.last])
            self.pos = torch.cat([self.pos, other.pos])
        other._clear()
