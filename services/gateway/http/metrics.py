"""``GET /metrics``: this gateway's SLIs and the fleet it sees, in Prometheus' text format (0.0.4).

Counters count since the gateway started (Prometheus takes rates and sums over gateways);
the window SLIs of ``slis.py`` (success, throttle, shed and stale-cache rates, p50/p95 over
the last five minutes) are gauges. Every family has HELP and TYPE lines, label values are
escaped, and no series appears twice.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from schemas import ModelState
from services.gateway.http.context import caller_of, state_of
from services.gateway.slis import PROM_BOUNDS_S, Totals, merge
from tether.fleet import Health

router = APIRouter()
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[str, dict[str, str], float]  # (name with its suffix, labels, value)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


class Exposition:
    """Metric families in the order added; ``text()`` renders them."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")
        for sample, labels, value in samples:
            inner = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
            self._lines.append(f"{sample}{{{inner}}} {_number(value)}" if inner else f"{sample} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _histogram(name: str, totals: Totals) -> list[Sample]:
    out: list[Sample] = []
    for model, counts in sorted(totals.buckets.items()):
        running = 0
        for bound, count in zip((*PROM_BOUNDS_S, math.inf), counts, strict=True):
            running += count
            out.append((f"{name}_bucket", {"model": model, "le": _number(bound)}, running))
        out.append((f"{name}_sum", {"model": model}, totals.seconds[model]))
        out.append((f"{name}_count", {"model": model}, running))
    return out


def render(gateway: Any, depths: dict[tuple[str, str], int]) -> str:
    """The exposition for ``gateway`` (a ``Gateway``) with ``depths`` (queued jobs per model)."""
    e = Exposition()
    totals: Totals = gateway.slis.totals
    e.family(
        "tether_gateway_requests_total", "counter",
        "Requests this gateway answered, by model and outcome (ok or an error code).",
        [("tether_gateway_requests_total", {"model": m, "outcome": o}, n) for (m, o), n in sorted(totals.outcomes.items())],
    )
    e.family(
        "tether_gateway_cold_starts_total", "counter",
        "Completed requests whose model was not warm on the worker (the job waited for a load).",
        [("tether_gateway_cold_starts_total", {"model": m}, n) for m, n in sorted(totals.cold.items())],
    )
    e.family(
        "tether_gateway_request_duration_seconds", "histogram",
        "End-to-end duration of completed requests, by model.",
        _histogram("tether_gateway_request_duration_seconds", totals),
    )
    window = merge([gateway.slis.snapshot()])
    rates = (
        ("success", "successRate", "Share of requests answered with a result"),
        ("throttle", "throttleRate", "Share of requests refused by a tenant quota"),
        ("shed", "shedRate", "Share of requests shed for lack of capacity"),
        ("stale_cache", "staleCacheRate", "Share of completed requests that missed the warm model cache"),
    )
    for short, key, help_text in rates:
        value = window.get(key)
        e.family(
            f"tether_sli_{short}_ratio", "gauge", f"{help_text}, over the last five minutes.",
            [] if value is None else [(f"tether_sli_{short}_ratio", {}, float(value))],
        )
    for q in ("p50", "p95"):
        e.family(
            f"tether_sli_latency_{q}_seconds", "gauge",
            f"The {q} of completed requests' duration over the last five minutes, by model.",
            [
                (f"tether_sli_latency_{q}_seconds", {"model": m}, lat[q] / 1000.0)
                for m, lat in sorted(window["latencyMs"].items())
                if lat.get(q) is not None
            ],
        )
    fleet = gateway.fleet
    health: Counter[str] = Counter({str(h): 0 for h in Health})
    warm: Counter[tuple[str, str]] = Counter()
    now = fleet.now()
    for entry in fleet.workers():
        state_now = fleet.health(entry, now)
        health[str(state_now)] += 1
        if state_now is Health.OFFLINE or entry.presence.draining:
            continue  # as GET /models and the dashboard count replicas: no job goes there
        for key, state in entry.served.items():
            warm[key] += state is ModelState.WARM
    e.family(
        "tether_workers", "gauge", "Workers this gateway hears, by health.",
        [("tether_workers", {"health": h}, n) for h, n in sorted(health.items())],
    )
    e.family(
        "tether_model_warm_replicas", "gauge", "Workers with the model warm.",
        [("tether_model_warm_replicas", {"model": m, "version": v}, n) for (m, v), n in sorted(warm.items())],
    )
    e.family(
        "tether_model_backlog", "gauge", "Jobs queued or running for the model (JOBS).",
        [("tether_model_backlog", {"model": m, "version": v}, n) for (m, v), n in sorted(depths.items())],
    )
    return e.text()


@router.get("/metrics", summary="Prometheus metrics of this gateway", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    await caller_of(request)  # with TETHER_HTTP_AUTH=required, a key is needed here too
    gateway = state_of(request).gateway
    depths = await gateway.admission.depths()  # empty while JetStream is away: the rest still renders
    return PlainTextResponse(render(gateway, depths), media_type=CONTENT_TYPE)
