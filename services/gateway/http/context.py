"""What every route needs from a request: the body within limits, the caller's tenant, trace headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from services.gateway.http.apikeys import ApiKeys, bearer_token
from services.gateway.service import Gateway
from tether import codec, telemetry
from tether.errors import InvalidRequest, PayloadTooLarge, Unauthorized
from tether.limits import check_size
from tether.store import JobStore

ANONYMOUS_TENANT = "anonymous"  # OpenAI routes without a key, when keys are optional


@dataclass(slots=True)
class HttpState:
    gateway: Gateway
    apikeys: ApiKeys
    store: JobStore | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str | None  # the API key's tenant; None for an anonymous caller (keys optional)


def state_of(request: Request) -> HttpState:
    state: HttpState = request.app.state.tether
    return state


async def read_json(request: Request) -> Any:
    """The body as JSON, refused with 413 past ``TETHER_MAX_PAYLOAD`` before it is all read."""
    settings = state_of(request).gateway.settings
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        check_size(int(declared), settings)
    body = bytearray()
    async for part in request.stream():
        body.extend(part)
        if len(body) > settings.max_payload:
            raise PayloadTooLarge(
                f"payload is over {settings.max_payload} bytes, the limit", field="body"
            )
    if not body:
        raise InvalidRequest("the request body must be a JSON object", field="body")
    return codec.decode(bytes(body), codec.JSON)  # the same JSON rules as tether.infer


async def caller_of(request: Request) -> Caller:
    """Resolve ``Authorization: Bearer <key>``; an unknown key is always 401, a missing one only when
    ``TETHER_HTTP_AUTH=required``."""
    state = state_of(request)
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        if state.gateway.config.auth_required:
            raise Unauthorized("an API key is required: Authorization: Bearer <key>", field="Authorization")
        return Caller(tenant=None)
    key = await state.apikeys.lookup(token)
    if key is None:
        raise Unauthorized("unknown or revoked API key", field="Authorization")
    return Caller(tenant=key.tenant)


def tenant_of(caller: Caller, claimed: Any, *, default: str | None = None) -> str:
    """The tenant a request runs as: the key's, which a body may repeat but not contradict."""
    if caller.tenant is not None:
        if claimed not in (None, caller.tenant):
            raise Unauthorized(f"this API key belongs to another tenant than {claimed!r}", field="tenantId")
        return caller.tenant
    if isinstance(claimed, str) and claimed.strip():
        return claimed
    if default is not None:
        return default
    raise InvalidRequest("field 'tenantId' is required", field="tenantId")


def trace_headers(request: Request) -> dict[str, str]:
    """``correlation-id`` (or ``X-Request-Id``) and ``traceparent`` from the HTTP request, for the job."""
    parent: dict[str, str] = {}
    cid = request.headers.get(telemetry.CORRELATION_ID) or request.headers.get("x-request-id")
    if cid:
        parent[telemetry.CORRELATION_ID] = cid[: telemetry.MAX_CORRELATION_ID]
    tp = request.headers.get(telemetry.TRACEPARENT)
    if tp:
        parent[telemetry.TRACEPARENT] = tp
    return parent


def idempotency_key(request: Request, body_key: Any) -> str | None:
    header = request.headers.get("idempotency-key")
    if header is not None and body_key is not None and header != body_key:
        raise InvalidRequest("Idempotency-Key header and idempotencyKey differ", field="Idempotency-Key")
    key = header if header is not None else body_key
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 256):
        raise InvalidRequest("Idempotency-Key must be 1 to 256 characters", field="Idempotency-Key")
    return key
