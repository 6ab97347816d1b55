"""OpenAI-compatible routes: ``/v1/completions``, ``/v1/chat/completions`` (``stream: true`` as SSE in
OpenAI's chunk format, ending with ``data: [DONE]``), ``/v1/embeddings`` and ``/v1/models``.

Each request becomes an ``InferRequest`` and goes through ``Gateway.infer`` like any other, so
quotas, shedding, idempotency (``Idempotency-Key``) and errors are the same; errors use OpenAI's
``{"error": {"message", "type", "param", "code"}}`` shape with Tether's code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from schemas import InferReply, InferRequest
from services.gateway.http import openai_shapes as oa
from services.gateway.http import sse
from services.gateway.http.context import (
    ANONYMOUS_TENANT,
    caller_of,
    idempotency_key,
    read_json,
    state_of,
    tenant_of,
    trace_headers,
)
from services.gateway.http.errors import openai_error_body
from services.gateway.http.hangup import infer_while_connected
from services.gateway.http.jobstream import Chunk, JobStream
from services.gateway.http.openapi_docs import body_schema
from tether.errors import Internal, TetherError, WorkerFailed

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")

ChunkBody = Callable[[str, str, int, dict[str, Any], str | None], dict[str, Any]]
GenBody = TypeVar("GenBody", oa.CompletionRequest, oa.ChatCompletionRequest)
ToInfer = Callable[[Any, str, str | None], InferRequest]
Respond = Callable[[InferReply, int], dict[str, Any]]


async def _tenant(request: Request) -> str:
    return tenant_of(await caller_of(request), None, default=ANONYMOUS_TENANT)


async def _run(request: Request, req: InferRequest) -> InferReply:
    return await infer_while_connected(request, state_of(request).gateway, req, trace_headers(request))


@contextmanager
def _openai_names(text: str, max_tokens: str = "max_tokens") -> Iterator[None]:
    """Errors name the OpenAI parameter (``max_tokens``, ``model``, ``messages``), not Tether's field."""
    try:
        yield
    except TetherError as exc:
        exc.field = oa.openai_param(exc.field, text=text, max_tokens=max_tokens)
        raise


def _text_param(shape: type[GenBody]) -> str:
    return "messages" if shape is oa.ChatCompletionRequest else "prompt"


async def _generate(request: Request, shape: type[GenBody], to_infer: ToInfer, respond: Respond, chunk: ChunkBody) -> Any:
    body = oa.parse_openai(shape, await read_json(request))
    max_tokens = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    with _openai_names(_text_param(shape), max_tokens):
        req = to_infer(body, await _tenant(request), idempotency_key(request, None))
        if body.stream:
            return await _stream(request, req, chunk)
        reply = await _run(request, req)
    return JSONResponse(respond(reply, int(time.time())), headers={"X-Job-Id": reply.job_id})


@router.post("/completions", summary="OpenAI text completion", openapi_extra=body_schema(oa.CompletionRequest))
async def completions(request: Request) -> Any:
    return await _generate(request, oa.CompletionRequest, oa.completion_to_infer, oa.completion_response, _completion_chunk)


@router.post(
    "/chat/completions",
    summary="OpenAI chat completion (the model's chat template applies)",
    openapi_extra=body_schema(oa.ChatCompletionRequest),
)
async def chat_completions(request: Request) -> Any:
    return await _generate(request, oa.ChatCompletionRequest, oa.chat_to_infer, oa.chat_response, _chat_chunk)


@router.post("/embeddings", summary="OpenAI embeddings", openapi_extra=body_schema(oa.EmbeddingRequest))
async def embeddings(request: Request) -> Any:
    body = oa.parse_openai(oa.EmbeddingRequest, await read_json(request))
    with _openai_names("input"):
        req = oa.embedding_to_infer(body, await _tenant(request), idempotency_key(request, None))
        reply = await _run(request, req)
    out = oa.embeddings_response(reply, body.encoding_format, many=isinstance(body.input, list))
    return JSONResponse(out, headers={"X-Job-Id": reply.job_id})


@router.get("/models", summary="OpenAI model list (id, or id@version for versions other than 1)")
async def list_models(request: Request) -> Any:
    await caller_of(request)
    gateway = state_of(request).gateway
    names = gateway.fleet.models() + [a for a, t in gateway.config.aliases.items() if gateway.fleet.knows_model(*t)]
    return oa.models_list(sorted(set(names)))


def _completion_chunk(job_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": f"cmpl-{job_id}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"text": delta.get("content", ""), "index": 0, "logprobs": None, "finish_reason": finish}],
    }


def _chat_chunk(job_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


async def _stream(request: Request, req: InferRequest, chunk: ChunkBody) -> StreamingResponse:
    job = JobStream(state_of(request).gateway, req, trace_headers(request))
    try:
        job_id = await job.start()
    except BaseException:
        await job.close()
        raise
    return StreamingResponse(
        sse.with_keepalive(_openai_events(job, chunk)),
        media_type=sse.MEDIA_TYPE,
        headers={**sse.HEADERS, "X-Job-Id": job_id},
    )


async def _openai_events(job: JobStream, chunk: ChunkBody) -> AsyncIterator[bytes]:
    assert job.job_id is not None
    model = oa.model_name(job.req.model_id, job.req.version)
    try:
        if chunk is _chat_chunk:
            yield sse.event(chunk(job.job_id, model, job.created, {"role": "assistant", "content": ""}, None))
        async for ev in job.events():
            if isinstance(ev, Chunk):
                yield sse.event(chunk(job.job_id, model, job.created, {"content": ev.text}, None))
                continue
            if job.diverged:  # an OpenAI client has only the chunks: it must not take them for the answer
                raise WorkerFailed(
                    f"job {job.job_id} restarted after part of it had streamed and its final text differs "
                    f"from what was streamed; send the request again with the same Idempotency-Key (or GET "
                    f"/jobs/{job.job_id}) for the whole result",
                    job_id=job.job_id,
                )
            if not isinstance(ev.result, str) and oa.text_of(ev.result):  # a non-text result, said once
                yield sse.event(chunk(job.job_id, model, job.created, {"content": oa.text_of(ev.result)}, None))
            final = chunk(job.job_id, model, job.created, {}, oa.finish_reason(ev))
            final["usage"] = oa.usage(ev)
            yield sse.event(final)
        yield sse.DONE
    except TetherError as exc:
        job.done = True
        exc.field = oa.openai_param(exc.field, text="messages" if chunk is _chat_chunk else "prompt")
        yield sse.event(openai_error_body(exc))
    except Exception as exc:  # a bug must still end the stream in OpenAI's shape, not cut the connection
        log.exception("openai stream failed", extra={"jobId": job.job_id})  # not done: close() cancels it
        yield sse.event(openai_error_body(Internal(f"{type(exc).__name__}: {exc}", job_id=job.job_id)))
    finally:
        await job.close()
