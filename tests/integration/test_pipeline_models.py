"""The transformers runtime through the whole pipeline: gateway -> JOBS -> scheduler -> worker -> RESULTS.

One system per module (loading real models is the slow part): a tiny seeded GPT-2 built in a temp dir
plus all-MiniLM-L6-v2, and, for the ``slow`` test only, SmolLM2-135M-Instruct on its own system.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client

from tests.conftest import System, first_load_lock, start_system
from tests.tiny_models import build_tiny_gpt2
from tether import client, codec, subjects
from tether.connection import connect
from tether.natsserver import NatsServer
from tether.settings import Settings
from tether.signed import read_unverified

pytestmark = pytest.mark.asyncio(loop_scope="module")

HEARTBEAT_S = 0.5
BUSY_S = 4.0  # how long the heartbeat test keeps the model generating
TINY = "tiny-gpt2"
MINILM = "all-minilm-l6-v2"
SMOLLM2 = "smollm2-135m-instruct"


def _settings(home: Path, server: NatsServer) -> Settings:
    return Settings(
        admission_bench=False,  # as the conftest settings: no start-up probe on the shared cores
        home=home,
        nats_url=server.url,
        heartbeat_s=HEARTBEAT_S,
        store=f"sqlite:///{home / 'tether.db'}",
        request_timeout_s=120.0,
        queue_wait_s=30.0,
        dispatch_ack_s=2.0,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def models_system(module_nats: tuple[Path, NatsServer]) -> AsyncIterator[System]:
    home, server = module_nats
    tiny_dir = build_tiny_gpt2(home / "tiny-gpt2")
    system = await start_system(_settings(home, server), [f"{TINY}:1={tiny_dir}", MINILM])
    try:
        for slot in system.workers[0].slots.values():  # type: ignore[attr-defined]
            assert slot.state == "warm", (slot.spec.model_id, slot.detail)
        yield system
    finally:
        await system.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mnc(models_system: System) -> AsyncIterator[Client]:
    conn = await connect(models_system.settings.url, name="test-client-models")
    try:
        yield conn
    finally:
        await conn.close()


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# ---------------------------------------------------------------------- tiny GPT-2


async def test_tiny_gpt2_greedy_runs_to_the_limit_and_repeats(models_system: System, mnc: Client) -> None:
    params = {"maxNewTokens": 8}
    first = await client.infer(mnc, model=TINY, input="the capital of france is", params=params, timeout=60)
    second = await client.infer(mnc, model=TINY, input="the capital of france is", params=params, timeout=60)
    assert isinstance(first["result"], str) and first["result"].strip(), first
    assert (
        first["modelId"] == TINY
        and first["version"] == "1"
        and first["workerId"] == models_system.workers[0].worker_id
    )
    usage = first["usage"]
    assert usage["tokensOut"] == 8, usage  # <eos> has a zero embedding row: greedy never stops early
    assert usage["tokensIn"] == 5 and usage["finishReason"] == "length", usage
    assert second["result"] == first["result"]
    assert second["jobId"] != first["jobId"]


async def test_tiny_gpt2_sampling_with_a_seed_is_reproducible(mnc: Client) -> None:
    async def sample(seed: int) -> str:
        params = {"maxNewTokens": 24, "temperature": 1.0, "seed": seed}
        reply = await client.infer(mnc, model=TINY, input="hello", params=params, timeout=60)
        assert reply["usage"]["tokensOut"] == 24, reply
        return reply["result"]

    a, b, c = await sample(1234), await sample(1234), await sample(99)
    greedy = await client.infer(mnc, model=TINY, input="hello", params={"maxNewTokens": 24}, timeout=60)
    assert a == b
    assert a != c  # 24 draws from a ~70-word vocabulary: another seed gives another text
    assert a != greedy["result"]


async def test_tiny_gpt2_over_msgpack(mnc: Client) -> None:
    reply = await client.infer(
        mnc, model=TINY, input="hello", params={"maxNewTokens": 4}, encoding=codec.MSGPACK, timeout=60
    )
    json_reply = await client.infer(mnc, model=TINY, input="hello", params={"maxNewTokens": 4}, timeout=60)
    assert isinstance(reply["result"], str) and reply["result"] == json_reply["result"]
    assert reply["usage"]["tokensOut"] == 4


async def test_heartbeats_keep_flowing_during_a_long_generation(models_system: System, mnc: Client) -> None:
    """Torch runs on the runtime's thread, so the worker's event loop keeps beating on time."""
    beats: list[tuple[float, dict]] = []

    async def on_presence(msg) -> None:
        payload = read_unverified(msg.data)
        if payload.get("workerId") == models_system.workers[0].worker_id:
            beats.append((time.monotonic(), payload))

    sub = await mnc.subscribe(subjects.PRESENCE_ALL, cb=on_presence)
    await mnc.flush()
    try:
        started = time.monotonic()
        replies: list[dict] = []
        # The tiny model's context is 512 positions: ~500 new tokens per request. Pairs of requests
        # keep the runtime's queue non-empty; repeat until the model has been busy for a few seconds.
        while time.monotonic() - started < BUSY_S:
            replies += await asyncio.gather(
                *(
                    client.infer(
                        mnc, model=TINY, input=f"hello {i}", params={"maxNewTokens": 500}, timeout=120
                    )
                    for i in range(2)
                )
            )
        finished = time.monotonic()
    finally:
        await sub.unsubscribe()
    assert all(r["usage"]["tokensOut"] == 500 for r in replies), [r["usage"] for r in replies]
    during = [(t, p) for t, p in beats if started <= t <= finished]
    times = [t for t, _ in during]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    expected = (finished - started) / HEARTBEAT_S
    assert len(during) >= 0.7 * expected, (len(during), expected)
    assert len(gaps) >= 6 and max(gaps) <= 1.5 * HEARTBEAT_S, [round(g, 3) for g in gaps]
    assert any(p["queueDepth"] >= 1 for _, p in during), "no beat was sent while the job ran"
    seqs = [p["seq"] for _, p in during]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


# ---------------------------------------------------------------------- all-MiniLM-L6-v2


async def test_minilm_embeddings_through_the_pipeline(mnc: Client) -> None:
    sentence = "The cat sits on the mat."
    first = await client.infer(mnc, model=MINILM, input=sentence, timeout=60)
    again = await client.infer(mnc, model=MINILM, input=sentence, timeout=60)
    other = await client.infer(mnc, model=MINILM, input="Quarterly revenue rose by 4 percent.", timeout=60)
    vec = first["result"]
    assert isinstance(vec, list) and len(vec) == 384 and all(isinstance(x, float) for x in vec)
    assert first["usage"]["tokensIn"] > 0
    assert math.isclose(math.sqrt(sum(x * x for x in vec)), 1.0, abs_tol=1e-4)  # normalised by default
    assert _cosine(vec, again["result"]) == pytest.approx(1.0, abs=1e-5)
    assert _cosine(vec, other["result"]) < 0.5


async def test_minilm_list_input_returns_one_vector_each(mnc: Client) -> None:
    texts = ["A dog runs in the park.", "A puppy plays outside."]
    reply = await client.infer(mnc, model=MINILM, input=texts, timeout=60)
    vectors = reply["result"]
    assert isinstance(vectors, list) and len(vectors) == 2
    assert all(len(v) == 384 for v in vectors)
    single = await client.infer(mnc, model=MINILM, input=texts[0], timeout=60)
    assert _cosine(vectors[0], single["result"]) == pytest.approx(1.0, abs=1e-5)
    assert 0.3 < _cosine(vectors[0], vectors[1]) < 0.999


# ---------------------------------------------------------------------- SmolLM2 (slow)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def smollm2_nc(tmp_path_factory: pytest.TempPathFactory, gguf_cache: Path) -> AsyncIterator[Client]:
    home = tmp_path_factory.mktemp("smollm2-system")
    server = NatsServer(store_dir=home / "jetstream", log_file=home / "nats-server.log")
    server.start()
    system: System | None = None
    conn: Client | None = None
    try:
        started = time.perf_counter()
        lock = first_load_lock(gguf_cache)  # another xdist worker may be converting it right now
        await asyncio.to_thread(lock.acquire)
        try:
            system = await start_system(_settings(home, server), [SMOLLM2], convert_cache=gguf_cache)
        finally:
            lock.release()
        slot = next(iter(system.workers[0].slots.values()))  # type: ignore[attr-defined]
        assert slot.state == "warm", slot.detail
        print(f"\n{SMOLLM2} system up in {time.perf_counter() - started:.1f}s")
        conn = await connect(server.url, name="test-client-smollm2")
        yield conn
    finally:
        if conn is not None:
            await conn.close()
        if system is not None:
            await system.close()
        server.stop()


@pytest.mark.slow
async def test_smollm2_knows_the_capital_of_france(smollm2_nc: Client) -> None:
    reply = await client.infer(
        smollm2_nc,
        model=SMOLLM2,
        input="What is the capital of France?",
        params={"maxNewTokens": 24},
        timeout=120,
    )
    assert "Paris" in reply["result"], reply
    assert 0 < reply["usage"]["tokensOut"] <= 24
