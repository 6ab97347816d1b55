"""Bad input: a specific error code and a message naming the field, fast, and no lost job."""

from __future__ import annotations

import json

import msgpack
import pytest
from nats.aio.client import Client

from tether import subjects

ECHO = {"tenantId": "demo", "modelId": "echo", "version": "1"}


async def _ask(nc: Client, payload: bytes, headers: dict[str, str] | None = None) -> dict:
    msg = await nc.request(subjects.INFER, payload, timeout=3, headers=headers)
    ctype = (msg.headers or {}).get("Content-Type", "application/json")
    return msgpack.unpackb(msg.data) if ctype == "application/msgpack" else json.loads(msg.data)


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        (b"{not json", "invalid_request", "body"),
        (b"[1, 2, 3]", "invalid_request", "body"),
        (json.dumps({"modelId": "echo", "input": "x"}).encode(), "invalid_request", "tenantId"),
        (json.dumps({**ECHO, "version": 1, "input": "x"}).encode(), "invalid_request", "version"),
        (json.dumps({**ECHO, "input": ""}).encode(), "invalid_request", "input"),
        (json.dumps({**ECHO, "input": 42}).encode(), "invalid_request", "input"),
        (json.dumps({**ECHO, "input": "x", "colour": "red"}).encode(), "invalid_request", "colour"),
        (
            json.dumps({**ECHO, "input": "x", "params": {"maxNewTokens": "ten"}}).encode(),
            "invalid_request",
            "params.maxNewTokens",
        ),
        (
            json.dumps({**ECHO, "input": "x", "params": {"maxNewTokens": 10**6}}).encode(),
            "invalid_request",
            "params.maxNewTokens",
        ),
        (json.dumps({**ECHO, "modelId": "no-such-model", "input": "x"}).encode(), "model_unknown", "modelId"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_request", "body"),
        (b'{"tenantId": "demo", "input": ' + b"9" * 5000 + b"}", "invalid_request", "body"),
        (json.dumps({**ECHO, "input": "x", "params": {"seed": 2**70}}).encode(), "invalid_request", "params.seed"),
        (json.dumps({**ECHO, "input": "x", "params": {"topK": 2**70}}).encode(), "invalid_request", "params.topK"),
        (b'{"tenantId": "demo", "modelId": "echo", "input": "x", "params": {"timeoutS": Infinity}}',
         "invalid_request", "body"),  # Infinity is not JSON: refused while decoding
        (b'{"tenantId": "demo", "modelId": "echo", "input": [NaN]}', "invalid_request", "body"),
        (b'{"tenantId": "demo", "modelId": "echo", "input": "\\ud800"}', "invalid_request", "body"),
        (b'{"tenantId": "demo", "modelId": "e\\udc00", "input": "x"}', "invalid_request", "body"),
        (json.dumps({**ECHO, "input": "x", "params": {"timeoutS": 1e9}}).encode(), "invalid_request", "params.timeoutS"),
        (json.dumps({**ECHO, "input": ["a"] * 2049}).encode(), "invalid_request", "input"),
    ],
    ids=[
        "malformed-json",
        "not-an-object",
        "missing-tenant",
        "wrong-type",
        "empty-input",
        "input-number",
        "unknown-field",
        "params-type",
        "params-limit",
        "unknown-model",
        "nested-too-deeply",
        "integer-over-4300-digits",
        "seed-over-64-bits",
        "top-k-over-limit",
        "timeout-infinite",
        "nan",
        "lone-surrogate-input",
        "lone-surrogate-model",
        "timeout-over-cap",
        "too-many-inputs",
    ],
)
async def test_bad_requests_get_a_specific_error(
    echo_system, nc: Client, payload: bytes, code: str, field: str
) -> None:
    reply = await _ask(nc, payload)
    assert reply["error"]["code"] == code
    assert reply["error"]["field"] == field
    assert field.split(".")[-1] in reply["error"]["message"] or field == "body"


async def test_malformed_msgpack_gets_a_msgpack_error(echo_system, nc: Client) -> None:
    reply = await _ask(nc, b"\xc1\xff\x00", {"Content-Type": "application/msgpack"})
    assert reply["error"]["code"] == "invalid_request"
    assert "msgpack" in reply["error"]["message"]


async def test_unsupported_content_type(echo_system, nc: Client) -> None:
    reply = await _ask(nc, b"<xml/>", {"Content-Type": "application/xml"})
    assert reply["error"] == {
        "code": "invalid_request",
        "message": "unsupported Content-Type 'application/xml': use application/json or application/msgpack",
        "retryable": False,
        "field": "Content-Type",
    }


async def test_oversize_payload(echo_system, nc: Client, settings) -> None:
    big = json.dumps({**ECHO, "input": "x" * (settings.max_payload + 10)}).encode()
    reply = await _ask(nc, big)
    assert reply["error"]["code"] == "payload_too_large"


async def test_system_still_serves_after_bad_input(echo_system, nc: Client) -> None:
    for payload in (b"{", b"\x00\x01", b"null"):
        await _ask(nc, payload)
    reply = await _ask(nc, json.dumps({**ECHO, "input": "still here"}).encode())
    assert reply["result"] == "still here"


@pytest.mark.parametrize(
    ("subject", "payload", "headers", "job_id", "code"),
    [
        ("tether.jobs.demo.echo.1", b"{oops", {"Nats-Msg-Id": "bad-json"}, "bad-json", "invalid_request"),
        (
            "tether.jobs.demo.echo.1",
            b'{"jobId": "bad-empty", "input": ""}',
            None,
            "bad-empty",
            "invalid_request",
        ),
        (
            "tether.jobs.demo.echo.1",
            b'{"jobId": "bad-field", "input": "x", "extra": 1}',
            None,
            "bad-field",
            "invalid_request",
        ),
        (
            "tether.jobs.demo.nope.1",
            b'{"jobId": "bad-model", "input": "x"}',
            None,
            "bad-model",
            "model_unknown",
        ),
        (
            "tether.jobs.demo.echo",
            b'{"jobId": "bad-subject", "input": "x"}',
            None,
            "bad-subject",
            "invalid_request",
        ),
    ],
    ids=["malformed-json", "empty-input", "unknown-field", "unknown-model", "short-subject"],
)
async def test_bare_publish_bad_input_lands_a_final_error_result(
    echo_system, nc: Client, subject: str, payload: bytes, headers: dict | None, job_id: str, code: str
) -> None:
    sub = await nc.subscribe(subjects.result_subject(job_id))
    await nc.jetstream().publish(subject, payload, headers=headers)
    msg = await sub.next_msg(timeout=15)
    await sub.unsubscribe()
    result = json.loads(msg.data)
    assert result["jobId"] == job_id
    assert result["status"] == "failed"
    assert result["error"]["code"] == code
