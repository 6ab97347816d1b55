"""Dead letters: a job that cannot run goes to the DLQ stream with its attempt history."""

from __future__ import annotations

import time

from nats.js import JetStreamContext

from services.scheduler.intake import Ticket
from streams import DLQ
from tether import codec, subjects, telemetry
from tether.errors import TetherError
from tether.store import JobStore


async def dead_letter(
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
