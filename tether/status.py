"""``tether status`` and ``tether jobs``: what the fleet and the store say right now."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

from nats.js import JetStreamContext
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from tether.connection import connect
from tether.fleet import FleetView
from tether.results import fetch_final
from tether.settings import Settings
from tether.store import open_store
from tether.store.fleetstate import FleetState
from tether.views import models_view, queue_view, workers_view


async def breakers(settings: Settings) -> list[dict[str, Any]] | dict[str, str]:
    """Circuit breaker states the schedulers recorded in the store (CLOSED ones included)."""
    try:
        async with open_store(settings.store_url) as store:
            rows = await FleetState(store).breakers()
    except Exception as exc:
        return {"error": str(exc)}
    return [
        {k: r[k] for k in ("model_id", "version", "region", "state", "failures", "opened_at", "updated_at")}
        for r in rows
    ]


async def _collect(settings: Settings, js: JetStreamContext, fleet: FleetView) -> dict[str, Any]:
    from services.gateway.backlog import Backlog
    from services.gateway.slis import merge, read_snapshots

    try:
        depths = await Backlog(js, ttl_s=0).depths()
    except Exception:
        depths = {}
    try:
        slis = merge(await read_snapshots(js))
    except Exception as exc:  # no gateway has run yet: no bucket
        slis = {"error": str(exc)}
    return {
        "workers": workers_view(fleet),
        "models": models_view(fleet, depths),
        "queue": await queue_view(js),
        "slis": slis,
        "breakers": await breakers(settings),
    }


async def snapshot(settings: Settings) -> dict[str, Any]:
    nc = await connect(settings.url, name="tether-status", max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        fleet = FleetView.from_settings(settings)
        await fleet.start(nc, js)
        try:
            return await _collect(settings, js, fleet)
        finally:
            await fleet.stop()
    finally:
        await nc.close()


_HEALTH_STYLE = {"HEALTHY": "green", "SUSPECT": "yellow", "OFFLINE": "red"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def model_line(m: dict[str, Any]) -> str:
    """``smollm2-135m-instruct:1`` when warm, ``big:1 (loading 45%)`` while loading."""
    name = escape(f"{m['modelId']}:{m['version']}")  # ids are text, not rich markup
    if m.get("state") == "loading":
        progress = m.get("progress")
        return f"{name} (loading {round(100 * progress)}%)" if progress is not None else f"{name} (loading)"
    return name


def add_id_column(table: Table, name: str, ids: Iterable[str]) -> None:
    """A column of ids that is never shortened or wrapped: they are meant to be copied into commands."""
    width = max((len(i) for i in ids), default=0)
    table.add_column(name, no_wrap=True, overflow="ignore", min_width=max(width, len(name)))


def render(snap: dict[str, Any]) -> Group:
    workers = Table(title="workers", title_justify="left")
    add_id_column(workers, "worker", (w["workerId"] for w in snap["workers"]))
    for col in ("health", "tier", "region", "models warm / loading", "queue", "heartbeat age"):
        workers.add_column(col)
    for w in snap["workers"]:
        style = _HEALTH_STYLE.get(w["health"], "")
        workers.add_row(
            escape(w["workerId"]),
            f"[{style}]{w['health']}[/]" + (" (draining)" if w["draining"] else ""),
            w["tier"],
            escape(w["region"] or ""),
            ", ".join(model_line(m) for m in w["models"] if m["state"] in ("warm", "loading")) or "-",
            f"{w['queueDepth']}/{w['capacity']}",
            f"{w['heartbeatAgeS']:.1f}s",
        )
    slis = snap.get("slis") or {}
    latency = slis.get("latencyMs") or {}
    models = Table(title="models", title_justify="left")
    for col in ("model", "task", "warm replicas", "queued", "p50 ms", "p95 ms"):
        models.add_column(col)
    for m in snap["models"]:
        lat = latency.get(m["modelId"], {})
        models.add_row(
            escape(f"{m['modelId']}:{m['version']}"),
            escape(m["task"] or "-"),
            str(m["replicas"]),
            str(m["queueDepth"]),
            str(lat.get("p50", "-")),
            str(lat.get("p95", "-")),
        )
    q = snap["queue"]
    summary = (
        f"JOBS queue: waiting {q.get('waiting', '?')}, in flight {q.get('inFlight', '?')}, "
        f"redelivered {q.get('redelivered', '?')}   |   last 5 min: {slis.get('requests', 0)} requests, "
        f"success {_pct(slis.get('successRate'))}, throttled {_pct(slis.get('throttleRate'))}, "
        f"shed {_pct(slis.get('shedRate'))} ({slis.get('gateways', 0)} gateways)"
    )
    parts: list[Any] = [workers, models]
    rows = snap.get("breakers")
    if isinstance(rows, list) and rows:
        b = Table(title="circuit breakers (model, region)", title_justify="left")
        for col in ("model", "region", "state", "failures in window"):
            b.add_column(col)
        for r in rows:
            b.add_row(escape(f"{r['model_id']}:{r['version']}"), escape(r["region"]), r["state"], str(r["failures"]))
        parts.append(b)
    return Group(*parts, summary)


async def show_status(settings: Settings, *, watch: bool = False, as_json: bool = False) -> int:
    """One snapshot, or with ``watch`` a table that refreshes every second until Ctrl-C."""
    console = Console()
    nc = await connect(settings.url, name="tether-status", max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        fleet = FleetView.from_settings(settings)
        await fleet.start(nc, js)
        snap = await _collect(settings, js, fleet)
        if as_json and not watch:
            print(json.dumps(snap))
            return 0
        if not watch:
            console.print(render(snap))
            return 0
        if as_json:  # one JSON object per line, every second: nothing else on stdout
            while True:
                print(json.dumps(snap), flush=True)
                await asyncio.sleep(1.0)
                snap = await _collect(settings, js, fleet)
        with Live(render(snap), console=console, refresh_per_second=2, screen=False) as live:
            while True:
                await asyncio.sleep(1.0)
                live.update(render(await _collect(settings, js, fleet)))
    finally:
        await nc.close()


async def jobs_list(settings: Settings, *, status: str | None, limit: int) -> int:
    store = open_store(settings.store_url)
    async with store:
        rows = await store.list_jobs(limit=limit, status=status.upper() if status else None)
    t = Table(title=f"jobs ({settings.store_url})")
    add_id_column(t, "job", (r["job_id"] for r in rows))
    for col in ("tenant", "model", "status", "attempts"):
        t.add_column(col)
    add_id_column(t, "worker", (r["worker_id"] or "" for r in rows))
    t.add_column("created")
    for r in rows:
        t.add_row(
            escape(r["job_id"]),
            escape(r["tenant_id"]),
            escape(f"{r['model_id']}:{r['version']}"),
            r["status"],
            str(r["attempts"]),
            escape(r["worker_id"] or ""),
            _clock(r["created_at"]),
        )
    Console().print(t)
    return 0


async def jobs_show(settings: Settings, job_id: str) -> int:
    store = open_store(settings.store_url)
    async with store:
        row = await store.get(job_id)
        attempts = await store.attempts(job_id)
    result = None
    try:
        nc = await connect(settings.url, name="tether-jobs", max_reconnect_attempts=1)
        try:
            stored = await fetch_final(nc.jetstream(), job_id)
            result = stored.wire() if stored else None
        finally:
            await nc.close()
    except Exception as exc:
        result = {"unavailable": str(exc)}
    if row is None and (result is None or "unavailable" in result):
        print(f"no job {job_id!r}" + (f" (RESULTS unavailable: {result['unavailable']})" if result else ""))
        return 1
    print(json.dumps({"job": row, "attempts": attempts, "result": result}, indent=2, default=str))
    return 0


def _clock(ts: object) -> str:
    """``HH:MM:SS`` of a stored time, or ``?`` for one the platform cannot show (a row from an older version)."""
    try:
        return time.strftime("%H:%M:%S", time.localtime(float(ts)))  # type: ignore[arg-type]
    except (OverflowError, ValueError, OSError, TypeError):
        return "?"
