"""How a job ends when it does not end well: a final error result, or a dead letter.

Every final error goes through ``finish_error``: the result is stored in
RESULTS first (deduplicated per job), then the final state in the store. If a
result was already there (an attempt finished after all), that result wins
and the store records it instead.
"""

from __future__ import annotations

import time

from nats.js import JetStreamContext

from schemas import ResultMessage, ResultStatus
from services.scheduler.intake import Ticket
from streams import DLQ
from tether import codec, subjects, telemetry
from tether.errors import DeadLettered, TetherError
from tether.results import error_result, fetch_final, publish_final
from tether.store import JobStatus, JobStore


async def publish_dead_letter(
    js: JetStreamContext, store: JobStore, t: Ticket, attempts: int, last: TetherError
) -> None:
    """Publish the job, why it died and every attempt to ``tether.dlq.<model>.<version>`` (once per job)."""
    history = await store.attempts(t.job_id)
    entry = {
        "jobId": t.job_id,
        "tenantId": t.key.tenant_id,
        "modelId": t.key.model_id,
        "version": t.key.version,
        "attempts": attempts,
        "error": last.to_wire(),
        "history": history,
        "submission": t.submission.wire() if t.submission else None,
        "deadLetteredAt": time.time(),
    }
    headers = {
        **telemetry.child_headers(t.headers),
        codec.CONTENT_TYPE: codec.JSON,
        "Nats-Msg-Id": f"dlq:{t.job_id}",
    }
    await js.publish(
        subjects.dlq_subject(t.key.model_id, t.key.version), codec.encode(entry), stream=DLQ, headers=headers
    )


_STATUS = {
    ResultStatus.COMPLETED: JobStatus.COMPLETED,
    ResultStatus.FAILED: JobStatus.FAILED,
    ResultStatus.DEAD_LETTERED: JobStatus.DEAD_LETTERED,
}


async def record_final(store: JobStore, t: Ticket, stored: ResultMessage, attempt: int) -> None:
    """Write the state that a stored final result says the job ended in."""
    err = stored.error
    await store.finish(
        t.key,
        _STATUS[stored.status],
        time.time(),
        attempt=attempt,
        worker_id=stored.worker_id,
        error_code=err.code if err else None,
        error_message=err.message if err else None,
        started_at=stored.started_at,
    )


async def finish_error(
    js: JetStreamContext,
    store: JobStore,
    t: Ticket,
    status: JobStatus,
    err: TetherError,
    *,
    attempts: int,
    worker_id: str | None = None,
) -> None:
    err.job_id = t.job_id
    result = error_result(
        job_id=t.job_id,
        tenant_id=t.key.tenant_id,
        model_id=t.key.model_id,
        version=t.key.version,
        error=err.to_wire(),
        status=str(ResultStatus(status.lower())),
        attempts=attempts,
        worker_id=worker_id,
    )
    if not await publish_final(js, result, telemetry.child_headers(t.headers)):
        existing = await fetch_final(js, t.job_id)  # an earlier attempt finished after all
        if existing is not None:
            await record_final(store, t, existing, attempts or 1)
            return
    await store.finish(
        t.key,
        status,
        time.time(),
        attempt=attempts or None,
        worker_id=worker_id,
        error_code=err.code,
        error_message=err.message,
    )


async def dead_letter(
    js: JetStreamContext, store: JobStore, t: Ticket, attempts: int, last: TetherError
) -> None:
    """DLQ entry with the attempt history, then the client's ``dead_lettered`` final result.

    A job whose result is already stored (an attempt finished after all) is not dead-lettered:
    the stored result is recorded instead.
    """
    existing = await fetch_final(js, t.job_id)
    if existing is not None:
        await record_final(store, t, existing, attempts or 1)
        return
    await publish_dead_letter(js, store, t, attempts, last)
    await finish_error(
        js,
        store,
        t,
        JobStatus.DEAD_LETTERED,
        DeadLettered(f"gave up after {attempts} attempts: {last.code}: {last.message}"),
        attempts=attempts,
    )
