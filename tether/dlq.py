"""``tether dlq``: read the dead-letter stream and send a dead job round again.

Entries live in the ``DLQ`` stream on ``tether.dlq.<model>.<version>``; each
holds the job's submission, its last error and every attempt. ``retry``
submits the same input as a *new* job (``<job>-r<n>``): the dead job keeps
its one final result, and the retry gets its own.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from schemas.messages import MAX_JOB_ID
from streams import DLQ, JOBS
from tether import codec, subjects, telemetry
from tether.errors import Conflict, InvalidRequest

RETRY_OF = "Tether-Retry-Of"


async def entries(js: JetStreamContext, *, batch: int = 256) -> list[dict[str, Any]]:
    """Every DLQ entry, oldest first, with its stream sequence."""
    try:
        info = await js.stream_info(DLQ)
    except NotFoundError:  # no stream yet: nothing was ever dead-lettered (a timeout or a refusal raises)
        return []
    if info.state.messages == 0:
        return []
    psub = await js.pull_subscribe(
        subjects.DLQ_ALL,
        stream=DLQ,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30.0
        ),
    )
    out: list[dict[str, Any]] = []
    try:
        while True:
            try:
                msgs = await psub.fetch(batch, timeout=1.0)
            except TimeoutError:
                break
            for m in msgs:
                entry = codec.decode(m.data, codec.content_type_of(m.headers))
                if isinstance(entry, dict):
                    entry["streamSeq"] = m.metadata.sequence.stream
                    out.append(entry)
            if not msgs or msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await psub.unsubscribe()
    return out


async def find(js: JetStreamContext, job_id: str) -> dict[str, Any] | None:
    for entry in reversed(await entries(js)):
        if entry.get("jobId") == job_id:
            return entry
    return None


async def retry(nc: Client, js: JetStreamContext, job_id: str) -> str:
    """Resubmit a dead-lettered job's input as a new job; returns the new job id."""
    entry = await find(js, job_id)
    if entry is None:
        raise InvalidRequest(f"job {job_id!r} is not in the DLQ", field="jobId")
    submission = dict(entry.get("submission") or {})
    if not submission.get("input"):
        raise InvalidRequest(f"the DLQ entry of {job_id!r} has no submission to retry", field="submission")
    retried = re.compile(rf"{re.escape(job_id)}-r\d+-[0-9a-f]+\Z")
    earlier = sum(1 for e in await entries(js) if retried.match(str(e.get("jobId", ""))))
    suffix = f"-r{earlier + 1}-{secrets.token_hex(4)}"  # random: two retries are two jobs, never one deduplicated
    new_id = job_id[: MAX_JOB_ID - len(suffix)] + suffix
    submission.update({"jobId": new_id, "submittedAt": time.time()})
    submission.pop("idempotencyKey", None)  # the key names the dead job; the retry is a new one
    ack = await js.publish(
        subjects.job_subject(entry["tenantId"], entry["modelId"], entry["version"]),
        codec.encode(submission),
        stream=JOBS,
        headers={
            **telemetry.child_headers(None),
            codec.CONTENT_TYPE: codec.JSON,
            "Nats-Msg-Id": new_id,
            RETRY_OF: job_id,
        },
    )
    if ack.duplicate:
        raise Conflict(f"JOBS already holds a job {new_id!r}; nothing was resubmitted", job_id=new_id)
    return new_id


def summary(entry: dict[str, Any]) -> dict[str, Any]:
    err = entry.get("error") or {}
    return {
        "jobId": entry.get("jobId"),
        "model": f"{entry.get('modelId')}:{entry.get('version')}",
        "tenant": entry.get("tenantId"),
        "attempts": entry.get("attempts"),
        "error": f"{err.get('code')}: {err.get('message')}",
        "deadLetteredAt": entry.get("deadLetteredAt"),
    }


def render_entry(entry: dict[str, Any]) -> str:
    return json.dumps(entry, indent=2, default=str)
