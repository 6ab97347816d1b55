"""HTTP ``POST /infer`` (the seed pilot's shape), job and fleet views, API keys, idempotency, errors."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tests.http_helpers import HttpSystem, http_system
from tether.settings import Settings

ECHO = {"modelId": "echo", "version": "1"}


@pytest_asyncio.fixture
async def http_echo(settings: Settings) -> AsyncIterator[HttpSystem]:
    async with http_system(settings, ["echo"]) as hs:
        yield hs


async def test_seed_body_answers_job_id_and_result(http_echo: HttpSystem) -> None:
    r = await http_echo.client.post("/infer", json={"tenantId": "demo-tenant", **ECHO, "input": "hello"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"] == "hello" and body["jobId"].startswith("j-")
    assert r.headers["X-Job-Id"] == body["jobId"]
    assert body["workerId"] == http_echo.system.workers[0].worker_id and body["attempts"] == 1  # type: ignore[attr-defined]


async def test_raw_newline_inside_a_json_string_is_accepted(http_echo: HttpSystem) -> None:
    # the seed's curl example sends its multi-line input as written
    raw = b'{"tenantId":"demo-tenant","modelId":"echo","version":"1","input":"What\n  is the capital?"}'
    r = await http_echo.client.post("/infer", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["result"] == "What\n  is the capital?"


async def test_get_job_shows_status_attempts_placement_and_result(http_echo: HttpSystem) -> None:
    r = await http_echo.client.post("/infer", json={"tenantId": "demo", **ECHO, "input": "look me up"})
    job_id = r.json()["jobId"]
    deadline = time.monotonic() + 10  # the scheduler records COMPLETED after the client has the result
    while (view := (await http_echo.client.get(f"/jobs/{job_id}")).json())["status"] != "COMPLETED":
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.05)
    assert view["status"] == "COMPLETED" and view["result"] == "look me up"
    wid = http_echo.system.workers[0].worker_id  # type: ignore[attr-defined]
    assert view["attempts"] == 1 and view["attemptHistory"][0]["workerId"] == wid
    assert view["placement"]["worker"] == wid
    missing = await http_echo.client.get("/jobs/j-doesnotexist")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_workers_and_models(http_echo: HttpSystem) -> None:
    workers = (await http_echo.client.get("/workers")).json()["workers"]
    assert [w["workerId"] for w in workers] == [http_echo.system.workers[0].worker_id]  # type: ignore[attr-defined]
    assert workers[0]["health"] == "HEALTHY" and workers[0]["models"][0]["modelId"] == "echo"
    # the tier the schedulers assign from the admission benchmark (tier 1 until one is reported)
    assert workers[0]["tier"] in {"1", "2", "3"}, workers[0]
    models = (await http_echo.client.get("/models")).json()["models"]
    assert {(m["modelId"], m["version"], m["replicas"]) for m in models} == {("echo", "1", 1)}


async def test_api_key_sets_the_tenant_and_bad_keys_are_401(http_echo: HttpSystem) -> None:
    c = http_echo.client
    ok = await c.post("/infer", json={**ECHO, "input": "keyed"}, headers=http_echo.auth)
    assert ok.status_code == 200, ok.text
    view = (await c.get(f"/jobs/{ok.json()['jobId']}", headers=http_echo.auth)).json()
    assert view["tenantId"] == "acme"
    other = await c.post("/infer", json={"tenantId": "globex", **ECHO, "input": "x"}, headers=http_echo.auth)
    assert other.status_code == 401 and other.json()["error"]["field"] == "tenantId"
    bad = await c.post("/infer", json={**ECHO, "input": "x"}, headers={"Authorization": "Bearer tk_nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "unauthorized"
    scheme = await c.post("/infer", json={**ECHO, "input": "x"}, headers={"Authorization": "Basic abc"})
    assert scheme.status_code == 401
    # another tenant's job is invisible to this key
    anon = await c.post("/infer", json={"tenantId": "globex", **ECHO, "input": "theirs"})
    hidden = await c.get(f"/jobs/{anon.json()['jobId']}", headers=http_echo.auth)
    assert hidden.status_code == 404


async def test_idempotency_key_header_runs_once(http_echo: HttpSystem) -> None:
    c = http_echo.client
    hdrs = {**http_echo.auth, "Idempotency-Key": "order-42"}
    first = await c.post("/infer", json={**ECHO, "input": "once"}, headers=hdrs)
    second = await c.post("/infer", json={**ECHO, "input": "once"}, headers=hdrs)
    assert first.status_code == second.status_code == 200
    assert first.json()["jobId"] == second.json()["jobId"]
    assert first.json()["result"] == second.json()["result"] == "once"
    await asyncio.sleep(0.2)
    view = (await c.get(f"/jobs/{first.json()['jobId']}", headers=http_echo.auth)).json()
    assert view["attempts"] == 1  # ran once
    conflict = await c.post("/infer", json={**ECHO, "input": "different"}, headers=hdrs)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "conflict"


async def test_error_statuses(http_echo: HttpSystem) -> None:
    c = http_echo.client
    cases: list[tuple[httpx.Response, int, str]] = [
        (await c.post("/infer", json={"tenantId": "t", **ECHO}), 400, "invalid_request"),
        (await c.post("/infer", content=b"{not json", headers={"Content-Type": "application/json"}), 400, "invalid_request"),
        (await c.post("/infer", json=[1, 2]), 400, "invalid_request"),
        (await c.post("/infer", json={"tenantId": "t", **ECHO, "input": "x", "bogus": 1}), 400, "invalid_request"),
        (await c.post("/infer", json={"tenantId": "t", "modelId": "nope", "input": "x"}), 404, "model_unknown"),
        (
            await c.post("/infer", json={"tenantId": "t", **ECHO, "input": "x", "params": {"maxNewTokens": 10**6}}),
            400,
            "invalid_request",
        ),
        (await c.post("/infer", content=b"x" * (2 * 1024 * 1024)), 413, "payload_too_large"),
        (await c.post("/infer", content=b"[" * 100_000 + b"]" * 100_000), 400, "invalid_request"),
        (await c.post("/infer", content=b'{"tenantId": "t", "input": ' + b"9" * 5000 + b"}"), 400, "invalid_request"),
        (
            await c.post("/infer", json={"tenantId": "t", **ECHO, "input": "x", "params": {"seed": 2**70}}),
            400,
            "invalid_request",
        ),
    ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code
    assert cases[3][0].json()["error"]["field"] == "bogus"


async def test_timeout_is_504_with_the_job_id(http_echo: HttpSystem) -> None:
    body = {"tenantId": "t", **ECHO, "input": "slow", "params": {"timeoutS": 0.001}}
    r = await http_echo.client.post("/infer", json=body)
    if r.status_code == 200:  # echo can beat a 1 ms deadline; the path is still exercised below
        return
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert r.headers["X-Job-Id"] == r.json()["error"]["jobId"]


async def test_openapi_is_served(http_echo: HttpSystem) -> None:
    spec = (await http_echo.client.get("/openapi.json")).json()
    assert "/infer" in spec["paths"] and "/v1/chat/completions" in spec["paths"]
    assert "InferRequest" in spec["components"]["schemas"]
    assert json.dumps(spec)  # serialisable


async def test_odd_job_ids_in_the_path_are_404_without_echoing_them_into_headers(http_echo: HttpSystem) -> None:
    for path in ("/jobs/%E2%82%AC", "/jobs/caf%C3%A9", "/jobs/abc%0d%0aSet-Cookie:%20pwned=1"):
        r = await http_echo.client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)
        assert "X-Job-Id" not in r.headers and "set-cookie" not in r.headers, (path, r.headers)


async def test_unknown_routes_and_methods_answer_in_the_error_shapes(http_echo: HttpSystem) -> None:
    r = await http_echo.client.post("/v1/nothing", json={})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error", r.text
    r = await http_echo.client.get("/v1/chat/completions")
    assert r.status_code == 405, r.text
    assert r.json()["error"]["type"] == "invalid_request_error" and "GET" in r.json()["error"]["message"]
    r = await http_echo.client.get("/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text


async def test_a_client_gone_before_its_body_arrived_is_not_an_internal_error(
    http_echo: HttpSystem, caplog: pytest.LogCaptureFixture
) -> None:
    host, port = http_echo.url.removeprefix("http://").rsplit(":", 1)
    _reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    writer.write(b'{"tenan')
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await asyncio.sleep(0.5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    r = await http_echo.client.post("/infer", json={"tenantId": "demo", **ECHO, "input": "still up"})
    assert r.status_code == 200 and r.json()["result"] == "still up"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"tenantId":"t","modelId":"echo","input":"\\ud800"}',
        b'{"tenantId":"t","modelId":"e\\ud800","input":"x"}',
        b'{"tenantId":"t","modelId":"echo","input":[{"role":"user","content":"\\udc00"}]}',
        b'{"tenantId":"t","modelId":"echo","input":[NaN]}',
        b'{"tenantId":"t","modelId":"echo","input":"x","params":{"temperature":-Infinity}}',
    ],
    ids=["surrogate-input", "surrogate-model", "surrogate-message", "nan", "minus-infinity"],
)
async def test_lone_surrogates_and_non_json_numbers_are_invalid_requests(http_echo: HttpSystem, raw: bytes) -> None:
    for path, shape in (("/infer", raw), ("/v1/completions", b'{"model":"echo","prompt":"x","x":' + raw + b"}")):
        r = await http_echo.client.post(path, content=shape, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_request" and "JSON" in error["message"], error
        assert error.get("retryable", False) is False
    ok = await http_echo.client.post("/infer", json={"tenantId": "t", **ECHO, "input": "\U0001f600"})
    assert ok.status_code == 200 and ok.json()["result"] == "\U0001f600"  # a surrogate pair is text


async def test_401_names_the_bearer_scheme_and_refusals_say_not_to_retry(http_echo: HttpSystem) -> None:
    c = http_echo.client
    for path, body in (("/infer", {**ECHO, "input": "x"}), ("/v1/completions", {"model": "echo", "prompt": "x"})):
        r = await c.post(path, json=body, headers={"Authorization": "Bearer tk_nope"})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", r.headers
        assert r.headers["x-should-retry"] == "false"
    bad = await c.post("/infer", json={"tenantId": "t", **ECHO})
    assert bad.status_code == 400 and bad.headers["x-should-retry"] == "false"
    assert "www-authenticate" not in bad.headers
