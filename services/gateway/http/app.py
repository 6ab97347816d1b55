"""The FastAPI application: routes, error handlers, the OpenAPI spec and the dashboard."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from services.gateway.http import metrics, routes_dashboard, routes_infer, routes_openai
from services.gateway.http.context import HttpState
from services.gateway.http.errors import MethodNotAllowed, NotFound, openai_error, tether_error
from services.gateway.http.openapi_docs import build_spec
from tether.errors import Internal, InvalidRequest, TetherError

log = logging.getLogger(__name__)

DESCRIPTION = """Tether's HTTP gateway. `POST /infer` takes the seed pilot's body
(`tenantId`, `modelId`, `version`, `input`); `/v1/*` speaks OpenAI's shapes. Send
`Authorization: Bearer <key>` (keys from `tether apikeys add`) and, to make a retry safe,
`Idempotency-Key`. Errors carry Tether's stable codes: see each route's responses."""


def _error(request: Request, exc: TetherError) -> JSONResponse:
    return openai_error(exc) if request.url.path.startswith("/v1/") else tether_error(exc)


def create_app(state: HttpState | None = None) -> FastAPI:
    """The app; ``state`` (gateway, API keys, store) is attached by ``HttpGateway`` before serving."""
    app = FastAPI(title="Tether", version="1.0", description=DESCRIPTION)
    app.state.tether = state
    app.include_router(routes_infer.router)
    app.include_router(routes_openai.router)
    app.include_router(routes_dashboard.router)
    app.include_router(metrics.router)

    @app.exception_handler(TetherError)
    async def on_tether_error(request: Request, exc: TetherError) -> JSONResponse:
        return _error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid"}
        field = ".".join(str(p) for p in first["loc"][1:]) or str(first["loc"][0])
        return _error(request, InvalidRequest(f"field {field!r}: {first['msg']}", field=field))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Unknown paths and methods, in the same error shapes as everything else."""
        if exc.status_code == 404:
            return _error(request, NotFound(f"no route {request.method} {request.url.path}"))
        if exc.status_code == 405:
            return _error(request, MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
        return await http_exception_handler(request, exc)

    @app.exception_handler(ClientDisconnect)
    async def on_gone(request: Request, exc: ClientDisconnect) -> Response:
        """The client went away before its request was read in full, or before its answer: nobody to answer."""
        log.info("client disconnected", extra={"path": request.url.path})
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("http request failed", extra={"path": request.url.path})
        return _error(request, Internal(f"{type(exc).__name__}: {exc}"))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_spec(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
