"""Row surgery on a decoder's KV cache, so requests can join and leave a running batch.

A transformers ``DynamicCache`` keeps, per layer, keys and values shaped
``[batch, heads, positions, head_dim]``. Rows of a batch are left-padded to a common
length (their attention mask hides the padding), so:

- a new group of rows joins by left-padding the shorter side and concatenating on the
  batch axis (``stack``);
- finished rows leave by selecting the rows that remain (``select``);
- positions that are padding for every remaining row are cut from the left (``drop_left``).

Only caches whose layers are all plain full-attention ``DynamicLayer`` can be merged this
way (sliding-window and linear-attention layers keep state that is not per position);
``mergeable`` says whether a cache qualifies. Callers fall back to batches that only
admit new rows when empty.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _layers(cache: Any) -> list[Any]:
    return list(getattr(cache, "layers", []))


def mergeable(cache: Any) -> bool:
    """True when every layer is a plain ``DynamicLayer`` holding keys and values."""
    from transformers.cache_utils import DynamicLayer

    layers = _layers(cache)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)


def length(cache: Any) -> int:
    return int(cache.get_seq_length())


def _pad(t: torch.Tensor, n: int) -> torch.Tensor:
    # pad spec runs from the last dim backwards: (head_dim: 0, 0), (positions: n, 0)
    return F.pad(t, (0, 0, n, 0)) if n > 0 else t


def stack(top: Any, bottom: Any) -> Any:
    """Rows of ``top`` then rows of ``bottom`` in ``top`` (modified and returned), both left-aligned."""
    n_top, n_bottom = length(top), length(bottom)
    width = max(n_top, n_bottom)
    for a, b in zip(_layers(top), _layers(bottom), strict=True):
        a.keys = torch.cat([_pad(a.keys, width - n_top), _pad(b.keys, width - n_bottom)], dim=0)
        a.values = torch.cat([_pad(a.values, width - n_top), _pad(b.values, width - n_bottom)], dim=0)
    return top


def select(cache: Any, rows: torch.Tensor) -> None:
    """Keep only ``rows`` (a 1-D index tensor) on the batch axis."""
    for layer in _layers(cache):
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)


def drop_left(cache: Any, n: int) -> None:
    """Remove the first ``n`` positions of every row."""
    if n <= 0:
        return
    for layer in _layers(cache):
        layer.keys = layer.keys[:, :, n:, :].contiguous()
        layer.values = layer.values[:, :, n:, :].contiguous()


def nbytes(cache: Any) -> int:
    """Bytes held by the cache's keys and values."""
    total = 0
    for layer in _layers(cache):
        if getattr(layer, "is_initialized", False):
            total += layer.keys.numel() * layer.keys.element_size() * 2
    return total
