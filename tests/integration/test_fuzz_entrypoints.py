"""Fuzz the HTTP and NATS entrypoints with hypothesis: arbitrary bodies, headers and encodings never
crash the gateway, never hang, and never answer 5xx other than a deliberate 503/504.

The system runs in a background thread (its own event loop), so hypothesis drives it with plain
synchronous calls."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import httpx
import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.http_helpers import HttpSystem, http_system
from tether import subjects
from tether.settings import Settings

ALLOWED_5XX = {503, 504}
json_leaf = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
)
json_value = st.recursive(
    json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=12
)
field_values = st.one_of(json_value, st.just("echo"), st.just("1"), st.just("hello"))
infer_bodies = st.fixed_dictionaries(
    {},
    optional={
        "tenantId": field_values,
        "modelId": st.one_of(st.just("echo"), field_values),
        "version": field_values,
        "input": st.one_of(st.text(max_size=50), json_value),
        "params": st.one_of(json_value, st.fixed_dictionaries({}, optional={
            "maxNewTokens": json_value, "temperature": json_value, "timeoutS": st.floats(0.01, 2), "stop": json_value,
        })),
        "idempotencyKey": field_values,
        "extra": json_value,
    },
)
openai_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just("echo"), field_values),
        "prompt": json_value,
        "messages": st.one_of(json_value, st.lists(st.fixed_dictionaries({"role": field_values, "content": json_value}))),
        "input": json_value,
        "max_tokens": json_value,
        "stream": st.booleans(),
        "encoding_format": field_values,
    },
)


class Background:
    """An event loop in a thread running the system until the test ends."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready: Future[HttpSystem] = Future()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._main = asyncio.run_coroutine_threadsafe(self._run(settings), self.loop)

    async def _run(self, settings: Settings) -> None:
        self._stop = asyncio.Event()
        try:
            async with http_system(settings, ["echo"]) as hs:
                self.ready.set_result(hs)
                await self._stop.wait()
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
            raise

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._main.result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def bg(settings: Settings) -> Iterator[tuple[Background, HttpSystem]]:
    b = Background(settings)
    try:
        yield b, b.ready.result(120)
    finally:
        b.close()


def _check(r: httpx.Response) -> None:
    assert r.status_code < 500 or r.status_code in ALLOWED_5XX, (r.status_code, r.text)
    if r.status_code >= 400:
        body = r.json()
        assert ("error" in body and body["error"].get("code")) or body["error"].get("type"), body


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def test_fuzz_http_infer(bg: tuple[Background, HttpSystem]) -> None:
    _, hs = bg
    with httpx.Client(base_url=hs.url, timeout=20) as c:

        @FUZZ
        @given(body=infer_bodies, stream=st.booleans(), raw=st.binary(max_size=64), use_raw=st.booleans())
        def run(body: dict[str, Any], stream: bool, raw: bytes, use_raw: bool) -> None:
            content = raw if use_raw else json.dumps(body).encode()
            r = c.post("/infer", params={"stream": str(stream).lower()}, content=content,
                       headers={"Content-Type": "application/json"})
            _check(r)

        run()
        assert c.post("/infer", json={"tenantId": "t", "modelId": "echo", "input": "alive"}).json()["result"] == "alive"


def test_fuzz_openai_routes(bg: tuple[Background, HttpSystem]) -> None:
    _, hs = bg
    with httpx.Client(base_url=hs.url, timeout=20) as c:

        @FUZZ
        @given(body=openai_bodies, path=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/embeddings"]))
        def run(body: dict[str, Any], path: str) -> None:
            _check(c.post(path, json=body))

        run()
        assert c.get("/v1/models").status_code == 200


def test_fuzz_nats_infer(bg: tuple[Background, HttpSystem]) -> None:
    b, hs = bg
    nc = hs.http.gateway.nc
    assert nc is not None

    async def ask(data: bytes, headers: dict[str, str]) -> dict[str, Any]:
        msg = await nc.request(subjects.INFER, data, timeout=20, headers=headers)
        if (msg.headers or {}).get("Content-Type") == "application/msgpack":
            return msgpack.unpackb(msg.data)
        return json.loads(msg.data)

    @FUZZ
    @given(body=infer_bodies, enc=st.sampled_from(["application/json", "application/msgpack", "text/nope", ""]),
           raw=st.binary(max_size=64), use_raw=st.booleans())
    def run(body: dict[str, Any], enc: str, raw: bytes, use_raw: bool) -> None:
        if use_raw:
            data = raw
        elif enc == "application/msgpack":
            try:
                data = msgpack.packb(body)
            except OverflowError:  # an integer outside msgpack's 64-bit range: no client can send it
                assume(False)
        else:
            data = json.dumps(body).encode()
        reply = b.call(ask(data, {"Content-Type": enc} if enc else {}))
        assert "result" in reply or reply["error"]["code"] != "internal", reply

    run()
