"""The dashboard: a static page (``/``, no build step) fed by ``GET /api/overview`` every second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from services.gateway.http.context import caller_of, state_of
from services.gateway.slis import merge, read_snapshots
from tether.views import models_view, queue_view, recent_jobs, workers_view

router = APIRouter()
STATIC = Path(__file__).parent / "static"


@router.get("/", include_in_schema=False)
async def dashboard() -> FileResponse:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html")


@router.get("/static/dashboard.js", include_in_schema=False)
async def dashboard_js() -> FileResponse:
    return FileResponse(STATIC / "dashboard.js", media_type="text/javascript")


@router.get("/api/overview", summary="Everything the dashboard shows: nodes, models, queue, jobs, SLIs")
async def overview(request: Request) -> Any:
    caller = await caller_of(request)
    gateway = state_of(request).gateway
    assert gateway.js is not None
    jobs = await recent_jobs(state_of(request).store, tenant=caller.tenant)  # a tenant sees its own
    try:  # the other gateways' SLIs; while JetStream is away, this gateway's own still show
        others = [s for s in await read_snapshots(gateway.js) if s.get("gatewayId") != gateway.gateway_id]
    except Exception:
        others = []
    return {
        "workers": workers_view(gateway.fleet),
        "models": models_view(gateway.fleet, await gateway.admission.depths(), gateway.config.aliases),
        "queue": await queue_view(gateway.js),
        "jobs": jobs,
        "slis": merge([*others, gateway.slis.snapshot()]),
    }
