"""``POST /infer?stream=true``: SSE framing, chunk order, the final result, errors, client disconnect."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from nats.aio.client import Client

from schemas import CancelRequest, ResultMessage
from services.gateway.http import sse
from services.gateway.http.jobstream import Chunk, JobStream
from tests.http_helpers import HELD, HttpSystem, held_http_system
from tether import codec, subjects
from tether.jobids import idempotent_job_id
from tether.results import publish_final
from tether.settings import Settings


@pytest_asyncio.fixture
async def hs(settings: Settings) -> AsyncIterator[HttpSystem]:
    async with held_http_system(settings) as system:
        yield system


async def _events(client: httpx.AsyncClient, body: dict, **kw) -> tuple[httpx.Response, list[dict[str, str]]]:
    r = await client.post("/infer", params={"stream": "true"}, json=body, **kw)
    return r, sse.parse(r.text)


async def test_echo_streams_job_chunk_result(hs: HttpSystem) -> None:
    r, events = await _events(hs.client, {"tenantId": "t", "modelId": "echo", "input": "streamed hello"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert [e["event"] for e in events] == ["job", "chunk", "result"]
    job_id = json.loads(events[0]["data"])["jobId"]
    chunk = json.loads(events[1]["data"])
    assert chunk == {"jobId": job_id, "seq": 0, "text": "streamed hello"} and events[1]["id"] == "0"
    assert json.loads(events[2]["data"])["result"] == "streamed hello"
    assert r.headers["X-Job-Id"] == job_id


async def test_chunks_are_forwarded_in_seq_order_then_the_final_result(hs: HttpSystem, nc: Client) -> None:
    key = "stream-order-1"
    job_id = idempotent_job_id("acme", key)  # known before submitting, so the test can act as the worker
    body = {"modelId": HELD, "input": "ignored"}
    task = asyncio.create_task(_events(hs.client, body, headers={**hs.auth, "Idempotency-Key": key}))
    await _wait_subscribed(nc, job_id)
    subject = subjects.chunks_subject(job_id)
    for seq, text in [(2, " three"), (0, "one"), (1, " two"), (1, " two"), (3, " four")]:
        payload = {"jobId": job_id, "seq": seq, "text": text}
        headers = {codec.CONTENT_TYPE: codec.MSGPACK}
        await nc.publish(subject, codec.encode(payload, codec.MSGPACK), headers=headers)
    final = ResultMessage(
        job_id=job_id, status="completed", tenant_id="acme", model_id=HELD, version="1",
        result="one two three four five", worker_id="w-fake", finished_at=time.time(),
    )
    await nc.flush()
    await publish_final(nc.jetstream(), final, {})
    r, events = await asyncio.wait_for(task, 10)
    assert r.status_code == 200, r.text
    chunks = [json.loads(e["data"]) for e in events if e["event"] == "chunk"]
    assert [c["seq"] for c in chunks] == [0, 1, 2, 3, 4]
    assert "".join(c["text"] for c in chunks) == "one two three four five"  # the tail comes from the result
    assert events[-1]["event"] == "result" and json.loads(events[-1]["data"])["workerId"] == "w-fake"


async def test_a_refused_stream_is_a_plain_json_error(hs: HttpSystem) -> None:
    r = await hs.client.post("/infer", params={"stream": "true"}, json={"tenantId": "t", "modelId": "nope", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_unknown"


async def test_a_final_error_ends_the_stream_with_an_error_event(hs: HttpSystem, nc: Client) -> None:
    key = "stream-error-1"
    job_id = idempotent_job_id("acme", key)
    headers = {**hs.auth, "Idempotency-Key": key}
    task = asyncio.create_task(_events(hs.client, {"modelId": HELD, "input": "x"}, headers=headers))
    await _wait_subscribed(nc, job_id)
    final = ResultMessage(
        job_id=job_id, status="failed", tenant_id="acme", model_id=HELD, version="1",
        error={"code": "worker_failed", "message": "boom", "retryable": True}, finished_at=time.time(),
    )
    await publish_final(nc.jetstream(), final, {})
    _, events = await asyncio.wait_for(task, 10)
    assert [e["event"] for e in events] == ["job", "error"]
    assert json.loads(events[1]["data"])["error"]["code"] == "worker_failed"


async def test_client_disconnect_cancels_the_job(hs: HttpSystem, nc: Client) -> None:
    cancels: asyncio.Queue[CancelRequest] = asyncio.Queue()

    async def on_cancel(msg) -> None:
        await cancels.put(CancelRequest.model_validate(codec.decode(msg.data)))

    await nc.subscribe(subjects.control_subject("cancel", "*").rsplit(".", 1)[0] + ".>", cb=on_cancel)
    await nc.flush()
    async with httpx.AsyncClient(base_url=hs.url, timeout=10) as client:
        async with client.stream("POST", "/infer?stream=true", json={"tenantId": "t", "modelId": HELD, "input": "x"}) as r:
            lines = r.aiter_lines()
            assert await anext(lines) == "event: job"
            data = await anext(lines)
            job_id = json.loads(data.removeprefix("data: "))["jobId"]
        # leaving the block closes the connection mid-stream
    cancel = await asyncio.wait_for(cancels.get(), 5)
    assert cancel.job_id == job_id and cancel.reason == "client disconnected"


async def test_a_job_whose_client_hung_up_while_it_waited_never_runs(
    hs: HttpSystem, nc: Client, settings: Settings
) -> None:
    """No worker held the job when the cancel went out: the scheduler keeps it, and a worker that comes
    later (it never heard the cancel) is not given the job."""
    from services.worker.runtimes.catalog import parse_model_spec
    from services.worker.service import Worker
    from tests.http_helpers import HOLD_KEYS
    from tether.results import fetch_final
    from tether.security import ensure_dev_trust

    async with httpx.AsyncClient(base_url=hs.url, timeout=10) as client:
        async with client.stream("POST", "/infer?stream=true", json={"tenantId": "t", "modelId": HELD, "input": "x"}) as r:
            lines = r.aiter_lines()
            assert await anext(lines) == "event: job"
            job_id = json.loads((await anext(lines)).removeprefix("data: "))["jobId"]
    await asyncio.sleep(0.5)  # the hang-up's cancel has gone out, to no worker
    identity = [i for i in ensure_dev_trust(settings, extra_workers=HOLD_KEYS) if i.role == "worker"][-2]
    late = Worker(settings, identity=identity, specs=[parse_model_spec(f"{HELD}:1=none;task=echo")])
    await late.start()
    await late.wait_ready()
    try:
        deadline = time.monotonic() + 60
        while (final := await fetch_final(nc.jetstream(), job_id)) is None:
            assert time.monotonic() < deadline, "the cancelled job never ended"
            await asyncio.sleep(0.2)
        assert final.status == "failed" and final.error is not None, final
        assert final.error.code == "cancelled" and "client disconnected" in final.error.message
        assert late.completed == 0 and late.failed == 0  # it was never dispatched
    finally:
        await late.close()


async def test_a_keyed_stream_that_hangs_up_leaves_its_shared_job_running(hs: HttpSystem, nc: Client) -> None:
    cancels: list[dict] = []

    async def on_cancel(msg) -> None:
        cancels.append(json.loads(msg.data))

    await nc.subscribe(subjects.control_subject("cancel", "*").rsplit(".", 1)[0] + ".>", cb=on_cancel)
    await nc.flush()
    body, key = {"tenantId": "t", "modelId": HELD, "input": "shared"}, {"Idempotency-Key": "shared-1"}
    async with httpx.AsyncClient(base_url=hs.url, timeout=10) as client:
        waiting = asyncio.create_task(client.post("/infer", json=body, headers=key))  # same job, no stream
        async with client.stream("POST", "/infer?stream=true", json=body, headers=key) as r:
            lines = r.aiter_lines()
            assert await anext(lines) == "event: job"
        await asyncio.sleep(0.5)  # the hang-up has been handled
        assert cancels == []
        assert not waiting.done()  # still waiting for the job's result
        waiting.cancel()


async def _wait_subscribed(nc: Client, job_id: str) -> None:
    """Until the gateway listens for the job's chunks (it subscribes before it publishes the job)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = await nc.jetstream().stream_info("JOBS", subjects_filter=subjects.JOBS_ALL)
        if info.state.messages:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the job was never queued")


async def test_a_crash_inside_a_stream_ends_it_with_an_error_event(
    hs: HttpSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: JobStream) -> AsyncIterator[Chunk]:
        yield Chunk(job_id=self.job_id or "", seq=0, text="first ")
        raise RuntimeError("a bug, not a TetherError")

    monkeypatch.setattr(JobStream, "events", broken)
    r, events = await _events(hs.client, {"tenantId": "t", "modelId": "echo", "input": "x"})
    assert r.status_code == 200 and [e.get("event") for e in events] == ["job", "chunk", "error"], r.text
    error = json.loads(events[-1]["data"])["error"]
    assert error["code"] == "internal" and "RuntimeError" in error["message"]
    assert error["jobId"] == r.headers["X-Job-Id"]
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    r = await hs.client.post("/v1/chat/completions", json=body)
    events = sse.parse(r.text)
    assert r.status_code == 200 and len(events) == 3, r.text  # role, the chunk, then the error; no [DONE]
    assert json.loads(events[1]["data"])["choices"][0]["delta"]["content"] == "first "
    assert json.loads(events[-1]["data"])["error"]["code"] == "internal"


async def test_a_stream_waiting_in_the_queue_sends_keep_alive_comments(
    hs: HttpSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proxies cut connections idle for a minute; a job waiting for a worker would send nothing."""
    from services.gateway.http import sse

    monkeypatch.setattr(sse, "KEEPALIVE_S", 0.2)
    body = {"tenantId": "t", "modelId": "echo", "input": "slow", "params": {"timeoutS": 1}}
    worker = hs.system.workers[0]
    await worker.close()  # type: ignore[attr-defined]  # the model is known, but nobody takes the job
    async with hs.client.stream("POST", "/infer?stream=true", json=body) as r:
        raw = b"".join([part async for part in r.aiter_bytes()]).decode()
    assert raw.count(": keep-alive\n\n") >= 2, raw
    events = sse.parse(raw)  # comments are not events
    assert [e["event"] for e in events] == ["job", "error"]
    assert json.loads(events[1]["data"])["error"]["code"] == "timeout"


async def test_a_streamed_repeat_of_a_finished_key_streams_the_stored_result(hs: HttpSystem) -> None:
    body = {"tenantId": "t", "modelId": "echo", "input": "said once"}
    key = {"Idempotency-Key": "stream-again"}
    r1, first = await _events(hs.client, body, headers=key)
    assert r1.status_code == 200 and first[-1]["event"] == "result"
    for _ in range(2):  # every repeat of a finished key gets its stored result, streamed or not
        r, events = await _events(hs.client, body, headers=key)
        assert r.status_code == 200, r.text
        assert events[0]["event"] == "job" and events[-1]["event"] == "result", events
        assert json.loads(events[0]["data"])["jobId"] == json.loads(first[0]["data"])["jobId"]
        assert "".join(json.loads(e["data"])["text"] for e in events if e["event"] == "chunk") == "said once"
        assert json.loads(events[-1]["data"])["result"] == "said once"
    plain = await hs.client.post("/infer", json=body, headers=key)
    assert plain.status_code == 200 and plain.json()["result"] == "said once"
    oa = {"model": "echo", "prompt": "said once", "stream": True}
    for _ in range(2):
        r = await hs.client.post("/v1/completions", json=oa, headers={"Idempotency-Key": "oa-again"})
        assert r.status_code == 200, r.text
        chunks = [json.loads(e["data"]) for e in sse.parse(r.text) if e["data"] != "[DONE]"]
        assert "".join(c["choices"][0]["text"] for c in chunks) == "said once", chunks


async def _openai_stream_as_workers(hs: HttpSystem, nc: Client, key: str, chunks: list[dict], final_text: str) -> list:
    """An OpenAI streaming request on the held model; the test plays the attempts' chunks and the final result."""
    job_id = idempotent_job_id("acme", key)
    body = {"model": HELD, "prompt": "p", "stream": True}
    task = asyncio.create_task(
        hs.client.post("/v1/completions", json=body, headers={**hs.auth, "Idempotency-Key": key})
    )
    await _wait_subscribed(nc, job_id)
    for c in chunks:
        await nc.publish(
            subjects.chunks_subject(job_id), codec.encode({"jobId": job_id, **c}), headers={codec.CONTENT_TYPE: codec.JSON}
        )
        await nc.flush()
        await asyncio.sleep(0.05)  # in this order
    final = ResultMessage(
        job_id=job_id, status="completed", tenant_id="acme", model_id=HELD, version="1",
        result=final_text, worker_id="w-b", attempts=2, finished_at=time.time(),
    )
    await publish_final(nc.jetstream(), final, {})
    r = await asyncio.wait_for(task, 10)
    assert r.status_code == 200, r.text
    return [json.loads(e["data"]) for e in sse.parse(r.text) if e["data"] != "[DONE]"]


async def test_an_openai_stream_splices_in_no_chunk_of_an_abandoned_attempt(hs: HttpSystem, nc: Client) -> None:
    chunks = [
        {"seq": 0, "text": "The cat", "offset": 0, "tokenIds": [1, 2], "attempt": 1},
        {"seq": 1, "text": " sat", "offset": 2, "tokenIds": [3], "attempt": 2},  # resumed on another worker
        {"seq": 2, "text": " on a hat", "offset": 3, "tokenIds": [4, 5, 6], "attempt": 1},  # the old one, still on
        {"seq": 2, "text": " down.", "offset": 3, "tokenIds": [12, 13], "attempt": 2},
    ]
    events = await _openai_stream_as_workers(hs, nc, "zombie-1", chunks, "The cat sat down.")
    assert "".join(e["choices"][0]["text"] for e in events) == "The cat sat down."
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


async def test_an_openai_stream_whose_restart_wrote_other_text_ends_with_an_error(hs: HttpSystem, nc: Client) -> None:
    """A restarted attempt (no prefix reached it) sampling other text: the client must not take the chunks it
    has for the answer, since OpenAI's stream cannot take them back."""
    chunks = [
        {"seq": 0, "text": "The cat", "offset": 0, "tokenIds": [1, 2], "attempt": 1},
        {"seq": 1, "text": " sat", "offset": 2, "tokenIds": [3], "attempt": 1},
        {"seq": 0, "text": "A dog", "offset": 0, "tokenIds": [7, 8], "attempt": 2},
        {"seq": 1, "text": " ran far away.", "offset": 2, "tokenIds": [9, 10, 11], "attempt": 2},
    ]
    events = await _openai_stream_as_workers(hs, nc, "restart-1", chunks, "A dog ran far away.")
    assert "".join(e["choices"][0]["text"] for e in events if "choices" in e) == "The cat sat"
    assert events[-1]["error"]["code"] == "worker_failed" and "Idempotency-Key" in events[-1]["error"]["message"]
    again = await hs.client.post(  # what the error says to do: the stored result, whole
        "/v1/completions", json={"model": HELD, "prompt": "p", "stream": True},
        headers={**hs.auth, "Idempotency-Key": "restart-1"},
    )
    texts = [json.loads(e["data"]) for e in sse.parse(again.text) if e["data"] != "[DONE]"]
    assert "".join(e["choices"][0]["text"] for e in texts) == "A dog ran far away."
