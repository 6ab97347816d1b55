"""Quotas (shared token buckets in NATS KV), shedding and degrading, on both entrypoints.

The two-gateway test runs two real ``tether gateway --http`` processes against one nats-server and
checks that together they admit no more than the configured rate (within 10%).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from nats.aio.client import Client

from tests.http_helpers import HttpSystem, hold_model, http_system
from tests.proc_helpers import Procs, poll, port_listening, tether_env
from tether import client, subjects
from tether.errors import QuotaExceeded
from tether.natsserver import free_port
from tether.settings import Settings

ECHO = {"modelId": "echo", "version": "1"}


@pytest_asyncio.fixture
async def quota_system(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HttpSystem]:
    monkeypatch.setenv("TETHER_QUOTAS", "acme=3/3")
    async with http_system(settings, ["echo"]) as hs:
        yield hs


class FrozenClock:
    """The quota buckets' clock, standing still until the test moves it: at 3 tokens/s a slow machine
    would otherwise refill a token between the requests that are meant to empty the bucket."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def freeze_quota_clock(hs: HttpSystem) -> FrozenClock:
    clock = FrozenClock()
    hs.system.gateway.admission.quotas._clock = clock  # type: ignore[attr-defined]
    return clock


async def test_over_quota_is_429_with_retry_after_and_other_tenants_are_unaffected(
    quota_system: HttpSystem, nc: Client
) -> None:
    c = quota_system.client
    clock = freeze_quota_clock(quota_system)
    codes = [(await c.post("/infer", json={**ECHO, "input": "x"}, headers=quota_system.auth)).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    over = await c.post("/infer", json={**ECHO, "input": "x"}, headers=quota_system.auth)
    assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
    assert int(over.headers["Retry-After"]) >= 1 and over.json()["error"]["retryable"] is True
    # the NATS entrypoint draws from the same bucket
    with pytest.raises(QuotaExceeded) as exc:
        await client.infer(nc, model="echo", input="x", tenant="acme")
    assert exc.value.retry_after_s is not None and 0 < exc.value.retry_after_s <= 1 / 3 + 0.01
    for _ in range(5):  # another tenant has no quota configured
        assert (await client.infer(nc, model="echo", input="y", tenant="globex"))["result"] == "y"
    clock.now += 1 / 3 + 0.05  # one token refills
    again = await c.post("/infer", json={**ECHO, "input": "x"}, headers=quota_system.auth)
    assert again.status_code == 200


async def test_openai_route_over_quota_raises_rate_limit_error(quota_system: HttpSystem) -> None:
    import openai

    freeze_quota_clock(quota_system)
    oa = openai.AsyncOpenAI(base_url=f"{quota_system.url}/v1", api_key=quota_system.key, max_retries=0)
    for _ in range(3):
        await oa.completions.create(model="echo", prompt="x")
    with pytest.raises(openai.RateLimitError) as exc:
        await oa.completions.create(model="echo", prompt="x")
    assert exc.value.code == "quota_exceeded" and exc.value.response.headers["Retry-After"]


@pytest_asyncio.fixture
async def held_system(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HttpSystem]:
    monkeypatch.setenv("TETHER_SHED_QUEUE_DEPTH", "held=2")
    monkeypatch.setenv("TETHER_DEGRADE", "held=echo")
    monkeypatch.setenv("TETHER_DEGRADE_TENANTS", "acme")
    async with http_system(settings, ["echo"]) as hs:
        await hold_model(settings, "held")
        yield hs


async def test_deep_queue_sheds_or_degrades_by_tenant_policy(held_system: HttpSystem, nc: Client) -> None:
    c = held_system.client
    js = nc.jetstream()
    for i in range(2):  # two jobs waiting for a worker that is gone
        await js.publish(subjects.job_subject("filler", "held", "1"), json.dumps({"input": f"w{i}"}).encode())
    await asyncio.sleep(0.3)  # past the gateway's queue-depth cache
    shed = await c.post("/infer", json={"tenantId": "globex", "modelId": "held", "input": "x"})
    assert shed.status_code == 503 and shed.json()["error"]["code"] == "no_capacity", shed.text
    assert shed.headers["Retry-After"] == "1" and shed.json()["error"]["retryable"] is True
    degraded = await c.post("/infer", json={"modelId": "held", "input": "cheap"}, headers=held_system.auth)
    assert degraded.status_code == 200, degraded.text
    body = degraded.json()
    assert body["result"] == "cheap" and body["modelId"] == "echo"
    assert body["requestedModelId"] == "held" and body["degraded"] is True
    models = {m["modelId"]: m for m in (await c.get("/models")).json()["models"]}
    assert models["held"]["queueDepth"] == 2 and models["held"]["replicas"] == 0


async def test_an_idempotent_retry_of_a_degraded_request_is_the_same_request(
    held_system: HttpSystem, nc: Client
) -> None:
    c, js = held_system.client, nc.jetstream()
    for i in range(2):
        await js.publish(subjects.job_subject("filler", "held", "1"), json.dumps({"input": f"w{i}"}).encode())
    await asyncio.sleep(0.3)
    body, headers = {"modelId": "held", "input": "once"}, {**held_system.auth, "Idempotency-Key": "order-42"}
    first = await c.post("/infer", json=body, headers=headers)
    assert first.status_code == 200 and first.json()["degraded"] is True, first.text
    await js.purge_stream("JOBS")  # the backlog clears: the retry is not degraded
    await asyncio.sleep(0.3)
    retry = await c.post("/infer", json=body, headers=headers)
    assert retry.status_code == 200, retry.text  # not a 409 conflict: the client sent the same body
    assert retry.json()["jobId"] == first.json()["jobId"] and retry.json()["result"] == "once"


async def _hammer(url: str, key: str, until: float, counts: dict[int, int]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:

        async def one_loop() -> None:
            while time.monotonic() < until:
                r = await c.post("/infer", json={**ECHO, "input": "q"}, headers={"Authorization": f"Bearer {key}"})
                counts[r.status_code] = counts.get(r.status_code, 0) + 1

        await asyncio.gather(*(one_loop() for _ in range(6)))


async def test_two_gateway_processes_share_one_rate(settings: Settings, tmp_path: Path, echo_system) -> None:
    rate, burst, seconds = 20.0, 5.0, 4.0
    env = tether_env(
        tmp_path, url=settings.url, TETHER_STORE=settings.store_url, TETHER_QUOTAS=f"acme={rate:g}/{burst:g}"
    )
    procs = Procs(tmp_path)
    ports = [free_port(), free_port()]
    try:
        for p in ports:
            procs.start("gateway", "--http", "--port", str(p), env=env, name=f"gw-{p}")
        for p in ports:
            poll(lambda p=p: port_listening(p), timeout=60, interval=0.2, what=f"gateway on {p}")
        from services.gateway.http.apikeys import ApiKeys

        assert echo_system.gateway.js is not None
        key, _ = await (await ApiKeys.open(echo_system.gateway.js)).add("acme")
        counts: list[dict[int, int]] = [{}, {}]
        t0 = time.monotonic()
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        await asyncio.gather(*(_hammer(u, key, t0 + seconds, c) for u, c in zip(urls, counts, strict=True)))
        elapsed = time.monotonic() - t0
    finally:
        procs.cleanup()
    admitted = sum(c.get(200, 0) for c in counts)
    throttled = sum(c.get(429, 0) for c in counts)
    allowed = burst + rate * elapsed
    assert set().union(*counts) <= {200, 429}, counts
    assert all(c.get(200, 0) > 0 for c in counts), counts  # both gateways admitted some
    assert throttled > 0, counts
    assert admitted <= allowed * 1.10, (admitted, allowed, counts)
    assert admitted >= (burst + rate * seconds) * 0.5, (admitted, allowed, counts)


async def test_a_request_refused_by_one_bucket_gives_back_the_tokens_it_took_from_the_others(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_QUOTAS", "acme=0.001/3,acme:echo=0.001/1")  # tenant-wide 3, echo alone 1
    async with http_system(settings, ["echo", "other:1=none;task=echo"]) as hs:
        c = hs.client
        codes = [
            (await c.post("/infer", json={**ECHO, "input": "x"}, headers=hs.auth)).status_code for _ in range(3)
        ]
        assert codes == [200, 429, 429]  # echo's own bucket is empty after one
        other = [
            (await c.post("/infer", json={"modelId": "other", "input": "x"}, headers=hs.auth)).status_code
            for _ in range(3)
        ]
        assert other == [200, 200, 429]  # the tenant-wide bucket lost only echo's one token
