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

``growable`` swaps a cache's plain layers for ``GrowableLayer``: a ``DynamicLayer`` that
writes each step's keys and values into preallocated room instead of concatenating, so
a decoding step no longer copies the whole cache (with 32 rows that copy was a fifth of
a SmolLM2 step on CPU). Row surgery replaces ``keys`` / ``values`` outright; the layer
notices and re-adopts them (one copy per join or leave, not per step).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer


class GrowableLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of buffers with room to grow."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None
        self._view: torch.Tensor | None = None  # the keys view last handed out (surgery replaces it)
        self._n = 0

    def _adopt(self, need: int) -> None:
        """Copy the current keys / values into new buffers holding at least ``need`` positions."""
        keys, values = self.keys, self.values
        assert keys is not None and values is not None
        n = keys.shape[-2]
        cap = max(need, n) + max(HEADROOM, n // 2)
        shape = (*keys.shape[:-2], cap, keys.shape[-1])
        self._kbuf, self._vbuf = keys.new_empty(shape), values.new_empty(shape)
        self._kbuf[..., :n, :] = keys
        self._vbuf[..., :n, :] = values
        self._set(n)

    def _set(self, n: int) -> None:
        assert self._kbuf is not None and self._vbuf is not None
        self._n = n
        self.keys, self.values = self._kbuf[..., :n, :], self._vbuf[..., :n, :]
        self._view = self.keys

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
            self._adopt(key_states.shape[-2])
            return self.keys, self.values  # type: ignore[return-value]
        m = key_states.shape[-2]
        if self._kbuf is None or self.keys is not self._view:  # replaced by row surgery
            self._adopt(self.keys.shape[-2] + m)
        assert self._kbuf is not None and self._vbuf is not None
        n = self._n
        if n + m > self._kbuf.shape[-2]:
            self._adopt(n + m)
        self._kbuf[..., n : n + m, :] = key_states
        self._vbuf[..., n : n + m, :] = value_states
        self._set(n + m)
        return self.keys, self.values  # type: ignore[return-value]

    def reset(self) -> None:
        self._kbuf = self._vbuf = None
        super().reset()


#: Positions of room a GrowableLayer adds beyond what it needs (at least; half its length when longer).
HEADROOM = 64


def growable(cache: Any) -> Any:
    """Replace the cache's plain ``DynamicLayer`` layers by ``GrowableLayer`` (before first use)."""
    layers = getattr(cache, "layers", None)
    if layers:
        cache.layers = [GrowableLayer() if type(layer) is DynamicLayer else layer for layer in layers]
    return cache


def all_growable(cache: Any) -> bool:
    """Every layer a ``GrowableLayer`` (full attention, per-position state): prefixes can be copied in."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is GrowableLayer for layer in layers)


def _layers(cache: Any) -> list[Any]:
    return list(getattr(cache, "layers", []))


def mergeable(cache: Any) -> bool:
    """True when every layer is a plain ``DynamicLayer`` (or ``GrowableLayer``) holding keys and values."""
    layers = _layers(cache)
    return bool(layers) and all(type(layer) in _PLAIN and layer.is_initialized for layer in layers)


_PLAIN = (DynamicLayer, GrowableLayer)


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
