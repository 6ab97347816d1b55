"""A plain (non-streaming) HTTP request whose client hangs up: its job is cancelled unless someone
else may want it (an idempotency key, another request waiting for the same job)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from nats.aio.client import Client

from tests.http_helpers import HELD, HttpSystem, held_http_system
from tether import subjects
from tether.jobids import idempotent_job_id
from tether.settings import Settings


@pytest_asyncio.fixture
async def hs(settings: Settings) -> AsyncIterator[HttpSystem]:
    async with held_http_system(settings) as system:
        yield system


async def _cancels(nc: Client) -> asyncio.Queue[dict[str, object]]:
    found: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def on_cancel(msg) -> None:  # type: ignore[no-untyped-def]
        await found.put(json.loads(msg.data))

    await nc.subscribe(subjects.control_subject("cancel", "*").rsplit(".", 1)[0] + ".>", cb=on_cancel)
    await nc.flush()
    return found


async def _hang_up(url: str, path: str, body: dict[str, object], headers: dict[str, str] | None = None) -> None:
    """Send the request, then go away before the answer (the job waits in the queue meanwhile)."""
    async with httpx.AsyncClient(base_url=url, timeout=1.0) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(path, json=body, headers=headers)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/infer", {"tenantId": "t", "modelId": HELD, "input": "x"}),
        ("/v1/completions", {"model": HELD, "prompt": "x"}),
    ],
)
async def test_a_plain_request_that_hangs_up_cancels_its_job(
    hs: HttpSystem, nc: Client, path: str, body: dict[str, object]
) -> None:
    found = await _cancels(nc)
    await _hang_up(hs.url, path, body)
    cancel = await asyncio.wait_for(found.get(), 5)
    assert cancel["reason"] == "client disconnected" and str(cancel["jobId"]).startswith("j-"), cancel
    assert hs.system.gateway.waiting_on(str(cancel["jobId"])) == 0  # type: ignore[attr-defined]


async def test_a_keyed_plain_request_that_hangs_up_leaves_its_job_running(hs: HttpSystem, nc: Client) -> None:
    found = await _cancels(nc)
    body = {"tenantId": "t", "modelId": HELD, "input": "kept"}
    await _hang_up(hs.url, "/infer", body, {"Idempotency-Key": "kept-1"})
    await asyncio.sleep(1.0)  # the hang-up has been handled
    assert found.empty()
    queued = await nc.jetstream().get_last_msg("JOBS", subjects.job_subject("t", HELD, "1"))
    assert queued.headers is not None  # the job still waits for a worker, under its key's id
    assert queued.headers["Nats-Msg-Id"] == idempotent_job_id("t", "kept-1")


async def test_a_plain_request_that_is_answered_is_not_cancelled(hs: HttpSystem, nc: Client) -> None:
    found = await _cancels(nc)
    r = await hs.client.post("/infer", json={"tenantId": "t", "modelId": "echo", "input": "answered"})
    assert r.status_code == 200 and r.json()["result"] == "answered"
    await asyncio.sleep(0.5)
    assert found.empty()
