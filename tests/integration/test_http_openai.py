"""The official ``openai`` Python client against the HTTP gateway: models, completions, chat (with the
model's chat template), streaming, embeddings (float and base64), and errors in OpenAI's shape."""

from __future__ import annotations

import base64
import dataclasses
import math
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio

from tests.http_helpers import HttpSystem, http_system
from tests.tiny_models import build_tiny_gpt2
from tether.settings import Settings

TINY = "tiny-chat"
MINILM = "all-minilm-l6-v2"


@pytest_asyncio.fixture
async def hs(settings: Settings, tmp_path: Path) -> AsyncIterator[HttpSystem]:
    model_dir = build_tiny_gpt2(tmp_path / "tiny", chat=True)
    async with http_system(settings, ["echo", f"{TINY}:1={model_dir}", MINILM]) as system:
        yield system


@pytest.fixture
def client(hs: HttpSystem) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{hs.url}/v1", api_key=hs.key, max_retries=0)


async def test_models_list(client: openai.AsyncOpenAI) -> None:
    ids = [m.id async for m in client.models.list()]
    assert set(ids) == {"echo", TINY, MINILM}


async def test_completion_and_its_stream_agree(client: openai.AsyncOpenAI) -> None:
    done = await client.completions.create(model=TINY, prompt="the capital of france is", max_tokens=6)
    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    assert done.choices[0].text.strip() and done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 6 and done.usage.prompt_tokens > 0
    stream = await client.completions.create(
        model=TINY, prompt="the capital of france is", max_tokens=6, stream=True
    )
    pieces = [c.choices[0].text async for c in stream]
    assert "".join(pieces) == done.choices[0].text  # greedy: the stream says the same thing


async def test_chat_applies_the_template_and_streams(client: openai.AsyncOpenAI) -> None:
    messages = [{"role": "system", "content": "you are a cat"}, {"role": "user", "content": "hello"}]
    done = await client.chat.completions.create(model=TINY, messages=messages, max_tokens=5)  # type: ignore[arg-type]
    assert done.object == "chat.completion"
    assert done.choices[0].message.role == "assistant" and done.choices[0].message.content
    raw = await client.completions.create(model=TINY, prompt="hello", max_tokens=5)
    assert done.usage is not None and raw.usage is not None
    assert done.usage.prompt_tokens > raw.usage.prompt_tokens + 6  # roles and separators from the template
    stream = await client.chat.completions.create(model=TINY, messages=messages, max_tokens=5, stream=True)  # type: ignore[arg-type]
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == done.choices[0].message.content
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


async def test_embeddings_float_and_base64(client: openai.AsyncOpenAI) -> None:
    one = await client.embeddings.create(model=MINILM, input="a sentence to embed")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    assert math.isclose(math.sqrt(sum(v * v for v in one.data[0].embedding)), 1.0, rel_tol=1e-3)
    many = await client.embeddings.create(model=MINILM, input=["first", "second"])
    assert [d.index for d in many.data] == [0, 1]
    assert many.data[0].embedding != many.data[1].embedding
    b64 = await client.embeddings.create(model=MINILM, input="a sentence to embed", encoding_format="base64")
    raw = b64.data[0].embedding
    if isinstance(raw, str):  # the client hands base64 back undecoded when asked for it explicitly
        raw = list(struct.unpack(f"<{len(base64.b64decode(raw)) // 4}f", base64.b64decode(raw)))
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(raw, one.data[0].embedding, strict=True))


async def test_errors_map_to_openai_exceptions(hs: HttpSystem, client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await client.completions.create(model="no-such-model", prompt="x")
    assert missing.value.code == "model_unknown"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.completions.create(model=TINY, prompt="x", max_tokens=10**7)
    assert bad.value.code == "invalid_request"
    with pytest.raises(openai.BadRequestError):
        await client.completions.create(model=TINY, prompt="x", n=2)
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model="echo", input="not a vector model")
    wrong_key = openai.AsyncOpenAI(base_url=f"{hs.url}/v1", api_key="tk_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await wrong_key.models.list()


async def test_idempotency_key_over_the_openai_route(hs: HttpSystem, client: openai.AsyncOpenAI) -> None:
    headers = {"Idempotency-Key": "chat-7"}
    a = await client.completions.create(model="echo", prompt="same", extra_headers=headers)
    b = await client.completions.create(model="echo", prompt="same", extra_headers=headers)
    assert a.id == b.id and a.choices[0].text == b.choices[0].text == "same"


SLOW = "slow"


@pytest_asyncio.fixture
async def quick(settings: Settings) -> AsyncIterator[HttpSystem]:
    """Echo, and a model slower than the gateway's 1 s request timeout."""
    fast = dataclasses.replace(settings, request_timeout_s=1.0)
    async with http_system(fast, ["echo", f"{SLOW}:1=x;task=echo;delay_ms=2500"]) as system:
        yield system


async def test_the_openai_client_does_not_rerun_a_timed_out_or_conflicting_request(quick: HttpSystem) -> None:
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(request.url.path)

    http = httpx.AsyncClient(event_hooks={"request": [count]}, timeout=30)
    sdk = openai.AsyncOpenAI(base_url=f"{quick.url}/v1", api_key=quick.key, http_client=http)  # 2 retries
    try:
        with pytest.raises(openai.InternalServerError) as late:
            await sdk.chat.completions.create(model=SLOW, messages=[{"role": "user", "content": "once"}])
        assert late.value.status_code == 504 and late.value.response.headers["x-should-retry"] == "false"
        assert len(sent) == 1  # the job continues: a retry would have run it again
        key = {"Idempotency-Key": "k-conflict"}
        await sdk.completions.create(model="echo", prompt="a", extra_headers=key)
        sent.clear()
        with pytest.raises(openai.ConflictError) as conflict:
            await sdk.completions.create(model="echo", prompt="b", extra_headers=key)
        assert conflict.value.response.headers["x-should-retry"] == "false" and len(sent) == 1
    finally:
        await http.aclose()


async def test_unsupported_openai_parameters_are_refused_and_defaults_accepted(quick: HttpSystem) -> None:
    sdk = openai.AsyncOpenAI(base_url=f"{quick.url}/v1", api_key=quick.key, max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    refused = {
        "response_format": {"response_format": {"type": "json_object"}},
        "tool_choice": {"tool_choice": "required"},
        "functions": {"functions": [{"name": "f", "parameters": {}}]},
        "logprobs": {"logprobs": True, "top_logprobs": 2},
        "logit_bias": {"logit_bias": {"5": 100}},
        "presence_penalty": {"presence_penalty": 1.5},
        "tools": {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    }
    for param, kw in refused.items():
        with pytest.raises(openai.BadRequestError) as info:
            await sdk.chat.completions.create(model="echo", messages=msgs, **kw)  # type: ignore[call-overload]
        assert info.value.param == param and f"{param} is not supported" in info.value.message, param
    for param, kw in {"echo": {"echo": True}, "best_of": {"best_of": 3}, "suffix": {"suffix": "x"}}.items():
        with pytest.raises(openai.BadRequestError) as info:
            await sdk.completions.create(model="echo", prompt="x", **kw)  # type: ignore[call-overload]
        assert info.value.param == param and f"{param} is not supported" in info.value.message, param
    with pytest.raises(openai.BadRequestError) as tokens:
        await sdk.completions.create(model="echo", prompt=[1, 2, 3])
    assert tokens.value.param == "prompt" and "token ids is not supported" in tokens.value.message
    # what clients send unasked, or as explicit defaults, still works
    ok = await sdk.chat.completions.create(
        model="echo", messages=msgs, n=1, user="u", tools=[], response_format={"type": "text"}, presence_penalty=0,
    )  # type: ignore[call-overload]
    assert ok.choices[0].message.content == "hi"
    stream = await sdk.chat.completions.create(
        model="echo", messages=msgs, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "hi"
    nulls = await quick.client.post(
        "/v1/chat/completions", json={"model": "echo", "messages": msgs, "stream": None, "n": None}
    )
    assert nulls.status_code == 200 and nulls.json()["choices"][0]["message"]["content"] == "hi", nulls.text


async def test_errors_name_the_openai_parameter(quick: HttpSystem) -> None:
    sdk = openai.AsyncOpenAI(base_url=f"{quick.url}/v1", api_key=quick.key, max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        ({"max_tokens": 10**7}, "max_tokens"),
        ({"max_completion_tokens": 10**7}, "max_completion_tokens"),
        ({"seed": 2**70}, "seed"),
        ({"model": "no-such-model"}, "model"),
    ]
    for kw, param in cases:
        with pytest.raises(openai.APIStatusError) as info:
            await sdk.chat.completions.create(**{"model": "echo", "messages": msgs, **kw})  # type: ignore[call-overload]
        assert info.value.body["param"] == param, (kw, info.value.body)  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as prompt:
        await sdk.completions.create(model="echo", prompt="x", seed=2**70)
    assert prompt.value.param == "seed"
