"""The batching engine inside a real worker, through the real pipeline (nats-server, scheduler, gateway):
token streaming on tether.results.<job>.chunks, cancellation, batched concurrency, TTFT reporting,
heartbeats staying punctual while the model is saturated, and tether infer --stream."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client

from tests.conftest import System, start_system
from tests.tiny_models import build_tiny_gpt2
from tether import client, subjects
from tether.connection import connect
from tether.natsserver import NatsServer
from tether.settings import Settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

HEARTBEAT_S = 0.5
SATURATE_S = 4.0  # how long the heartbeat test keeps 32 generations running
TINY = "tiny-gpt2"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(module_nats: tuple[Path, NatsServer]) -> AsyncIterator[System]:
    home, server = module_nats
    tiny_dir = build_tiny_gpt2(home / "tiny-gpt2")
    settings = Settings(
        home=home,
        nats_url=server.url,
        heartbeat_s=HEARTBEAT_S,
        store=f"sqlite:///{home / 'tether.db'}",
        request_timeout_s=120.0,
        queue_wait_s=30.0,
        dispatch_ack_s=2.0,
        admission_bench=False,
    )
    system = await start_system(settings, [f"{TINY}:1={tiny_dir}"])
    try:
        yield system
    finally:
        await system.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cnc(system: System) -> AsyncIterator[Client]:
    conn = await connect(system.settings.url, name="test-client-engine")
    try:
        yield conn
    finally:
        await conn.close()


async def _submit(nc: Client, job_id: str, prompt: str, **params: Any) -> None:
    body = {"jobId": job_id, "input": prompt, "params": {"maxNewTokens": 16, **params}}
    await nc.jetstream().publish(subjects.job_subject("demo", TINY, "1"), json.dumps(body).encode())


class Watch:
    """Everything published for one job: its chunks and its final result, with arrival order."""

    def __init__(self) -> None:
        self.chunks: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self.chunks_before_result = -1
        self.done = asyncio.Event()
        self.subs: list[Any] = []

    @classmethod
    async def start(cls, nc: Client, job_id: str) -> Watch:
        w = cls()

        async def on_chunk(msg: Any) -> None:
            w.chunks.append(json.loads(msg.data))

        async def on_result(msg: Any) -> None:
            w.result = json.loads(msg.data)
            w.chunks_before_result = len(w.chunks)
            w.done.set()

        w.subs = [
            await nc.subscribe(subjects.chunks_subject(job_id), cb=on_chunk),
            await nc.subscribe(subjects.result_subject(job_id), cb=on_result),
        ]
        await nc.flush()
        return w

    async def wait(self, timeout: float = 60) -> dict[str, Any]:
        await asyncio.wait_for(self.done.wait(), timeout)
        for sub in self.subs:
            await sub.unsubscribe()
        assert self.result is not None
        return self.result


async def test_tokens_stream_in_order_before_the_final_result(cnc: Client) -> None:
    watch = await Watch.start(cnc, "stream-1")
    await _submit(cnc, "stream-1", "the capital of france is", maxNewTokens=24)
    result = await watch.wait()
    chunks = watch.chunks
    assert result["status"] == "completed", result
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert [c["offset"] for c in chunks] == list(itertools.accumulate([0] + [len(c["tokenIds"]) for c in chunks[:-1]]))
    assert watch.chunks_before_result == len(chunks)  # every chunk arrived before the result
    assert "".join(c["text"] for c in chunks) == result["result"]
    assert sum(len(c["tokenIds"]) for c in chunks) == result["usage"]["tokensOut"] == 24
    assert {c["attempt"] for c in chunks} == {1} and len({c["workerId"] for c in chunks}) == 1
    assert 0 < result["usage"]["ttftMs"] < 10_000


async def test_concurrent_requests_share_batches_and_match_alone(system: System, cnc: Client) -> None:
    prompts = [f"hello {w}" for w in ("cat", "dog", "bird", "fish", "tree", "sun", "moon", "star")]
    alone = [
        await client.infer(cnc, model=TINY, input=p, params={"maxNewTokens": 40}, timeout=60) for p in prompts[:3]
    ]
    engine = system.workers[0].cache.models[(TINY, "1")].runtime.engine  # type: ignore[attr-defined]
    largest_before = engine.stats.largest_batch
    together = await asyncio.gather(
        *(client.infer(cnc, model=TINY, input=p, params={"maxNewTokens": 40}, timeout=60) for p in prompts * 2)
    )
    assert [r["result"] for r in together[:3]] == [r["result"] for r in alone]
    assert all(r["usage"]["tokensOut"] == 40 for r in together)
    assert engine.stats.largest_batch >= max(largest_before, 4), engine.stats


async def test_cancel_stops_the_job_and_frees_its_slot(system: System, cnc: Client) -> None:
    worker = system.workers[0]
    engine = worker.cache.models[(TINY, "1")].runtime.engine  # type: ignore[attr-defined]
    watch = await Watch.start(cnc, "cancel-1")
    await _submit(cnc, "cancel-1", "hello", maxNewTokens=480)
    deadline = time.monotonic() + 30
    while len(watch.chunks) < 5:
        assert time.monotonic() < deadline, "no chunks"
        await asyncio.sleep(0.005)
    await cnc.publish(subjects.control_subject("cancel", "cancel-1"), json.dumps({"jobId": "cancel-1"}).encode())
    result = await watch.wait()
    assert result["status"] == "failed" and result["error"]["code"] == "cancelled", result
    assert result["error"]["retryable"] is False
    assert len(watch.chunks) < 480  # decoding stopped early
    assert [c["seq"] for c in watch.chunks] == list(range(len(watch.chunks)))
    assert engine.running == 0 and worker.cancels.cancelled >= 1
    after = await client.infer(cnc, model=TINY, input="hello", params={"maxNewTokens": 4}, timeout=60)
    assert after["usage"]["tokensOut"] == 4  # the worker keeps serving


async def test_a_cancel_for_another_attempt_is_ignored(cnc: Client) -> None:
    watch = await Watch.start(cnc, "cancel-2")
    await _submit(cnc, "cancel-2", "hello", maxNewTokens=200)
    while not watch.chunks:
        await asyncio.sleep(0.005)
    stale = {"jobId": "cancel-2", "attempt": 7, "reason": "re-placed"}
    await cnc.publish(subjects.control_subject("cancel", "cancel-2"), json.dumps(stale).encode())
    result = await watch.wait()
    assert result["status"] == "completed" and result["usage"]["tokensOut"] == 200


async def test_heartbeats_stay_punctual_while_the_engine_is_saturated(system: System, cnc: Client) -> None:
    """32 concurrent long generations keep the engine's batch full; beats stay within T + 20%."""
    beats: list[float] = []

    async def on_presence(msg: Any) -> None:  # the subject is this worker's: every message is a beat
        beats.append(time.monotonic())

    engine = system.workers[0].cache.models[(TINY, "1")].runtime.engine  # type: ignore[attr-defined]
    worker_id = system.workers[0].worker_id  # type: ignore[attr-defined]
    sub = await cnc.subscribe(subjects.presence_subject("local", worker_id), cb=on_presence)
    await cnc.flush()
    steps_before = engine.stats.steps
    started = time.monotonic()
    replies: list[dict[str, Any]] = []

    async def busy_client(i: int) -> None:  # back-to-back long generations until the window closes
        while time.monotonic() - started < SATURATE_S:
            replies.append(
                await client.infer(cnc, model=TINY, input=f"hello {i}", params={"maxNewTokens": 480}, timeout=120)
            )

    await asyncio.gather(*(busy_client(i) for i in range(32)))
    finished = time.monotonic()
    await sub.unsubscribe()
    assert len(replies) >= 32 and all(r["usage"]["tokensOut"] == 480 for r in replies)
    assert engine.stats.largest_batch >= 16 and engine.stats.steps - steps_before >= 479
    during = [t for t in beats if started <= t <= finished]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert len(gaps) >= 3 and max(gaps) <= 1.2 * HEARTBEAT_S, [round(g, 3) for g in gaps]


async def test_client_stream_yields_tokens_then_the_reply(cnc: Client) -> None:
    parts: list[Any] = []
    async for part in client.infer_stream(
        cnc, model=TINY, input="the sky is", params={"maxNewTokens": 12}, timeout=60
    ):
        parts.append(part)
    *texts, reply = parts
    assert isinstance(reply, dict) and reply["usage"]["tokensOut"] == 12
    assert len(texts) >= 2 and "".join(texts) == reply["result"]  # streamed in pieces, nothing missing
