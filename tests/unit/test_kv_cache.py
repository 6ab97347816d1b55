"""GrowableLayer: appends into preallocated room, and survives the batch's row surgery."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from services.worker.engine import kv


def states(rows: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 2, n, 4, generator=g), torch.randn(rows, 2, n, 4, generator=g)


def test_growable_matches_dynamic_through_steps_and_surgery() -> None:
    plain, grow = DynamicLayer(), kv.GrowableLayer()
    for step, n in enumerate([5, 1, 1, 70, 1]):  # 70 forces the buffer to grow
        k, v = states(3, n, step)
        a, b = plain.update(k, v), grow.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert grow.get_seq_length() == plain.get_seq_length() == 78
    buffer = grow._kbuf
    k, v = states(3, 1, 99)
    grow.update(k, v)
    assert grow._kbuf is buffer  # a step writes into the room it has: no copy of the cache
    plain.update(k, v)
    # row surgery (what a finished row leaving does) replaces keys/values; the next step still appends
    rows = torch.tensor([0, 2])
    for cache in (plain, grow):
        cache.keys, cache.values = cache.keys.index_select(0, rows), cache.values.index_select(0, rows)
    k, v = states(2, 1, 7)
    a, b = plain.update(k, v), grow.update(k, v)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert b[0].shape == (2, 2, 80, 4)


def test_growable_cache_is_mergeable_and_stacks() -> None:
    top, bottom = kv.growable(DynamicCache()), kv.growable(DynamicCache())
    top.layers, bottom.layers = [kv.GrowableLayer()], [kv.GrowableLayer()]
    top.update(*states(2, 3, 1), 0)
    bottom.update(*states(1, 5, 2), 0)
    assert kv.mergeable(top) and kv.mergeable(bottom)
    merged = kv.stack(top, bottom)
    assert merged.layers[0].keys.shape == (3, 2, 5, 4)
    merged.update(*states(3, 1, 3), 0)
    assert kv.length(merged) == 6
