"""``tether status`` and ``tether jobs``: what the fleet and the store say right now."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from streams import JOBS, SCHEDULER_CONSUMER
from tether.connection import connect
from tether.fleet import FleetView
from tether.results import fetch_final
from tether.settings import Settings
from tether.store import open_store


async def snapshot(settings: Settings) -> dict[str, Any]:
    nc = await connect(settings.url, name="tether-status", max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        fleet = FleetView.from_settings(settings)
        await fleet.start(nc, js)
        await fleet.stop()
        now = time.time()
        workers = []
        for e in sorted(fleet.workers(), key=lambda e: e.worker_id):
            p = e.presence
            workers.append(
                {
                    "workerId": p.worker_id,
                    "health": str(fleet.health(e, now)),
                    "region": p.region,
                    "device": p.device_class,
                    "models": [f"{m.model_id}:{m.version} ({m.state})" for m in p.models],
                    "queueDepth": p.queue_depth,
                    "capacity": p.capacity,
                    "draining": p.draining,
                    "heartbeatAgeS": round(now - e.last_seen, 1),
                }
            )
        queue: dict[str, Any] = {}
        try:
            ci = await js.consumer_info(JOBS, SCHEDULER_CONSUMER)
            queue = {
                "waiting": ci.num_pending,
                "inFlight": ci.num_ack_pending,
                "redelivered": ci.num_redelivered,
            }
        except Exception as exc:
            queue = {"error": str(exc)}
        return {"workers": workers, "queue": queue, "models": [f"{m}:{v}" for m, v in fleet.models()]}
    finally:
        await nc.close()


def _render(snap: dict[str, Any], console: Console) -> None:
    t = Table(title="workers")
    for col in ("worker", "health", "region", "device", "models", "queue", "heartbeat age"):
        t.add_column(col)
    for w in snap["workers"]:
        t.add_row(
            w["workerId"],
            w["health"] + (" (draining)" if w["draining"] else ""),
            w["region"],
            w["device"],
            "\n".join(w["models"]),
            f"{w['queueDepth']}/{w['capacity']}",
            f"{w['heartbeatAgeS']}s",
        )
    console.print(t)
    q = snap["queue"]
    console.print(
        f"JOBS queue: waiting {q.get('waiting', '?')}, in flight {q.get('inFlight', '?')}, "
        f"redelivered {q.get('redelivered', '?')}"
    )


async def show_status(settings: Settings, *, watch: bool = False, as_json: bool = False) -> int:
    console = Console()
    while True:
        snap = await snapshot(settings)
        if as_json:
            print(json.dumps(snap))
        else:
            if watch:
                console.clear()
            _render(snap, console)
        if not watch:
            return 0
        await asyncio.sleep(1.0)


async def jobs_list(settings: Settings, *, status: str | None, limit: int) -> int:
    store = open_store(settings.store_url)
    async with store:
        rows = await store.list_jobs(limit=limit, status=status)
    t = Table(title=f"jobs ({settings.store_url})")
    for col in ("job", "tenant", "model", "status", "attempts", "worker", "created"):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["job_id"],
            r["tenant_id"],
            f"{r['model_id']}:{r['version']}",
            r["status"],
            str(r["attempts"]),
            r["worker_id"] or "",
            time.strftime("%H:%M:%S", time.localtime(r["created_at"])),
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
    if row is None and result is None:
        print(f"no job {job_id!r}")
        return 1
    print(json.dumps({"job": row, "attempts": attempts, "result": result}, indent=2, default=str))
    return 0
