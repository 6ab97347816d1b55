"""Prefix caching: a shared prompt prefix runs once, and outputs are exactly those without it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from services.worker.engine import EngineRuntime
from services.worker.engine.batch import DecodeBatch
from services.worker.engine.prefix import MIN_PREFIX, PrefixCache, common_prefix
from services.worker.runtimes import GenerationParams, RunRequest, Task, TransformersRuntime

SYSTEM = "the sky is blue and the sea is green and the sun is red . the moon is a star ? no . "
QUESTIONS = ["what is the capital of france ?", "one two three", "cat", "where is the city of paris on the river ?"]


class Row:
    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def context_ids(self) -> list[int]:
        return self.ids


def encode(naive: TransformersRuntime, text: str) -> list[int]:
    return list(naive.tokenizer(text)["input_ids"])


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5, 6], [5, 6, 7]) == 2


def test_prefill_from_a_prefix_gives_the_same_logits_and_caches_it_once(naive: TransformersRuntime) -> None:
    rows = [encode(naive, SYSTEM + q) for q in QUESTIONS]
    shared = min(common_prefix(rows[0], r) for r in rows[1:])
    assert shared >= MIN_PREFIX
    plain = DecodeBatch(naive.model).prefill([Row(r) for r in rows], 0)
    cache = PrefixCache(naive.model)
    batch = DecodeBatch(naive.model, cache)
    logits = batch.prefill([Row(r) for r in rows], 0)
    assert len(cache) == 1 and cache.tokens_computed == shared and cache.tokens_reused == shared * len(rows)
    torch.testing.assert_close(logits, plain, rtol=1e-4, atol=1e-4)
    # decoding on from the [prefix | padding | suffix] layout matches the plain batch too
    plain_batch = DecodeBatch(naive.model)
    plain_batch.prefill([Row(r) for r in rows], 0)
    for b in (batch, plain_batch):
        b.set_last([1, 2, 3, 4])
    torch.testing.assert_close(batch.step(), plain_batch.step(), rtol=1e-4, atol=1e-4)
    # a later group reuses the entry instead of computing it again
    DecodeBatch(naive.model, cache).prefill([Row(rows[2])], 0)
    assert len(cache) == 1 and cache.tokens_computed == shared and cache.hits == 2


def test_a_lone_request_learns_the_prefix_from_recent_ones_and_short_ones_skip_it(naive: TransformersRuntime) -> None:
    cache = PrefixCache(naive.model)
    first, second = (encode(naive, SYSTEM + q) for q in QUESTIONS[:2])
    assert cache.find([first]) is None  # nothing to share with yet
    entry = cache.find([second])
    assert entry is not None and len(entry.ids) == common_prefix(first, second)
    assert cache.find([encode(naive, "hello cat")]) is None  # too short to share anything worth it
    words = "one two three four five six seven eight nine ten".split()
    learnt = []
    for w in words:  # ten different shared prefixes: the least recently used go past the bound
        a, b = (encode(naive, f"{w} {SYSTEM}{q}") for q in QUESTIONS[:2])
        cache.find([a])
        e = cache.find([b])
        assert e is not None
        learnt.append(e.ids)
    assert len(cache) == cache.max_entries
    assert learnt[0] not in cache._entries and learnt[-1] in cache._entries


async def test_engine_with_prefix_cache_matches_the_naive_runtime(naive: TransformersRuntime, tiny_dir: Path) -> None:
    engine = EngineRuntime(TransformersRuntime("tiny", "1", Task.GENERATE, tiny_dir), max_batch=8)
    await asyncio.to_thread(engine.load)
    try:
        requests = [
            RunRequest(job_id=f"p{i}", input=SYSTEM + q, params=GenerationParams(max_new_tokens=12))
            for i, q in enumerate(QUESTIONS)
        ]
        alone = [await naive.run(r) for r in requests]
        batched = await asyncio.gather(*(engine.run(r) for r in requests))
        again = await engine.run(requests[1])
        assert [b.output for b in batched] == [a.output for a in alone]
        assert again.output == alone[1].output
        assert engine.engine is not None and engine.engine.prefixes is not None
        assert engine.engine.prefixes.hits >= 2
    finally:
        await asyncio.to_thread(engine.close)
