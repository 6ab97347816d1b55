"""JSON views of the fleet, the models, the queue and jobs: one shape for HTTP, the dashboard and the CLI."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from nats.js import JetStreamContext

from schemas import ModelState
from streams import JOBS, SCHEDULER_CONSUMER
from tether.fleet import FleetView, Health
from tether.results import fetch_final
from tether.store import JobStore
from tether.tiers import TierThresholds, assign_tier

_THRESHOLDS = TierThresholds.from_env()


def _tier(gflops: float | None, max_alloc_mb: float | None) -> str:
    """The tier the schedulers assign from the worker's admission benchmark, or why it is not admitted."""
    decision = assign_tier(gflops, max_alloc_mb, _THRESHOLDS)
    return str(decision.tier) if decision.admitted else "rejected"


def workers_view(fleet: FleetView, now: float | None = None) -> list[dict[str, Any]]:
    now = fleet.now() if now is None else now  # the fleet's own (monotonic) clock
    out = []
    for e in sorted(fleet.workers(), key=lambda e: e.worker_id):
        p = e.presence
        out.append(
            {
                "workerId": p.worker_id,
                "health": str(fleet.health(e, now)),
                "tier": _tier(p.gflops, p.max_alloc_mb),
                "device": p.device_class,
                "gflops": p.gflops,
                "region": p.region,
                "draining": p.draining,
                "queueDepth": p.queue_depth,
                "capacity": p.capacity,
                "cpuPercent": p.cpu_percent,
                "memPercent": p.mem_percent,
                "models": [
                    {
                        "modelId": m.model_id,
                        "version": m.version,
                        "task": m.task,
                        "state": str(m.state),
                        "progress": m.progress,
                        "sizeMb": m.size_mb,
                        "pinned": m.pinned,
                    }
                    for m in p.models
                ],
                "heartbeatAgeS": round(now - e.last_seen, 2),
            }
        )
    return out


ModelKey = tuple[str, str]


def models_view(
    fleet: FleetView, depths: dict[ModelKey, int] | None = None, aliases: dict[ModelKey, ModelKey] | None = None
) -> list[dict[str, Any]]:
    """Every model a worker announced, with warm replicas, task, queue depth, and configured aliases."""
    now = fleet.now()  # the fleet's own (monotonic) clock
    warm: dict[tuple[str, str], int] = defaultdict(int)
    task: dict[tuple[str, str], str] = {}
    for e in fleet.workers():
        if fleet.health(e, now) is Health.OFFLINE:
            continue
        for m in e.presence.models:
            task[(m.model_id, m.version)] = m.task
            if m.state == ModelState.WARM and not e.presence.draining:
                warm[(m.model_id, m.version)] += 1
    out = []
    for model, version in fleet.models():
        out.append(
            {
                "modelId": model,
                "version": version,
                "task": task.get((model, version)),
                "replicas": warm.get((model, version), 0),
                "queueDepth": (depths or {}).get((model, version), 0),
                "aliasOf": None,
            }
        )
    for (model, version), (target, tversion) in sorted((aliases or {}).items()):
        if fleet.knows_model(target, tversion):
            out.append(
                {
                    "modelId": model,
                    "version": version,
                    "task": task.get((target, tversion)),
                    "replicas": warm.get((target, tversion), 0),
                    "queueDepth": (depths or {}).get((target, tversion), 0),
                    "aliasOf": {"modelId": target, "version": tversion},
                }
            )
    return out


async def queue_view(js: JetStreamContext) -> dict[str, Any]:
    try:
        ci = await js.consumer_info(JOBS, SCHEDULER_CONSUMER)
    except Exception as exc:
        return {"error": str(exc)}
    return {"waiting": ci.num_pending, "inFlight": ci.num_ack_pending, "redelivered": ci.num_redelivered}


async def job_view(store: JobStore | None, js: JetStreamContext, job_id: str) -> dict[str, Any] | None:
    """State, attempts, placement explanation and final result of one job (None when unknown)."""
    row = await store.get(job_id) if store is not None else None
    attempts = await store.attempts(job_id) if store is not None and row is not None else []
    final = await fetch_final(js, job_id)
    if row is None and final is None:
        return None
    out: dict[str, Any] = {"jobId": job_id}
    if row is not None:
        out.update(
            {
                "status": row["status"],
                "tenantId": row["tenant_id"],
                "modelId": row["model_id"],
                "version": row["version"],
                "attempts": row["attempts"],
                "workerId": row["worker_id"],
                "placement": row["placement"],
                "createdAt": row["created_at"],
                "finishedAt": row["finished_at"],
                "attemptHistory": [
                    {
                        "attempt": a["attempt"],
                        "workerId": a["worker_id"],
                        "status": a["status"],
                        "errorCode": a["error_code"],
                        "errorMessage": a["error_message"],
                        "reservedAt": a["reserved_at"],
                        "startedAt": a["started_at"],
                        "finishedAt": a["finished_at"],
                    }
                    for a in attempts
                ],
            }
        )
    if final is not None:
        out["status"] = final.status.value.upper()  # the one final result: the row may not say so yet
        if out.get("finishedAt") is None:
            out["finishedAt"] = final.finished_at
        out.setdefault("tenantId", final.tenant_id)
        out.setdefault("modelId", final.model_id)
        out.setdefault("version", final.version)
        out.setdefault("attempts", final.attempts)
        out.setdefault("workerId", final.worker_id)
        out["result"] = final.result
        if final.error is not None:
            out["error"] = final.error.wire()
        if final.usage is not None:
            out["usage"] = final.usage.wire()
    return out


async def recent_jobs(store: JobStore | None, limit: int = 30, tenant: str | None = None) -> list[dict[str, Any]]:
    if store is None:
        return []
    rows = await store.list_jobs(limit=limit, tenant=tenant)
    return [
        {
            "jobId": r["job_id"],
            "tenantId": r["tenant_id"],
            "modelId": r["model_id"],
            "version": r["version"],
            "status": r["status"],
            "attempts": r["attempts"],
            "workerId": r["worker_id"],
            "createdAt": r["created_at"],
            "finishedAt": r["finished_at"],
        }
        for r in rows
    ]
