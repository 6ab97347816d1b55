"""Pure pieces of the HTTP gateway: SSE framing, chunk reordering, OpenAI shape translation, fingerprints."""

from __future__ import annotations

import pytest

from schemas import InferReply, InferRequest
from services.gateway.admission import fingerprint
from services.gateway.http import openai_shapes as oa
from services.gateway.http import sse
from services.gateway.http.apikeys import bearer_token, digest_of, new_key
from services.gateway.http.errors import STATUS_BY_CODE
from tether.chunks import Reorder
from tether.errors import ERROR_CODES, InvalidRequest, Unauthorized


def test_sse_event_framing_round_trips() -> None:
    raw = sse.event({"text": "a\nb"}, name="chunk", event_id=3) + sse.comment("ping") + sse.event("two\nlines")
    assert raw.startswith(b"event: chunk\nid: 3\ndata: ")
    assert raw.endswith(b"\n\n")
    events = sse.parse(raw.decode())
    assert events == [{"event": "chunk", "id": "3", "data": '{"text":"a\\nb"}'}, {"data": "two\nlines"}]
    assert sse.parse(sse.DONE.decode()) == [{"data": "[DONE]"}]


def test_reorder_releases_in_sequence_and_drops_repeats() -> None:
    r = Reorder()
    assert r.push(1, "b") == []
    assert r.push(0, "a") == [(0, "a"), (1, "b")]
    assert r.push(0, "a") == [] and r.push(1, "b") == []
    assert r.push(3, "d") == []
    assert r.push(2, "c") == [(2, "c"), (3, "d")]
    assert r.remainder("abcdef") == "ef"
    assert r.remainder("abcd") == ""
    assert r.remainder({"not": "text"}) == ""
    assert Reorder().remainder("all of it") == "all of it"


def test_reorder_continues_a_resumed_attempt_and_stops_at_a_restarted_one() -> None:
    r = Reorder()
    assert r.push(0, "The ", attempt=1, offset=0, tokens=2) == [(0, "The ")]
    assert r.push(1, "cap", attempt=1, offset=2, tokens=1) == [(1, "cap")]
    # attempt 2 resumed after the 3 tokens released: it continues the sequence and the offsets
    assert r.push(2, "ital", attempt=2, offset=3, tokens=1) == [(2, "ital")]
    assert r.push(1, "cap", attempt=1, offset=2, tokens=1) == []  # a zombie attempt 1 repeating: ignored
    assert not r.stopped
    # attempt 3 restarted from the beginning (no prefix reached it): nothing of it is spliced in
    assert r.push(0, "The", attempt=3, offset=0, tokens=1) == []
    assert r.stopped and r.push(3, " of", attempt=3, offset=4, tokens=1) == []
    assert r.remainder("The capital of France") == " of France"  # the final result brings the rest


def test_reorder_stops_at_a_chunk_that_does_not_continue_the_released_tokens() -> None:
    r = Reorder()
    assert r.push(0, "ab", attempt=1, offset=0, tokens=2) == [(0, "ab")]
    assert r.push(2, "x", attempt=2, offset=9, tokens=1) == []  # held: seq 1 is missing
    assert r.push(1, "c", attempt=2, offset=5, tokens=1) == []  # seq 1, but 3 tokens too far
    assert r.stopped and r.released_text == ["ab"]
    assert r.remainder("abcd") == "cd"


def test_reorder_never_splices_in_an_abandoned_attempt() -> None:
    r = Reorder()
    assert r.push(0, "The cat", attempt=1, offset=0, tokens=2) == [(0, "The cat")]
    assert r.push(1, " sat", attempt=2, offset=2, tokens=1) == [(1, " sat")]  # resumed after a re-placement
    # the abandoned attempt 1 runs on until its cancel lands: its next chunk fits seq and offset, but is not
    # the text the resumed attempt writes
    assert r.push(2, " on a hat", attempt=1, offset=3, tokens=3) == []
    assert r.push(2, " down.", attempt=2, offset=3, tokens=2) == [(2, " down.")]
    assert not r.diverged("The cat sat down.")


def test_reorder_drops_what_an_older_attempt_left_waiting_for_a_gap() -> None:
    r = Reorder()
    assert r.push(0, "a", attempt=1) == [(0, "a")]
    assert r.push(2, "OLD", attempt=1) == []  # held: seq 1 missing
    assert r.push(1, "b", attempt=2) == [(1, "b")]  # the resumed attempt: attempt 1's seq 2 is not its text
    assert r.push(2, "c", attempt=2) == [(2, "c")]
    assert "".join(r.released_text) == "abc"


def test_reorder_tells_when_the_streamed_text_is_not_the_final_text() -> None:
    r = Reorder()
    r.push(0, "The cat", attempt=1, offset=0, tokens=2)
    r.push(0, "A dog", attempt=2, offset=0, tokens=2)  # restarted (sampling): other text
    assert r.stopped
    assert r.diverged("A dog ran.") and r.remainder("A dog ran.") == ""
    assert not r.diverged("The cat ran.") and not r.diverged({"not": "text"})
    assert not Reorder().diverged("anything")


def test_every_error_code_has_an_http_status() -> None:
    assert set(ERROR_CODES) <= STATUS_BY_CODE.keys()
    assert STATUS_BY_CODE["quota_exceeded"] == 429 and STATUS_BY_CODE["no_capacity"] == 503


def test_bearer_tokens_and_key_digests() -> None:
    assert bearer_token(None) is None
    assert bearer_token("Bearer  tk_abc ") == "tk_abc"
    with pytest.raises(Unauthorized):
        bearer_token("Basic dXNlcg==")
    key = new_key()
    assert key.startswith("tk_") and len(key) > 40 and key != new_key()
    assert digest_of(key) == digest_of(key) and key not in digest_of(key)


def test_openai_model_names_round_trip() -> None:
    assert oa.split_model("echo") == ("echo", "1")
    assert oa.split_model("Qwen/Qwen2.5-0.5B@2") == ("Qwen/Qwen2.5-0.5B", "2")
    assert oa.model_name(*oa.split_model("m@3")) == "m@3"
    assert oa.model_name("echo", "1") == "echo"


def test_chat_translation_joins_parts_and_maps_developer_to_system() -> None:
    body = oa.parse_openai(
        oa.ChatCompletionRequest,
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
            ],
            "max_completion_tokens": 7,
            "stop": "\n",
            "temperature": 0.5,
        },
    )
    req = oa.chat_to_infer(body, "acme", "k1")
    wire = req.wire()
    assert wire["input"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    assert wire["params"] == {"maxNewTokens": 7, "stop": ["\n"], "temperature": 0.5, "chat": True}
    assert wire["tenantId"] == "acme" and wire["idempotencyKey"] == "k1"


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "prompt": "x", "n": 2},
        {"model": "m", "prompt": ["a", "b"]},
        {"model": "m", "prompt": "x", "max_tokens": 0},
        {"model": "m"},
        {"prompt": "x"},
        ["not", "an", "object"],
    ],
)
def test_unsupported_or_malformed_completions_are_invalid(body: object) -> None:
    with pytest.raises(InvalidRequest):
        oa.completion_to_infer(oa.parse_openai(oa.CompletionRequest, body), "t", None)


def test_embeddings_response_float_and_base64() -> None:
    reply = InferReply(job_id="j", result=[[1.0, 0.5], [0.25, 0.0]], model_id="e", version="1", worker_id="w")
    out = oa.embeddings_response(reply, "float", many=True)
    assert [d["embedding"] for d in out["data"]] == [[1.0, 0.5], [0.25, 0.0]]
    b64 = oa.embeddings_response(reply, "base64", many=True)
    assert b64["data"][0]["embedding"] == "AACAPwAAAD8="  # little-endian float32 1.0, 0.5
    with pytest.raises(InvalidRequest):
        oa.embeddings_response(reply.model_copy(update={"result": "text"}), "float", many=False)


def test_fingerprint_ignores_the_key_but_not_the_input() -> None:
    base = {"tenantId": "t", "modelId": "m", "input": "x"}
    a = InferRequest.model_validate({**base, "idempotencyKey": "k"})
    b = InferRequest.model_validate({**base, "idempotencyKey": "other"})
    c = InferRequest.model_validate({**base, "input": "y", "idempotencyKey": "k"})
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_committed_openapi_spec_is_fresh_and_complete() -> None:
    import json

    from services.gateway.http.openapi_file import SPEC_PATH, render

    assert SPEC_PATH.read_text() == render(), "run: python -m services.gateway.http.openapi_file"
    spec = json.loads(SPEC_PATH.read_text())
    paths = spec["paths"]
    for path in ("/infer", "/jobs/{job_id}", "/workers", "/models", "/v1/completions", "/v1/chat/completions",
                 "/v1/embeddings", "/v1/models"):
        assert path in paths, path
    infer = paths["/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/InferRequest"}
    assert {"400", "401", "404", "409", "413", "429", "503", "504"} <= infer["responses"].keys()
    refs = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"].rsplit("/", 1)[-1])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    assert refs <= spec["components"]["schemas"].keys()  # every reference resolves


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("shape", "extra", "param"),
    [
        (oa.ChatCompletionRequest, {"response_format": {"type": "json_object"}}, "response_format"),
        (oa.ChatCompletionRequest, {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        (oa.ChatCompletionRequest, {"tool_choice": "required"}, "tool_choice"),
        (oa.ChatCompletionRequest, {"functions": [{"name": "f"}]}, "functions"),
        (oa.ChatCompletionRequest, {"function_call": "auto"}, "function_call"),
        (oa.ChatCompletionRequest, {"logprobs": True}, "logprobs"),
        (oa.ChatCompletionRequest, {"top_logprobs": 2}, "top_logprobs"),
        (oa.ChatCompletionRequest, {"logit_bias": {"5": 100}}, "logit_bias"),
        (oa.ChatCompletionRequest, {"presence_penalty": 1.5}, "presence_penalty"),
        (oa.ChatCompletionRequest, {"frequency_penalty": -0.5}, "frequency_penalty"),
        (oa.CompletionRequest, {"echo": True}, "echo"),
        (oa.CompletionRequest, {"best_of": 3}, "best_of"),
        (oa.CompletionRequest, {"suffix": "x"}, "suffix"),
        (oa.CompletionRequest, {"logprobs": 2}, "logprobs"),
        (oa.CompletionRequest, {"prompt": [1, 2, 3]}, "prompt"),
        (oa.CompletionRequest, {"prompt": [[1, 2]]}, "prompt"),
        (oa.EmbeddingRequest, {"dimensions": 8}, "dimensions"),
        (oa.EmbeddingRequest, {"input": [[1, 2, 3]]}, "input"),
    ],
)
def test_unsupported_openai_parameters_are_refused_by_name(
    shape: type[oa.CompletionRequest | oa.ChatCompletionRequest | oa.EmbeddingRequest], extra: dict, param: str
) -> None:
    base = CHAT if shape is oa.ChatCompletionRequest else {"model": "m", "prompt": "x", "input": "x"}
    with pytest.raises(InvalidRequest) as info:
        oa.parse_openai(shape, {**base, **extra})
    assert info.value.field == param and info.value.message.startswith(param)
    assert "not supported" in info.value.message


@pytest.mark.parametrize(
    "extra",
    [
        {"stream": None, "n": None, "stop": None, "temperature": None, "max_tokens": None, "user": None},
        {"n": 1, "stream_options": {"include_usage": True}, "user": "u", "unknown": 1},
        {"tools": None, "tool_choice": None, "functions": None, "function_call": None, "response_format": None},
        {"tools": [], "tool_choice": "none", "response_format": {"type": "text"}},
        {"logprobs": False, "top_logprobs": 0, "logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0.0},
    ],
)
def test_default_values_of_unsupported_openai_parameters_are_accepted(extra: dict) -> None:
    body = oa.parse_openai(oa.ChatCompletionRequest, {**CHAT, **extra})
    assert not body.stream
    completion = {"model": "m", "prompt": "x", "echo": False, "best_of": 1, "suffix": None, "logprobs": None}
    assert oa.parse_openai(oa.CompletionRequest, {**extra, **completion}).prompt == "x"


@pytest.mark.parametrize(
    ("field", "kw", "param"),
    [
        ("params.maxNewTokens", {}, "max_tokens"),
        ("params.maxNewTokens", {"max_tokens": "max_completion_tokens"}, "max_completion_tokens"),
        ("params.seed", {}, "seed"),
        ("params.temperature", {}, "temperature"),
        ("params.topP", {}, "top_p"),
        ("params.stop.0", {}, "stop.0"),
        ("params.timeoutS", {}, "params.timeoutS"),  # no OpenAI parameter sets it
        ("modelId", {}, "model"),
        ("version", {}, "model"),
        ("idempotencyKey", {}, "Idempotency-Key"),
        ("input", {"text": "messages"}, "messages"),
        ("input.0.content", {"text": "messages"}, "messages.0.content"),
        ("input", {"text": "prompt"}, "prompt"),
        ("body", {}, "body"),
        (None, {}, None),
    ],
)
def test_error_fields_are_named_as_openai_parameters(field: str | None, kw: dict, param: str | None) -> None:
    assert oa.openai_param(field, **kw) == param


def test_errors_say_whether_a_client_should_retry() -> None:
    from services.gateway.http.errors import openai_error, tether_error
    from tether.errors import Conflict, Internal, NoCapacity, QuotaExceeded, Timeout

    for exc, retry in [
        (Timeout("the job continues", job_id="j-1"), "false"),  # a retry would run it twice
        (Conflict("key reused"), "false"),
        (InvalidRequest("bad"), "false"),
        (Unauthorized("no key"), "false"),
        (QuotaExceeded("slow down", retry_after_s=2), "true"),
        (NoCapacity("busy"), "true"),
        (Internal("bug"), "false"),  # it may have been queued already: no blind re-run
    ]:
        for response in (tether_error(exc), openai_error(exc)):
            assert response.headers["x-should-retry"] == retry, exc.code
    assert openai_error(Unauthorized("no key")).headers["www-authenticate"] == "Bearer"
    assert tether_error(Unauthorized("no key")).headers["www-authenticate"] == "Bearer"
    assert "www-authenticate" not in tether_error(InvalidRequest("bad")).headers
