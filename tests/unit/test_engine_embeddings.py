"""Embedding requests batched into shared forward passes (all-MiniLM-L6-v2)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from services.worker.engine import EngineRuntime
from services.worker.runtimes import GenerationParams, RunRequest, TransformersRuntime, build_runtime
from services.worker.runtimes.catalog import builtin_spec
from tether import errors

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEXTS = [
    "A cat sits on the mat.",
    "Quarterly revenue rose by four percent, beating the analysts' expectations.",
    "Hi",
    "The river flows past the old mill and into the sea beyond the hills.",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def minilm() -> AsyncIterator[EngineRuntime]:
    try:
        runtime = build_runtime(builtin_spec("all-minilm-l6-v2"), max_wait_s=0.01)
    except errors.ModelUnknown as exc:
        pytest.skip(str(exc))
    assert isinstance(runtime, EngineRuntime)
    await asyncio.to_thread(runtime.load)
    yield runtime
    await asyncio.to_thread(runtime.close)


def _req(value: object, **params: object) -> RunRequest:
    return RunRequest(job_id="e", input=value, params=GenerationParams(**params))  # type: ignore[arg-type]


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def test_concurrent_embeddings_share_batches_and_match_alone(minilm: EngineRuntime) -> None:
    assert minilm.embedder is not None and isinstance(minilm.inner, TransformersRuntime)
    alone = [(await minilm.inner.run(_req(t))).output for t in TEXTS]
    before = minilm.embedder.batches
    results = await asyncio.gather(*(minilm.run(_req(t)) for t in TEXTS * 4))
    assert minilm.embedder.batches - before < len(TEXTS * 4) / 2  # shared forward passes
    for i, result in enumerate(results):
        assert _cos(result.output, alone[i % len(TEXTS)]) > 0.99999
        assert result.tokens_in > 0


async def test_lists_and_normalisation_are_kept_per_request(minilm: EngineRuntime) -> None:
    lst, raw, norm = await asyncio.gather(
        minilm.run(_req(TEXTS[:2])), minilm.run(_req(TEXTS[2], normalize=False)), minilm.run(_req(TEXTS[2]))
    )
    assert len(lst.output) == 2 and all(len(v) == 384 for v in lst.output)
    assert abs(math.sqrt(sum(x * x for x in norm.output)) - 1.0) < 1e-5
    assert abs(math.sqrt(sum(x * x for x in raw.output)) - 1.0) > 1e-3
    assert _cos(raw.output, norm.output) > 0.99999
    with pytest.raises(errors.InvalidRequest):
        await minilm.run(_req(42))
