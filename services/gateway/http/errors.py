"""Tether errors as HTTP responses: one status per wire error code, in Tether's or OpenAI's shape."""

from __future__ import annotations

import math
import re
from typing import Any

from fastapi.responses import JSONResponse

from tether.errors import TetherError

STATUS_BY_CODE: dict[str, int] = {
    "invalid_request": 400,
    "unauthorized": 401,
    "signature_invalid": 401,
    "model_unknown": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "cancelled": 409,  # the job was cancelled (tether.control.cancel.<job>) before it finished
    "payload_too_large": 413,
    "quota_exceeded": 429,
    "dead_lettered": 500,
    "artifact_invalid": 500,
    "key_file_invalid": 500,  # a node's own key file is unusable (never a client's fault)
    "internal": 500,
    "worker_failed": 502,
    "no_capacity": 503,
    "store_unavailable": 503,
    "timeout": 504,
}

# OpenAI's error "type" for each status class, so its client raises the matching exception
_OPENAI_TYPE: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class NotFound(TetherError):
    """A job (or other resource) the caller may see does not exist. HTTP-only: 404 ``not_found``."""

    code = "not_found"


class MethodNotAllowed(TetherError):
    """The path exists, the method does not. HTTP-only: 405 ``method_not_allowed``."""

    code = "method_not_allowed"


#: What an ``X-Job-Id`` header may carry: a job id echoed from a URL could hold anything.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]{1,200}")


def status_of(exc: TetherError) -> int:
    return STATUS_BY_CODE.get(exc.code, 500)


#: Codes a client must not simply send again: the job they name may still run (``timeout``: a repeat
#: without the same ``Idempotency-Key`` would run it twice), although ``retryable`` says a retry may work.
_NO_BLIND_RETRY = frozenset({"timeout", "internal"})  # the job may be queued or running already


def should_retry(exc: TetherError) -> bool:
    """What ``x-should-retry`` says: OpenAI's SDKs retry 409, 429 and 5xx unless it is ``false``."""
    return exc.retryable and exc.code not in _NO_BLIND_RETRY


def _headers(exc: TetherError) -> dict[str, str]:
    headers: dict[str, str] = {"x-should-retry": "true" if should_retry(exc) else "false"}
    if status_of(exc) == 401:  # RFC 9110 section 11.6.1: a 401 names the scheme to use
        headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    elif status_of(exc) == 503:  # every 503 says when to come back (RFC 9110 section 10.2.3)
        headers["Retry-After"] = "1"
    if exc.job_id and _HEADER_SAFE.fullmatch(exc.job_id):
        headers["X-Job-Id"] = exc.job_id
    return headers


def tether_error(exc: TetherError) -> JSONResponse:
    """``{"error": {"code", "message", "retryable", ...}}`` with the code's status."""
    return JSONResponse({"error": exc.to_wire()}, status_code=status_of(exc), headers=_headers(exc))


def openai_error_body(exc: TetherError) -> dict[str, Any]:
    status = status_of(exc)
    wire = exc.to_wire()  # message and field bounded, as on every other entrypoint
    return {
        "error": {
            "message": wire["message"],
            "type": _OPENAI_TYPE.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": wire.get("field"),
            "code": exc.code,
        }
    }


def openai_error(exc: TetherError) -> JSONResponse:
    """OpenAI's error shape, so the ``openai`` client raises ``RateLimitError``, ``NotFoundError`` ..."""
    return JSONResponse(openai_error_body(exc), status_code=status_of(exc), headers=_headers(exc))
