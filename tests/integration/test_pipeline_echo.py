"""The whole pipeline on the echo model: request/reply, msgpack, concurrency, job rows, headers."""

from __future__ import annotations

import asyncio
import json
import time

import msgpack
import pytest
from nats.aio.client import Client

from tests.conftest import start_system
from tether import client, codec, subjects
from tether.errors import TetherError
from tether.settings import Settings
from tether.store import open_store

ECHO = {"tenantId": "demo", "modelId": "echo", "version": "1"}


async def _infer_seeing_result_headers(
    nc: Client, text: str, headers: dict[str, str] | None = None
) -> tuple[dict, list[dict[str, str]]]:
    """One tether.infer request; its reply and the headers of every result seen on core NATS meanwhile."""
    seen: list[dict[str, str]] = []

    async def collect(msg) -> None:
        seen.append(dict(msg.headers or {}))

    sub = await nc.subscribe(subjects.RESULTS_ALL, cb=collect)
    body = json.dumps({**ECHO, "input": text}).encode()
    reply = json.loads((await nc.request(subjects.INFER, body, timeout=10, headers=headers)).data)
    await nc.flush()
    await sub.unsubscribe()
    assert seen, "no result observed"
    return reply, seen


async def test_json_request_gets_one_reply(echo_system, nc: Client) -> None:
    msg = await nc.request(subjects.INFER, json.dumps({**ECHO, "input": "hello"}).encode(), timeout=10)
    reply = json.loads(msg.data)
    assert reply.get("result") == "hello", reply
    assert reply["modelId"] == "echo" and reply["version"] == "1"
    assert reply["workerId"] == echo_system.workers[0].worker_id
    assert reply["jobId"].startswith("j-")


async def test_msgpack_request_gets_msgpack_reply(echo_system, nc: Client) -> None:
    body = msgpack.packb({**ECHO, "input": "packed"})
    msg = await nc.request(subjects.INFER, body, timeout=10, headers={"Content-Type": "application/msgpack"})
    assert msg.headers and msg.headers["Content-Type"] == codec.MSGPACK
    reply = msgpack.unpackb(msg.data)
    assert reply["result"] == "packed"


async def test_200_concurrent_requests_each_get_their_own_input_once(echo_system, nc: Client) -> None:
    inputs = [f"message-{i}" for i in range(200)]
    replies = await asyncio.gather(
        *(client.infer(nc, model="echo", input=text, timeout=30) for text in inputs)
    )
    assert [r["result"] for r in replies] == inputs
    assert len({r["jobId"] for r in replies}) == 200


async def test_job_rows_walk_the_lifecycle(echo_system, nc: Client, settings) -> None:
    reply = await client.infer(nc, model="echo", input="lifecycle")
    store = open_store(settings.store_url)
    async with store:
        deadline = time.monotonic() + 10  # the scheduler writes COMPLETED after the client has the result
        while (row := await store.get(reply["jobId"])) is None or row["status"] != "COMPLETED":
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.05)
        attempts = await store.attempts(reply["jobId"])
        reservations = await store.reservations(reply["jobId"])
    assert row is not None and row["status"] == "COMPLETED"
    worker_id = echo_system.workers[0].worker_id
    assert row["attempts"] == 1 and row["worker_id"] == worker_id
    assert row["created_at"] <= row["reserved_at"] <= row["started_at"] <= row["finished_at"]
    assert row["placement"]["worker"] == worker_id
    assert [a["status"] for a in attempts] == ["COMPLETED"]
    assert reservations[0]["retry_token"] == f"{reply['jobId']}#1" and reservations[0]["released_at"]


async def test_headers_carry_correlation_and_trace_to_the_result(echo_system, nc: Client) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"correlation-id": "corr-123", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    _, seen = await _infer_seeing_result_headers(nc, "traced", headers)
    assert seen[0]["correlation-id"] == "corr-123"
    assert seen[0]["traceparent"].split("-")[1] == trace_id
    assert seen[0]["traceparent"].split("-")[2] != "00f067aa0ba902b7"  # a new span per hop


async def test_a_request_without_correlation_id_is_correlated_by_its_job_id(echo_system, nc: Client) -> None:
    reply, seen = await _infer_seeing_result_headers(nc, "correlate me")
    assert seen[0]["correlation-id"] == reply["jobId"]
    row = await echo_system.scheduler.store.get(reply["jobId"])
    assert row is not None and row["correlation_id"] == reply["jobId"]


async def test_idempotency_key_maps_to_one_job_and_one_result(echo_system, nc: Client) -> None:
    first = await client.infer(nc, model="echo", input="once", idempotency_key="key-1")
    second = await client.infer(nc, model="echo", input="once", idempotency_key="key-1")
    assert first["jobId"] == second["jobId"]
    assert second["result"] == "once"
    js = nc.jetstream()
    info = await js.stream_info("RESULTS", subjects_filter=subjects.result_subject(first["jobId"]))
    assert info.state.subjects == {subjects.result_subject(first["jobId"]): 1}


async def test_a_long_correlation_id_is_cut_to_128_characters(echo_system, nc: Client) -> None:
    _, seen = await _infer_seeing_result_headers(nc, "long id", {"correlation-id": "c" * 5000})
    assert seen[0]["correlation-id"] == "c" * 128


async def test_a_raw_newline_inside_a_json_string_is_accepted_as_over_http(echo_system, nc: Client) -> None:
    body = b'{"tenantId": "demo", "modelId": "echo", "version": "1", "input": "two\nlines"}'
    reply = json.loads((await nc.request(subjects.INFER, body, timeout=10)).data)
    assert reply["result"] == "two\nlines"


async def test_a_client_waiting_as_long_as_the_gateway_gets_its_timeout_reply_naming_the_job(
    settings: Settings, nc: Client
) -> None:
    """Client and gateway wait the same time: the client outwaits the gateway a little, so it reads the
    gateway's ``timeout`` (with the job id, the job still running) instead of a bare NATS timeout."""
    settings.request_timeout_s = 2.0
    system = await start_system(settings, ["echo;delay_ms=6000"])
    try:
        with pytest.raises(TetherError) as info:
            await client.infer(nc, model="echo", input="slow", timeout=2.0)
        assert info.value.code == "timeout" and info.value.job_id, info.value.to_wire()
        assert subjects.result_subject(info.value.job_id) in info.value.message
    finally:
        await system.close()
