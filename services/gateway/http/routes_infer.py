"""The seed pilot's ``POST /infer`` (with ``?stream=true`` as Server-Sent Events) and the read views."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from schemas import ErrorReply, InferReply, InferRequest, parse
from services.gateway.http import sse
from services.gateway.http.context import (
    caller_of,
    idempotency_key,
    read_json,
    state_of,
    tenant_of,
    trace_headers,
)
from services.gateway.http.errors import NotFound
from services.gateway.http.hangup import infer_while_connected
from services.gateway.http.jobstream import Chunk, JobStream
from services.gateway.http.openapi_docs import body_schema, error_responses, ref
from tether.errors import Internal, InvalidRequest, TetherError
from tether.views import job_view, models_view, workers_view

log = logging.getLogger(__name__)

router = APIRouter()


async def infer_request(request: Request) -> InferRequest:
    """The body as an ``InferRequest`` run as the caller's tenant, with the Idempotency-Key header."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", field="body")
    caller = await caller_of(request)
    body = {**body, "tenantId": tenant_of(caller, body.get("tenantId"))}
    key = idempotency_key(request, body.get("idempotencyKey"))
    if key is not None:
        body["idempotencyKey"] = key
    return parse(InferRequest, body)


@router.post(
    "/infer",
    summary="Run one request (the seed pilot's shape); ?stream=true streams tokens as Server-Sent Events",
    openapi_extra=body_schema(InferRequest),
    responses={
        200: {
            "description": "The final result, or with ?stream=true an event stream: `job`, `chunk`* then "
            "`result` or `error`",
            "content": {
                "application/json": {"schema": ref(InferReply)},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        },
        **error_responses(400, 401, 404, 409, 413, 429, 503, 504),
    },
)
async def post_infer(
    request: Request, stream: bool = Query(False, description="stream tokens as Server-Sent Events")
) -> Any:
    req = await infer_request(request)
    gateway = state_of(request).gateway
    if not stream:
        reply = await infer_while_connected(request, gateway, req, trace_headers(request))
        return JSONResponse(reply.wire(), headers={"X-Job-Id": reply.job_id})
    job = JobStream(gateway, req, trace_headers(request))
    try:
        job_id = await job.start()  # a refusal (quota, shed, unknown model) is a plain JSON error
    except BaseException:
        await job.close()
        raise
    return StreamingResponse(
        sse.with_keepalive(_infer_events(job)), media_type=sse.MEDIA_TYPE, headers={**sse.HEADERS, "X-Job-Id": job_id}
    )


async def _infer_events(job: JobStream) -> AsyncIterator[bytes]:
    try:
        yield sse.event({"jobId": job.job_id}, name="job")
        async for ev in job.events():
            if isinstance(ev, Chunk):
                yield sse.event({"jobId": ev.job_id, "seq": ev.seq, "text": ev.text}, name="chunk", event_id=ev.seq)
            else:
                yield sse.event(ev.wire(), name="result")
    except TetherError as exc:
        job.done = True  # a final error is an end, not a disconnect
        yield sse.event(ErrorReply.model_validate({"error": exc.to_wire()}).wire(), name="error")
    except Exception as exc:  # a bug must still end the stream with an error event, not cut the connection
        log.exception("infer stream failed", extra={"jobId": job.job_id})  # not done: close() cancels it
        crash = Internal(f"{type(exc).__name__}: {exc}", job_id=job.job_id)
        yield sse.event(ErrorReply.model_validate({"error": crash.to_wire()}).wire(), name="error")
    finally:
        await job.close()


@router.get(
    "/jobs/{job_id}",
    summary="One job: status, attempts, placement explanation and result",
    responses=error_responses(401, 404),
)
async def get_job(request: Request, job_id: str) -> Any:
    caller = await caller_of(request)
    state = state_of(request)
    assert state.gateway.js is not None
    if len(job_id) > 200:
        raise InvalidRequest("job id too long", field="job_id")
    try:
        view = await job_view(state.store, state.gateway.js, job_id)
    except TetherError:
        view = None  # an id that cannot be a subject token names no job
    if view is None or (caller.tenant is not None and view.get("tenantId") != caller.tenant):
        raise NotFound(f"no job {job_id!r}", job_id=job_id)
    return view


@router.get("/workers", summary="Workers with health state, tier, region, models and heartbeat age")
async def get_workers(request: Request) -> Any:
    await caller_of(request)
    return {"workers": workers_view(state_of(request).gateway.fleet)}


@router.get("/models", summary="Models with warm replicas, queue depth and aliases")
async def get_models(request: Request) -> Any:
    await caller_of(request)
    gateway = state_of(request).gateway
    depths = await gateway.admission.depths()
    return {"models": models_view(gateway.fleet, depths, gateway.config.aliases)}
